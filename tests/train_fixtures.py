"""Fixtures for training and sampling: tiny CINEMA models, and shards written by the real shard writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.cinema.model import PartRef
from model.testing.tiny import tiny_cinema_config
from model.testing.toy_world import write_shard  # noqa: F401  (the one shard writer of the tests)
from model.train.config import DataConfig, TrainConfig
from stages.video import iter_frames

CINEMA_MODELS = ["qwen2_5_vl", "cogvideox_2b"]
REAL = Path(__file__).parent / "data" / "real"
SIZE = (32, 48)  # tiny video height, width
FRAMES = 9


@pytest.fixture(scope="session")
def cinema_models(tmp_path_factory) -> Path:
    from model.testing.tiny import ensure

    return ensure(tmp_path_factory.mktemp("cinema-models"), CINEMA_MODELS)


@pytest.fixture(scope="session")
def wan_models(tmp_path_factory) -> Path:
    """The MLLM and a tiny Wan2.1 checkpoint, for the trainer's Wan cases (`tiny_wan_train_config`)."""
    from model.testing.tiny import ensure

    return ensure(tmp_path_factory.mktemp("wan-models"), ["qwen2_5_vl", "wan2_1"])


def tiny_wan_train_config(models: Path, shards: Path, run: Path, **values) -> TrainConfig:
    """`tiny_train_config` on the tiny Wan2.1 base: its DiT, VAE, scheduler and UMT5 target."""
    wan = dict(model=tiny_cinema_config(models, "wan2_1"), t5=PartRef(ref=str(models / "wan2_1")))
    return tiny_train_config(models, shards, run, **{**wan, **values})


def tiny_train_config(models: Path, shards: Path, run: Path, **values) -> TrainConfig:
    """configs/train_tiny.yaml's values, on the given models, shards and run folder."""
    data = DataConfig(shards=str(shards), frames=FRAMES, buckets=[SIZE], max_references=2, batch_size=1, workers=0)
    defaults = dict(
        run=str(run), model=tiny_cinema_config(models), t5=PartRef(ref=str(models / "cogvideox_2b")), data=data,
        precision="fp32", learning_rate=1e-3, warmup_steps=1, log_every=1, max_steps=4, checkpoint_every=4,
    )  # fmt: skip
    return TrainConfig(**{**defaults, **values})


def rgba_cutout(image: np.ndarray) -> np.ndarray:
    """A subject cut-out as the subjects stage writes it: RGBA, an ellipse opaque, the rest transparent."""
    h, w = image.shape[:2]
    y, x = np.ogrid[:h, :w]
    inside = ((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2 <= 1
    return np.dstack([image, np.where(inside, 255, 0).astype(np.uint8)])


def real_samples(count: int, frames: int = 13) -> list[dict]:
    """Short clips of the shipped real footage, each with two cut-outs of its own frames as references."""
    samples = []
    for index in range(count):
        source = sorted(REAL.glob("*.mp4"))[index % 2]
        start = 15 * (index // 2)
        images = [f.image for f in iter_frames(source, fmt="rgb24", size=(64, 48), end_frame=start + frames) if f.index >= start]
        refs = [rgba_cutout(images[0][8:40, 4:36]), rgba_cutout(images[-1][8:40, 28:60])]
        samples.append({"key": f"real-{index:02d}", "frames": images, "refs": refs, "caption": f"a scene from {source.stem}"})
    return samples


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
