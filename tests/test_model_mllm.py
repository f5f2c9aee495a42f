"""model/cinema/mllm.py: the Qwen2-VL-family encoder over instruction, reference images and caption."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import cinema_tiny, images, one_thread  # noqa: F401  (fixtures)

from model.cinema.mllm import TEMPLATES, MLLMEncoder, load_instruction

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {"qwen2_vl": 48, "qwen2_5_vl": 64}  # the tiny models' hidden sizes differ on purpose


@pytest.fixture(scope="module", params=list(FAMILIES))
def encoder(request, cinema_tiny):
    return MLLMEncoder.from_pretrained(str(cinema_tiny / request.param), max_pixels=56 * 56), FAMILIES[request.param]


def test_states_for_zero_one_and_four_references_in_one_batch(encoder):
    mllm, hidden = encoder
    output = mllm([[], images(1), images(4, seed=1)], ["a dog", "a man walks his dog", "two women and two cats"])
    assert mllm.hidden_size == hidden
    assert output.states.shape[0] == 3 and output.states.shape[2] == hidden
    assert output.mask.shape == output.states.shape[:2] and output.mask.dtype == torch.bool
    real = output.mask.sum(1)
    assert real[0] < real[1] < real[2]  # every image adds its vision tokens


def test_padding_changes_nothing_on_the_real_tokens(encoder):
    mllm, _ = encoder
    with torch.no_grad():
        alone = mllm([images(1)], ["a man walks his dog"])
        batched = mllm([images(1), images(4, seed=1)], ["a man walks his dog", "a much longer caption " * 5])
    length = int(alone.mask.sum())
    assert int(batched.mask[0].sum()) == length and not batched.mask[0, length:].any()
    torch.testing.assert_close(batched.states[0, :length], alone.states[0, :length], atol=1e-5, rtol=1e-5)


def test_reference_images_change_the_states(encoder):
    mllm, _ = encoder
    with torch.no_grad():
        first = mllm([images(1, seed=0)], ["a man"])
        second = mllm([images(1, seed=5)], ["a man"])
    assert not torch.allclose(first.states, second.states)


def test_encoder_is_frozen(encoder):
    mllm, _ = encoder
    assert not mllm.training and not any(p.requires_grad for p in mllm.parameters())
    assert not mllm([images(1)], ["a cat"]).states.requires_grad


def test_chat_carries_the_versioned_instruction_and_one_slot_per_image(encoder):
    mllm, _ = encoder
    chat = mllm.chat(images(3), "a man walks his dog")
    assert load_instruction("instruction_v1") in chat
    assert chat.count("<|vision_start|>") == 3 and "a man walks his dog" in chat
    assert (TEMPLATES / "instruction_v1.txt").exists()


def test_unknown_template_version_fails():
    with pytest.raises(FileNotFoundError):
        load_instruction("instruction_v999")


def test_reference_lists_must_match_captions(encoder):
    mllm, _ = encoder
    with pytest.raises(ValueError):
        mllm([[], []], ["one caption"])


def test_the_hubs_legacy_checkpoint_layout_loads_the_same_weights(cinema_tiny, tmp_path):
    """Qwen/Qwen2.5-VL-3B-Instruct on the hub stores `model.layers.*` and `visual.*` (pre-v5 names)."""
    import shutil

    from safetensors.torch import load_file, save_file

    legacy = tmp_path / "qwen2_5_vl"
    shutil.copytree(cinema_tiny / "qwen2_5_vl", legacy)
    renamed = {}
    for key, tensor in load_file(legacy / "model.safetensors").items():
        key = key.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        renamed[key] = tensor
    assert any(key.startswith("visual.") for key in renamed) and any(key.startswith("model.layers.") for key in renamed)
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})
    current = MLLMEncoder.from_pretrained(str(cinema_tiny / "qwen2_5_vl"), max_pixels=56 * 56)
    loaded = MLLMEncoder.from_pretrained(str(legacy), max_pixels=56 * 56)
    with torch.no_grad():
        expected = current([images(2)], ["a man walks his dog"]).states
        torch.testing.assert_close(loaded([images(2)], ["a man walks his dog"]).states, expected, atol=0, rtol=0)
