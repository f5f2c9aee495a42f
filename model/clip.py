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
