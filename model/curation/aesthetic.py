"""The LAION improved aesthetic predictor: a small MLP on L2-normalised CLIP ViT-L/14 image embeddings.

CLIP loads through model/curation/clip.py (open_clip hub layout: `open_clip_config.json` and
weights), the head from its published state dict (`torch.load(weights_only=True)`), so the tiny
profile's random models go through exactly this code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.curation.clip import load_clip
from model.curation.device import tensor
from model.hub import resolve_file


class AestheticHead(nn.Module):
    """The published MLP: Linear(d,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout Linear(64,16) Linear(16,1)."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def load_head(ref: str, filename: str) -> AestheticHead:
    state = torch.load(resolve_file(ref, filename), map_location="cpu", weights_only=True)
    head = AestheticHead(embed_dim=state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval()


class AestheticScorer(nn.Module):
    """uint8 RGB frames (already resized to the CLIP input size) -> one LAION score per frame."""

    def __init__(self, clip: nn.Module, head: AestheticHead):
        super().__init__()
        self.clip = clip.eval()
        self.head = head.eval()
        preprocess = clip.visual.preprocess_cfg  # set by open_clip from the checkpoint's config
        self.image_size = int(np.atleast_1d(preprocess["size"])[0])
        self.register_buffer("mean", torch.tensor(preprocess["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess["std"]).view(1, 3, 1, 1))

    @classmethod
    def from_pretrained(cls, clip_ref: str, head_ref: str, head_file: str) -> AestheticScorer:
        clip, _, _ = load_clip(clip_ref)
        return cls(clip, load_head(head_ref, head_file))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> torch.Tensor:
        """(n, size, size, 3) uint8 -> (n, d) L2-normalised image embeddings."""
        if frames.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"frames are {frames.shape[1:3]}, CLIP expects {self.image_size}x{self.image_size}")
        pixels = tensor(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        features = self.clip.encode_image(((pixels - self.mean.float()) / self.std.float()).to(self.mean.dtype)).float()
        return features / features.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def score(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings.to(self.mean.dtype)).squeeze(-1)
