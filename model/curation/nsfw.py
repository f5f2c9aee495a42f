"""NSFW score of a frame: NudeNet's detector (`nudenet` 3.4.2, 320n ONNX, MIT), loaded by the package.

The score is the highest confidence of any explicit-nudity class in the frame, 0 when none is
found (NudeNet drops detections below 0.2). Covered body parts, faces and feet do not count.
"""

from __future__ import annotations

import cv2
import numpy as np

MODEL_NAME = "NudeNet 320n (nudenet 3.4.2)"
EXPLICIT = frozenset(
    {"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED", "BUTTOCKS_EXPOSED"}
)


class NsfwScorer:
    def __init__(self, detector):
        self.detector = detector

    @classmethod
    def load(cls) -> NsfwScorer:
        """The package's detector with the weights inside the package."""
        from nudenet import NudeDetector

        return cls(NudeDetector())

    def detections(self, image: np.ndarray) -> list[dict]:
        """NudeNet's detections ({class, score, box}) in one RGB frame."""
        return self.detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    def score(self, image: np.ndarray) -> float:
        return max((float(d["score"]) for d in self.detections(image) if d["class"] in EXPLICIT), default=0.0)
