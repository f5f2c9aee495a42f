"""The training config: one pydantic schema, read from a YAML file with `--set a.b=value` on top.

Same system as the curation config (`pipeline/config.py`): defaults here, the file, then the
overrides. The paper gives no learning rate, batch size or step count: the defaults are a careful
reimplementation's choices (CogVideoX fine-tuning values) and say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from manifests.config_io import apply_overrides
from manifests.exits import read_yaml, validated
from model.cinema.model import CinemaConfig, PartRef


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReferenceAugment(Strict):
    """Per-reference augmentation drawn from each sample's seed, so a reference is never a frame's exact pixels
    (with references taken from other shots: against learning to paste the reference into the video)."""

    scale: tuple[float, float] = (0.8, 1.2)  # resize factor range
    crop: float = 0.1  # up to this share of each side is cut away
    flip: float = 0.5  # probability of a horizontal flip
    mask: float = 0.25  # probability of blanking one rectangle to the reference background
    mask_size: float = 0.3  # the rectangle's sides, as shares of the reference's


class DataConfig(Strict):
    """What a training sample is: frames, size bucket, references; read from raw or cached shards."""

    shards: str = "runs/demo/shards"  # a folder of .tar shards (raw or written by `make encode`)
    frames: int = 45  # 4k+1: 12 latent frames, the paper's length
    fps: float = 8.0  # frames are taken 1/fps apart from the middle of the clip, the rate samples are written at
    buckets: list[tuple[int, int]] = [(480, 720)]  # (height, width); a clip goes to the nearest aspect
    max_references: int = 4  # a sample keeps its first subjects, up to this many (curation ranks them)
    shuffle_references: bool = True  # order drawn per sample: position F+k must not encode the order of discovery
    reference_augment: ReferenceAugment | None = ReferenceAugment()  # None: references as curated
    batch_size: int = 1  # per process
    workers: int = 2  # DataLoader worker processes per process (0: in the training process)

    @field_validator("frames")
    @classmethod
    def four_k_plus_one(cls, frames: int) -> int:
        if (frames - 1) % 4:
            raise ValueError(f"frames must be 4k+1 (the VAE compresses time 4x), got {frames}")
        return frames


class LoraConfig(Strict):
    rank: int = 64
    alpha: int = 64
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]


class ValidationConfig(Strict):
    every: int = 0  # steps between validation videos (0: never)
    steps: int = 50  # denoising steps
    guidance_scale: float = 6.0


class TrainConfig(Strict):
    run: str = "runs/train"  # every output of the run goes here
    phase: Literal["align", "joint"] = "joint"
    model: CinemaConfig = CinemaConfig()
    t5: PartRef = PartRef(ref="zai-org/CogVideoX-5b")  # tokenizer/ + text_encoder/: the align phase's targets
    data: DataConfig = DataConfig()
    lora: LoraConfig | None = None  # joint phase: None trains the whole DiT
    precision: Literal["fp32", "bf16"] = "bf16"
    seed: int = 0
    max_steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    gradient_accumulation: int = 1
    t5_padding_weight: float = 1.0  # align phase: a T5 padding position's weight in the loss (a real token's is 1)
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = None  # an EMA of the trained weights, saved in its place
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = True  # continue from the run's latest checkpoint when there is one
    validation: ValidationConfig = ValidationConfig()


def load_train_config(path: Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The YAML file (a run's own `config.yaml` too), then `--set` overrides."""
    data = read_yaml(path) if path else {}
    return validated(TrainConfig, apply_overrides(data, list(overrides)))
