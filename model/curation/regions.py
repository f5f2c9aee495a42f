"""The subjects stage's model side: GroundingDINO boxes, a SAM mask per box and a CLIP embedding of
each box's masked cut-out, on one clip's key frames.

Tensor work only, for the GPU actor: the inputs come from `Detector.inputs` and `sam_input` in
CPU tasks before it, and what the finds mean (merges, tracks, crops) is worked out after it. The
GPU check (`model.curation.gpu_check`) runs this same code on real-size models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.curation.clip import ImageEmbedder
from model.curation.device import tensor
from model.curation.grounding import Detection, Detector, DetectorInputs
from model.curation.segmenter import Segmenter
from stages.crops import pixel_box


@dataclass
class FrameFinds:
    detections: list[Detection]  # best first
    masks: np.ndarray  # (n, h, w) bool, one per detection
    embeddings: np.ndarray  # (n, d) unit CLIP embeddings of the masked cut-outs


def cut_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """The pixels a box touches, (0, 0, 0, 0) for a box with none inside the frame (its cut-out is plain grey)."""
    try:
        return pixel_box(box, height, width)
    except ValueError:
        return (0, 0, 0, 0)


class RegionModels:
    def __init__(self, detector: Detector, segmenter: Segmenter, embedder: ImageEmbedder):
        self.detector, self.segmenter, self.embedder = detector, segmenter, embedder

    @torch.inference_mode()
    def find(self, frames: np.ndarray, detector: DetectorInputs | None, sam: list[np.ndarray], threshold: float,
             per_frame: int) -> list[FrameFinds]:  # fmt: skip
        """Per key frame, its `per_frame` best boxes above `threshold`, their masks and cut-out embeddings."""
        found = self.detector.detect(detector, threshold) if detector is not None else [[] for _ in frames]
        out = []
        for image, resized, detections in zip(frames, sam, found):
            detections = sorted(detections, key=lambda d: -d.score)[:per_frame]
            boxes = np.array([d.box for d in detections], np.float32).reshape(-1, 4)
            masks, _ = self.segmenter.masks(resized, image.shape[:2], boxes)
            frame = tensor(image).to(masks.device)
            embeddings = self.embedder.embed_cutouts(frame, masks, [cut_box(d.box, *image.shape[:2]) for d in detections])
            out.append(FrameFinds(detections, masks.cpu().numpy(), embeddings))
        return out
