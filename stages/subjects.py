"""subjects: reference images of the humans, faces and objects of each clip (GroundingDINO + SAM).

On a few key frames, GroundingDINO looks for every subject the caption stage listed plus person
and face; SAM turns each box into a mask. Detections below the score or area threshold and
masks of zero area are dropped (and counted). Duplicates within a frame are merged by mask IoU;
across frames, detections of the same kind and label are linked into tracks by box IoU after
scaling, and each track keeps its best view (highest detector score, then area), from whichever
frame that is. Each reference is a plain box crop and an RGBA crop with a transparent background
under `RUN/refs/<clip_id>/`. A clip with no reference left is an error row naming the counts.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from manifests.store import TMP_PREFIX
from stages.aesthetic import model_name
from stages.base import BadInput, BadModelOutput, ModelStageConfig, Resources, Row, Stage, error_row
from stages.caption import DEFAULT_SUBJECTS
from stages.crops import box_crop, mask_iou, masked_crop, pixel_box, rle_encode
from stages.video import clip_frames

SUBJECT_NAMESPACE = uuid.UUID("9c4f3c1e-5a63-4a51-9d55-3f3b2a0c7e21")


class SubjectsConfig(ModelStageConfig):
    detector: str = "IDEA-Research/grounding-dino-tiny"
    segmenter: str = "ybelkada/segment-anything"  # holds the official SAM checkpoints
    segmenter_file: str = "checkpoints/sam_vit_b_01ec64.pth"
    segmenter_type: str = "vit_b"  # vit_b / vit_l / vit_h (model.segmenter.ENCODERS)
    key_frames: int = 3
    min_score: float = 0.35  # detector box score
    min_area_fraction: float = 0.002  # mask area / frame area
    merge_iou: float = 0.7  # same-frame masks of one kind above this are one subject
    track_iou: float = 0.3  # box IoU linking a subject across key frames
    max_per_label: int = 3
    max_subjects: int = 8

    def weights(self) -> dict[str, tuple[str, str | None]]:
        return {"subjects.detector": (self.detector, None), "subjects.segmenter": (self.segmenter, self.segmenter_file)}


@dataclass
class Found:
    kind: str
    label: str
    frame: int  # position among the key frames
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray
    area_fraction: float


@dataclass
class Track:
    views: list[Found] = field(default_factory=list)

    def best(self) -> Found:
        return max(self.views, key=lambda f: (f.score, f.area_fraction))


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_duplicates(found: list[Found], iou: float) -> list[Found]:
    """Within one frame: of masks of one kind overlapping above `iou`, keep the best-scoring one."""
    kept: list[Found] = []
    for f in sorted(found, key=lambda f: -f.score):
        if all(k.kind != f.kind or mask_iou(k.mask, f.mask) <= iou for k in kept):
            kept.append(f)
    return kept


def link_tracks(per_frame: list[list[Found]], iou: float) -> list[Track]:
    """Greedy frame-to-frame linking of the same kind and label by box IoU with a track's last view."""
    tracks: list[Track] = []
    for found in per_frame:
        taken: set[int] = set()
        for f in sorted(found, key=lambda f: -f.score):
            candidates = [
                (box_iou(t.views[-1].box, f.box), i)
                for i, t in enumerate(tracks)
                if i not in taken and t.views[-1].kind == f.kind and t.views[-1].label == f.label and t.views[-1].frame < f.frame
            ]
            best = max(candidates, default=(0.0, -1))
            if best[0] > iou:
                tracks[best[1]].views.append(f)
                taken.add(best[1])
            else:
                tracks.append(Track([f]))
                taken.add(len(tracks) - 1)
    return tracks


def visible_in_box(mask: np.ndarray, box) -> bool:
    """Whether the mask has any pixel inside the box (what the crops show)."""
    try:
        x0, y0, x1, y1 = pixel_box(box, *mask.shape)
    except ValueError:
        return False
    return bool(mask[y0:y1, x0:x1].any())


def write_png(path: Path, image: np.ndarray) -> None:
    """RGB or RGBA array -> PNG, atomically."""
    code = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, code))
    if not ok:
        raise ValueError(f"cannot encode {path.name}")
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


