"""`make encode`: the encode stage caches the frozen models' features; training on them changes nothing but speed."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import pipeline_cli
from train_fixtures import (  # noqa: F401
    cinema_models,
    metrics,
    real_samples,
    tiny_train_config,
    write_shard,
)

from manifests import store
from model.train.data import ShardStream
from model.train.trainer import Trainer
from pipeline.config import load_config, write_run_config


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory) -> Path:
    """A run folder as `make curate` leaves it: config.yaml, shards/ and the shards table; one sample too short."""
    run = tmp_path_factory.mktemp("encode-run")
    good = real_samples(3)
    short = {**real_samples(1)[0], "key": "real-short"}
    short["frames"] = short["frames"][:5]
    write_shard(run, good + [short], name="train-0000")
    keys = sorted(s["key"] for s in good + [short])
    store.write_part(run, "shards", [{"shard": "train-0000", "split": "train", "path": "shards/train-0000.tar", "n_samples": 4, "bytes": 0, "clip_ids": keys}])
    write_run_config(run, load_config(profile="tiny"))
    return run


@pytest.mark.slow
def test_encode_caches_features_and_cached_training_matches_raw(cinema_models, curated_run, tmp_path):
    raw_config = tiny_train_config(cinema_models, curated_run / "shards", tmp_path / "raw", max_steps=6, checkpoint_every=6)
    # The cache holds the MLLM states of one reference order and augmentation (drawn at encode time);
    # raw shards draw them again each epoch. With both off the two paths must see the same numbers.
    raw_config.data = raw_config.data.model_copy(update={"shuffle_references": False, "reference_augment": None})
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(raw_config.model_dump(mode="json")))

    result = pipeline_cli("stage", "encode", "--run", curated_run, "--set", f"encode.train_config={config_file}")
    assert result.code == 0, result.out + result.err
    [row] = store.read_table(curated_run, "encoded").to_pylist()
    assert row["n_samples"] == 3 and json.loads(row["skipped_json"]) == {"too_few_frames": 1}
    with tarfile.open(curated_run / row["path"]) as tar:
        names = tar.getnames()
    assert len([n for n in names if n.endswith(".cache.safetensors")]) == 3
    assert not [n for n in names if n.endswith((".mp4", "crop_0.png"))]  # the clips stay in the raw shard
    assert all(f"{key}.ref_0.png" in names for key in ("real-00", "real-01", "real-02"))
    again = pipeline_cli("stage", "encode", "--run", curated_run, "--set", f"encode.train_config={config_file}")
    assert again.code == 0 and "nothing to do" in again.out

    Trainer(raw_config).fit()
    cached_config = raw_config.model_copy(update={"run": str(tmp_path / "cached")})
    cached_config.data = raw_config.data.model_copy(update={"shards": str(curated_run / "encoded")})
    Trainer(cached_config).fit()
    raw, cached = metrics(Path(raw_config.run)), metrics(Path(cached_config.run))
    assert [m["step"] for m in cached] == list(range(1, 7))
    for a, b in zip(raw, cached):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7), a["step"]
    assert raw[-1]["skipped/too_few_frames"] >= 1 and cached[-1]["skipped/too_few_frames"] == 0

    # A cache made for another clip length is refused, sample by sample, with its reason.
    other = cached_config.data.model_copy(update={"frames": 13})
    batch = next(iter(ShardStream(other, seed=0)))
    assert batch.keys == [] and batch.skipped["cache_mismatch"] == 3
