"""Model stages on Ray: the model actor runs the model only, `finish` and the writes run after it on a CPU."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
from conftest import GOLDEN, REAL
from learned_fixtures import tiny_models  # noqa: F401  (fixture)

from manifests import store
from pipeline.config import load_config
from pipeline.registry import STAGES
from pipeline.runner import run_chain
from stages.base import Resources
from stages.probe import Probe

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test stages below run in Ray workers


class ModelProbe(Probe):
    """A probe run as a model stage: `process` stands for the model, `finish` for the CPU work after it."""

    resources = Resources(cpus=1.0, uses_model=True)
    batch_size = 3

    def process(self, item):
        return [{"video_id": Path(item["path"]).stem, "path": item["path"], "bytes": 1}]

    def finish(self, rows):
        (row,) = rows["videos"]
        if "unfinished" in row["path"]:
            raise OSError(5, "cannot write its files")
        return {"videos": [{**row, "bytes": 2}]}


def _videos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_finish_runs_per_input_after_the_model_and_its_failure_is_that_inputs_error(tmp_path):
    config = load_config(None, ["max_attempts=3"])
    config.src = str(_videos(tmp_path / "src", ["a.mp4", "b.mp4", "unfinished.mp4", "c.mp4", "d.mp4"]))
    run = tmp_path / "run"
    (report,) = run_chain([ModelProbe], config, run)
    videos = store.read_table(run, "videos").to_pylist()
    assert sorted(v["video_id"] for v in videos) == ["a", "b", "c", "d"]
    assert {v["bytes"] for v in videos} == {2}  # every written row went through `finish`
    (error,) = store.read_table(run, "errors").to_pylist()
    assert error["key"].endswith("unfinished.mp4") and error["error_type"] == "OSError" and error["attempts"] == 3
    assert report.rows == 4 and report.errors == 1 and report.actors == 1 and report.busy_s > 0


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(2))
def test_a_streaming_chain_processes_each_input_once_per_stage(tiny_models, tmp_path, monkeypatch, repeat):
    """Issue 24: asks again as often as the runner may, so that a stream runs out in the middle of
    a batch while the stages before it still write; no stage may take an input twice."""
    from pipeline import runner

    monkeypatch.setattr(runner, "POLL_S", 0.0)
    src = tmp_path / "src"
    src.mkdir()
    for video in [REAL / "bikes.mp4", REAL / "carphone_pristine.mp4", GOLDEN / "counter.mp4"]:
        shutil.copy(video, src)
    classes = [STAGES[name] for name in ["probe", "scenes", "motion", "aesthetic", "screen", "clips"]]
    overrides = ["filter.min_duration_s=0.5", "filter.min_motion=0", "aesthetic.batch_size=3", "screen.batch_size=3"]  # more inputs than fit in flight
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}", *overrides])
    config.src, config.stages = str(src), [c.name for c in classes]
    run = tmp_path / "run"
    reports = run_chain(classes, config, run)
    for cls, report in zip(classes, reports, strict=True):
        if cls.name == "motion":
            assert report.inputs == 0  # the scene pass scored every window
            continue
        key = "path" if cls.reads == "sources" else cls.input_key
        table = store.query(run, f'SELECT count(DISTINCT "{key}") AS n FROM {cls.writes}').column("n")[0].as_py()
        failed = store.query(run, "SELECT count(*) AS n FROM errors WHERE stage = ?", [cls.name]).column("n")[0].as_py()
        assert report.inputs == table + failed > 0, (cls.name, report)


class _Actor:
    """Stands for an actor handle: `ready.remote()` is the ping the pool sends a lost actor."""

    class ready:  # noqa: N801  (the handle's method name)
        @staticmethod
        def remote():
            return "ping"


def test_of_the_batches_a_lost_actor_held_only_the_one_it_was_running_counts():
    from pipeline.pool import ActorPool
    from pipeline.runner import Batch

    pool = ActorPool([_Actor(), _Actor()])
    batches = [Batch([{"path": str(i)}]) for i in range(5)]
    for batch, actor in zip(batches, [0, 1, 0, 0, 1], strict=True):
        pool.sent(batch, actor)
    # Actor 0 died running batch 0; batches 2 and 3 were queued behind it. They come back in any order.
    pool.returned(batches[3])
    pool.unavailable(batches[3], RuntimeError("unavailable"))
    assert 0 in pool.down and not list(pool.settled([batches[0], batches[1], batches[2]]))  # its life is not over yet
    for batch in (batches[2], batches[0]):
        pool.returned(batch)
        pool.unavailable(batch, RuntimeError("unavailable"))
    settled = [(pool_batch.order, died) for pool_batch, _, died in pool.settled([batches[1], batches[4]])]
    assert settled == [(0, True), (2, False), (3, False)]
    assert pool.load == [0, 2] and pool.life == [1, 0]
    # A batch sent to its next life belongs to that one.
    pool.sent(batches[3], 0)
    assert batches[3].life == 1
