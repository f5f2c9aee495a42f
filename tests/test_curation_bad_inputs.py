"""Bad input gives one clear error row each; nothing else is lost and the run goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import KEEP_ALL, REAL, ROOT, CliResult, manifests_cli, pipeline_cli, subprocess_env
from videos import decode_rgb, marked_frames, moving_square, textured, write_audio_only, write_video

from manifests import store

WEIRD_NAME = "it's \"a\" vidéo ü.mp4"


def _faststart(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """An MP4 with its index first (as web video is), so half of it still opens."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@dataclass
class BadRun:
    src: Path
    run: Path
    result: CliResult
    bad: dict[str, tuple[str, ...]]  # error key -> words its message must hold


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory) -> BadRun:
    src = tmp_path_factory.mktemp("bad") / "src"
    src.mkdir()
    (src / "empty.mp4").touch()
    _cut_in_half(REAL / "bikes.mp4", src / "truncated.mp4")  # index at the end: does not open
    full = _faststart(src.parent / "full.mp4", [np.roll(textured(96, 128, seed=5), 3 * i, axis=1) for i in range(100)])
    _cut_in_half(full, src / "truncated_faststart.mp4")  # index first: opens, half the frames decode
    (src / "notes.mp4").write_text("these are not the videos you are looking for\n")
    write_audio_only(src / "audio_only.mp4")
    write_video(src / "one_frame.mp4", moving_square(1), fps=25)
    # good ones
    write_video(src / "good.mp4", moving_square(40, step=3), fps=20)
    upright = marked_frames(20)
    write_video(src / "rotated.mp4", [np.rot90(f, -1) for f in upright], fps=10, rotation=90)
    gaps = [3000 if i % 3 else 9000 for i in range(29)]  # 1/30 s, 1/30 s, 1/10 s, ...
    write_video(src / "vfr.mp4", moving_square(30, step=2, size=32), fps=25, pts=np.cumsum([0, *gaps]))
    sub = src / "sub dir"
    sub.mkdir()
    write_video(sub / WEIRD_NAME, moving_square(30, step=4, size=20), fps=15)
    # links that loop: a folder link to its own parent, a file link to itself
    os.symlink("..", sub / "loop")
    os.symlink("self.mp4", src / "self.mp4")
    bad = {
        str(src / "empty.mp4"): ("empty",),
        str(src / "truncated.mp4"): ("truncated",),
        str(src / "truncated_faststart.mp4"): ("truncated",),
        str(src / "notes.mp4"): ("not a readable video",),
        str(src / "audio_only.mp4"): ("no video stream",),
        str(src / "one_frame.mp4"): ("1 frame",),
        str(sub / "loop"): ("symlink loop",),
        str(src / "self.mp4"): ("cannot read", "symbolic links"),
    }
    run = src.parent / "run"
    result = pipeline_cli("curate", src, "--out", run, *KEEP_ALL)
    return BadRun(src, run, result, bad)


def _videos_by_name(run: Path) -> dict[str, dict]:
    return {Path(v["path"]).name: v for v in store.read_table(run, "videos").to_pylist()}


def test_each_bad_input_has_one_clear_error_row(bad_run):
    errors = store.read_table(bad_run.run, "errors").to_pylist()
    by_key = {}
    for row in errors:
        assert row["key"] not in by_key, f"two error rows for {row['key']}"
        by_key[row["key"]] = row
    assert set(by_key) == set(bad_run.bad), errors
    for key, words in bad_run.bad.items():
        row = by_key[key]
        assert row["stage"] == "probe" and row["error_type"] == "bad_input"
        for word in words:
            assert word in row["message"], row
        assert Path(key).name in row["message"]  # says which file


