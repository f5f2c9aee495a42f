"""The `finished` records: a rerun with nothing changed asks nothing, and the shortcut is never wrong.

Each test reruns stages of a copy of the shared curated run after one change that gives them work:
a part added to an input table, parts replaced by compaction, a part quarantined, a config change,
the stage's own table deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import KEEP_ALL

from manifests import store
from pipeline import finished
from pipeline.config import load_config
from pipeline.registry import STAGES
from pipeline.runner import run_chain
from stages.scenes import clip_id

CHAIN = ["scenes", "motion", "clips"]
SETTINGS = [s for s in KEEP_ALL[2:] if s != "--set"]  # the curated run's filter thresholds


@pytest.fixture
def run(curated, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(curated.run, copy)
    return copy


def rerun(run: Path, stages: list[str] = CHAIN, settings: list[str] = SETTINGS) -> dict[str, int]:
    """Inputs each stage processed, running them in this process as `curate` does."""
    config = load_config(run / "config.yaml", settings)
    return {r.stage: r.inputs for r in run_chain([STAGES[s] for s in stages], config, run)}


def add_window(run: Path, k: int = 0) -> str:
    """A new window of a real video (the k-th pair of its adjacent windows as one), written as a new scenes part."""
    rows = store.read_table(run, "scenes").to_pylist()
    pairs = [(a, b) for a, b in zip(rows, rows[1:]) if a["video_id"] == b["video_id"] and b["scene_index"] == a["scene_index"] + 1]
    first, second = pairs[k]
    new = {**first, "scene_index": max(r["scene_index"] for r in rows) + 1, "end_frame": second["end_frame"],
           "end_pts": second["end_pts"], "end_s": second["end_s"], "n_frames": second["end_frame"] - first["start_frame"]}  # fmt: skip
    new["clip_id"] = clip_id(new["video_id"], new["start_frame"], new["end_frame"])
    store.write_part(run, "scenes", [new])
    return new["clip_id"]


def test_every_stage_of_a_finished_run_has_a_record_and_a_rerun_asks_nothing(run, monkeypatch):
    assert all(finished.load(run, s) for s in CHAIN), "the curated run ended with nothing pending"
    asks = []
    real = store.guarded

    def spy(run_dir, action):
        result = real(run_dir, action)
        asks.append(result)
        return result

    monkeypatch.setattr(store, "guarded", spy)
    assert rerun(run) == dict.fromkeys(CHAIN, 0)
    assert not [a for a in asks if isinstance(a, pa.RecordBatchReader)], "a pending query ran"


def test_a_new_video_without_windows_yet_makes_the_window_stages_ask_nothing(run, monkeypatch):
    video = store.read_table(run, "videos").to_pylist()[0]
    store.write_part(run, "videos", [{**video, "video_id": "new-video", "path": video["path"] + ".copy.mp4"}])
    readers = []
    real = store.guarded
    monkeypatch.setattr(store, "guarded", lambda run_dir, action: readers.append(result := real(run_dir, action)) or result)
    assert rerun(run, ["motion", "clips"]) == {"motion": 0, "clips": 0}
    assert not [r for r in readers if isinstance(r, pa.RecordBatchReader)], "a pending query ran"
    new = add_window(run)  # its windows, once they exist, are asked for
    assert rerun(run, ["motion", "clips"]) == {"motion": 1, "clips": 1}
    assert store.read_table(run, "clips", where=f"clip_id = '{new}'").num_rows == 1


def test_a_window_added_in_a_new_part_is_scored_and_cut(run):
    new = add_window(run)
    assert rerun(run) == {"scenes": 0, "motion": 1, "clips": 1}
    assert store.count(run, "clips") == store.count(run, "scenes")
    assert store.read_table(run, "motion", where=f"clip_id = '{new}'").num_rows == 1


def test_a_window_added_then_compacted_away_from_its_part_is_still_found(run):
    add_window(run)
    store.compact(run, "scenes", whole=True)  # as `manifests compact`: the recorded part and the new one become one new part
    assert rerun(run) == {"scenes": 0, "motion": 1, "clips": 1}


def test_windows_added_in_parts_that_a_tiered_compaction_merged_beside_the_base_are_found(run, monkeypatch):
    monkeypatch.setattr(store, "TIER_PARTS", 2)  # the shared run's tables are small: a base of a few windows
    (base,) = store.parts(run, "scenes")
    add_window(run, 0)
    assert rerun(run) == {"scenes": 0, "motion": 1, "clips": 1}  # the records now name the new part beside the base
    add_window(run, 1)
    assert store.compact(run, "scenes") == 2  # the recorded part and the new one become one new part; the base stays
    assert store.parts(run, "scenes")[0] == base and len(store.parts(run, "scenes")) == 2
    motion = store.parts(run, "motion")[0]
    assert rerun(run) == {"scenes": 0, "motion": 1, "clips": 1}
    assert store.parts(run, "motion")[0] == motion, "the stage's end left its base alone"


def test_rows_lost_to_a_quarantined_part_are_made_again(run):
    (part,) = store.parts(run, "clips")
    n = store.count(run, "clips")
    store.quarantine(run, part, "damaged on purpose")
    assert not (run / store.FINISHED).exists()
    assert rerun(run) == {"scenes": 0, "motion": 0, "clips": n}
    assert store.count(run, "clips") == n


def test_a_deleted_output_table_redoes_its_stage(run):
    n = store.count(run, "motion")
    shutil.rmtree(store.table_dir(run, "motion"))
    assert finished.load(run, "motion"), "the record stays: the runner must not trust it"
    assert rerun(run) == {"scenes": 0, "motion": n, "clips": 0}


def test_a_filter_change_that_lets_windows_in_gives_them_work(run):
    add_window(run)
    strict = [*SETTINGS, "filter.min_motion=100000"]  # every window fails the motion rule, which clips applies
    assert rerun(run, ["scenes", "motion", "clips"], strict) == {"scenes": 0, "motion": 1, "clips": 0}
    assert finished.load(run, "clips"), "nothing pending for clips under the strict filter"
    assert rerun(run, ["clips"]) == {"clips": 1}


def test_every_column_of_candidates_names_the_table_it_comes_from(curated):
    """`input_tables` reads a condition's tables off its column names: a new column must be mapped."""
    from manifests import views

    columns = views.query(curated.run, "DESCRIBE candidates").column("column_name").to_pylist()
    own = set(store.spec("scenes").schema.names) | set(store.spec("videos").schema.names)
    derived = {"duration_s", "video_path", "video_bytes", "video_duration_s"}  # scenes.n_frames / videos.fps; videos.path, .bytes, .duration_s
    assert [c for c in columns if c not in own | derived | set(views.SOURCES)] == []
