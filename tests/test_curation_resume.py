"""Kill -9 a curation run midway, rerun it: the tables equal those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import KEEP_ALL, ROOT, pipeline_cli, subprocess_env

from manifests import store
from manifests.schemas import TABLES


def _session_pids(sid: int) -> list[int]:
    """Processes still alive in the session that a killed run started in."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s, stat in (line.split() for line in out.splitlines()) if int(s) == sid and not stat.startswith("Z")]


def _kill_session(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for _ in range(50):  # anything of that run that left the process group, by pid
        left = _session_pids(proc.pid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _rows(run: Path, table: str) -> list[dict]:
    return store.read_table(run, table).to_pylist()


def _assert_complete_and_clean(run: Path) -> None:
    assert not [p for p in run.rglob(f"{store.TMP_PREFIX}*")], "temporary files left behind"
    for table, spec in TABLES.items():
        raw = store.read_raw(run, table)
        keys = list(zip(*(raw.column(k).to_pylist() for k in spec.key)))
        assert len(keys) == len(set(keys)), f"{table}: a key was written twice"
    clips = _rows(run, "clips")
    on_disk = {p.relative_to(run).as_posix() for p in (run / "clips").rglob("*") if p.is_file()}
    assert on_disk == {c["path"] for c in clips}, "orphan clip files or rows without a file"


@pytest.mark.slow
def test_kill_and_rerun_gives_the_tables_of_an_uninterrupted_run(curated, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "killed.log"
    command = [sys.executable, "-m", "pipeline", "curate", str(curated.src), "--out", str(run), *KEEP_ALL]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    clip_parts = run / "manifests" / "clips"
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(clip_parts.glob("part-*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no clips were written in time"
    finally:
        _kill_session(proc)
    done_before = len(_rows(run, "clips"))
    expected = _rows(curated.run, "clips")
    assert 2 <= done_before < len(expected), "the kill must land while clips are being written"

    result = pipeline_cli("curate", curated.src, "--out", run, *KEEP_ALL)
    assert result.code == 0, result.out + result.err
    assert "probe: nothing to do" in result.out and "scenes: nothing to do" in result.out
    assert "clips: nothing to do" not in result.out

    _assert_complete_and_clean(run)
    _assert_complete_and_clean(curated.run)
    for table, spec in TABLES.items():
        resumed, uninterrupted = _rows(run, table), _rows(curated.run, table)
        assert [tuple(r[k] for k in spec.key) for r in resumed] == [tuple(r[k] for k in spec.key) for r in uninterrupted], table
        assert resumed == uninterrupted, f"{table}: rows differ after resume"
    assert len(_rows(run, "clips")) == 13 and not _rows(run, "errors")


@pytest.mark.slow
def test_rerun_of_a_finished_run_does_nothing_quickly(curated):
    """The same command again, as a fresh process: no stage has work, it says so within seconds."""
    parts_before = {p: p.stat().st_mtime_ns for p in (curated.run / "manifests").rglob("*.parquet")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "curate", str(curated.src), "--out", str(curated.run)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in ("probe", "scenes", "motion", "clips"):  # the run's config.yaml keeps its stages
        assert f"{stage}: nothing to do" in done.stdout
    assert "nothing to do: every stage was already complete" in done.stdout
    assert seconds < 10, f"a rerun with nothing to do took {seconds:.1f} s"
    assert {p: p.stat().st_mtime_ns for p in (curated.run / "manifests").rglob("*.parquet")} == parts_before