class Subjects(Stage):
    name = "subjects"
    reads = "candidates"
    writes = "subjects"
    input_key = "clip_id"
    filters = ("duration", "resolution", "motion", "aesthetic")
    needs = "clip_path IS NOT NULL AND subjects_json IS NOT NULL"
    resources = Resources(cpus=1.0, uses_model=True)
    batch_size = 2
    Config = SubjectsConfig

    def setup(self) -> None:
        from model.grounding import Detector
        from model.segmenter import Segmenter

        cfg = self.config
        self.detector = Detector.from_pretrained(cfg.detector)
        self.detector.model.to(cfg.device)
        self.segmenter = Segmenter.from_pretrained(cfg.segmenter, cfg.segmenter_file, cfg.segmenter_type).to(cfg.device)

    def prepare(self, item: Row) -> Row:
        """Decode the key frames of the clip file and read the labels to look for."""
        if not item.get("clip_path") or item.get("subjects_json") is None:
            raise BadInput(f"clip {item['clip_id']} has no clip file or caption yet")
        n = item["end_frame"] - item["start_frame"]
        frames = clip_frames(self.run_dir, item["clip_path"], n, self.config.key_frames)
        listed = json.loads(item["subjects_json"]) + DEFAULT_SUBJECTS
        kinds = {}
        for s in listed:
            kinds.setdefault(s["label"], s["kind"])
        return {
            "clip_id": item["clip_id"],
            "frames": np.stack([f.image for f in frames]),
            "frame_indices": [f.index for f in frames],
            "labels": list(kinds),
            "kinds": list(kinds.values()),
        }

    def process_batch(self, items: list[Row]) -> tuple[list[Row], list[Row]]:
        rows, errors = [], []
        for item in items:
            try:
                rows += self.process_clip(item)
            except Exception as exc:
                errors.append(error_row(self.name, item["clip_id"], exc))
        return rows, errors

    def process_clip(self, item: Row) -> list[Row]:
        cfg = self.config
        frames, labels = list(item["frames"]), item["labels"]
        kind_of = dict(zip(labels, item["kinds"]))
        with self.timed("preprocess"):
            inputs = self.detector.inputs(frames, labels)
        with self.timed("forward"):
            outputs = self.detector.forward(inputs)
        with self.timed("postprocess"):
            detections = self.detector.detections(outputs, inputs, frames, labels, cfg.min_score)
        counts = {"boxes": 0, "zero_area": 0, "small": 0}
        per_frame = []
        for position, (image, found) in enumerate(zip(frames, detections)):
            found = sorted(found, key=lambda d: -d.score)[: cfg.max_per_label * len(labels)]
            counts["boxes"] += len(found)
            with self.timed("forward"):
                masks, _ = self.segmenter.masks(image, np.array([d.box for d in found], np.float32).reshape(-1, 4))
            with self.timed("postprocess"):
                kept = []
                for d, mask in zip(found, masks):
                    area = float(mask.mean())
                    if not visible_in_box(mask, d.box):
                        counts["zero_area"] += 1
                    elif area < cfg.min_area_fraction:
                        counts["small"] += 1
                    else:
                        kept.append(Found(kind_of[d.label], d.label, position, d.score, d.box, mask, area))
                per_frame.append(merge_duplicates(kept, cfg.merge_iou))
        with self.timed("postprocess"):
            tracks = sorted(link_tracks(per_frame, cfg.track_iou), key=lambda t: -t.best().score)
            best = [t.best() for t in tracks[: cfg.max_subjects]]
            if not best:
                raise BadModelOutput(
                    f"no subject kept: {counts['boxes']} boxes above score {cfg.min_score} for {labels}, "
                    f"{counts['zero_area']} masks of zero area, {counts['small']} below area {cfg.min_area_fraction}"
                )
            return [self.write(item, f, frames[f.frame], item["frame_indices"][f.frame]) for f in best]

    def write(self, item: Row, f: Found, image: np.ndarray, frame_index: int) -> Row:
        """Both crops as PNG under refs/<clip_id>/ and the subjects row."""
        subject_id = str(uuid.uuid5(SUBJECT_NAMESPACE, f"{item['clip_id']}/{f.kind}/{f.label}/{frame_index}/{f.box}"))
        folder = Path("refs") / item["clip_id"]
        (self.run_dir / folder).mkdir(parents=True, exist_ok=True)
        crop, masked = folder / f"{subject_id}.crop.png", folder / f"{subject_id}.masked.png"
        write_png(self.run_dir / crop, box_crop(image, f.box))
        write_png(self.run_dir / masked, masked_crop(image, f.mask, f.box))
        cfg = self.config
        return {
            "subject_id": subject_id,
            "clip_id": item["clip_id"],
            "kind": f.kind,
            "label": f.label,
            "frame_index": frame_index,
            "box": [float(v) for v in f.box],
            "mask_rle": rle_encode(f.mask),
            "score": f.score,
            "area_fraction": f.area_fraction,
            "crop_path": str(crop),
            "masked_path": str(masked),
            "model": model_name(f"{cfg.detector} + {cfg.segmenter}", cfg.random_weights),
            "random_weights": cfg.random_weights,
        }
