"""Model stages on a cluster with GPUs (declared, so models run on CPU: CINEMA_DEVICE=cpu): the
placement plan gives them GPUs unasked, all of them at once, and an actor that dies is restarted
while its inputs go on on the others."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
from conftest import REAL, ray_head
from learned_fixtures import tiny_models  # noqa: F401  (fixture)

from manifests import store
from pipeline.config import load_config
from pipeline.placement import needs, plan
from pipeline.runner import run_chain, stop_ray
from stages.aesthetic import Aesthetic
from stages.base import Resources
from stages.caption import Caption
from stages.clips import Clips
from stages.probe import Probe
from stages.scenes import Scenes
from stages.screen import Screen
from stages.subjects import Subjects

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test stages below run in Ray workers


@pytest.fixture(scope="module")
def gpu_cluster():
    """This process's driver joins a local cluster of 2 CPUs and 2 declared GPUs, then goes back to its own Ray."""
    with ray_head("--num-gpus", "2", CINEMA_DEVICE="cpu") as cluster:
        stop_ray()
        os.environ["RAY_ADDRESS"] = cluster.address
        try:
            yield cluster
        finally:
            stop_ray()
            del os.environ["RAY_ADDRESS"]


def _gpus_seen(stage):
    """Record which GPUs Ray gave this actor (test-only: the real stages just load on them)."""
    folder = stage.run_dir / "gpu_ids"
    folder.mkdir(exist_ok=True)
    (folder / f"{stage.name}-{os.getpid()}.json").write_text(json.dumps(ray.get_gpu_ids()))


class SeenAesthetic(Aesthetic):
    def setup(self):
        _gpus_seen(self)
        super().setup()


class SeenCaption(Caption):
    def setup(self):
        _gpus_seen(self)
        super().setup()


class SeenSubjects(Subjects):
    def setup(self):
        _gpus_seen(self)
        super().setup()


class LastSourceWaits(Scenes):
    """The last source's scene pass waits until subjects wrote (6 minutes at most: the machine may
    be busy): every model stage before subjects then still has windows to do after subjects began,
    which only a plan that runs all model stages at once can do. It reserves almost no CPU while
    it waits: of the cluster's 2 CPUs the GPU actors reserve about one, and `clips` needs the other."""

    resources = Resources(cpus=0.01)

    def process(self, item):
        if item["path"].endswith("zz-last.mp4"):
            deadline = time.monotonic() + 360
            while not store.parts(self.run_dir, "subjects") and time.monotonic() < deadline:
                time.sleep(0.5)
        return super().process(item)


@pytest.mark.slow
def test_a_tiny_chain_runs_every_model_stage_on_the_gpus_at_once(gpu_cluster, tiny_models, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src / "a.mp4")
    shutil.copy(REAL / "carphone_pristine.mp4", src / "zz-last.mp4")
    classes = [Probe, LastSourceWaits, SeenAesthetic, Screen, Clips, SeenCaption, SeenSubjects]
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}", "filter.min_duration_s=0.5", "filter.min_motion=0"])
    config.src, config.stages = str(src), [c.name for c in classes]
    assert all(getattr(config, name).gpus is None for name in ["aesthetic", "caption", "subjects"])  # nothing set
    run = tmp_path / "run"
    reports = {r.stage: r for r in run_chain(classes, config, run)}
    models = ["aesthetic", "screen", "caption", "subjects"]
    assert all(reports[name].rows > 0 for name in models), reports
    # Every model stage had its actors at the same time: their first and last results overlap.
    assert max(reports[name].first_result_s for name in models) < min(reports[name].last_result_s for name in models), reports
    # Given GPUs unasked: one actor of each GPU stage on each of the 2 GPUs; screen on CPUs.
    seen: dict[str, list[int]] = {}
    for record in (run / "gpu_ids").iterdir():
        seen.setdefault(record.stem.split("-")[0], []).extend(json.loads(record.read_text()))
    assert {name: sorted(ids) for name, ids in seen.items()} == {name: [0, 1] for name in ["aesthetic", "caption", "subjects"]}
    assert reports["screen"].actors == 1 and all(reports[name].actors == 2 for name in ["aesthetic", "caption", "subjects"])
    # The plan asked for no more than the cluster has.
    asked = plan(needs(classes, config), 2, 2)
    assert sum(b["GPU"] for b in asked.bundles) <= 2 and sum(b["CPU"] for b in asked.bundles) <= 2


class DyingModel(Probe):
    """A model stage whose actor exits, after a moment's work, on `h-once.mp4` the first time (a
    segfault, a GPU reset) and on `b-poison.mp4` every time."""

    resources = Resources(cpus=1.0, uses_model=True, gpu_memory_gb=1)
    batch_size = 2

    def process(self, item):
        path = Path(item["path"])
        marker = path.with_suffix(".died")
        if path.name == "b-poison.mp4" or (path.name == "h-once.mp4" and not marker.exists()):
            marker.touch()
            time.sleep(0.3)
            os._exit(1)
        return [{"video_id": path.stem, "path": item["path"], "bytes": 1}]


@pytest.mark.slow
def test_an_actor_that_dies_is_restarted_and_its_inputs_go_on_on_the_others(gpu_cluster, tmp_path):
    names = [f"{letter}.mp4" for letter in "abcdefghij"] + ["h-once.mp4", "b-poison.mp4"]
    src = tmp_path / "src"
    src.mkdir()
    for name in names:
        (src / name).write_bytes(b"x")
    config = load_config(None, ["max_attempts=2"])  # an input queued behind two deaths must not fail
    config.src = str(src)
    run = tmp_path / "run"
    (report,) = run_chain([DyingModel], config, run)
    done = sorted(store.read_table(run, "videos").column("video_id").to_pylist())
    assert done == sorted(Path(name).stem for name in names if name != "b-poison.mp4")  # `h-once` too: rows, not worker_died
    (error,) = store.read_table(run, "errors").to_pylist()  # only the input that kills every actor it meets
    assert error["key"].endswith("b-poison.mp4") and error["error_type"] == "worker_died" and error["attempts"] == 2
    assert report.actors == 2 and report.rows == len(names) - 1
