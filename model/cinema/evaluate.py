"""Metrics for generated reference-to-video samples, with the names and definitions of the papers that report them.

Input: a JSONL file, one sample a line: `{"video": "a.mp4", "prompt": "...", "references":
[{"image": "ref.png", "kind": "human|face|object", "label": "woman"}]}`, paths relative to the file.
Output: `OUT/metrics.parquet` (one row per sample) and `OUT/metrics.md` (the means, then each sample).
Exit codes: 0 done, 2 unreadable samples file, 4 model weights missing (nothing was run).

Every similarity is a plain cosine in [-1, 1] (papers often print it times 100):
- `clip_t`: CLIP-T, prompt vs frame CLIP embeddings, mean over frames (DreamBooth, Ruiz et al.,
  CVPR 2023, per frame as video personalisation papers report it).
- `clip_i`, `dino_i`: CLIP-I and DINO-I (DreamBooth), reference vs the best-matching region of each
  frame: GroundingDINO (the curation detector) boxes the reference's label in every frame; the
  region most similar to the reference counts, the whole frame when nothing is detected (`detected`
  is the share of frames with a box); mean over frames, then over references. DINO is the CLS token
  (DreamBooth used DINO ViT-S/16). Region-level subject similarity follows MSRVTT-Personalization
  (Chen et al., "Multi-subject Open-set Personalization in Video Generation", CVPR 2025).
- `face_sim`: ArcFace similarity of face references (FaceSim-Arc in ConsisID, Yuan et al., 2024),
  on face boxes of the same detector, unaligned crops; null without a face reference.
- `temporal_consistency`: mean CLIP cosine of consecutive frames (frame consistency of Gen-1,
  Esser et al., ICCV 2023).
- `motion`: motion magnitude in the curation motion score's units (stages/motion.py's flow: mean
  optical flow, % of the frame diagonal per second), but over every pair of consecutive frames
  rather than 2 frames a second, so compare it with other generated videos, not with curation scores.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from manifests.exits import EXIT_MISSING_WEIGHTS, UsageError, command, read_yaml, validated
from model.hub import MissingWeights, quiet_loads, require, resolve_file
from stages.crops import box_crop
from stages.motion import motion_parts
from stages.video import iter_frames

METRICS = ["clip_t", "clip_i", "dino_i", "face_sim", "detected", "temporal_consistency", "motion"]
TINY_MODELS = {"clip": "clip_eval", "dino": "dino", "detector": "grounding_dino", "face": "arcface"}


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip: str = "timm/vit_large_patch14_clip_224.openai"  # open_clip hub layout; papers vary (B/32, L/14): match the one you compare with
    dino: str = "facebook/dino-vits16"  # any transformers DINO / DINOv2 backbone
    detector: str = "IDEA-Research/grounding-dino-tiny"  # the curation detector
    face: str = "lithiumice/ArcFace_PyTorch"  # insightface arcface_torch r100 state dict; a personal mirror (README)
    face_file: str = "ms1mv3_arcface_r100_fp16.pth"
    min_score: float = 0.35  # detector box score, as subjects.min_score
    max_regions: int = 3  # best-scoring boxes per frame and reference
    motion_method: Literal["dis", "farneback"] = "dis"
    motion_height: int = 180  # flow is computed at most at this height, as the motion stage
    random_weights: bool = False  # tiny models: every row says its numbers mean nothing

    def weights(self) -> dict[str, tuple[str, str | None]]:
        """name -> (hub id or local folder, file inside it or None), as the stage configs give them."""
        return {
            "eval.clip": (self.clip, None),
            "eval.dino": (self.dino, None),
            "eval.detector": (self.detector, None),
            "eval.face": (self.face, self.face_file),
        }


def tiny_config(models: Path) -> EvalConfig:
    """Tiny random-initialised models built by `python -m model.testing.tiny DIR clip_eval dino grounding_dino arcface`."""
    refs = {key: str(Path(models) / name) for key, name in TINY_MODELS.items()}
    return EvalConfig(**refs, face_file="arcface.pth", min_score=0.0, random_weights=True)


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str
    kind: Literal["human", "face", "object"]
    label: str


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    video: str
    prompt: str
    references: list[Reference] = []


def read_samples(path: Path) -> list[Sample]:
    """The JSONL file's samples, with paths made absolute against its folder."""
    samples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = Sample.model_validate_json(line)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in error.errors())
            raise ValueError(f"{path}:{number}: {problems}") from None
        base = Path(path).parent
        sample.video = str(base / sample.video)
        for ref in sample.references:
            ref.image = str(base / ref.image)
        samples.append(sample)
    return samples


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of rows: (n, d), (m, d) -> (n, m)."""
    return torch.nn.functional.normalize(a.float(), dim=-1) @ torch.nn.functional.normalize(b.float(), dim=-1).T


def clip_t(text: torch.Tensor, frames: torch.Tensor) -> float:
    """CLIP-T: mean over frames of cos(prompt, frame)."""
    return float(cosine(text.view(1, -1), frames).mean())


def best_region_similarity(reference: torch.Tensor, regions_per_frame: list[torch.Tensor]) -> float:
    """Mean over frames of the highest cosine between the reference and any region of the frame."""
    return float(np.mean([float(cosine(reference.view(1, -1), regions).max()) for regions in regions_per_frame]))


def region_score(embed, reference: np.ndarray, crops: list[list[np.ndarray]]) -> float:
    """`best_region_similarity` with one forward of the embedding model for the reference and every crop."""
    embeddings = embed([reference] + [c for frame in crops for c in frame])
    per_frame = torch.split(embeddings[1:], [len(frame) for frame in crops])
    return best_region_similarity(embeddings[0], list(per_frame))


def temporal_consistency(frames: torch.Tensor) -> float:
    """Mean cosine of each frame's embedding with the next one's."""
    return float((torch.nn.functional.normalize(frames[:-1], dim=-1) * torch.nn.functional.normalize(frames[1:], dim=-1)).sum(-1).mean())


def motion_magnitude(frames: list[np.ndarray], fps: float, method: str, height: int) -> float:
    """The motion stage's score of consecutive frames: mean flow, % of the frame diagonal per second."""
    import cv2

    h, w = frames[0].shape[:2]
    scale = min(1.0, height / h)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    grey = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA) for f in frames]
    mean_px, _, _ = motion_parts(grey, method, patch=16, static_px=0.5)
    return 100.0 * mean_px / float(np.hypot(*size)) * fps


