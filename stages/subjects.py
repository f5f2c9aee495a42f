"""subjects: one reference per subject identity of each clip (GroundingDINO + SAM, dlib faces, CLIP).

On a few key frames, GroundingDINO looks for every human and object the caption stage listed plus
person; SAM turns each box into a mask. Faces come from a real face model in every profile
(`model.curation.faces`: dlib's detector and 128-D identity embedding, weights shipped in PyPI packages):
each face is a crop with `face_margin` around the detected box, carries its identity embedding,
is linked across key frames by that embedding (one subject per identity per clip, its best view
kept) and to the human region it lies in (`human_id`). Detections below the score or area threshold and
masks of zero area are dropped (and counted).

One subject per identity: the captioner's labels and the defaults (person) name one man twice
("man in a red jacket", "person"), so labels never separate subjects. Within a frame, masks of one
kind that overlap are one detection; across frames, detections of one kind are linked into
tracks by box IoU whatever their label, and the track keeps the captioner's most specific label
(`labels` lists them all). Two human tracks holding faces of one identity are one human. Each
subject keeps its best view by `quality` (mean of size, sharpness, detector score and, for faces,
how frontal), is ranked by it within its kind (`rank`, 0 best) and capped (`max_subjects`,
`max_faces`). Humans and objects carry a CLIP embedding of their masked crop on grey (for
identities across clips; never the whole frame). Each reference is a plain box crop and an RGBA
crop with a transparent background under `RUN/refs/<clip_id>/`. A clip with no reference left is
an error row naming the counts.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from manifests.files import write_bytes
from manifests.filters import rules_through
from stages.aesthetic import model_name
from stages.base import BadInput, BadModelOutput, ModelStageConfig, Resources, Row, Stage, error_row
from stages.caption import DEFAULT_SUBJECTS

DEFAULT_LABELS = {s["label"] for s in DEFAULT_SUBJECTS}
from model.curation.faces import DETECTOR_NAME as FACE_DETECTOR
from model.curation.faces import SAME_PERSON_DISTANCE, distance, embedder_name, margin_box
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
    max_subjects: int = 8  # humans and objects
    face_embedder: str = "dlib"  # dlib's ResNet (shipped), or an ArcFace hub id / folder holding `face_embedder_file`
    face_embedder_file: str = "backbone.pth"
    face_detect_short_side: int = 288  # frames with a shorter short side are upsampled for the face detector
    face_detect_max_short_side: int = 540  # frames with a longer short side are shrunk to it for the face detector
    face_min_score: float = 0.0  # dlib HOG score (real faces measured as low as 0.014: the checks below do the work)
    face_min_side: float = 24.0  # pixels of the detected box
    face_min_sharpness: float = 30.0  # variance of the Laplacian of the box at 112x112 (measured: blurred figures <= 5, faces >= 90)
    face_min_confirmation: float = 0.6  # dlib CNN on the crop (measured: faces >= 0.66, a drawn robot face <= 0.49)
    face_margin: float = 0.4  # of the face box size, added on every side of the crop
    face_same_distance: float = SAME_PERSON_DISTANCE  # embeddings closer than this are one identity
    max_faces: int = 4
    clip: str = "timm/vit_large_patch14_clip_224.openai"  # embeds masked crops of humans and objects (open_clip hub layout)
    sharp_laplacian: float = 100.0  # variance of the Laplacian (128 px crop) that counts as half sharp

    def weights(self) -> dict[str, tuple[str, str | None]]:
        refs = {
            "subjects.detector": (self.detector, None),
            "subjects.segmenter": (self.segmenter, self.segmenter_file),
            "subjects.clip": (self.clip, None),
        }
        if self.face_embedder != "dlib":
            refs["subjects.face_embedder"] = (self.face_embedder, self.face_embedder_file)
        return refs

    def clip_request(self) -> int:
        """Frames per clip (`stages.video.clip_frames`), kept by the clips stage when both run."""
        return self.key_frames


@dataclass
class Found:
    kind: str
    label: str
    frame: int  # position among the key frames
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray
    area_fraction: float
    embedding: np.ndarray | None = None  # faces: identity embedding
    frontal: float | None = None  # faces: 1 facing the camera, 0 in profile
    quality: float = 0.0  # set by `rate`
    aliases: list[str] = field(default_factory=list)  # labels of same-frame detections merged into this one


@dataclass
class Track:
    views: list[Found] = field(default_factory=list)

    def best(self) -> Found:
        return max(self.views, key=lambda f: (f.quality, f.score, f.area_fraction))

    def labels(self) -> list[str]:
        """Every label it was seen under, the captioner's own (not the defaults) first, best-scoring first."""
        named = [(label, f.score) for f in self.views for label in [f.label, *f.aliases]]
        return list(dict.fromkeys(label for label, _ in sorted(named, key=lambda n: (n[0] in DEFAULT_LABELS, -n[1]))))


