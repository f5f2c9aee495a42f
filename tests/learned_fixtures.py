"""Fixtures for the learned stages: tiny random-initialised models of the real classes, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

LEARNED_MODELS = ["clip", "aesthetic_head", "qwen2_5_vl", "grounding_dino", "sam"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Folders written by `model.testing.tiny` (the builders `make demo` uses), loaded back by the stages."""
    from model.testing.tiny import ensure

    return ensure(tmp_path_factory.mktemp("tiny-models"), LEARNED_MODELS)


def tiny_args(models: Path) -> list[str]:
    """CLI arguments that select the tiny profile with models from `models`."""
    return ["--profile", "tiny", "--set", f"tiny_models={models}"]
