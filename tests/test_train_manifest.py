"""The trainer reads a run folder's shards through its manifest, never a glob (issue 10)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
from train_fixtures import write_shard

from manifests import store
from model.testing.toy_world import CAPTION, FRAMES, HEIGHT, SUBJECTS, WIDTH, toy_clip, toy_reference
from model.train.config import DataConfig
from model.train.data import ShardStream
from pipeline.config import load_config, write_run_config

KEYS = ["clip-a", "clip-b"]  # listed in the shards table
ORPHAN = "clip-orphan"  # in a tar a killed run wrote but never listed


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with one listed shard, an orphan tar beside it, and the clips' scores."""
    run = tmp_path / "run"
    names = list(SUBJECTS)

    def sample(key: str, index: int) -> dict:
        return {"key": key, "frames": toy_clip(names[index]), "refs": [toy_reference(names[index])], "caption": CAPTION}

    write_shard(run, [sample(key, i) for i, key in enumerate(KEYS)], name="train-listed")
    write_shard(run, [sample(ORPHAN, 2)], name="train-orphan")
    store.write_part(run, "shards", [{"shard": "train-listed", "split": "train", "path": "shards/train-listed.tar", "n_samples": 2, "bytes": 0, "clip_ids": KEYS}])
    store.write_part(run, "videos", [{"video_id": "v", "path": "v.mp4", "bytes": 10**7, "duration_s": 12.0, "fps": 24.0, "width": 640, "height": 360}])
    store.write_part(run, "scenes", [{"video_id": "v", "scene_index": i, "clip_id": key, "n_frames": 96} for i, key in enumerate(KEYS + [ORPHAN])])
    motion = zip(KEYS + [ORPHAN], (1.0, 5.0, 5.0))  # residual_px: a real shot, not a slideshow
    store.write_part(run, "motion", [{"clip_id": key, "score": score, "residual_px": 5.0} for key, score in motion])
    write_run_config(run, load_config(profile="tiny"))
    return run


def trained_keys(shards: Path) -> set[str]:
    """Keys of the first batches of the endless stream (several epochs of the two listed clips)."""
    config = DataConfig(shards=str(shards), frames=FRAMES, buckets=[(HEIGHT, WIDTH)], max_references=1, batch_size=1, workers=0)
    return {key for batch in islice(ShardStream(config, seed=0, decode_video=False), 6) for key in batch.keys}


def test_an_orphan_tar_in_the_run_folder_is_not_trained_on(run):
    assert (run / "shards" / "train-orphan.tar").is_file()
    assert trained_keys(run / "shards") == set(KEYS)


def test_a_clip_a_stricter_threshold_removes_is_not_trained_on(run):
    write_run_config(run, load_config(profile="tiny", overrides=["filter.min_motion=2.0"]))
    assert trained_keys(run / "shards") == {"clip-b"}
    write_run_config(run, load_config(profile="tiny", overrides=["filter.min_motion=6.0"]))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):  # every listed clip removed: nothing to train on
        trained_keys(run / "shards")


def test_a_plain_folder_of_tars_is_taken_whole(run, tmp_path):
    plain = tmp_path / "plain"
    (plain / "shards").mkdir(parents=True)
    for tar in (run / "shards").glob("*.tar"):
        (plain / "shards" / tar.name).write_bytes(tar.read_bytes())
    assert trained_keys(plain / "shards") == set(KEYS) | {ORPHAN}
