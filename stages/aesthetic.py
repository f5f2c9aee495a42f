"""aesthetic: LAION aesthetic score (CLIP ViT-L/14 embedding + MLP head) of a few frames per window.

The mean of the frames' unit CLIP embeddings (renormalised) is kept per window: the dedup stage
compares windows by it, so near-duplicates cost no second model pass.

Frames are the window's grid frames (`stages.video.window_frames`): kept by the scene pass's decode
when both run, else read from the source, so windows that fail the threshold are never encoded. `prepare` decodes and crops in CPU tasks; the actor only runs CLIP.
"""

from __future__ import annotations

import numpy as np

from manifests.filters import rules_through
from stages.base import ModelStageConfig, Resources, Row, Stage, error_row
from stages.video import window_frames


class AestheticConfig(ModelStageConfig):
    clip: str = "timm/vit_large_patch14_clip_224.openai"  # open_clip hub layout
    head: str = "trl-lib/ddpo-aesthetic-predictor"  # holds sac+logos+ava1-l14-linearMSE as aesthetic-model.pth
    head_file: str = "aesthetic-model.pth"
    image_size: int = 224  # CLIP's input; checked against the loaded model
    n_frames: int = 4

    def weights(self) -> dict[str, tuple[str, str | None]]:
        return {"aesthetic.clip": (self.clip, None), "aesthetic.head": (self.head, self.head_file)}

    def window_request(self, width: int, height: int) -> tuple[int, tuple[int, int]]:
        """Frames per window, and their size (as stored): the short side at CLIP's input size."""
        scale = self.image_size / min(width, height)
        return self.n_frames, (max(self.image_size, round(width * scale)), max(self.image_size, round(height * scale)))


def center_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return image[y : y + side, x : x + side]


def model_name(ref: str, random_weights: bool) -> str:
    return f"{ref} (random weights)" if random_weights else ref


class Aesthetic(Stage):
    name = "aesthetic"
    reads = "candidates"
    writes = "aesthetic"
    input_key = "clip_id"
    filters = rules_through("camera")
    resources = Resources(cpus=1.0, uses_model=True, gpu_memory_gb=3)  # CLIP ViT-L/14 + head in bf16, 32 frames
    batch_size = 8
    Config = AestheticConfig

    def setup(self) -> None:
        from model.curation.aesthetic import AestheticScorer
        from model.curation.device import runtime

        cfg = self.config
        self.device, self.dtype = runtime()
        self.scorer = AestheticScorer.from_pretrained(cfg.clip, cfg.head, cfg.head_file).to(self.device, self.dtype)
        if self.scorer.image_size != cfg.image_size:
            raise ValueError(f"aesthetic.image_size is {cfg.image_size} but {cfg.clip} takes {self.scorer.image_size}")

    def prepare(self, item: Row) -> Row:
        """Decode n frames, scaled so the short side is `image_size`, upright, centre-cropped square."""
        count, size = self.config.window_request(item["width"], item["height"])
        frames = [center_square(f) for f in window_frames(self.run_dir, item, count, size)]
        return {"clip_id": item["clip_id"], "frames": np.stack(frames)}

    def process_batch(self, items: list[Row]) -> tuple[list[Row], list[Row]]:
        """One CLIP forward for every frame of the batch on a GPU (bf16 answers move within its tolerance
        with the batch); one per clip on the CPU, where a clip's scores are then exactly the same in any batch."""
        groups = [items] if self.device == "cuda" else [[item] for item in items]
        rows, errors = [], []
        for group in groups:
            try:
                with self.timed("forward"):
                    embeddings = self.scorer.embed(np.concatenate([item["frames"] for item in group]))
                    scores = self.scorer.score(embeddings).float().cpu().numpy()
                    embeddings = embeddings.float().cpu().numpy()
            except Exception as exc:
                errors += [error_row(self.name, item["clip_id"], exc) for item in group]
                continue
            at = 0
            for item in group:
                n = len(item["frames"])
                rows.append(self.row(item["clip_id"], scores[at : at + n].astype(float), embeddings[at : at + n]))
                at += n
        return rows, errors

    def row(self, clip_id: str, scores: np.ndarray, embeddings: np.ndarray) -> Row:
        mean = embeddings.mean(0)
        return {
            "clip_id": clip_id,
            "score": float(scores.mean()),
            "score_min": float(scores.min()),
            "n_frames": len(scores),
            "model": model_name(self.config.clip, self.config.random_weights),
            "random_weights": self.config.random_weights,
            "embedding": (mean / max(float(np.linalg.norm(mean)), 1e-12)).tolist(),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
