"""motion: optical-flow motion score per clip window, from a few low-resolution frames a second.

The frames are the motion grid of the video (`stages.video.FrameGrid`): the scene pass collects
them while it decodes every frame anyway, and scores each window it cuts, so a source is decoded
once for both. This stage scores the windows left over (shorter than two grid frames, or a
motion-only run) by decoding just the window; both paths pick the same frames, so the scores
are the same. Seconds between frames come from their pts, so variable frame rate is exact. DIS
(fast preset) is the default: about 13x faster than Farneback here, see BENCHMARKS.md.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from stages.base import BadInput, Row, Stage, StageConfig
from stages.video import window_samples


class MotionConfig(StageConfig):
    method: Literal["dis", "farneback"] = "dis"
    sample_fps: float = 2.0  # frames per second compared
    height: int = 180  # flow is computed at this height, keeping the aspect ratio
    patch: int = 16  # patch size (pixels, at flow resolution) for the static share
    static_px: float = 0.5  # a patch moving less than this (pixels per pair) is static

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Flow resolution for a source of this stored size."""
        return max(2, round(width * self.height / height / 2) * 2), self.height


def flow_field(method: str):
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        return lambda a, b: dis.calc(a, b, None)
    return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def motion_parts(frames: list[np.ndarray], method: str, patch: int, static_px: float) -> tuple[float, float]:
    """Mean flow magnitude per pair (pixels) and share of static patches."""
    flow = flow_field(method)
    means, static = [], []
    for a, b in zip(frames[:-1], frames[1:]):
        mag = np.linalg.norm(flow(a, b), axis=2)
        means.append(float(mag.mean()))
        h, w = (mag.shape[0] // patch) * patch, (mag.shape[1] // patch) * patch
        if h and w:
            patches = mag[:h, :w].reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
            static.append(float((patches < static_px).mean()))
    return float(np.mean(means)), float(np.mean(static)) if static else 1.0


def motion_row(clip_id: str, frames: list[tuple[float, np.ndarray]], cfg: MotionConfig) -> Row:
    """The motion row of a window from its (seconds, gray image) samples, at least two."""
    mean_px, static = motion_parts([image for _, image in frames], cfg.method, cfg.patch, cfg.static_px)
    seconds_per_pair = (frames[-1][0] - frames[0][0]) / (len(frames) - 1)
    height, width = frames[0][1].shape[:2]
    return {
        "clip_id": clip_id,
        "score": 100.0 * mean_px / float(np.hypot(width, height)) / seconds_per_pair,
        "flow_mean_px": mean_px,
        "static_share": static,
        "n_pairs": len(frames) - 1,
        "method": cfg.method,
    }


class Motion(Stage):
    name = "motion"
    reads = "candidates"
    writes = "motion"
    input_key = "clip_id"
    filters = ("duration", "resolution")
    batch_size = 4
    Config = MotionConfig

    def process(self, item: Row) -> list[Row]:
        cfg = self.config
        start, end = item["start_frame"], item["end_frame"]
        if end - start < 2:
            raise BadInput(f"clip {item['clip_id']} has {end - start} frame(s); motion needs 2")
        frames = window_samples(
            item["video_path"], start_pts=item["start_pts"], end_pts=item["end_pts"], fps=cfg.sample_fps,
            size=cfg.size(item["width"], item["height"]),
        )  # fmt: skip
        if len(frames) < 2:
            raise BadInput(f"{item['video_path']}: frames {start}..{end} do not decode (truncated?)")
        return [motion_row(item["clip_id"], frames, cfg)]
