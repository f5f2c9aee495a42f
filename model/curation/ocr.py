"""How much of a frame is text: PP-OCRv4 detection (DB) confirmed by PP-OCRv4 recognition (CRNN),
as `rapidocr-onnxruntime` 1.4.4 ships them.

The detector alone draws boxes over things that are not text (on a face close-up with glasses
one box over the eyes covered 16% of the frame). A box counts only when the recognizer reads
at least `MIN_CHARS` characters in it with confidence `min_confidence` or more, so the area is
that of readable text. The model files and their pre- and post-processing are the package's own
(Apache-2.0; the weights are PaddleOCR's, Apache-2.0), run by onnxruntime on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.hub import packaged_file

DETECTOR_FILE = "ch_PP-OCRv4_det_infer.onnx"
RECOGNIZER_FILE = "ch_PP-OCRv4_rec_infer.onnx"
MODEL_NAME = "PP-OCRv4 text detection + recognition (rapidocr-onnxruntime 1.4.4)"
MIN_CHARS = 2  # a lone glyph read in a texture is not a caption


@dataclass
class TextBox:
    points: np.ndarray  # (4, 2) quadrilateral in frame pixels
    text: str
    confidence: float  # the recognizer's mean character confidence


class TextArea:
    """Share of an RGB frame covered by recognised text boxes (their union), 0..1."""

    def __init__(self, detector, recognizer, min_confidence: float):
        self.detector = detector
        self.recognizer = recognizer
        self.min_confidence = min_confidence

    @classmethod
    def load(cls, max_side: int = 640, min_confidence: float = 0.8, threads: int = 1) -> TextArea:
        """The package's DB detector and CRNN recognizer at their default settings; frames are shrunk to `max_side` first."""
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

        session = {"use_cuda": False, "intra_op_num_threads": threads, "inter_op_num_threads": 1}
        detector = TextDetector({
            **session, "model_path": str(packaged_file("rapidocr_onnxruntime", f"models/{DETECTOR_FILE}")),
            "limit_side_len": max_side, "limit_type": "max", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6, "use_dilation": True, "score_mode": "fast",
        })  # fmt: skip
        recognizer = TextRecognizer({
            **session, "model_path": str(packaged_file("rapidocr_onnxruntime", f"models/{RECOGNIZER_FILE}")),
            "rec_img_shape": [3, 48, 320], "rec_batch_num": 1,  # one box at a time: its reading never depends on its neighbours' widths
        })  # fmt: skip
        return cls(detector, recognizer, min_confidence)

    def detected(self, image: np.ndarray) -> np.ndarray:
        """(n, 4, 2) quadrilaterals the detector finds, in frame pixels."""
        boxes, _ = self.detector(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # PaddleOCR models take BGR
        return np.zeros((0, 4, 2), np.float32) if boxes is None or len(boxes) == 0 else np.asarray(boxes, np.float32)

    def read(self, image: np.ndarray) -> list[TextBox]:
        """Every detected box with what the recognizer reads in it."""
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        out = []
        for points in self.detected(image):
            (text, confidence), = self.recognizer(upright_crop(bgr, points))[0]  # fmt: skip
            out.append(TextBox(points, text, float(confidence)))
        return out

    def confirmed(self, boxes: list[TextBox]) -> list[TextBox]:
        return [b for b in boxes if len(b.text.strip()) >= MIN_CHARS and b.confidence >= self.min_confidence]

    def area(self, image: np.ndarray) -> float:
        """Share of the frame covered by confirmed text."""
        return covered(image.shape[:2], [b.points for b in self.confirmed(self.read(image))])


def covered(shape: tuple[int, int], boxes: list[np.ndarray]) -> float:
    mask = np.zeros(shape, np.uint8)
    if boxes:
        cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


def upright_crop(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The box warped to an upright rectangle (PaddleOCR's crop: tall boxes are turned to read sideways)."""
    width = max(1, int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3]))))
    height = max(1, int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2]))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    crop = cv2.warpPerspective(image, cv2.getPerspectiveTransform(points.astype(np.float32), target), (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)  # fmt: skip
    return np.rot90(crop) if height / width >= 1.5 else crop