def frontal(landmarks: np.ndarray) -> float:
    """From dlib's 5 points (two corners of each eye, the base of the nose): how far the nose sits
    from the middle of the eyes, along the eye line, in eye distances; 1 when centred, 0 at half."""
    right, left, nose = landmarks[0:2].mean(0), landmarks[2:4].mean(0), landmarks[4]
    axis = left - right
    length = float(np.linalg.norm(axis))
    if length == 0:
        return 0.0
    offset = abs(float(np.dot(nose - (left + right) / 2, axis / length))) / length
    return max(0.0, 1.0 - 2.0 * offset)


def sharpness(image: np.ndarray, box) -> float:
    """Variance of the Laplacian of the box crop in grey, resized to 128 px (so it does not grow with size)."""
    crop = cv2.cvtColor(box_crop(image, box), cv2.COLOR_RGB2GRAY)
    crop = cv2.resize(crop, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(crop, cv2.CV_64F).var())


def rate(f: Found, image: np.ndarray, half_sharp: float) -> float:
    """Reference quality in [0, 1]: the mean of size (full at half the frame's side), sharpness,
    detector score (dlib's HOG margin s as s / (1 + s)) and, for faces, how frontal."""
    size = min(1.0, math.sqrt(f.area_fraction) / 0.5)
    lap = sharpness(image, f.box)
    sharp = lap / (lap + half_sharp)
    score = max(f.score, 0.0) / (1.0 + max(f.score, 0.0)) if f.kind == "face" else f.score
    terms = [size, sharp, score] + ([f.frontal] if f.frontal is not None else [])
    return float(np.mean(terms))


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_duplicates(found: list[Found], iou: float) -> list[Found]:
    """Within one frame: of masks of one kind overlapping above `iou`, whatever their labels, keep the
    best-scoring one; it keeps the others' labels as aliases."""
    kept: list[Found] = []
    for f in sorted(found, key=lambda f: -f.score):
        same = next((k for k in kept if k.kind == f.kind and mask_iou(k.mask, f.mask) > iou), None)
        if same is None:
            kept.append(f)
        elif f.label != same.label and f.label not in same.aliases:
            same.aliases.append(f.label)
    return kept


def link_greedy(per_frame: list[list[Found]], pick) -> list[Track]:
    """Greedy frame-to-frame linking: each find, best score first, joins the track that
    `pick(find, open)` names among the (index, track) pairs not yet taken in its frame, or starts one."""
    tracks: list[Track] = []
    for found in per_frame:
        taken: set[int] = set()
        for f in sorted(found, key=lambda f: -f.score):
            chosen = pick(f, [(i, t) for i, t in enumerate(tracks) if i not in taken])
            if chosen is None:
                tracks.append(Track([f]))
                chosen = len(tracks) - 1
            else:
                tracks[chosen].views.append(f)
            taken.add(chosen)
    return tracks


def link_tracks(per_frame: list[list[Found]], iou: float) -> list[Track]:
    """Linking of the same kind, whatever the label, by box IoU with a track's last view."""

    def pick(f: Found, open: list[tuple[int, Track]]) -> int | None:
        earlier = [(i, t.views[-1]) for i, t in open if t.views[-1].kind == f.kind and t.views[-1].frame < f.frame]
        best = max(((box_iou(last.box, f.box), i) for i, last in earlier), default=(0.0, -1))
        return best[1] if best[0] > iou else None

    return link_greedy(per_frame, pick)


