"""Shared fixtures: one Ray session for the whole test run, and curated runs built once per session."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "pyscenedetect"
REAL = DATA / "real"
sys.path.insert(0, str(Path(__file__).parent))  # tests/videos.py

# The curation core these tests cover (the learned stages need model weights).
CORE_STAGES = ["--stages", "probe,scenes,motion,clips"]
# Keep every window of the sample footage: short shots, still shots and small frames included.
KEEP_ALL = [
    *CORE_STAGES,
    "--set", "filter.min_duration_s=0.2",
    "--set", "filter.min_motion=0",
    "--set", "filter.max_motion=100000",
    "--set", "filter.min_short_side=0",
    "--set", "filter.min_frame_rate=0",
    "--set", "filter.min_bpp=0",
    "--set", "filter.min_residual_px=0",
    "--set", "filter.min_sharpness=0",
]
# The shared run's sources: two real videos and three of the golden suite (goldeneye is VFR).
SHARED_SOURCES = [
    REAL / "bikes.mp4",
    REAL / "carphone_pristine.mp4",
    GOLDEN / "counter.mp4",
    GOLDEN / "fades.mp4",
    GOLDEN / "goldeneye-vfr-drop3.mp4",
]


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    seconds: float


def run_cli(module_main, argv: list[str]) -> CliResult:
    """Run a `main(argv)` in this process (reusing its Ray session), capturing what it prints."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module_main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return CliResult(code, out.getvalue(), err.getvalue(), time.perf_counter() - started)


def pipeline_cli(*argv) -> CliResult:
    from pipeline.__main__ import main

    return run_cli(main, list(argv))


def manifests_cli(*argv) -> CliResult:
    from manifests.__main__ import main

    return run_cli(main, list(argv))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def session_pids(sid: int) -> list[int]:
    """Live processes of a session this test run started (Ray puts its workers in groups of their own)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    rows = (line.split() for line in out.splitlines())
    return [int(pid) for pid, s, stat in rows if int(s) == sid and not stat.startswith("Z")]


def kill_session(proc: subprocess.Popen, first: signal.Signals = signal.SIGKILL, grace_s: float = 10.0) -> None:
    """Stop a process started with start_new_session=True and everything it started, by pid."""
    try:
        os.killpg(proc.pid, first)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(100):
        left = session_pids(proc.pid)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    proc.wait(timeout=10)


RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    tmpdir: Path  # RAY_TMPDIR: where this cluster, and only it, is found by `ray.init()`
    logs: Path  # the cluster's session logs: every driver that connects leaves a log here


@contextlib.contextmanager
def ray_head(*args: str, **env: str) -> Iterator[Cluster]:
    """A one-node cluster (`ray start --head --num-cpus 2` and `args`; its workers see `env`) in a
    temp dir of its own (RAY_TMPDIR), so no other Ray on this machine finds it; stopped by the pids
    of its own session: `ray stop --force` would stop every Ray here."""
    tmpdir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = open(tmpdir / "head.log", "w")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats", *args],
        env=subprocess_env(RAY_TMPDIR=str(tmpdir), **env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, (tmpdir / "head.log").read_text()
            status = subprocess.run(
                [str(RAY), "status", "--address", address], env=subprocess_env(RAY_TMPDIR=str(tmpdir)), capture_output=True, text=True
            )
            if status.returncode == 0 and "CPU" in status.stdout:
                break
            assert time.monotonic() < deadline, status.stdout + status.stderr
            time.sleep(1)
        yield Cluster(address, tmpdir, (tmpdir / "ray" / "session_latest").resolve() / "logs")
    finally:
        kill_session(head, first=signal.SIGTERM, grace_s=5)  # `ray start --block` stops what it started
        log.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def ray_session():
    """Stages started in this process share one embedded Ray; shut it down at the end."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="session")
def shared_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for path in SHARED_SOURCES:
        shutil.copy(path, src / path.name)
    return src


@dataclass
class Curated:
    src: Path
    run: Path
    result: CliResult


@pytest.fixture(scope="session")
def curated(shared_src, tmp_path_factory) -> Curated:
    """The whole chain over the shared sources, uninterrupted, keeping every window as a clip."""
    run = tmp_path_factory.mktemp("curated") / "run"
    result = pipeline_cli("curate", shared_src, "--out", run, *KEEP_ALL)
    assert result.code == 0, result.out + result.err
    return Curated(shared_src, run, result)
