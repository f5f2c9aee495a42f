"""How much of a frame is text: PP-OCRv4 text detection (DB), as `rapidocr-onnxruntime` 1.4.4 ships it.

Only the detector runs (no recognition): a caption, subtitle or slide is found by where text is,
not by what it says. The model file and its pre- and post-processing are the package's own
(Apache-2.0; the weights are PaddleOCR's, Apache-2.0), run by onnxruntime on the CPU.
"""

from __future__ import annotations

import cv2
import numpy as np

from model.hub import packaged_file

DETECTOR_FILE = "ch_PP-OCRv4_det_infer.onnx"
MODEL_NAME = "PP-OCRv4 text detection (rapidocr-onnxruntime 1.4.4)"


class TextArea:
    """Share of an RGB frame covered by detected text boxes (their union), 0..1."""

    def __init__(self, detector):
        self.detector = detector

    @classmethod
    def load(cls, max_side: int = 640, threads: int = 1) -> TextArea:
        """The package's DB detector at its default thresholds; frames are shrunk to `max_side` first."""
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

        config = {
            "model_path": str(packaged_file("rapidocr_onnxruntime", f"models/{DETECTOR_FILE}")),
            "use_cuda": False,
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "limit_side_len": max_side,
            "limit_type": "max",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "thresh": 0.3,
            "box_thresh": 0.5,
            "unclip_ratio": 1.6,
            "use_dilation": True,
            "score_mode": "fast",
        }
        return cls(TextDetector(config))

    def boxes(self, image: np.ndarray) -> np.ndarray:
        """(n, 4, 2) quadrilaterals of text in frame pixels."""
        boxes, _ = self.detector(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # PaddleOCR models take BGR
        return np.zeros((0, 4, 2), np.float32) if boxes is None or len(boxes) == 0 else np.asarray(boxes, np.float32)

    def area(self, image: np.ndarray) -> float:
        covered = np.zeros(image.shape[:2], np.uint8)
        boxes = self.boxes(image)
        if len(boxes):
            cv2.fillPoly(covered, [np.round(b).astype(np.int32) for b in boxes], 1)
        return float(covered.mean())