def link_faces(per_frame: list[list[Found]], same_distance: float) -> list[Track]:
    """Linking of faces by identity: the nearest track closer than `same_distance`."""

    def pick(f: Found, open: list[tuple[int, Track]]) -> int | None:
        best = min(((distance(t.views[-1].embedding, f.embedding), i) for i, t in open), default=(np.inf, -1))
        return best[1] if best[0] < same_distance else None

    return link_greedy(per_frame, pick)


def merge_humans_by_face(tracks: list[Track], face_tracks: list[Track]) -> list[Track]:
    """Human tracks that hold one face identity (on any key frame) are one human: their views join."""
    parent = list(range(len(tracks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    track_of = {id(view): i for i, t in enumerate(tracks) for view in t.views}
    humans = [view for t in tracks for view in t.views if view.kind == "human"]
    for face_track in face_tracks:
        held = {track_of[id(h)] for h in (holder(view, humans) for view in face_track.views) if h is not None}
        for i in held:
            parent[root(i)] = root(min(held))
    merged: dict[int, Track] = {}
    for i, t in enumerate(tracks):
        merged.setdefault(root(i), Track()).views.extend(t.views)
    return list(merged.values())


def holder(face: Found, humans: list[Found]) -> Found | None:
    """The best-scoring human view on the face's frame whose box holds the face's centre and most of the face."""
    x0, y0, x1, y1 = face.box
    cx, cy, area = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) * (y1 - y0), 1e-9)
    inside = []
    for h in humans:
        hx0, hy0, hx1, hy1 = h.box
        overlap = max(0.0, min(x1, hx1) - max(x0, hx0)) * max(0.0, min(y1, hy1) - max(y0, hy0))
        if h.frame == face.frame and hx0 <= cx <= hx1 and hy0 <= cy <= hy1 and overlap / area >= 0.5:
            inside.append(h)
    return max(inside, key=lambda h: h.score, default=None)


def box_mask(box, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = pixel_box(box, height, width)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def visible_in_box(mask: np.ndarray, box) -> bool:
    """Whether the mask has any pixel inside the box (what the crops show)."""
    try:
        x0, y0, x1, y1 = pixel_box(box, *mask.shape)
    except ValueError:
        return False
    return bool(mask[y0:y1, x0:x1].any())


def write_png(run: Path, path: Path, image: np.ndarray) -> None:
    """RGB or RGBA array -> PNG, atomically."""
    code = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, code))
    if not ok:
        raise ValueError(f"cannot encode {path.name}")
    write_bytes(run, path, data.tobytes())


@lru_cache(maxsize=2)
def face_model(embedder: str, embedder_file: str, short_side: int, max_short_side: int):
    """dlib's face models, loaded once per CPU worker process (prepare tasks build a stage per batch)."""
    from model.curation.faces import FaceModel

    return FaceModel.load(embedder, embedder_file, short_side, max_short_side)


