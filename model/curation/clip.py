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
    """L2-normalised CLIP image embeddings of masked cut-outs, each on a grey square, as tensor work on the model's device.

    For reference crops: a subject's masked crop on a flat grey background, so two crops compare by
    the subject and not by the scene around it (NearID: shared backgrounds fool CLIP). The square
    is resized as open_clip's `preprocess` resizes (bicubic, antialiased) and normalised by the
    checkpoint's mean and std.
    """

    def __init__(self, model: nn.Module, name: str):
        import torch

        self.model, self.name = model.eval(), name
        preprocess = model.visual.preprocess_cfg
        self.size = int(np.atleast_1d(preprocess["size"])[0])
        self.mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)

    @classmethod
    def load(cls, ref: str, name: str) -> ImageEmbedder:
        model, _, _ = load_clip(ref)
        return cls(model, name)

    def to(self, device: str, dtype=None) -> ImageEmbedder:
        self.model.to(device, dtype)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def pixels(self, frame, masks, boxes: list[tuple[int, int, int, int]]):
        """(n, 3, size, size) normalised inputs: each integer box's pixels where its mask is set, grey (127)
        elsewhere, centred on a grey square of its longer side; `frame` (h, w, 3) and `masks` (n, h, w) are tensors."""
        import torch
        import torch.nn.functional as F

        image = frame.permute(2, 0, 1).float()
        squares = []
        for mask, (x0, y0, x1, y1) in zip(masks, boxes):
            h, w = max(y1 - y0, 1), max(x1 - x0, 1)
            side = max(h, w)
            square = torch.full((3, side, side), 127.0, device=image.device)
            top, left = (side - h) // 2, (side - w) // 2
            cut = torch.where(mask[y0:y1, x0:x1], image[:, y0:y1, x0:x1], 127.0)
            square[:, top : top + cut.shape[1], left : left + cut.shape[2]] = cut
            squares.append(F.interpolate(square[None], size=(self.size, self.size), mode="bicubic", antialias=True).clamp(0, 255).round())
        return (torch.cat(squares) / 255.0 - self.mean) / self.std

    def embed_cutouts(self, frame, masks, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
        """(n, d) float32 unit embeddings of the cut-outs (see `pixels`)."""
        import torch

        if not boxes:
            return np.zeros((0, 0), np.float32)
        with torch.inference_mode():
            x = self.pixels(frame, masks, boxes).to(next(self.model.parameters()).dtype)
            features = self.model.encode_image(x).float()
            features = features / features.norm(dim=-1, keepdim=True)
        return features.cpu().numpy().astype(np.float32)
