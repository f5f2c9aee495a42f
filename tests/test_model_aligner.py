"""model/cinema/aligner.py and model/train/text_encoder.py: AlignerNet, its loss, and the T5 targets."""

from __future__ import annotations

import inspect

import pytest
import torch
from model_fixtures import cinema_tiny, one_thread  # noqa: F401  (fixtures)

from model.cinema.aligner import AlignerNet, alignment_loss, masked_cosine
from model.train.text_encoder import T5TargetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def small_aligner(**overrides) -> AlignerNet:
    torch.manual_seed(0)
    shape = {"input_dim": 24, "output_dim": 16, "num_queries": 10, "num_layers": 2, "width": 32, "num_heads": 4}
    return AlignerNet(**shape | overrides).eval()


def states_and_mask(batch=3, tokens=12, dim=24, real=(12, 7, 3)):
    torch.manual_seed(1)
    states = torch.randn(batch, tokens, dim)
    mask = torch.arange(tokens)[None, :] < torch.tensor(real)[:, None]
    return states, mask


def test_defaults_are_the_papers():
    parameters = inspect.signature(AlignerNet.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items() if name != "self"}
    assert defaults == {
        "input_dim": 2048,
        "output_dim": 4096,
        "num_queries": 226,
        "num_layers": 6,
        "width": 768,
        "num_heads": 8,
        "mlp_ratio": 4,
    }


def test_output_has_one_t5_token_per_query():
    states, mask = states_and_mask()
    assert small_aligner()(states, mask).shape == (3, 10, 16)


def test_masked_mllm_positions_change_nothing():
    aligner = small_aligner()
    states, mask = states_and_mask()
    with torch.no_grad():
        reference = aligner(states, mask)
        scrambled = torch.where(mask[..., None], states, torch.randn_like(states) * 100)
        longer = torch.cat([states, torch.randn(3, 5, 24)], dim=1)
        longer_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
        torch.testing.assert_close(aligner(scrambled, mask), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(aligner(longer, longer_mask), reference, atol=1e-5, rtol=1e-5)
        unmasked = aligner(scrambled, torch.ones_like(mask))
    assert not torch.allclose(unmasked, reference, atol=1e-3)  # the mask is what made the difference


def test_save_and_load_round_trip_through_safetensors(tmp_path):
    aligner = small_aligner()
    aligner.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = AlignerNet.from_pretrained(tmp_path).eval()
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(aligner.config)
    states, mask = states_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(loaded(states, mask), aligner(states, mask), atol=0, rtol=0)


def test_loss_is_zero_on_the_target_and_positive_elsewhere():
    torch.manual_seed(2)
    target = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    assert alignment_loss(target.clone(), target, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(target + 0.1 * torch.randn_like(target), target, mask).item() > 0
    assert alignment_loss(2 * target, target, mask).item() > 0  # same direction, wrong size: MSE sees it
    assert alignment_loss(-target, target, mask).item() > 2  # opposite direction: cosine term is 2


def test_loss_ignores_padded_t5_positions():
    torch.manual_seed(3)
    prediction, target = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    mask = torch.arange(10)[None, :] < torch.tensor([6, 3])[:, None]
    loss = alignment_loss(prediction, target, mask)
    noisy_padding = torch.where(mask[..., None], prediction, torch.randn_like(prediction) * 50)
    assert alignment_loss(noisy_padding, target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    matched_real = torch.where(mask[..., None], target, prediction)
    assert alignment_loss(matched_real, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_cosine(matched_real, target, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_t5_targets_match_the_cogvideox_pipeline(cinema_tiny):
    from diffusers import CogVideoXPipeline

    folder = cinema_tiny / "cogvideox_2b"
    encoder = T5TargetEncoder.from_pretrained(str(folder))
    captions = ["a man walks his dog", "two women talk in a kitchen while a cat sleeps"]
    with torch.no_grad():
        features, mask = encoder(captions)
        pipeline = CogVideoXPipeline.from_pretrained(folder)
        stock = pipeline._get_t5_prompt_embeds(captions, max_sequence_length=226)
    assert features.shape == (2, 226, encoder.width) and mask.shape == (2, 226)
    real = [len(pipeline.tokenizer(caption).input_ids) for caption in captions]
    assert mask.sum(1).tolist() == real
    torch.testing.assert_close(features, stock, atol=0, rtol=0)
    assert not any(p.requires_grad for p in encoder.parameters())


@pytest.mark.slow
def test_pretraining_raises_held_out_cosine_well_above_initialisation(cinema_tiny):
    from bench.model import pretrain_aligner

    probe = pretrain_aligner(cinema_tiny, steps=200)
    print(f"held-out cosine: {probe.cosine_before:.3f} -> {probe.cosine_after:.3f} in {probe.seconds:.1f} s")
    assert probe.cosine_after > probe.cosine_before + 0.3
    assert probe.cosine_after > 0.4
