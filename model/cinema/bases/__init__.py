"""The base video models CINEMA trains on: one specification class per base, chosen from the checkpoint.

As in finetrainers' `ModelSpecification`s, a base says once how to load its DiT, VAE, scheduler and
text target, what its objective is, how its sampler steps, and its native size; the model, trainer,
sampler, data and plan are written once against these hooks and never ask which base they run.
A base is chosen from the transformer folder's `config.json` `_class_name` (stock or our own
subclass, as a trained checkpoint saves it) and refuses layouts it cannot train (the checkpoint's
`model_index.json`, when there is one, says what the release is). A third base (HunyuanVideo-1.5,
whose text encoder is Qwen2.5-VL) is one more module and one more `BASES` entry.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from model.hub import resolve

if TYPE_CHECKING:
    from model.cinema.model import CinemaConfig, PartRef


@dataclass(frozen=True)
class Native:
    """The clip a base was trained at: the sampler's default frame count and the rate its videos are written at."""

    frames: int
    height: int
    width: int
    fps: int


class Sampler(ABC):
    """One denoising run's scheduler calls, which differ between scheduler families."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def start(self, steps: int, device: torch.device) -> torch.Tensor:
        """Set the scheduler up for `steps` steps; its timesteps."""
        self.scheduler.set_timesteps(steps, device=device)
        return self.scheduler.timesteps

    @abstractmethod
    def initial(self, noise: torch.Tensor) -> torch.Tensor:
        """The starting latents from standard normal noise."""

    @abstractmethod
    def model_input(self, latents: torch.Tensor, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...

    @abstractmethod
    def step(self, prediction: torch.Tensor, i: int, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The latents after step i (the i-th of `start`'s timesteps)."""


class Base(ABC):
    name: ClassVar[str]
    transformer_classes: ClassVar[tuple[str, ...]]  # `_class_name`s of its transformer folders
    latent_dtype_follows_transformer: ClassVar[bool]  # else the sampler keeps its latents in fp32
    scheduler_names: ClassVar[dict[str, str]]  # CLI name -> scheduler class the sampler can swap in

    @abstractmethod
    def check(self, transformer: dict, release: dict | None) -> None:
        """Raise naming what is unsupported in this transformer config / `model_index.json`."""

    @abstractmethod
    def load_transformer(self, part: PartRef, dtype: torch.dtype): ...

    @abstractmethod
    def load_vae(self, part: PartRef, dtype: torch.dtype): ...

    @abstractmethod
    def load_scheduler(self, part: PartRef): ...

    @abstractmethod
    def swap_scheduler(self, scheduler, name: str):
        """The scheduler of class `scheduler_names[name]` with the same noise schedule."""

    @abstractmethod
    def text_length(self, transformer: dict) -> int:
        """Text positions the DiT reads: AlignerNet's queries and the text target's length."""

    @abstractmethod
    def text_width(self, transformer: dict) -> int: ...

    @abstractmethod
    def load_text_target(self, ref: str, max_length: int, dtype: torch.dtype):
        """The text encoder whose features the DiT was trained on (AlignerNet's targets)."""

    @abstractmethod
    def objective(self, scheduler, config: CinemaConfig): ...

    @abstractmethod
    def sampler(self, scheduler) -> Sampler: ...

    @abstractmethod
    def native(self, vae: dict) -> Native:
        """The native size and rate of the checkpoint whose VAE config this is."""

    @abstractmethod
    def compression(self, vae: dict) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE of this config."""

    # What the memory plan and the GPU check build from configs alone (no weights).
    @abstractmethod
    def dit_class(self) -> type: ...

    @abstractmethod
    def vae_class(self) -> type: ...

    @abstractmethod
    def text_encoder_classes(self) -> tuple[type, type]:
        """(config class, model class) of the text target's encoder."""

    @abstractmethod
    def forward_flops(self, transformer: dict, frames: int, height: int, width: int) -> float:
        """Matmul FLOPs of one DiT forward over `frames` latent frames (video + references) of height x width latents."""

    @abstractmethod
    def predict(
        self, transformer, noisy: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor, references, reference_timestep: str
    ) -> torch.Tensor:
        """The DiT's prediction for the video latents (batch, frames, C, h, w); `reference_timestep` is the config's."""


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def transformer_config(part: PartRef) -> dict:
    folder = Path(resolve(part.ref)) / (part.subfolder or "")
    return json.loads((folder / "config.json").read_text())


def base_named(transformer: dict) -> Base:
    """The base whose DiT this transformer config (its `_class_name`) describes."""
    from model.cinema.bases.cogvideox import CogVideoXBase
    from model.cinema.bases.wan import WanBase

    name = transformer.get("_class_name")
    for base in (CogVideoXBase(), WanBase()):
        if name in base.transformer_classes:
            return base
    raise ValueError(f"transformer {name!r} is no supported base (CogVideoX 1.0, Wan2.1, Wan2.2-TI2V-5B)")


def base_of(part: PartRef) -> Base:
    """The base of this transformer folder, after refusing what it cannot train."""
    config = transformer_config(part)
    try:
        base = base_named(config)
    except ValueError as error:
        raise ValueError(f"{part.ref}: {error}") from None
    base.check(config, _read_json(Path(resolve(part.ref)) / "model_index.json"))
    return base
