"""Where a curation model runs and in what precision: one place, so every stage agrees.

Ray gives a model actor its GPU share through CUDA_VISIBLE_DEVICES, so inside the actor CUDA is
visible exactly when the placement plan gave it a GPU. `CINEMA_DEVICE=cpu` keeps the models on the
CPU whatever Ray declared: tests run fake-GPU clusters on CPU-only machines with it.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def device() -> str:
    if os.environ.get("CINEMA_DEVICE") == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def dtype(on: str) -> torch.dtype:
    """bf16 on CUDA (fp32 accumulation in the kernels), fp32 on the CPU where bf16 is slow and inexact."""
    return torch.bfloat16 if on == "cuda" else torch.float32


def runtime() -> tuple[str, torch.dtype]:
    """(device, dtype) for a model loaded in this process; TF32 on for what stays fp32 on CUDA."""
    on = device()
    if on == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return on, dtype(on)


def tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over `array`; one from Ray's object store is read-only, and torch must not write through it: copied."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())
