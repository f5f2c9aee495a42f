"""screen: how much of each window is text, how explicit and how sharp it is, on a few frames read from the source.

Two real models whose weights ship in PyPI packages, so every profile uses them: PP-OCRv4 text
detection confirmed by its recognizer (`model.ocr`) and NudeNet (`model.nsfw`). Frames are the
window's grid frames (`stages.video.window_frames`, kept by the scene pass when both run), at most
`max_side` pixels on the long side. The CPU work (frames, sharpness, where the frame has detail)
is done in `prepare`; the actor only runs the two models.

Text is aggregated by the median over the sampled frames, so one frame with a spurious box cannot
reject a window, and measured twice: `text_area`, the share of the frame under recognised text
(rule `text`: burned-in captions, subtitles), and `text_content`, that area over the area of the
frame that has any detail (rule `slide`: end credits and title cards, white lines on black, are
mostly text even when the text covers 6% of the frame). `sharpness` is the median over frames
of the variance of the Laplacian (rule `blur`: the majority vote of the frames). NSFW keeps the
highest frame score: one explicit frame is enough to drop a window.
"""

from __future__ import annotations

import cv2
import numpy as np

from manifests.filters import rules_through
from stages.base import ModelStageConfig, Resources, Row, Stage
from stages.video import window_frames

DETAIL_GRADIENT = 24.0  # grey levels: a pixel whose Laplacian is above this has detail
DETAIL_GROW = 9  # pixels: detail is grown by this much, so the gaps between letters count with them


class ScreenConfig(ModelStageConfig):
    n_frames: int = 3
    max_side: int = 640  # long side of the frames both models see, pixels
    text_min_confidence: float = 0.8  # recognizer's mean character confidence for a detected box to count as text

    def weights(self) -> dict[str, tuple[str, str | None]]:
        return {}  # both models ship inside their packages (make setup)

    def window_request(self, width: int, height: int) -> tuple[int, tuple[int, int]]:
        """Frames per window, and their size (as stored): at most `max_side` on the long side."""
        return self.n_frames, scaled_size(width, height, self.max_side)


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey frame (Open-Sora 2.0's blur measure): low when blurred."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def detail_area(image: np.ndarray) -> float:
    """Share of the frame with any detail (edges, texture, letters), grown to close the gaps between letters."""
    edges = np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F)) > DETAIL_GRADIENT
    grown = cv2.dilate(edges.astype(np.uint8), np.ones((DETAIL_GROW, DETAIL_GROW), np.uint8))
    return float(grown.mean())


class Screen(Stage):
    name = "screen"
    reads = "candidates"
    writes = "screen"
    input_key = "clip_id"
    filters = rules_through("aesthetic")
    resources = Resources(cpus=1.0, uses_model=True)  # OCR and NudeNet run on CPUs: one actor per few CPUs
    batch_size = 4
    Config = ScreenConfig

    def setup(self) -> None:
        from model.curation.nsfw import NsfwScorer
        from model.curation.ocr import TextArea

        self.text = TextArea.load(self.config.max_side, self.config.text_min_confidence)
        self.nsfw = NsfwScorer.load()

    def prepare(self, item: Row) -> Row:
        count, size = self.config.window_request(item["width"], item["height"])
        frames = window_frames(self.run_dir, item, count, size)
        return {
            "clip_id": item["clip_id"], "frames": np.stack(frames),
            "sharpness": [sharpness(f) for f in frames], "detail": [detail_area(f) for f in frames],
        }  # fmt: skip

    def process(self, item: Row) -> list[Row]:
        from model.curation.nsfw import MODEL_NAME as NSFW_MODEL
        from model.curation.ocr import MODEL_NAME as TEXT_MODEL
        from model.curation.ocr import covered

        frames = list(item["frames"])
        with self.timed("forward"):
            read = [self.text.read(f) for f in frames]
            nsfw = [self.nsfw.score(f) for f in frames]
        areas = [covered(f.shape[:2], [b.points for b in self.text.confirmed(boxes)]) for f, boxes in zip(frames, read)]
        detected = [covered(f.shape[:2], [b.points for b in boxes]) for f, boxes in zip(frames, read)]
        content = [area / max(detail, area, 1e-6) for area, detail in zip(areas, item["detail"])]
        return [
            {
                "clip_id": item["clip_id"],
                "text_area": float(np.median(areas)),
                "text_area_max": max(areas),
                "text_content": float(np.median(content)),
                "text_detected": max(detected),
                "nsfw_score": max(nsfw),
                "sharpness": float(np.median(item["sharpness"])),
                "n_frames": len(frames),
                "text_model": TEXT_MODEL,
                "nsfw_model": NSFW_MODEL,
                "random_weights": False,
            }
        ]
