"""Fixtures for the CINEMA model tests: tiny random models of the real classes, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CINEMA_MODELS = ["qwen2_vl", "qwen2_5_vl", "cogvideox_2b", "cogvideox_5b"]


@pytest.fixture(scope="session")
def cinema_tiny(tmp_path_factory) -> Path:
    """Folders written by `model.testing.tiny`; one fixed folder, so every module that imports this shares it."""
    from model.testing.tiny import ensure

    return ensure(tmp_path_factory.getbasetemp() / "cinema-tiny", CINEMA_MODELS)


@pytest.fixture(scope="session")
def wan_tiny(tmp_path_factory) -> Path:
    """Tiny Wan2.1 and Wan2.2-TI2V checkpoints and the MLLM, in the same shared folder as `cinema_tiny`."""
    from model.testing.tiny import ensure

    return ensure(tmp_path_factory.getbasetemp() / "cinema-tiny", ["qwen2_5_vl", "wan2_1", "wan2_2"])


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny ops are latency-bound: a second OpenMP thread only waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(count: int, seed: int = 0, size: tuple[int, int] = (40, 30)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]
