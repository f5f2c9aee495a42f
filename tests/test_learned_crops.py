"""Reference-crop geometry on real photos, checked against OpenCV's Haar face detector."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stages.crops import box_crop, mask_box, mask_iou, masked_crop, pixel_box, rle_decode, rle_encode
from stages.subjects import visible_in_box

REAL = Path(__file__).parent / "data" / "real"


def faces(image_rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes (x0, y0, x1, y1) from OpenCV's shipped frontal-face Haar cascade."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]


def load_rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(REAL / name)), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
def test_face_crop_from_a_box_contains_the_face(name):
    image = load_rgb(name)
    found = faces(image)
    assert found, f"Haar finds no face in {name}"
    x0, y0, x1, y1 = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    pad = (x1 - x0) // 2
    box = (x0 - pad + 0.4, y0 - pad + 0.6, x1 + pad - 0.3, y1 + pad)  # fractional, as detectors give
    crop = box_crop(image, box)
    px0, py0, px1, py1 = pixel_box(box, *image.shape[:2])
    assert crop.shape[:2] == (py1 - py0, px1 - px0)
    assert np.array_equal(crop, image[py0:py1, px0:px1])
    in_crop = faces(crop)
    assert in_crop, "the crop lost the face"
    cx0, cy0, cx1, cy1 = max(in_crop, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    assert box_iou_int((cx0 + px0, cy0 + py0, cx1 + px0, cy1 + py0), (x0, y0, x1, y1)) > 0.6


def box_iou_int(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_masked_crop_is_transparent_outside_the_mask():
    image = load_rgb("astronaut.png")
    (x0, y0, x1, y1), *_ = faces(image)
    mask = np.zeros(image.shape[:2], bool)
    cv2.ellipse(mask.view(np.uint8), ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 3, (y1 - y0) // 2), 0, 0, 360, 1, -1)
    rgba = masked_crop(image, mask, (x0, y0, x1, y1))
    assert rgba.shape == (y1 - y0, x1 - x0, 4)
    assert np.array_equal(rgba[..., 3] > 0, mask[y0:y1, x0:x1])
    assert np.array_equal(rgba[..., :3], image[y0:y1, x0:x1])
    assert mask_box(mask)[0] >= x0 and mask_box(mask)[2] <= x1


def test_boxes_are_clamped_and_empty_boxes_refused():
    assert pixel_box((-5.5, -1, 10.2, 20.9), 16, 8) == (0, 0, 8, 16)
    with pytest.raises(ValueError):
        pixel_box((20, 20, 30, 30), 16, 16)  # outside
    with pytest.raises(ValueError):
        pixel_box((3, 3, 3, 9), 16, 16)  # zero width


@pytest.mark.parametrize("seed", range(4))
def test_rle_round_trip(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    for mask in (rng.random(shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool)):
        assert np.array_equal(rle_decode(rle_encode(mask)), mask)


def test_rle_matches_coco_convention():
    mask = np.array([[1, 0], [1, 1]], bool)  # column-major: 1 1 0 1 -> starts with a run of zeros
    assert rle_encode(mask) == '{"size": [2, 2], "counts": [0, 2, 1, 1]}'


def test_zero_area_masks_and_iou():
    empty = np.zeros((10, 10), bool)
    outside = empty.copy()
    outside[0:2, 0:2] = True
    assert not visible_in_box(empty, (2, 2, 8, 8))
    assert not visible_in_box(outside, (2, 2, 8, 8))  # nothing of it inside the box: zero area for the crop
    assert visible_in_box(outside, (0, 0, 3, 3))
    assert mask_iou(empty, empty) == 0.0
    assert mask_iou(outside, outside) == 1.0
