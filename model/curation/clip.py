"""CLIP through open_clip, from a folder in open_clip's hub layout: `open_clip_config.json` and
`open_clip_model.safetensors` (the only files `make weights` fetches; hub repositories such as
timm's also hold the same weights as pytorch_model.bin and model.safetensors for timm).

open_clip builds a folder's model from `open_clip_config.json` alone: a config without
`"quick_gelu": true` builds plain GELU, and OpenAI's CLIP (trained with QuickGELU) then gives
shifted embeddings without any error. So for a hub id that open_clip's own pretrained registry
knows (`timm/vit_large_patch14_clip_224.openai` is its ViT-L-14 `openai` tag), the registry's
QuickGELU setting wins. open_clip also only warns when a folder has no weights: here that fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
from torch import nn

from model.hub import MissingWeights, resolve

FILES = ["open_clip_config.json", "open_clip_model.safetensors"]


def registry_quick_gelu(ref: str) -> bool:
    """Whether open_clip's pretrained registry says the weights at hub id `ref` were trained with QuickGELU."""
    for name, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if cfg.get("hf_hub", "").rstrip("/") == ref.rstrip("/") and cfg.get("quick_gelu", False):
            return True
    return False


def load_clip(ref: str) -> tuple[nn.Module, Callable, Callable]:
    """(model in eval mode, image preprocess, tokenizer) of the CLIP at `ref` (hub id or folder)."""
    folder = Path(resolve(ref))
    absent = [name for name in FILES if not (folder / name).is_file()]
    if absent:
        raise MissingWeights({f"{ref}/{name}": f"{ref}/{name}" for name in absent})
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{folder}", force_quick_gelu=registry_quick_gelu(ref)
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


class ImageEmbedder:
    """L2-normalised CLIP image embeddings of RGB uint8 images of any size (each padded to a square first).

    For reference crops: a subject's masked crop on a flat grey background, so two crops compare by
    the subject and not by the scene around it (NearID: shared backgrounds fool CLIP).
    """

    def __init__(self, model: nn.Module, name: str):
        import torch

        self.model, self.name = model, name
        preprocess = model.visual.preprocess_cfg
        self.size = int(np.atleast_1d(preprocess["size"])[0])
        self.mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)

    @classmethod
    def load(cls, ref: str, name: str) -> ImageEmbedder:
        model, _, _ = load_clip(ref)
        return cls(model, name)

    def to(self, device: str) -> ImageEmbedder:
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def square(self, image: np.ndarray) -> np.ndarray:
        """The image centred on a grey square of its longer side, resized to CLIP's input."""
        import cv2

        h, w = image.shape[:2]
        side = max(h, w)
        canvas = np.full((side, side, 3), 127, np.uint8)
        canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = image
        return cv2.resize(canvas, (self.size, self.size), interpolation=cv2.INTER_AREA if side > self.size else cv2.INTER_CUBIC)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """(n, d) float32, unit length."""
        import torch

        if not images:
            return np.zeros((0, 0), np.float32)
        pixels = np.stack([self.square(image) for image in images])
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.mean.device).permute(0, 3, 1, 2).float() / 255.0
            features = self.model.encode_image((x - self.mean) / self.std).float()
            features = features / features.norm(dim=-1, keepdim=True)
        return features.cpu().numpy().astype(np.float32)

