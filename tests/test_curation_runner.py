"""The runner at scale: retries, dying workers, damaged parts, two processes on one run, compaction under kill -9."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import ray
import ray.cloudpickle
from conftest import REAL, ROOT, manifests_cli, pipeline_cli, subprocess_env

from manifests import files, store
from pipeline.config import load_config
from pipeline.runner import run_chain, start_ray
from stages.base import BadInput, Resources
from stages.probe import Probe
from stages.scenes import Scenes

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test stages below run in Ray workers


class DiesOnPoison(Probe):
    """A probe whose worker process exits on one input, as a segfault or an OOM kill would."""

    batch_size = 4

    def process(self, item):
        if "poison" in Path(item["path"]).name:
            os._exit(1)
        return [{"video_id": Path(item["path"]).stem, "path": item["path"], "bytes": 1}]


class FlakyOnce(Probe):
    """Fails with an OSError the first time it sees each input (a marker file remembers), BadInput for `bad`."""

    def process(self, item):
        path = Path(item["path"])
        if path.name.startswith("bad"):
            raise BadInput(f"{path}: bad on purpose")
        marker = path.with_suffix(".tried")
        if not marker.exists():
            marker.touch()
            raise OSError(5, "transient I/O error")
        return [{"video_id": path.stem, "path": item["path"], "bytes": 1}]


def _videos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def _config(src: Path):
    config = load_config(None, ["max_attempts=3"])
    config.src = str(src)
    return config


def test_a_worker_that_dies_on_one_input_does_not_hang_or_sink_the_others(tmp_path):
    src = _videos(tmp_path / "src", ["a.mp4", "b.mp4", "poison.mp4", "c.mp4", "d.mp4", "e.mp4"])
    run = tmp_path / "run"
    started = time.monotonic()
    (report,) = run_chain([DiesOnPoison], _config(src), run)
    assert time.monotonic() - started < 120
    done = store.read_table(run, "videos").column("video_id").to_pylist()
    assert done == ["a", "b", "c", "d", "e"]
    (error,) = store.read_table(run, "errors").to_pylist()
    assert error["key"].endswith("poison.mp4") and error["error_type"] == "worker_died"
    assert error["attempts"] == 3 and "the worker died 3 times on this input" in error["message"]
    assert report.rows == 5 and report.errors == 1


def test_a_transient_failure_is_retried_and_a_bad_input_is_not(tmp_path):
    src = _videos(tmp_path / "src", ["a.mp4", "bad.mp4"])
    run = tmp_path / "run"
    run_chain([FlakyOnce], _config(src), run)
    assert store.read_table(run, "videos").column("video_id").to_pylist() == ["a"]
    (error,) = store.read_table(run, "errors").to_pylist()
    assert error["key"].endswith("bad.mp4") and error["error_type"] == "bad_input" and error["attempts"] == 1


def test_a_truncated_part_is_quarantined_and_its_keys_recomputed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(REAL / name, src / name)
    run = tmp_path / "run"
    assert pipeline_cli("curate", src, "--out", run, "--stages", "probe").code == 0
    (part,) = store.parts(run, "videos")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    summary = manifests_cli("summary", run)
    assert summary.code == 0, summary.err
    assert "quarantined" in summary.out and (run / "quarantine" / "videos" / part.name).is_file()
    assert "videos             0 rows" in summary.out
    again = pipeline_cli("curate", src, "--out", run, "--stages", "probe")
    assert again.code == 0, again.out + again.err
    assert store.count(run, "videos") == 2


def test_a_second_curate_on_a_run_in_use_refuses_at_once(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from manifests.files import RunLock; import time\nwith RunLock({str(run)!r}):\n    print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "pipeline", "curate", str(REAL), "--out", str(run), "--stages", "probe"],
            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert time.monotonic() - started < 20
        assert second.returncode == 5 and f"pid {holder.pid}" in second.stderr, second.stderr
    finally:
        holder.kill()
        holder.wait()
    with files.RunLock(run):  # the holder died: its lock died with it
        pass


def _many_parts(run: Path, n_parts: int, rows: int) -> None:
    for p in range(n_parts):
        store.write_part(run, "errors", [
            {"stage": "probe", "key": f"/v/{p % 7}-{i}.mp4", "error_type": "bad_input", "message": f"part {p} " + "x" * 200, "attempts": 1}
            for i in range(rows)
        ])  # fmt: skip


def _kill_when(proc: subprocess.Popen, ready, timeout_s: float = 60) -> bool:
    """SIGKILL the process as soon as `ready()` holds; whether it was still running then."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.001)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL) if alive else None
    proc.wait()
    return alive


@pytest.mark.slow
def test_kill_during_compaction_loses_and_duplicates_nothing(tmp_path):
    expected_run = tmp_path / "expected"
    _many_parts(expected_run, 60, 2000)
    expected = store.read_table(expected_run, "errors")
    moments = {  # while the merged part is being written; right after it replaced its inputs' place
        "writing": lambda run: any((run / files.TMP).glob("*.parquet")),
        "renamed": lambda run: any("-z" in p.name for p in store.parts(run, "errors")),
    }
    killed = []
    for name, ready in moments.items():
        run = tmp_path / name
        shutil.copytree(expected_run, run)
        proc = subprocess.Popen([sys.executable, "-m", "manifests", "compact", str(run)], cwd=ROOT, env=subprocess_env())
        if _kill_when(proc, lambda: ready(run)):
            killed.append(name)
        assert store.read_table(run, "errors") == expected, name  # before any rerun: every row, once
        assert manifests_cli("compact", run).code == 0
        assert len(store.parts(run, "errors")) == 1 and store.read_raw(run, "errors").num_rows == expected.num_rows
        assert store.read_table(run, "errors") == expected, name
    assert "writing" in killed, "the kill must land while the merged part is written"


