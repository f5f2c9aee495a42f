"""Open-vocabulary detection with GroundingDINO (transformers' `GroundingDinoForObjectDetection`).

`groundingdino-py` 0.4 does not run on transformers 5; the transformers port loads the same hub
weights (`IDEA-Research/grounding-dino-tiny`) and batches. Each label is its own prompt, so a box
belongs to exactly one label without matching token spans back to phrases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from model.hub import resolve


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image


class Detector:
    def __init__(self, model: GroundingDinoForObjectDetection, processor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, ref: str) -> Detector:
        folder = resolve(ref)
        return cls(GroundingDinoForObjectDetection.from_pretrained(folder), AutoProcessor.from_pretrained(folder))

    def inputs(self, images: list[np.ndarray], labels: list[str]):
        """Processor tensors for every (image, label) pair, image-major: the CPU part of detection."""
        pairs = [(image, label) for image in images for label in labels]
        return self.processor(
            images=[image for image, _ in pairs],
            text=[f"{label.lower().strip()}." for _, label in pairs],
            padding=True,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def forward(self, inputs):
        device = self.model.device
        return self.model(**{k: v.to(device) for k, v in inputs.items()})

    def detections(self, outputs, inputs, images: list[np.ndarray], labels: list[str], threshold: float) -> list[list[Detection]]:
        """Boxes above `threshold` per image, each tagged with the label of its prompt."""
        sizes = [image.shape[:2] for image in images for _ in labels]
        results = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=threshold, text_threshold=0.0, target_sizes=sizes
        )
        found: list[list[Detection]] = [[] for _ in images]
        for pair, result in enumerate(results):
            label = labels[pair % len(labels)]
            for score, box in zip(result["scores"].tolist(), result["boxes"].tolist()):
                found[pair // len(labels)].append(Detection(label, float(score), tuple(float(v) for v in box)))
        return found
