"""model/testing/tiny.py: seeded tiny models of the real classes, in the real checkpoints' folder layout."""

from __future__ import annotations

import json

import pytest
from model_fixtures import cinema_tiny  # noqa: F401  (fixture)

from model.testing.tiny import BUILDERS, ensure, main


def _file_bytes(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_builds_are_deterministic(tmp_path, cinema_tiny):
    again = ensure(tmp_path, ["qwen2_5_vl", "cogvideox_5b"])
    for name in ["qwen2_5_vl", "cogvideox_5b"]:
        assert _file_bytes(again / name) == _file_bytes(cinema_tiny / name), name


def test_cogvideox_folders_have_the_diffusers_checkpoint_layout(cinema_tiny):
    for layout, rotary, scaling in [("2b", False, 1.15258426), ("5b", True, 0.7)]:
        folder = cinema_tiny / f"cogvideox_{layout}"
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == "CogVideoXPipeline"
        for part in ["transformer", "vae", "scheduler", "text_encoder", "tokenizer"]:
            assert (folder / part).is_dir()
        assert list((folder / "transformer").glob("*.safetensors"))
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        assert transformer["use_rotary_positional_embeddings"] is rotary
        assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == scaling


def test_qwen_folders_reload_as_model_and_processor(cinema_tiny):
    from transformers import AutoModel, AutoProcessor

    for name in ["qwen2_vl", "qwen2_5_vl"]:
        processor = AutoProcessor.from_pretrained(cinema_tiny / name)
        model = AutoModel.from_pretrained(cinema_tiny / name)
        assert processor.image_token_id == model.config.image_token_id
        assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == model.config.get_text_config().eos_token_id


def test_ensure_keeps_what_is_built_and_leaves_no_staging(tmp_path):
    ensure(tmp_path, ["qwen2_vl"])
    marker = tmp_path / "qwen2_vl" / "config.json"
    stamp = marker.stat().st_mtime_ns
    ensure(tmp_path, ["qwen2_vl"])
    assert marker.stat().st_mtime_ns == stamp
    assert sorted(path.name for path in tmp_path.iterdir()) == ["qwen2_vl"]


def test_cli_builds_named_models_and_rejects_unknown_ones(tmp_path, capsys):
    main([str(tmp_path), "qwen2_vl"])
    assert (tmp_path / "qwen2_vl" / "model.safetensors").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path), "no_such_model"])
    assert "no_such_model" in capsys.readouterr().err


def test_registry_names_the_cinema_models():
    assert {"qwen2_vl", "qwen2_5_vl", "cogvideox_2b", "cogvideox_5b"} <= set(BUILDERS)
