"""model/hub.py: local folders, the Hugging Face cache, and one error naming every missing model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from model.hub import MissingWeights, missing, require, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding one snapshot of `acme/tiny-model`, laid out as the hub client writes it."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_a_local_folder_resolves_to_itself(tmp_path):
    assert resolve(str(tmp_path)) == str(tmp_path)


def test_a_cached_hub_id_resolves_to_its_snapshot(hub_cache):
    assert resolve("acme/tiny-model") == str(hub_cache)


def test_an_uncached_hub_id_raises_missing_weights_with_the_way_to_get_it(hub_cache):
    with pytest.raises(MissingWeights) as error:
        resolve("acme/absent-model")
    message = str(error.value)
    assert "acme/absent-model" in message and "not in the Hugging Face cache" in message
    assert "make weights" in message and "local folder" in message


def test_a_missing_local_path_says_so(tmp_path):
    with pytest.raises(MissingWeights, match="no such local folder"):
        resolve(str(tmp_path / "nowhere"))


def test_missing_lists_only_the_absent_models_fast(hub_cache, tmp_path):
    refs = {
        "mllm": "acme/tiny-model",
        "dit": "acme/absent-model",
        "vae": str(tmp_path / "nowhere"),
        "here": str(tmp_path),
    }
    started = time.perf_counter()
    absent = missing(refs)
    assert time.perf_counter() - started < 5
    assert absent == ["dit (acme/absent-model)", f"vae ({tmp_path / 'nowhere'})"]


def test_require_names_every_missing_model_in_one_error(hub_cache, tmp_path):
    refs = {"mllm": "acme/tiny-model", "dit": "acme/absent-model", "vae": str(tmp_path / "nowhere")}
    with pytest.raises(MissingWeights) as error:
        require(refs)
    assert error.value.missing == {"dit": "acme/absent-model", "vae": str(tmp_path / "nowhere")}
    assert "dit: acme/absent-model" in str(error.value) and "vae: " in str(error.value)
    assert "mllm" not in str(error.value)


def test_require_returns_local_folders_when_all_are_there(hub_cache, tmp_path):
    assert require({"mllm": "acme/tiny-model", "dit": str(tmp_path)}) == {"mllm": str(hub_cache), "dit": str(tmp_path)}


# Files of the full profile's hub repositories, as their public file listings show them (the
# timm CLIP listing as open_clip's hub loading expects it next to timm's own weights).
LISTINGS = {
    "timm/vit_large_patch14_clip_224.openai": [
        ".gitattributes", "README.md", "config.json", "model.safetensors", "pytorch_model.bin",
        "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
    ],
    "trl-lib/ddpo-aesthetic-predictor": [".gitattributes", "README.md", "aesthetic-model.pth"],
    "Qwen/Qwen2.5-VL-3B-Instruct": [
        ".gitattributes", "LICENSE", "README.md", "chat_template.json", "config.json", "generation_config.json",
        "merges.txt", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    ],
    "IDEA-Research/grounding-dino-tiny": [
        ".gitattributes", "README.md", "added_tokens.json", "config.json", "model.safetensors", "preprocessor_config.json",
        "pytorch_model.bin", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    ],
    "ybelkada/segment-anything": [
        "checkpoints/sam_vit_b_01ec64.pth", "checkpoints/sam_vit_l_0b3195.pth", "checkpoints/sam_vit_h_4b8939.pth",
        "checkpoints/mobile_sam.pth", "checkpoints/efficientsam_s.pth", "checkpoints/efficientsam_ti.pth",
    ],
    "zai-org/CogVideoX-5b": [
        ".gitattributes", "LICENSE", "README.md", "README_zh.md", "configuration.json", "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json",
        "tokenizer/added_tokens.json", "tokenizer/special_tokens_map.json", "tokenizer/spiece.model",
        "tokenizer/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ],
    "facebook/dino-vits16": [".gitattributes", "README.md", "config.json", "preprocessor_config.json", "pytorch_model.bin"],
    "lithiumice/ArcFace_PyTorch": [".gitattributes", "ms1mv3_arcface_r100_fp16.pth", "InsightFace_Pytorch+model_ir_se50.pth"],
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": [
        ".gitattributes", "LICENSE.txt", "README.md", "assets/comp_effic.png", "examples/i2v_input.JPG", "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", *(f"text_encoder/model-0000{i}-of-00005.safetensors" for i in range(1, 6)),
        "text_encoder/model.safetensors.index.json",
        "tokenizer/special_tokens_map.json", "tokenizer/spiece.model", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ],
}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """`snapshot_download` over LISTINGS, filtered as the hub client filters them: {repo: files fetched}."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    fetched: dict[str, set[str]] = {}

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None):
        folder = tmp_path / "hub" / repo_id
        for name in filter_repo_objects(LISTINGS[repo_id], allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).touch()
            fetched.setdefault(repo_id, set()).add(name)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)  # model.hub imports it where used
    return fetched


def test_make_weights_fetches_only_the_files_each_loader_reads(fake_hub):
    from pipeline.__main__ import download_weights
    from pipeline.config import load_config

    download_weights(load_config())

    # every part and model_index.json (what the base refuses by); no README, LICENSE
    cogvideox = {name for name in LISTINGS["zai-org/CogVideoX-5b"] if "/" in name} | {"model_index.json"}
    assert fake_hub == {
        "timm/vit_large_patch14_clip_224.openai": {"open_clip_config.json", "open_clip_model.safetensors"},
        "trl-lib/ddpo-aesthetic-predictor": {"aesthetic-model.pth"},
        "Qwen/Qwen2.5-VL-3B-Instruct": set(LISTINGS["Qwen/Qwen2.5-VL-3B-Instruct"]) - {".gitattributes", "LICENSE", "README.md"},
        "IDEA-Research/grounding-dino-tiny": set(LISTINGS["IDEA-Research/grounding-dino-tiny"])
        - {".gitattributes", "README.md", "pytorch_model.bin"},
        "ybelkada/segment-anything": {"checkpoints/sam_vit_b_01ec64.pth"},
        "zai-org/CogVideoX-5b": cogvideox,
        # no safetensors on its main branch: the pickled weights, loaded with weights_only
        "facebook/dino-vits16": {"config.json", "preprocessor_config.json", "pytorch_model.bin"},
        "lithiumice/ArcFace_PyTorch": {"ms1mv3_arcface_r100_fp16.pth"},
    }


def test_make_weights_for_a_wan_config_fetches_its_parts_and_umt5(fake_hub):
    """`make weights CONFIG=configs/train_wan_1_3b.yaml`: the Wan repository's DiT, VAE, scheduler, UMT5 and
    model_index.json; not its README, assets or examples."""
    from pipeline.__main__ import download_weights
    from pipeline.config import load_config

    config = Path(__file__).resolve().parents[1] / "configs" / "train_wan_1_3b.yaml"
    download_weights(load_config(None, [f"encode.train_config={config}"]))
    wan = LISTINGS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]
    assert fake_hub["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"] == {n for n in wan if n.split("/")[0] in PARTS} | {"model_index.json"}
    assert "zai-org/CogVideoX-5b" not in fake_hub


PARTS = {"transformer", "vae", "scheduler", "text_encoder", "tokenizer"}
