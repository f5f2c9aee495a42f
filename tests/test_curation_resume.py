"""Kill -9 a curation run midway, rerun it: the tables equal those of an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import KEEP_ALL, ROOT, kill_session, pipeline_cli, subprocess_env

from manifests import files, store
from manifests.schemas import TABLES


def _rows(run: Path, table: str) -> list[dict]:
    return store.read_table(run, table).to_pylist()


def _assert_complete_and_clean(run: Path) -> None:
    assert not (run / files.TMP).exists() or not list((run / files.TMP).iterdir()), "temporary files left behind"
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
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if len(store.parts(run, "clips")) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no clips were written in time"
    finally:
        kill_session(proc)
    done_before = len(_rows(run, "clips"))
    expected = _rows(curated.run, "clips")
    assert 2 <= done_before < len(expected), "the kill must land while clips are being written"

    result = pipeline_cli("curate", curated.src, "--out", run, *KEEP_ALL)
    assert result.code == 0, result.out + result.err
    assert "probe: nothing to do" in result.out  # scenes may still have been running: stages overlap
    assert "clips: nothing to do" not in result.out

    _assert_complete_and_clean(run)
    _assert_complete_and_clean(curated.run)
    for table, spec in TABLES.items():
        if table == "stage_runs":  # a log of the commands that ran, not curated data
            continue
        resumed, uninterrupted = _rows(run, table), _rows(curated.run, table)
        assert [tuple(r[k] for k in spec.key) for r in resumed] == [tuple(r[k] for k in spec.key) for r in uninterrupted], table
        if table == "clips":  # x264 output is not byte-reproducible from run to run; the frames are
            resumed = [{**r, "bytes": None} for r in resumed]
            uninterrupted = [{**r, "bytes": None} for r in uninterrupted]
        assert resumed == uninterrupted, f"{table}: rows differ after resume"
    assert len(_rows(run, "clips")) == 13 and not _rows(run, "errors")
    for clip in _rows(run, "clips"):
        assert (run / clip["path"]).stat().st_size == clip["bytes"]
        ours, theirs = _first_frame_and_count(run / clip["path"]), _first_frame_and_count(curated.run / clip["path"])
        assert ours[1] == theirs[1] == clip["n_frames"]
        assert np.abs(ours[0] - theirs[0]).mean() < 1.0, clip["path"]


def _first_frame_and_count(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="gray").astype(np.float32)
        container.seek(0)
        count = sum(1 for packet in container.demux(video=0) if packet.size)
    return first, count


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
    # About 5 s here, most of it Python imports; the limit leaves room for a loaded machine.
    assert seconds < 15, f"a rerun with nothing to do took {seconds:.1f} s"
    (reported,) = [float(line.split()[1]) for line in done.stdout.splitlines() if line.split()[:1] == ["time"]]
    assert reported < 5, done.stdout
    assert {p: p.stat().st_mtime_ns for p in (curated.run / "manifests").rglob("*.parquet")} == parts_before
