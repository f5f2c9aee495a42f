"""scenes: shot boundaries with PySceneDetect's detectors on our own decode, cut into clip windows.

Frames reach the detector exactly as PySceneDetect's own PyAV path gives them (bgr24, the same
automatic downscale and interpolation, pts-based timecodes), so its golden cuts reproduce; what we
add is exact frame indices and pts for every boundary, so later stages decode the same frames.
"""

from __future__ import annotations

import bisect
import json
import math
import uuid
from typing import Any, Literal

import cv2
import scenedetect
from scenedetect.common import FrameTimecode, Timecode
from scenedetect.scene_manager import compute_downscale_factor

from stages.base import BadInput, Row, Stage, StageConfig
from stages.motion import MotionConfig, motion_row
from stages.video import MotionGrid, decode, open_video, prefetch

CLIP_NAMESPACE = uuid.UUID("6f1c5b0e-3d7a-5c8e-9a41-2b7e0c9d4f10")

DETECTORS = {
    "adaptive": scenedetect.AdaptiveDetector,
    "content": scenedetect.ContentDetector,
    "threshold": scenedetect.ThresholdDetector,
    "hash": scenedetect.HashDetector,
    "histogram": scenedetect.HistogramDetector,
}


class ScenesConfig(StageConfig):
    detector: Literal["adaptive", "content", "threshold", "hash", "histogram"] = "adaptive"
    params: dict[str, Any] = {}  # keyword arguments of the detector class, e.g. {"adaptive_threshold": 3.0}
    max_clip_s: float = 10.0  # longer shots are cut into equal windows no longer than this


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    return str(uuid.uuid5(CLIP_NAMESPACE, f"{video_id}:{start_frame}:{end_frame}"))


def _detector_frames(stream, container, factor: float, size: tuple[int, int], grid: MotionGrid | None):
    """(pts from the stream start, time base, bgr24 image) exactly as PySceneDetect prepares them."""
    start = stream.start_time or 0
    for frame in decode(container, stream):
        if grid is not None:
            grid.add(frame)
        image = frame.to_ndarray(format="bgr24")
        if factor > 1.0:
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        yield frame.pts - start, frame.time_base, image


def detect_cuts(
    path: str, detector_name: str, params: dict[str, Any], motion: MotionConfig | None = None
) -> tuple[list[int], list[int], list[float], MotionGrid | None]:
    """Indices of the frames that start a new shot, the pts and seconds from the stream start of
    every frame, and (given a motion config) the motion grid frames collected in the same decode."""
    detector = DETECTORS[detector_name](**params)
    container, stream = open_video(path)
    with container:
        grid = None
        if motion is not None:
            grid = MotionGrid(motion.sample_fps, motion.size(stream.width, stream.height), stream.start_time or 0, stream.time_base)
        rate = stream.guessed_rate or stream.average_rate
        start = stream.start_time or 0
        factor = compute_downscale_factor(stream.width)
        size = (max(1, round(stream.width / factor)), max(1, round(stream.height / factor)))
        pts_list: list[int] = []
        cut_s: list[float] = []
        timecode = None
        for pts, time_base, image in prefetch(_detector_frames(stream, container, factor, size, grid)):
            timecode = FrameTimecode(Timecode(pts=pts, time_base=time_base), fps=rate)
            pts_list.append(pts)
            cut_s += [c.seconds for c in detector.process_frame(timecode, image)]
        if timecode is not None:
            cut_s += [c.seconds for c in detector.post_process(timecode)]
        # Detectors report a cut as a time (some as a frame number at the average rate): it
        # starts at the first frame shown at or after that time.
        times = [float(p * stream.time_base) for p in pts_list]
    cuts = sorted({bisect.bisect_left(times, s - 1e-6) for s in cut_s} - {0, len(times)})
    return cuts, [p + start for p in pts_list], times, grid


def windows(start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    """[start, end) in the fewest equal windows of at most max_frames."""
    count = max(1, math.ceil((end - start) / max_frames))
    bounds = [start + round(i * (end - start) / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class Scenes(Stage):
    """With `motion` in the chain, the same decode also scores the motion of every window it cuts."""

    name = "scenes"
    reads = "videos"
    writes = "scenes"
    input_key = "video_id"
    fuses = ("motion",)
    Config = ScenesConfig

    def process(self, item: Row) -> dict[str, list[Row]]:
        cfg = self.config
        motion = self.fused.get("motion")
        # Times come from pts, not index / fps: the two differ for variable frame rate video.
        cuts, pts, seconds, grid = detect_cuts(item["path"], cfg.detector, cfg.params, motion)
        n = len(pts)
        if n < 2:
            raise BadInput(f"{item['path']}: only {n} frame(s) decode; a clip needs at least 2")
        fps = float(item["fps"])
        bounds = [0, *cuts, n]
        seconds.append(max(float(item["duration_s"]), seconds[-1]))  # the end of the last frame
        rows: list[Row] = []
        params = json.dumps({"detector": cfg.detector, **cfg.params, "max_clip_s": cfg.max_clip_s}, sort_keys=True)
        for shot, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            for start, end in windows(a, b, max(2, int(cfg.max_clip_s * fps))):
                rows.append(
                    {
                        "video_id": item["video_id"],
                        "scene_index": len(rows),
                        "clip_id": clip_id(item["video_id"], start, end),
                        "shot_index": shot,
                        "start_frame": start,
                        "end_frame": end,
                        "start_pts": pts[start],
                        "end_pts": pts[end] if end < n else None,
                        "start_s": seconds[start],
                        "end_s": seconds[end],
                        "n_frames": end - start,
                        "detector": cfg.detector,
                        "params": params,
                    }
                )
        scored = []
        for row in rows if grid is not None else ():
            frames = grid.window(row["start_pts"], row["end_pts"])
            if len(frames) >= 2:  # shorter windows are left to the motion stage, which decodes them
                scored.append(motion_row(row["clip_id"], frames, motion))
        return {"motion": scored, "scenes": rows}