class Subjects(Stage):
    """`prepare` (CPU task): decode, GroundingDINO's processor and tokenizer, SAM's resize, dlib's
    faces. `process_batch` (model actor): GroundingDINO, SAM and CLIP, tensor work only, one clip at
    a time so a clip's answer never depends on its batch. `finish` (CPU task): merges, tracks,
    quality, RLE and the PNG crops."""

    name = "subjects"
    reads = "candidates"
    writes = "subjects"
    input_key = "clip_id"
    filters = rules_through("vlm")
    needs = "clip_path IS NOT NULL AND subjects_json IS NOT NULL"
    resources = Resources(cpus=1.0, uses_model=True, gpu_memory_gb=5)  # GroundingDINO-T + SAM-B + CLIP-L in bf16, 800x1333 inputs
    batch_size = 2
    Config = SubjectsConfig

    def setup(self) -> None:
        from model.curation.clip import ImageEmbedder
        from model.curation.device import runtime
        from model.curation.grounding import Detector
        from model.curation.regions import RegionModels
        from model.curation.segmenter import Segmenter

        cfg = self.config
        on, self.dtype = runtime()
        self.models = RegionModels(
            Detector.from_pretrained(cfg.detector, on, self.dtype),
            Segmenter.from_pretrained(cfg.segmenter, cfg.segmenter_file, cfg.segmenter_type).to(on, self.dtype),
            ImageEmbedder.load(cfg.clip, model_name(cfg.clip, cfg.random_weights)).to(on, self.dtype),
        )

    def prepare(self, item: Row) -> Row:
        """Decode the key frames and make the models' inputs (`inputs`)."""
        cfg = self.config
        if not item.get("clip_path") or item.get("subjects_json") is None:
            raise BadInput(f"clip {item['clip_id']} has no clip file or caption yet")
        frames = clip_frames(self.run_dir, item, cfg.clip_request())
        kinds = {}
        for s in json.loads(item["subjects_json"]) + DEFAULT_SUBJECTS:
            kinds.setdefault(s["label"], s["kind"])
        return self.inputs(item["clip_id"], [image for _, image in frames], [index for index, _ in frames], kinds)

    def inputs(self, clip_id: str, images: list[np.ndarray], frame_indices: list[int], kinds: dict[str, str]) -> Row:
        """The CPU work before the models on decoded key frames: faces (dlib), the detector's processor
        and tokenizer, SAM's resize. `kinds` maps each label to look for to its kind."""
        from model.curation.grounding import Detector
        from model.curation.segmenter import sam_input
        from model.hub import resolve

        cfg = self.config
        kinds = {label: kind for label, kind in kinds.items() if kind != "face"}  # faces: the face model
        return {
            "clip_id": clip_id,
            "frames": np.stack(images),
            "frame_indices": list(frame_indices),
            "kinds": kinds,
            "detector": Detector.inputs(resolve(cfg.detector), images, list(kinds)) if kinds else None,
            "sam": [sam_input(image, cfg.segmenter_type) for image in images],
            "faces": [self.find_faces(image, position) for position, image in enumerate(images)],
        }

    def process_batch(self, items: list[Row]) -> tuple[list[Row], list[Row]]:
        rows, errors = [], []
        for item in items:
            try:
                rows.append(self.process_clip(item))
            except Exception as exc:
                errors.append(error_row(self.name, item["clip_id"], exc))
        return rows, errors

    def process_clip(self, item: Row) -> Row:
        """Boxes, a mask per box and a CLIP embedding per masked cut-out, on every key frame."""
        cfg = self.config
        with self.timed("forward"):
            found = self.models.find(item["frames"], item["detector"], item["sam"], cfg.min_score, cfg.max_per_label * len(item["kinds"]))
        kept = {k: item[k] for k in ("clip_id", "frames", "frame_indices", "kinds", "faces")}
        return {**kept, "found": found, "dtype": str(self.dtype).removeprefix("torch.")}

    def finish(self, rows: dict[str, list[Row]]) -> dict[str, list[Row]]:
        """The model's finds of one clip -> its subject rows and reference crops."""
        return {self.writes: [row for work in rows.get(self.writes, []) for row in self.subjects(work)]}

    def subjects(self, item: Row) -> list[Row]:
        cfg = self.config
        frames = list(item["frames"])
        labels = list(item["kinds"])
        counts = {"boxes": 0, "zero_area": 0, "small": 0}
        per_frame = []
        for position, finds in enumerate(item["found"]):
            counts["boxes"] += len(finds.detections)
            kept = []
            for d, mask, embedding in zip(finds.detections, finds.masks, finds.embeddings):
                area = float(mask.mean())
                if not visible_in_box(mask, d.box):
                    counts["zero_area"] += 1
                elif area < cfg.min_area_fraction:
                    counts["small"] += 1
                else:
                    kept.append(Found(item["kinds"][d.label], d.label, position, d.score, d.box, mask, area, embedding))
            per_frame.append(merge_duplicates(kept, cfg.merge_iou))
        faces = item["faces"]
        for view in [f for found in per_frame + faces for f in found]:
            view.quality = rate(view, frames[view.frame], cfg.sharp_laplacian)
        face_tracks = link_faces(faces, cfg.face_same_distance)
        tracks = merge_humans_by_face(link_tracks(per_frame, cfg.track_iou), face_tracks)
        tracks = sorted(tracks, key=lambda t: -t.best().quality)[: cfg.max_subjects]
        face_tracks = sorted(face_tracks, key=lambda t: -t.best().quality)[: cfg.max_faces]
        if not tracks and not face_tracks:
            raise BadModelOutput(
                f"no subject kept: no face, {counts['boxes']} boxes above score {cfg.min_score} for {labels}, "
                f"{counts['zero_area']} masks of zero area, {counts['small']} below area {cfg.min_area_fraction}"
            )
        rank: dict[str, int] = {}
        rows = {}
        for t in tracks:
            f = t.best()
            rows[id(t)] = self.write(item, f, frames[f.frame], item["frame_indices"][f.frame], t.labels(), rank.setdefault(f.kind, 0))
            rank[f.kind] += 1
        # a face belongs to the human whose track has a view holding it on the face's frame
        subject_of = {id(view): rows[id(t)]["subject_id"] for t in tracks for view in t.views}
        humans = [view for t in tracks for view in t.views if view.kind == "human"]
        face_rows = []
        for position, t in enumerate(face_tracks):
            held = [h for h in (holder(view, humans) for view in t.views) if h is not None]
            f = t.best()
            human = subject_of[id(held[0])] if held else None
            face_rows.append(self.write(item, f, frames[f.frame], item["frame_indices"][f.frame], ["face"], position, human))
        return list(rows.values()) + face_rows

    def find_faces(self, image: np.ndarray, position: int) -> list[Found]:
        """Faces in one key frame (CPU: dlib): a margin box (the crop), the box as its mask, and the identity embedding."""
        cfg = self.config
        faces = face_model(cfg.face_embedder, cfg.face_embedder_file, cfg.face_detect_short_side, cfg.face_detect_max_short_side)
        found = [
            f for f in faces.detect(image)
            if faces.plausible(image, f, cfg.face_min_score, cfg.face_min_side, cfg.face_min_sharpness, cfg.face_min_confirmation)
        ][: cfg.max_faces * 2]  # fmt: skip
        if not found:
            return []
        embeddings = faces.embed(image, found)
        height, width = image.shape[:2]
        out = []
        for face, embedding in zip(found, embeddings):
            box = margin_box(face.box, height, width, cfg.face_margin)
            mask = box_mask(box, height, width)
            out.append(Found("face", "face", position, face.score, box, mask, float(mask.mean()), embedding, frontal(face.landmarks)))
        return out

    def write(self, item: Row, f: Found, image: np.ndarray, frame_index: int, labels: list[str], rank: int,
              human_id: str | None = None) -> Row:  # fmt: skip
        """Both crops as PNG under refs/<clip_id>/ and the subjects row."""
        subject_id = str(uuid.uuid5(SUBJECT_NAMESPACE, f"{item['clip_id']}/{f.kind}/{labels[0]}/{frame_index}/{f.box}"))
        folder = Path("refs") / item["clip_id"]
        (self.run_dir / folder).mkdir(parents=True, exist_ok=True)
        crop, masked = folder / f"{subject_id}.crop.png", folder / f"{subject_id}.masked.png"
        write_png(self.run_dir, self.run_dir / crop, box_crop(image, f.box))
        write_png(self.run_dir, self.run_dir / masked, masked_crop(image, f.mask, f.box))
        cfg = self.config
        return {
            "subject_id": subject_id,
            "clip_id": item["clip_id"],
            "kind": f.kind,
            "label": labels[0],
            "labels": labels,
            "quality": f.quality,
            "rank": rank,
            "frame_index": frame_index,
            "box": [float(v) for v in f.box],
            "mask_rle": rle_encode(f.mask),
            "score": f.score,
            "area_fraction": f.area_fraction,
            "crop_path": str(crop),
            "masked_path": str(masked),
            "dtype": "float32" if f.kind == "face" else item["dtype"],  # dlib's faces run in fp32 on the CPU
            **(
                {
                    "model": f"{FACE_DETECTOR} + {embedder_name(cfg.face_embedder)}",
                    "random_weights": False,
                    "embedding": f.embedding.tolist(),
                    "embedding_model": embedder_name(cfg.face_embedder),
                    "human_id": human_id,
                }
                if f.kind == "face"
                else {
                    "model": model_name(f"{cfg.detector} + {cfg.segmenter}", cfg.random_weights),
                    "random_weights": cfg.random_weights,
                    "embedding": f.embedding.tolist() if f.embedding is not None else None,
                    "embedding_model": model_name(cfg.clip, cfg.random_weights),
                }
            ),
        }
