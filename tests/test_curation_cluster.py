"""`python -m pipeline stage NAME --run RUN` runs on a Ray cluster named by RAY_ADDRESS; without
RAY_ADDRESS the pipeline runs on a Ray of its own, even when a cluster runs on the machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GOLDEN, REAL, ROOT, Cluster, pipeline_cli, ray_head, subprocess_env

from manifests import store


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_head() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> Path:
    """A run whose probe ran here, on this process's own Ray."""
    src = tmp_path_factory.mktemp("cluster_src")
    shutil.copy(REAL / "bikes.mp4", src)
    shutil.copy(GOLDEN / "counter.mp4", src)
    run = tmp_path_factory.mktemp("cluster_run") / "run"
    local = pipeline_cli("curate", src, "--out", run, "--stages", "probe")
    assert local.code == 0, local.out + local.err
    assert store.read_table(run, "videos").num_rows == 2 and store.read_table(run, "scenes").num_rows == 0
    return run


def _drivers(cluster: Cluster) -> list[str]:
    return [p.name for p in cluster.logs.glob("python-core-driver-*.log")]


@pytest.mark.slow
def test_stage_runs_on_the_cluster_at_ray_address(ray_cluster, probed):
    stage = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "stage", "scenes", "--run", str(probed)],
        cwd=ROOT, env=subprocess_env(RAY_ADDRESS=ray_cluster.address), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = stage.communicate(timeout=300)
    assert stage.returncode == 0, out
    scenes = store.read_table(probed, "scenes").to_pylist()
    videos = store.read_table(probed, "videos").to_pylist()
    assert {s["video_id"] for s in scenes} == {v["video_id"] for v in videos}
    (bikes,) = [v["video_id"] for v in videos if Path(v["path"]).name == "bikes.mp4"]
    assert sorted(s["start_frame"] for s in scenes if s["video_id"] == bikes) == [0, 30, 76, 137, 187, 242]
    # It ran on that cluster: the stage's driver process left its log in the cluster's session.
    assert any(name.endswith(f"_{stage.pid}.log") for name in _drivers(ray_cluster)), (stage.pid, _drivers(ray_cluster))


@pytest.mark.slow
def test_without_ray_address_a_running_cluster_is_left_alone(ray_cluster, tmp_path):
    """A cluster someone started on this machine must not capture (or break) a local run."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(GOLDEN / "counter.mp4", src)
    run = tmp_path / "run"
    local = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "curate", str(src), "--out", str(run), "--stages", "probe"],
        cwd=ROOT, env=subprocess_env(RAY_TMPDIR=str(ray_cluster.tmpdir)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = local.communicate(timeout=300)
    assert local.returncode == 0, out[-3000:]
    assert store.read_table(run, "videos").num_rows == 1
    assert not any(name.endswith(f"_{local.pid}.log") for name in _drivers(ray_cluster))


def test_stage_on_a_folder_that_is_not_a_run_fails_clearly(tmp_path):
    result = pipeline_cli("stage", "scenes", "--run", tmp_path / "nothing")
    assert result.code == 2 and "not a run folder" in result.err
