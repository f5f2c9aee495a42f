"""motion: optical-flow motion score per clip window, from a few low-resolution frames a second.

The frames are the motion grid of the video (`stages.video.FrameGrid`): the scene pass collects
them while it decodes every frame anyway, and scores each window it cuts, so a source is decoded
once for both. This stage scores the windows left over (shorter than two grid frames, or a
motion-only run) by decoding just the window; both paths pick the same frames, so the scores
are the same. Seconds between frames come from their pts, so variable frame rate is exact. DIS
(fast preset) is the default: about 13x faster than Farneback here, see BENCHMARKS.md.

Camera motion: each flow field is fitted by one affine motion (least squares on the inner 80% of
the frame, where a pan brings no new content): its translation is a pan or tilt, its divergence
a zoom; what the fit leaves (`residual_px`) is the motion of things in the scene. A window's
class is `static`, `pan_tilt`, `zoom`, `shake` (translation that keeps changing direction) or
`other` (rotation, or motion no camera move explains). A still image panned or zoomed across (a
slideshow, the Ken Burns effect) moves only globally: its residual is flow noise (rule `slideshow`).
"""

from __future__ import annotations

import functools
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from manifests.filters import rules_through
from stages.base import BadInput, Row, Stage, StageConfig
from stages.video import window_samples


class MotionConfig(StageConfig):
    method: Literal["dis", "farneback"] = "dis"
    sample_fps: float = Field(2.0, gt=0)  # frames per second compared
    height: int = Field(180, ge=2)  # flow is computed at this height, keeping the aspect ratio
    patch: int = Field(16, ge=1)  # patch size (pixels, at flow resolution) for the static share
    static_px: float = Field(0.5, ge=0)  # a patch moving less than this (pixels per pair) is static
    camera_static_px: float = Field(0.5, ge=0)  # global motion under this (pixels per pair at flow resolution): a static camera

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Flow resolution for a source of this stored size."""
        return max(2, round(width * self.height / height / 2) * 2), self.height


def flow_field(method: str):
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        return lambda a, b: dis.calc(a, b, None)
    return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def motion_parts(frames: list[np.ndarray], method: str, patch: int, static_px: float) -> tuple[float, float, list[np.ndarray]]:
    """Mean flow magnitude per pair (pixels), share of static patches, and each pair's flow field."""
    flow = flow_field(method)
    means, static, fields = [], [], []
    for a, b in zip(frames[:-1], frames[1:]):
        field = flow(a, b)
        mag = cv2.magnitude(*cv2.split(field))
        means.append(float(mag.mean()))
        fields.append(field)
        h, w = mag.shape[0] // patch, mag.shape[1] // patch
        if h and w:  # each patch's mean: an area resize by a whole factor averages exactly its patch
            patches = cv2.resize(mag[: h * patch, : w * patch], (w, h), interpolation=cv2.INTER_AREA)
            static.append(float((patches < static_px).mean()))
    return float(np.mean(means)), float(np.mean(static)) if static else 1.0, fields


@functools.cache
def _affine_basis(h: int, w: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Every other pixel of a field's inner 80%, the affine design on them (coordinates in units of half
    the inner diagonal, from the centre) and its pseudo-inverse: the same for every field of a size."""
    y0, y1, x0, x1 = h // 10, h - h // 10, w // 10, w - w // 10
    ys, xs = np.mgrid[y0:y1:2, x0:x1:2]
    half = float(np.hypot(x1 - x0, y1 - y0)) / 2
    x, y = (xs.ravel() - (w - 1) / 2) / half, (ys.ravel() - (h - 1) / 2) / half
    design = np.stack([np.ones_like(x), x, y], 1)
    return (slice(y0, y1, 2), slice(x0, x1, 2)), design, np.linalg.pinv(design)


def global_fit(field: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """One affine motion fitted to a flow field's inner 80% (least squares): translation (px), zoom and
    rotation (px of motion at the inner border), and the mean residual (px)."""
    inner, design, solve = _affine_basis(*field.shape[:2])
    uv = field[inner].reshape(-1, 2).astype(np.float64)
    (a0, b0), (a1, b1), (a2, b2) = coefficients = solve @ uv
    residual = np.hypot(*(uv - design @ coefficients).T)
    return np.array([a0, b0]), float(a1 + b2) / 2, float(b1 - a2) / 2, float(residual.mean())


def camera_motion(fields: list[np.ndarray], static_px: float) -> dict:
    """The window's camera-motion class and the global and residual motion it is decided by."""
    fits = [global_fit(f) for f in fields]
    shifts = np.array([t for t, *_ in fits])
    pan = float(np.linalg.norm(shifts, axis=1).mean())
    zoom = float(np.mean([abs(z) for _, z, _, _ in fits]))
    turn = float(np.mean([abs(r) for _, _, r, _ in fits]))
    residual = float(np.mean([r for *_, r in fits]))
    steady = float(np.linalg.norm(shifts.mean(0))) / max(pan, 1e-9)  # 1: one direction throughout; ~0: back and forth
    if max(pan, zoom, turn) < static_px:
        kind = "static"
    elif residual > max(pan, zoom, turn) or turn >= max(pan, zoom):
        kind = "other"
    elif zoom >= pan:
        kind = "zoom"
    else:
        kind = "pan_tilt" if steady >= 0.5 or len(fits) == 1 else "shake"
    return {"camera_motion": kind, "pan_px": pan, "zoom_px": zoom, "residual_px": residual}


def motion_row(clip_id: str, frames: list[tuple[float, np.ndarray]], cfg: MotionConfig) -> Row:
    """The motion row of a window from its (seconds, gray image) samples, at least two."""
    mean_px, static, fields = motion_parts([image for _, image in frames], cfg.method, cfg.patch, cfg.static_px)
    seconds_per_pair = (frames[-1][0] - frames[0][0]) / (len(frames) - 1)
    height, width = frames[0][1].shape[:2]
    return {
        "clip_id": clip_id,
        "score": 100.0 * mean_px / float(np.hypot(width, height)) / seconds_per_pair,
        "flow_mean_px": mean_px,
        "static_share": static,
        **camera_motion(fields, cfg.camera_static_px),
        "n_pairs": len(frames) - 1,
        "method": cfg.method,
    }


class Motion(Stage):
    name = "motion"
    reads = "candidates"
    writes = "motion"
    input_key = "clip_id"
    filters = rules_through("aspect")
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
