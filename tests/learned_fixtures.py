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


def run_model_stage(stage, prepared: list[dict]) -> tuple[list[dict], list[dict]]:
    """A model stage's rows and errors for prepared items, as the runner makes them: `process_batch`
    on the batch, then `finish` per input (an exception there is that input's error row)."""
    from stages.base import tables

    made, errors = stage.process_batch(prepared)
    rows = []
    for work in tables(stage.writes, made)[stage.writes]:
        try:
            rows += stage.finish({stage.writes: [work]})[stage.writes]
        except Exception as exc:
            errors.append(stage.error_row(work, exc))
    return rows, errors