class Evaluator:
    """Loads the models once; `evaluate(sample)` returns one row of metrics."""

    def __init__(self, config: EvalConfig):
        from transformers import AutoImageProcessor, AutoModel

        from model.curation.clip import load_clip
        from model.curation.face import FaceEmbedder
        from model.curation.grounding import Detector

        self.config = config
        found = require({name: ref for name, (ref, _) in config.weights().items()})
        resolve_file(config.face, config.face_file)
        self.clip, self.clip_preprocess, self.tokenizer = load_clip(config.clip)
        self.dino = AutoModel.from_pretrained(found["eval.dino"]).eval()
        self.dino_processor = AutoImageProcessor.from_pretrained(found["eval.dino"])
        self.detector = Detector.from_pretrained(found["eval.detector"])
        self.face = FaceEmbedder.from_pretrained(config.face, config.face_file)

    @torch.inference_mode()
    def clip_images(self, images: list[np.ndarray]) -> torch.Tensor:
        from PIL import Image

        return self.clip.encode_image(torch.stack([self.clip_preprocess(Image.fromarray(i)) for i in images])).float()

    @torch.inference_mode()
    def clip_text(self, text: str) -> torch.Tensor:
        return self.clip.encode_text(self.tokenizer([text]))[0].float()

    @torch.inference_mode()
    def dino_images(self, images: list[np.ndarray]) -> torch.Tensor:
        # HxWx3 always: a crop 3 pixels high is not channels-first ("channel dimension is ambiguous")
        inputs = self.dino_processor(images=images, return_tensors="pt", input_data_format="channels_last")
        return self.dino(**inputs).last_hidden_state[:, 0].float()  # CLS token

    def regions(self, frames: list[np.ndarray], label: str) -> tuple[list[list[np.ndarray]], float]:
        """Per frame, the crops of the best boxes for `label` (the whole frame if none), and the share detected."""
        found = self.detector.detect(self.detector.inputs(self.detector.folder, frames, [label]), self.config.min_score)
        crops, hits = [], 0
        for frame, detections in zip(frames, found):
            boxes = [d.box for d in sorted(detections, key=lambda d: -d.score)[: self.config.max_regions]]
            kept = []
            for box in boxes:
                try:
                    kept.append(box_crop(frame, box))
                except ValueError:  # a box with no pixels inside the frame
                    continue
            hits += bool(kept)
            crops.append(kept or [frame])
        return crops, hits / len(frames)

    def evaluate(self, sample: Sample) -> dict:
        from model.cinema.model import on_white

        decoded = list(iter_frames(sample.video, fmt="rgb24"))
        if len(decoded) < 2:
            raise ValueError(f"{sample.video}: {len(decoded)} frame(s) decode; the metrics need 2")
        frames = [f.image for f in decoded]
        frame_clip = self.clip_images(frames)
        row = {
            "video": sample.video,
            "prompt": sample.prompt,
            "n_frames": len(frames),
            "n_references": len(sample.references),
            "clip_t": clip_t(self.clip_text(sample.prompt), frame_clip),
            "temporal_consistency": temporal_consistency(frame_clip),
            "motion": motion_magnitude(frames, video_fps(sample.video), self.config.motion_method, self.config.motion_height),
        }
        clip_i, dino_i, face, detected = [], [], [], []
        for ref in sample.references:
            image = np.asarray(on_white(Path(ref.image).read_bytes()))
            crops, share = self.regions(frames, ref.label)
            detected.append(share)
            clip_i.append(region_score(self.clip_images, image, crops))
            dino_i.append(region_score(self.dino_images, image, crops))
            if ref.kind == "face":
                face.append(region_score(self.face.embed, image, crops))
        mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
        row.update(clip_i=mean(clip_i), dino_i=mean(dino_i), face_sim=mean(face), detected=mean(detected))
        row["random_weights"] = self.config.random_weights
        return row


