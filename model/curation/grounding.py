"""Open-vocabulary detection with GroundingDINO (transformers' `GroundingDinoForObjectDetection`).

`groundingdino-py` 0.4 does not run on transformers 5; the transformers port loads the same hub
weights (`IDEA-Research/grounding-dino-tiny`) and batches.

All labels of a clip go in one prompt ("person . man in a red jacket . dog ."), and each label's
tokens are found by their character spans. The Swin backbone (the image pass) runs once per frame;
the fusion encoder and decoder then run once per (frame, label) on that frame's features, each
row's text mask showing only [CLS], the label's own tokens with its "." and [SEP]. The model's
phrase masks already keep the labels' text apart, so every row computes what the prompt
"label." alone computes: a box belongs to exactly one label, and a label's boxes and scores do
not depend on the other labels of the clip. (One unmasked pass for all labels would be cheaper,
but its image features attend to every label's tokens, so scores would shift with the list.)

The CPU side (`inputs`: the image processor at 800 / 1333 and the tokenizer) runs before the
model actor; `detect` is tensor work only.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from model.curation.device import tensor
from model.hub import resolve


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image


@dataclass
class DetectorInputs:
    """One clip's frames and labels, ready for the model (numpy, so Ray ships them without copies)."""

    pixel_values: np.ndarray  # (frames, 3, h, w) float32, as the image processor made them
    pixel_mask: np.ndarray  # (frames, h, w)
    input_ids: np.ndarray  # (tokens,) the one prompt
    label_masks: np.ndarray  # (labels, tokens) bool: what each label's rows attend to
    labels: list[str]
    sizes: list[tuple[int, int]]  # (height, width) of each original frame


def prompt_label(label: str) -> str:
    """The label as the prompt spells it: lower case, without the phrase delimiters "." and "?"."""
    return " ".join(re.sub(r"[.?]", " ", label.lower()).split())


@lru_cache(maxsize=4)
def load_processor(folder: str):
    """The checkpoint's processor, once per process (CPU tasks build a stage per batch)."""
    return AutoProcessor.from_pretrained(folder)


def label_masks(tokenizer, labels: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompt "a . b . c ." as token ids, and per label the tokens its rows see: [CLS], the
    tokens inside its character span, the "." after it, and [SEP]."""
    text, spans = "", []
    for label in labels:
        spans.append((len(text), len(text) + len(label)))
        text += f"{label} . "
    encoded = tokenizer(text.strip(), return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if len(ids) > max_tokens:
        raise ValueError(f"the prompt of {len(labels)} labels is {len(ids)} tokens, over the model's {max_tokens}")
    masks = np.zeros((len(labels), len(ids)), bool)
    masks[:, 0] = masks[:, -1] = True  # [CLS] and [SEP]
    for row, (start, end) in enumerate(spans):
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]
        masks[row, inside] = True
        masks[row, inside[-1] + 1] = True  # its "."
    return np.array(ids, np.int64), masks


@contextmanager
def backbone_features(model: GroundingDinoForObjectDetection, features):
    """While inside, the model's backbone returns `features` (computed once per frame) instead of running."""
    backbone = model.model.backbone
    backbone.forward = lambda pixel_values, pixel_mask: features
    try:
        yield
    finally:
        del backbone.forward


class Detector:
    def __init__(self, model: GroundingDinoForObjectDetection, folder: str):
        self.model = model.eval()
        self.folder = folder

    @classmethod
    def from_pretrained(cls, ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Detector:
        folder = resolve(ref)
        return cls(GroundingDinoForObjectDetection.from_pretrained(folder, dtype=dtype).to(device), folder)

    @staticmethod
    def inputs(folder: str, images: list[np.ndarray], labels: list[str], max_tokens: int = 256) -> DetectorInputs:
        """The CPU part of detection: the checkpoint's image processor and tokenizer, model-free."""
        processor = load_processor(folder)
        pixels = processor.image_processor(images=list(images), return_tensors="np")
        ids, masks = label_masks(processor.tokenizer, [prompt_label(label) for label in labels], max_tokens)
        return DetectorInputs(
            pixels["pixel_values"].astype(np.float32), pixels["pixel_mask"], ids, masks, list(labels),
            [tuple(image.shape[:2]) for image in images],
        )  # fmt: skip

    @torch.inference_mode()
    def detect(self, inputs: DetectorInputs, threshold: float) -> list[list[Detection]]:
        """Boxes scoring above `threshold`, per frame, each with its label; the backbone runs once per frame."""
        model, on = self.model, self.model.device
        labels = len(inputs.labels)
        pixel_values = tensor(inputs.pixel_values).to(on, model.dtype)
        pixel_mask = tensor(inputs.pixel_mask).to(on)
        features, positions = model.model.backbone(pixel_values, pixel_mask)
        rows = lambda t: t.repeat_interleave(labels, dim=0)  # noqa: E731  (frame-major: frame f, label l is row f * labels + l)
        features = ([(rows(f), rows(m)) for f, m in features], [rows(p) for p in positions])
        n = len(pixel_values) * labels
        with backbone_features(model, features):
            outputs = model(
                pixel_values=pixel_values[:1, :1, :1, :1].expand(n, *pixel_values.shape[1:]),  # its shape only
                pixel_mask=rows(pixel_mask),
                input_ids=tensor(inputs.input_ids).to(on).expand(n, -1),
                attention_mask=tensor(inputs.label_masks).to(on).repeat(len(pixel_values), 1).long(),
            )
        scores = outputs.logits.float().sigmoid().max(-1).values  # masked tokens score 0, as in the per-label prompt
        cx, cy, w, h = outputs.pred_boxes.float().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        size = torch.tensor([[w_, h_, w_, h_] for h_, w_ in inputs.sizes], device=on).repeat_interleave(labels, 0)
        boxes = (boxes * size[:, None, :]).cpu().numpy()
        keep = (scores > threshold).cpu().numpy()
        scores = scores.cpu().numpy()
        found: list[list[Detection]] = [[] for _ in inputs.sizes]
        for row, query in zip(*np.nonzero(keep)):
            label = inputs.labels[row % labels]
            found[row // labels].append(Detection(label, float(scores[row, query]), tuple(float(v) for v in boxes[row, query])))
        return found
