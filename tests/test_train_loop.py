"""The trainer on shards of real footage: losses fall, checkpoints load, resume is exact, bad data is counted."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import (  # noqa: F401
    cinema_models,
    metrics,
    real_samples,
    tiny_train_config,
    write_shard,
)

from model.cinema import checkpoint
from model.cinema.aligner import AlignerNet
from model.cinema.model import CinemaModel
from model.train.data import ShardStream
from model.train.trainer import JointPhase, Trainer, batch_features, joint_batch


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory) -> Path:
    return write_shard(tmp_path_factory.mktemp("real-run"), real_samples(4))


def held_out_loss(model: CinemaModel, config, seeds=range(6)) -> float:
    """The v-prediction loss with fixed noise over the shards' samples, no dropout (eval mode)."""
    model.eval()
    stream = iter(ShardStream(config.data, seed=123))
    losses = []
    with torch.no_grad():
        for _ in range(4):
            batch = next(stream)
            latents, conditions = joint_batch(batch_features(model, batch, config.seed, torch.device("cpu")))
            losses += [model.training_loss(latents, conditions, torch.Generator().manual_seed(s)).item() for s in seeds]
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_losses_fall_checkpoints_load_and_resume_is_exact(cinema_models, real_shards, tmp_path):
    steps, half = 24, 12
    whole = tiny_train_config(cinema_models, real_shards, tmp_path / "whole", max_steps=steps, checkpoint_every=half, ema_decay=0.9)
    Trainer(whole).fit()

    stopped = whole.model_copy(update={"run": str(tmp_path / "stopped"), "max_steps": half})
    Trainer(stopped).fit()
    Trainer(stopped.model_copy(update={"max_steps": steps})).fit()  # the same command again: resumes

    uninterrupted = {m["step"]: m["loss"] for m in metrics(Path(whole.run))}
    resumed = {m["step"]: m["loss"] for m in metrics(Path(stopped.run))}
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in range(half + 1, steps + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step

    # Checkpoints: atomic names, rotated, loadable with from_pretrained; the resume state holds trained weights only.
    found = checkpoint.checkpoints(Path(whole.run))
    assert [p.name for p in found] == ["step-0000012", "step-0000024"]
    assert not list((Path(whole.run) / "checkpoints").glob(".tmp-*"))
    last = found[-1]
    assert checkpoint.read_trainer_state(last)["step"] == steps
    AlignerNet.from_pretrained(last / "aligner")
    state_keys = load_file(last / "state" / "model.safetensors").keys()
    assert state_keys and all(k.startswith(("aligner.", "transformer.")) for k in state_keys)

    # Losses fall: the trained checkpoint beats the starting weights on the same samples and noise.
    before = held_out_loss(CinemaModel.from_config(whole.model), whole)
    after = held_out_loss(CinemaModel.from_config(checkpoint.model_config(last)), whole)
    print(f"held-out v-loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before  # measured: 1.82 -> 1.52


def test_bad_samples_are_skipped_and_counted(cinema_models, tmp_path):
    good = real_samples(2)
    too_short = {**real_samples(3)[2], "key": "short", "frames": real_samples(1, frames=5)[0]["frames"]}
    broken, missing = {**good[0], "key": "broken"}, {**good[1], "key": "missing"}
    run = tmp_path / "run"
    shards = write_shard(run, [*good, too_short, broken, missing])
    # Break two samples inside the shard: truncate one mp4, drop one listed reference.
    tar_path = next(shards.glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            if member.name == "missing.ref_1.png":
                continue
            if member.name == "broken.mp4":
                data = data[: len(data) // 3]
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))

    config = tiny_train_config(cinema_models, shards, run / "train", max_steps=3, checkpoint_every=3)
    stream = iter(ShardStream(config.data, seed=0))
    seen, skipped = [], Counter()
    while len(seen) < 3:  # one epoch and the first batch of the next, which carries the epoch's tail counts
        batch = next(stream)
        seen += batch.keys
        skipped += batch.skipped
    assert seen == ["real-00", "real-01", "real-00"]
    assert skipped == Counter({"missing_reference": 1, "broken_mp4": 1, "too_few_frames": 1})

    Trainer(config).fit()
    last = metrics(run / "train")[-1]
    assert last["step"] == 3
    for reason in ("missing_reference", "broken_mp4", "too_few_frames"):
        assert last[f"skipped/{reason}"] >= 1, last


def test_nonfinite_step_is_skipped_and_counted(cinema_models, monkeypatch, tmp_path):
    shards = write_shard(tmp_path / "data", real_samples(2))
    real_loss, calls = JointPhase.loss, []

    def loss_nan_on_second_step(self, model, inputs):
        calls.append(1)
        loss = real_loss(self, model, inputs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(JointPhase, "loss", loss_nan_on_second_step)
    config = tiny_train_config(cinema_models, shards, tmp_path / "run", max_steps=3, checkpoint_every=3)
    trainer = Trainer(config)
    trainer.fit()
    rows = metrics(tmp_path / "run")
    assert [r["nonfinite_steps"] for r in rows] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in trainer.params)
    assert trainer.lr_scheduler.last_epoch == 2  # two real optimizer steps
    shutil.rmtree(tmp_path / "run")
