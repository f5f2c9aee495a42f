"""`python -m pipeline stage NAME --run RUN` runs on a Ray cluster named by RAY_ADDRESS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import GOLDEN, REAL, ROOT, pipeline_cli, subprocess_env

from manifests import store

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A one-node cluster of its own (own temp dir, own process group), stopped by its pids only:
    `ray stop --force` would also stop every other Ray on this machine."""
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp)],
        env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, (temp / "head.log").read_text()
            status = subprocess.run([str(RAY), "status", "--address", address], env=subprocess_env(), capture_output=True, text=True)
            if status.returncode == 0 and "CPU" in status.stdout:
                break
            assert time.monotonic() < deadline, status.stdout + status.stderr
            time.sleep(1)
        yield address, temp
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_stage_runs_on_the_cluster_at_ray_address(ray_cluster, tmp_path):
    address, temp = ray_cluster
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src)
    shutil.copy(GOLDEN / "counter.mp4", src)
    run = tmp_path / "run"
    local = pipeline_cli("curate", src, "--out", run, "--stages", "probe")  # this process's own Ray
    assert local.code == 0, local.out + local.err
    assert store.read_table(run, "videos").num_rows == 2 and store.read_table(run, "scenes").num_rows == 0

    stage = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "stage", "scenes", "--run", str(run)],
        cwd=ROOT, env=subprocess_env(RAY_ADDRESS=address), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = stage.communicate(timeout=300)
    assert stage.returncode == 0, out
    scenes = store.read_table(run, "scenes").to_pylist()
    assert {s["video_id"] for s in scenes} == {v["video_id"] for v in store.read_table(run, "videos").to_pylist()}
    bikes = sorted(s["start_frame"] for s in scenes if s["video_id"] in _ids(run, "bikes.mp4"))
    assert bikes == [0, 30, 76, 137, 187, 242]
    # It ran on that cluster: the stage's driver process left its log in the cluster's session.
    logs = temp / "session_latest" / "logs"
    drivers = [p.name for p in logs.glob("python-core-driver-*.log")]
    assert any(name.endswith(f"_{stage.pid}.log") for name in drivers), (stage.pid, drivers)


def _ids(run: Path, name: str) -> set[str]:
    return {v["video_id"] for v in store.read_table(run, "videos").to_pylist() if Path(v["path"]).name == name}


def test_stage_on_a_folder_that_is_not_a_run_fails_clearly(tmp_path):
    result = pipeline_cli("stage", "scenes", "--run", tmp_path / "nothing")
    assert result.code == 2 and "not a run folder" in result.err