def test_withdrawn_rows_are_gone_and_the_others_read_as_before(tmp_path):
    run = tmp_path / "run"
    _many_parts(run, 3, 5)
    before = store.read_table(run, "errors").to_pylist()
    gone = pa.table({"key": [r["key"] for r in before if r["key"].startswith("/v/1-")]})
    assert gone.num_rows == 5
    assert store.withdraw(run, "errors", "key", gone) == 3
    assert store.read_table(run, "errors").to_pylist() == [r for r in before if r["key"] not in gone.column("key").to_pylist()]
    assert store.withdraw(run, "errors", "key", pa.table({"key": pa.array([], pa.string())})) == 0  # nothing to withdraw: no rewrite
    assert store.withdraw(run, "errors", "key", pa.table({"key": ["/v/0-0.mp4"]})) == 1  # one part is rewritten too
    assert len(store.read_table(run, "errors")) == len(before) - 6


def test_files_that_are_not_videos_are_counted_listed_and_can_be_let_in(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src / "bikes.mp4")
    (src / "notes.txt").write_text("shot list")
    shutil.copy(REAL / "grace_hopper.jpg", src / "poster.jpg")
    run = tmp_path / "run"
    result = pipeline_cli("curate", src, "--out", run, "--stages", "probe")
    assert result.code == 0, result.out + result.err  # skipped files are not failures
    (line,) = [line for line in result.out.splitlines() if line.split()[:1] == ["skipped"]]
    assert line.split()[1] == "2" and "not video files" in line
    skipped = store.read_table(run, "errors", where="error_type = 'not_video'").column("key").to_pylist()
    assert sorted(Path(k).name for k in skipped) == ["notes.txt", "poster.jpg"]
    wider = pipeline_cli("curate", src, "--out", tmp_path / "wider", "--stages", "probe", "--extensions", "mp4,txt")
    assert wider.code == 3  # the text file is now an input, and not a readable video
    (error,) = store.read_table(tmp_path / "wider", "errors", where="error_type = 'bad_input'").to_pylist()
    assert error["key"].endswith("notes.txt") and "not a readable video" in error["message"]


def test_videos_with_the_most_pixels_to_decode_are_cut_first(tmp_path):
    """The longest decode starts first, so it does not run alone at the end of the pass (the probe takes the largest files first)."""
    import pyarrow as pa

    from manifests import views
    from pipeline.runner import pending_sql
    from stages.scenes import Scenes

    sizes = {"short": (100, 640, 360), "long": (9000, 1280, 720), "big": (600, 1920, 1080)}
    store.write_part(tmp_path, "videos", [{"video_id": k, "path": f"/{k}.mp4", "n_frames": n, "width": w, "height": h} for k, (n, w, h) in sizes.items()])
    con = views.connect(tmp_path)
    con.register("_inflight", pa.table({"key": pa.array([], pa.string())}))
    sql = pending_sql(Scenes, load_config(None, [f"src={tmp_path}"]), ["scenes"], tmp_path, False)
    assert [row[0] for row in con.sql(f"SELECT video_id FROM ({sql})").fetchall()] == ["long", "big", "short"]


class CountsThreads(Probe):
    """A probe that names, in each video's id, the threads OpenCV and FFmpeg get in the task it runs in."""

    def process(self, item):
        import cv2

        from stages.video import open_video

        container, stream = open_video(item["path"])
        with container:
            threads = stream.codec_context.thread_count
        return [{"video_id": f"opencv{cv2.getNumThreads()}-ffmpeg{threads}", "path": item["path"], "bytes": 1}]


def test_a_cpu_task_decodes_and_runs_opencv_within_the_cores_it_was_given(tmp_path):
    """OpenCV's pool and FFmpeg's frame threads would each take every core of the machine, in every
    worker at once; a task of one CPU gets one OpenCV thread and one decode thread."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src / "bikes.mp4")
    run_chain([CountsThreads], _config(src), tmp_path / "run")
    assert store.read_table(tmp_path / "run", "videos").column("video_id").to_pylist() == ["opencv1-ffmpeg1"]


class SlowOnLarge(Probe):
    """One file a batch, the largest slower to probe than the others (as a long GOP's end check is)."""

    batch_size = 1

    def process(self, item):
        if Path(item["path"]).name == "large.mp4":
            time.sleep(2.0)
        return super().process(item)


class StartTimes(Scenes):
    """Writes when each video's scene pass started (in `params`), and nothing else; one task at a
    time (all the cluster's CPUs: set in the test), so the start order is the order it asked for."""

    def process(self, item):
        row = {"video_id": item["video_id"], "scene_index": 0, "clip_id": item["video_id"], "params": repr(time.monotonic())}
        return {"scenes": [row], "motion": []}


def test_the_scene_pass_waits_for_the_probes_first_round_so_the_largest_starts_first(tmp_path):
    """The probe's small batches come back first; a scene pass starting on them left the largest
    video to end the run alone. It asks once the probe's first round is back, costliest first."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "small.mp4")
    shutil.copy(ROOT / "tests/data/pyscenedetect/testvideo.mp4", src / "large.mp4")
    config = _config(src)
    start_ray(2)
    StartTimes.resources = Resources(cpus=ray.cluster_resources()["CPU"])
    run_chain([SlowOnLarge, StartTimes], config, tmp_path / "run")
    started = store.query(tmp_path / "run", "SELECT v.path, s.params FROM scenes s JOIN videos v USING (video_id)").to_pylist()
    assert [Path(r["path"]).name for r in sorted(started, key=lambda r: float(r["params"]))] == ["large.mp4", "small.mp4"]
