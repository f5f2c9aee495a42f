"""model/curation/clip.py: OpenAI's CLIP builds with QuickGELU whatever its open_clip_config.json says; no weights fails."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from huggingface_hub import constants
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from model.curation.clip import load_clip, registry_quick_gelu
from model.hub import MissingWeights

OPENAI_L14 = "timm/vit_large_patch14_clip_224.openai"  # the aesthetic and eval default
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {  # no "quick_gelu" key: open_clip alone would build nn.GELU
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def write_clip(folder, weights: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    if weights:
        torch.manual_seed(0)
        save_file(open_clip.CLIP(**TINY).state_dict(), folder / "open_clip_model.safetensors")


def cache_snapshot(tmp_path, monkeypatch, repo_id: str):
    """The folder `snapshot_download` returns for `repo_id` in a Hugging Face cache under tmp_path."""
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo / "snapshots" / COMMIT


def activations(model: torch.nn.Module) -> set[type]:
    return {type(block.mlp.gelu) for block in model.visual.transformer.resblocks} | {
        type(block.mlp.gelu) for block in model.transformer.resblocks
    }


def test_openai_l14_from_the_hub_cache_builds_quick_gelu(tmp_path, monkeypatch):
    assert registry_quick_gelu(OPENAI_L14) and not registry_quick_gelu("acme/some-clip")
    write_clip(cache_snapshot(tmp_path, monkeypatch, OPENAI_L14))
    model, preprocess, tokenizer = load_clip(OPENAI_L14)
    assert activations(model) == {QuickGELU}
    assert not model.training
    assert tokenizer(["a dog"]).shape == (1, 8)


def test_a_folder_keeps_its_configs_activation(tmp_path):
    write_clip(tmp_path / "clip")
    model, _, _ = load_clip(str(tmp_path / "clip"))
    assert activations(model) == {torch.nn.GELU}


def test_a_folder_without_weights_fails_instead_of_building_random_ones(tmp_path):
    write_clip(tmp_path / "clip", weights=False)
    with pytest.raises(MissingWeights, match="open_clip_model.safetensors"):
        load_clip(str(tmp_path / "clip"))
