"""Reference-image geometry: boxes to pixel crops, masks to RGBA cut-outs, masks to RLE and back.

Boxes are (x0, y0, x1, y1) in pixels, x1/y1 exclusive edges as detectors report them; a crop
takes every pixel the box touches. RLE is COCO's uncompressed form: runs over the mask in
column-major order, starting with a run of zeros.
"""

from __future__ import annotations

import json
import math

import numpy as np


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) inside the image covering every pixel the box touches; empty -> ValueError."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    ix1, iy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"box {tuple(box)} has no pixels inside a {width}x{height} image")
    return ix0, iy0, ix1, iy1


def box_crop(image: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = pixel_box(box, *image.shape[:2])
    return image[y0:y1, x0:x1].copy()


def masked_crop(image: np.ndarray, mask: np.ndarray, box) -> np.ndarray:
    """RGBA crop of the box: the image where the mask is set, fully transparent elsewhere."""
    x0, y0, x1, y1 = pixel_box(box, *image.shape[:2])
    alpha = np.where(mask[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return np.dstack([image[y0:y1, x0:x1], alpha])


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box of a mask's set pixels, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def rle_encode(mask: np.ndarray) -> str:
    """JSON {"size": [h, w], "counts": [...]} of a boolean mask."""
    flat = np.asarray(mask, bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return json.dumps({"size": list(mask.shape), "counts": counts})


def rle_decode(rle: str) -> np.ndarray:
    data = json.loads(rle)
    height, width = data["size"]
    values = np.zeros(height * width, bool)
    position, value = 0, False
    for count in data["counts"]:
        values[position : position + count] = value
        position += count
        value = not value
    return values.reshape((height, width), order="F")

