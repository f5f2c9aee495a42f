"""Clips hold exactly the source frames of their window, cut where the shots change."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from videos import decode_rgb

from manifests.store import read_table

BIKES_CUTS = [30, 76, 137, 187, 242]


def _gray(frames: list[np.ndarray], size=(192, 108), crop: tuple[slice, slice] | None = None) -> np.ndarray:
    out = []
    for image in frames:
        if crop is not None:
            image = image[crop]
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        out.append(cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32))
    return np.stack(out)


def _mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference of one frame against a stack of frames."""
    return np.abs(b - a[None]).mean(axis=(1, 2))


def _rows_for(run: Path, name: str) -> tuple[dict, list[dict], list[dict]]:
    (video,) = [v for v in read_table(run, "videos").to_pylist() if Path(v["path"]).name == name]
    scenes = [s for s in read_table(run, "scenes").to_pylist() if s["video_id"] == video["video_id"]]
    clips = [c for c in read_table(run, "clips").to_pylist() if c["video_id"] == video["video_id"]]
    return video, sorted(scenes, key=lambda r: r["start_frame"]), sorted(clips, key=lambda r: r["start_frame"])


def test_counter_clips_hold_exactly_their_source_frames(curated):
    """counter.mp4 shows its frame number on every frame: each clip frame must be the same-index
    source frame, clearly closer to it than to any neighbour."""
    video, scenes, clips = _rows_for(curated.run, "counter.mp4")
    assert [(s["start_frame"], s["end_frame"]) for s in scenes] == [(0, 20), (20, 30)]
    assert [(c["start_frame"], c["end_frame"]) for c in clips] == [(0, 20), (20, 30)]
    text = (slice(780, 1080), slice(1260, 1920))  # the "Frame = N / PTS = t" label, bottom right
    source = _gray(decode_rgb(video["path"]), crop=text)
    assert len(source) == 30
    for clip in clips:
        frames = decode_rgb(curated.run / clip["path"])
        assert len(frames) == clip["n_frames"] == clip["end_frame"] - clip["start_frame"]
        assert (frames[0].shape[1], frames[0].shape[0]) == (clip["width"], clip["height"]) == (1920, 1080)
        for j, image in enumerate(_gray(frames, crop=text)):
            distance = _mad(image, source)
            want = clip["start_frame"] + j
            assert int(np.argmin(distance)) == want, f"clip frame {j} of {clip['start_frame']}..{clip['end_frame']}"
            others = np.delete(distance, want)
            assert distance[want] < 0.5 * others.min(), (want, distance[want], others.min())


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "goldeneye-vfr-drop3.mp4", "fades.mp4"])
def test_every_clip_decodes_to_its_window(curated, name):
    """Every clip file decodes, has its row's frame count, and each frame is the source frame of the
    same index (nearest among its neighbours where neighbours differ visibly), also for VFR."""
    video, scenes, clips = _rows_for(curated.run, name)
    assert clips and [c["clip_id"] for c in clips] == [s["clip_id"] for s in scenes]
    source = _gray(decode_rgb(video["path"]))
    assert len(source) == video["n_frames"]
    for clip in clips:
        frames = decode_rgb(curated.run / clip["path"])
        assert len(frames) == clip["n_frames"] == clip["end_frame"] - clip["start_frame"] > 0
        gray = _gray(frames)
        for j, image in enumerate(gray):
            want = clip["start_frame"] + j
            lo, hi = max(0, want - 3), min(len(source), want + 4)
            distance = _mad(image, source[lo:hi])
            assert distance[want - lo] < 3.0, (name, want, distance)  # encoding error only
            neighbours = [k for k in range(lo, hi) if k != want and _mad(source[want], source[k : k + 1])[0] > 2.0]
            assert all(distance[want - lo] < distance[k - lo] for k in neighbours), (name, want, distance)


def test_bikes_clips_follow_the_real_cuts(curated):
    video, scenes, clips = _rows_for(curated.run, "bikes.mp4")
    starts = [s["start_frame"] for s in scenes]
    assert len(starts) == 6
    assert all(abs(a - b) <= 1 for a, b in zip(starts, [0, *BIKES_CUTS])), starts
    assert scenes[-1]["end_frame"] == video["n_frames"] == 250
    assert [(c["start_frame"], c["end_frame"]) for c in clips] == [(s["start_frame"], s["end_frame"]) for s in scenes]
    # No clip holds frames from both sides of a cut: inside a clip, no frame-to-frame jump is as
    # large as the jumps at the cuts (about 50-85 grey levels here, other changes stay below 25).
    for clip in clips:
        gray = _gray(decode_rgb(curated.run / clip["path"]))
        assert len(gray) == clip["n_frames"]
        jumps = np.abs(np.diff(gray, axis=0)).mean(axis=(1, 2))
        assert jumps.max() < 35, (clip["start_frame"], clip["end_frame"], jumps.max())
    # ...and the cuts really are there: the last frame of a clip and the first of the next differ like a cut.
    lasts = [_gray(decode_rgb(curated.run / c["path"])[-1:])[0] for c in clips]
    for clip, before in zip(clips[1:], lasts[:-1]):
        after = _gray(decode_rgb(curated.run / clip["path"])[:1])[0]
        assert np.abs(after - before).mean() > 40


def test_clip_rows_match_files(curated):
    clips = read_table(curated.run, "clips").to_pylist()
    scenes = read_table(curated.run, "scenes").to_pylist()
    assert len(clips) == len(scenes) == 13  # KEEP_ALL keeps every window
    on_disk = {p.relative_to(curated.run).as_posix() for p in (curated.run / "clips").rglob("*") if p.is_file()}
    assert on_disk == {c["path"] for c in clips}
    for clip in clips:
        assert clip["path"] == f"clips/{clip['video_id']}/{clip['clip_id']}.mp4"
        assert (curated.run / clip["path"]).stat().st_size == clip["bytes"]