def video_fps(path: str) -> float:
    from stages.video import open_video

    container, stream = open_video(path, threads=False)
    try:
        return float(stream.average_rate or stream.guessed_rate or 8)
    finally:
        container.close()


SCHEMA = pa.schema(
    [pa.field("video", pa.string()), pa.field("prompt", pa.string()), pa.field("n_frames", pa.int32()), pa.field("n_references", pa.int32())]
    + [pa.field(m, pa.float64()) for m in METRICS]
    + [pa.field("random_weights", pa.bool_())]
)


def write_results(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """`metrics.parquet` and `metrics.md` in `out`, each written under a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    table, markdown = out / "metrics.parquet", out / "metrics.md"
    tmp = out / ".tmp-metrics.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
    os.replace(tmp, table)
    tmp = out / ".tmp-metrics.md"
    tmp.write_text(markdown_table(rows))
    os.replace(tmp, markdown)
    return table, markdown


def markdown_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "–" if value is None else f"{value:.4f}"

    def mean(metric: str):
        values = [r[metric] for r in rows if r[metric] is not None]
        return float(np.mean(values)) if values else None

    lines = []
    if any(r["random_weights"] for r in rows):
        lines += ["**RANDOM WEIGHTS: these numbers come from random-initialised models and mean nothing.**", ""]
    lines += ["| sample | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines.append(f"| **mean of {len(rows)}** | " + " | ".join(cell(mean(m)) for m in METRICS) + " |")
    lines += [f"| {Path(r['video']).name} | " + " | ".join(cell(r[m]) for m in METRICS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.cinema.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("samples", type=Path, help="JSONL: {video, prompt, references: [{image, kind, label}]} per line")
    p.add_argument("--out", type=Path, help="folder for metrics.parquet and metrics.md (default: SAMPLES' folder/eval)")
    p.add_argument("--config", type=Path, help="YAML of EvalConfig values (model refs)")
    p.add_argument("--tiny-models", type=Path, help="use the tiny random models built in this folder instead")
    args = p.parse_args(argv)
    quiet_loads()
    if args.tiny_models:
        config = tiny_config(args.tiny_models)
    else:
        config = validated(EvalConfig, read_yaml(args.config) if args.config else {})
    try:
        samples = read_samples(args.samples)
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from None
    try:
        evaluator = Evaluator(config)
    except MissingWeights as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_MISSING_WEIGHTS
    rows = [evaluator.evaluate(sample) for sample in samples]
    table, markdown = write_results(rows, args.out or args.samples.parent / "eval")
    print(markdown.read_text())
    print(f"wrote {table} and {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