def test_run_goes_on_and_reports_failures(bad_run):
    result = bad_run.result
    assert result.code == 3, result.out + result.err
    n_bad = len(bad_run.bad)
    assert any(line.split()[:2] == ["failed", str(n_bad)] for line in result.out.splitlines()), result.out
    assert f"{n_bad} input(s) failed" in result.err
    videos = _videos_by_name(bad_run.run)
    assert set(videos) == {"good.mp4", "rotated.mp4", "vfr.mp4", WEIRD_NAME}
    clips = store.read_table(bad_run.run, "clips").to_pylist()
    assert {c["video_id"] for c in clips} == {v["video_id"] for v in videos.values()}
    for clip in clips:
        assert len(decode_rgb(bad_run.run / clip["path"])) == clip["n_frames"] > 0


def test_weird_names_work_end_to_end(bad_run):
    video = _videos_by_name(bad_run.run)[WEIRD_NAME]
    assert video["path"] == str(bad_run.src / "sub dir" / WEIRD_NAME)
    assert video["n_frames"] == 30
    (clip,) = [c for c in store.read_table(bad_run.run, "clips").to_pylist() if c["video_id"] == video["video_id"]]
    assert clip["n_frames"] == 30 and len(decode_rgb(bad_run.run / clip["path"])) == 30
    shown = manifests_cli("sql", bad_run.run, "SELECT count(*) AS n FROM candidates WHERE video_path LIKE '%vidéo ü.mp4'")
    assert shown.code == 0 and shown.out.split() == ["n", "1"], shown.out


def test_rotated_video_gives_upright_clip(bad_run):
    video = _videos_by_name(bad_run.run)["rotated.mp4"]
    assert video["rotation"] == 90 and (video["width"], video["height"]) == (96, 64)  # as stored
    (clip,) = [c for c in store.read_table(bad_run.run, "clips").to_pylist() if c["video_id"] == video["video_id"]]
    assert (clip["width"], clip["height"]) == (64, 96)  # upright
    frames = decode_rgb(bad_run.run / clip["path"])
    assert len(frames) == 20 and frames[0].shape == (96, 64, 3)
    upright = marked_frames(20)
    for image, want in zip(frames, upright):
        assert np.abs(image.astype(int) - want).mean() < 4
        assert image[:24, :16].mean() > 200 and image[-24:, -16:].mean() < 120  # white block top left


def test_vfr_video_clip_is_frame_exact(bad_run):
    video = _videos_by_name(bad_run.run)["vfr.mp4"]
    assert video["vfr"] and video["n_frames"] == 30
    scenes = [s for s in store.read_table(bad_run.run, "scenes").to_pylist() if s["video_id"] == video["video_id"]]
    clips = {c["clip_id"]: c for c in store.read_table(bad_run.run, "clips").to_pylist()}
    source = np.stack(decode_rgb(video["path"])).astype(np.float32)
    assert sum(s["n_frames"] for s in scenes) == 30
    for scene in scenes:
        clip = clips[scene["clip_id"]]
        frames = decode_rgb(bad_run.run / clip["path"])
        assert len(frames) == clip["n_frames"] == scene["end_frame"] - scene["start_frame"]
        for j, image in enumerate(frames):
            distance = np.abs(source - image[None].astype(np.float32)).mean(axis=(1, 2, 3))
            assert int(np.argmin(distance)) == scene["start_frame"] + j
        # times come from pts: frame k starts at the sum of the gaps before it (90 kHz clock)
        assert scene["start_s"] == pytest.approx(sum([0, *[3000 if i % 3 else 9000 for i in range(29)]][: scene["start_frame"] + 1]) / 90000, abs=1e-6)


def test_missing_src_fails_at_once(tmp_path):
    run = tmp_path / "run"
    missing = tmp_path / "no such folder"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "curate", str(missing), "--out", str(run)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2
    assert "SRC does not exist" in done.stderr and str(missing) in done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 10, seconds
    assert not run.exists() and not (ROOT / "runs" / "no such folder").exists()
    inproc = pipeline_cli("curate", missing)
    assert inproc.code == 2 and inproc.seconds < 1
    assert not (ROOT / "runs" / "no such folder").exists()
