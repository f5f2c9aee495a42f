"""Wan as a base: chosen from the checkpoint, UMT5 target, VAE adapter, flow-matching loss, sampler parity."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from model_fixtures import cinema_tiny, images, one_thread, wan_tiny  # noqa: F401  (fixtures)

from model.cinema.bases import base_of
from model.cinema.bases.cogvideox import CogVideoXBase
from model.cinema.bases.wan import WanBase
from model.cinema.model import CinemaModel, FlowMatchingConfig, PartRef
from model.cinema.sample import CinemaPipeline
from model.cinema.wan_vae import WanVideoVAE
from model.testing.tiny import TINY_VIDEO_SHAPE, TINY_WAN2_2_SIZE, tiny_cinema_config
from model.train.text_encoder import UMT5TargetEncoder, text_length

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = {"wan2_1": (TINY_VIDEO_SHAPE["height"], TINY_VIDEO_SHAPE["width"]), "wan2_2": (TINY_WAN2_2_SIZE["height"], TINY_WAN2_2_SIZE["width"])}


def transformer(folder) -> PartRef:
    return PartRef(ref=str(folder), subfolder="transformer")


def test_the_base_comes_from_the_checkpoint(cinema_tiny, wan_tiny):
    assert isinstance(base_of(transformer(cinema_tiny / "cogvideox_2b")), CogVideoXBase)
    assert isinstance(base_of(transformer(wan_tiny / "wan2_1")), WanBase)
    assert isinstance(base_of(transformer(wan_tiny / "wan2_2")), WanBase)
    assert text_length(transformer(wan_tiny / "wan2_1")) == 512
    assert text_length(transformer(cinema_tiny / "cogvideox_5b")) == 226


def copy_release(source, target, index: dict | None = None, config: dict | None = None):
    """The checkpoint's model_index.json and transformer config (no weights), edited."""
    (target / "transformer").mkdir(parents=True)
    release = json.loads((source / "model_index.json").read_text()) | (index or {})
    (target / "model_index.json").write_text(json.dumps(release))
    dit = json.loads((source / "transformer" / "config.json").read_text()) | (config or {})
    (target / "transformer" / "config.json").write_text(json.dumps(dit))
    return transformer(target)


@pytest.mark.parametrize(
    ("index", "config", "says"),
    [
        ({"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}, None, "two expert"),
        ({"_class_name": "WanImageToVideoPipeline", "image_encoder": ["transformers", "CLIPVisionModel"]}, None, "image-to-video"),
        (None, {"image_dim": 1280, "in_channels": 36}, "image-to-video"),
    ],
    ids=["wan2.2-a14b", "i2v-release", "i2v-transformer"],
)
def test_unsupported_wan_releases_are_refused_by_name(wan_tiny, tmp_path, index, config, says):
    with pytest.raises(NotImplementedError, match=says):
        base_of(copy_release(wan_tiny / "wan2_1", tmp_path, index, config))


def test_no_silent_text_length(cinema_tiny, tmp_path):
    """A CogVideoX config without max_text_seq_length is an error, not 226; an unknown DiT is named."""
    source = cinema_tiny / "cogvideox_2b"
    (tmp_path / "a" / "transformer").mkdir(parents=True)
    config = json.loads((source / "transformer" / "config.json").read_text())
    config.pop("max_text_seq_length")
    (tmp_path / "a" / "transformer" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="max_text_seq_length"):
        text_length(transformer(tmp_path / "a"))
    (tmp_path / "b" / "transformer").mkdir(parents=True)
    (tmp_path / "b" / "transformer" / "config.json").write_text(json.dumps({"_class_name": "HunyuanVideo15Transformer3DModel"}))
    with pytest.raises(ValueError, match="HunyuanVideo15Transformer3DModel"):
        base_of(transformer(tmp_path / "b"))


def test_umt5_target_equals_the_wan_pipeline_exactly(wan_tiny):
    folder = wan_tiny / "wan2_1"
    encoder = UMT5TargetEncoder.from_pretrained(str(folder), 512)
    pipeline = WanPipeline.from_pretrained(folder)
    captions = ["a man in a red jacket walks his dog  along the beach", "a cat"]
    with torch.no_grad():
        features, mask = encoder(captions)
        stock = pipeline._get_t5_prompt_embeds(captions, max_sequence_length=512, device=torch.device("cpu"))
    assert features.shape == (2, 512, 32) and torch.equal(features, stock)
    lengths = mask.sum(1)
    assert lengths[0] > lengths[1] > 0
    for row, length in enumerate(lengths.tolist()):
        assert mask[row, :length].all() and not mask[row, length:].any()
        assert features[row, length:].abs().max() == 0 and features[row, :length].abs().amax(-1).min() > 0


@pytest.mark.parametrize("layout", ["wan2_1", "wan2_2"])
def test_vae_normalises_as_the_wan_pipeline(wan_tiny, layout):
    folder = wan_tiny / layout
    ours = WanVideoVAE.from_pretrained(str(folder))
    stock = AutoencoderKLWan.from_pretrained(folder, subfolder="vae")
    channels, spatial = {"wan2_1": (16, 8), "wan2_2": (48, 16)}[layout]
    height, width = SIZES[layout]
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 9, height, width, generator=generator) * 2 - 1
    images_ = torch.rand(2, 3, height, width, generator=generator) * 2 - 1
    mean = torch.tensor(stock.config.latents_mean).view(1, channels, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(stock.config.latents_std).view(1, channels, 1, 1, 1)
    with torch.no_grad():
        latents = ours.encode_video(video)
        expected = (stock.encode(video).latent_dist.mode() - mean) * inverse_std
        refs = ours.encode_images(images_)
        decoded = ours.decode(latents)
        stock_decoded = stock.decode(latents.permute(0, 2, 1, 3, 4) / inverse_std + mean).sample
    assert latents.shape == (1, 3, channels, height // spatial, width // spatial)
    assert torch.equal(latents, expected.permute(0, 2, 1, 3, 4))
    assert refs.shape == (2, *ours.latent_size(height, width)) == (2, channels, height // spatial, width // spatial)
    assert torch.equal(decoded, stock_decoded) and decoded.shape == video.shape


@pytest.fixture(scope="module", params=["wan2_1", "wan2_2"])
def wan_model(request, wan_tiny):
    return CinemaModel.from_config(tiny_cinema_config(wan_tiny, request.param)), request.param


def test_a_wan_cinema_model_reads_its_dit(wan_model):
    model, _ = wan_model
    assert model.aligner.config.num_queries == 512 and model.aligner.config.output_dim == 32
    assert model.scheduler.config.use_flow_sigmas and model.objective.schedule.config.shift == model.scheduler.config.flow_shift


def conditions_of(model, counts=(2, 0)):
    captions = ["a man walks his dog", "a cat on the sofa"][: len(counts)]
    references = [images(count, seed=row) for row, count in enumerate(counts)]
    with torch.no_grad():
        return model.encode_conditions(references, captions)


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_flow_matching_loss_equals_a_hand_computation(wan_model, sampling, monkeypatch):
    model, _ = wan_model
    config = model.config.model_copy(update={"flow_matching": FlowMatchingConfig(shift=2.0, sampling=sampling)})
    monkeypatch.setattr(model, "objective", model.base.objective(model.scheduler, config))
    model.eval()  # no dropout: the draws are the level and the noise
    conditions = conditions_of(model)
    latents = torch.randn(2, 3, *model.vae.latent_size(model.config.height, model.config.width), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss = model.training_loss(latents, conditions, torch.Generator().manual_seed(9))
        generator = torch.Generator().manual_seed(9)
        sigmas = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=2.0).sigmas
        if sampling == "uniform":
            index = torch.randint(1000, (2,), generator=generator)
        else:
            index = ((1 - torch.sigmoid(torch.randn(2, generator=generator))) * 1000).long().clamp(0, 999)
        noise = torch.randn(latents.shape, generator=generator)
        s = sigmas[index].view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        expected = F.mse_loss(model(noisy, 1000 * sigmas[index], conditions), noise - latents)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_cogvideox_loss_is_still_v_prediction(cinema_tiny):
    model = CinemaModel.from_config(tiny_cinema_config(cinema_tiny)).eval()
    conditions = conditions_of(model)
    latents = torch.randn(2, 3, *model.vae.latent_size(32, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss = model.training_loss(latents, conditions, torch.Generator().manual_seed(9))
        generator = torch.Generator().manual_seed(9)
        steps = torch.randint(1000, (2,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = model.scheduler.add_noise(latents, noise, steps)
        expected = F.mse_loss(model(noisy, steps, conditions), model.scheduler.get_velocity(latents, noise, steps))
    assert torch.equal(loss, expected)


def test_references_at_timestep_zero_is_a_wan_choice(wan_model, cinema_tiny):
    model, _ = wan_model
    conditions = conditions_of(model, counts=(1,))
    latents = torch.randn(1, 3, *model.vae.latent_size(model.config.height, model.config.width))
    steps = torch.tensor([500.0])
    with torch.no_grad():
        shared = model(latents, steps, conditions)
        model.config.reference_timestep = "zero"
        at_zero = model(latents, steps, conditions)
        model.config.reference_timestep = "video"
    assert not torch.allclose(shared, at_zero, atol=1e-6)
    cogvideox = CinemaModel.from_config(tiny_cinema_config(cinema_tiny).model_copy(update={"reference_timestep": "zero"}))
    with pytest.raises(ValueError, match="reference_timestep"):
        cogvideox(torch.randn(1, 3, 16, 4, 6), torch.tensor([500]), conditions_of(cogvideox, counts=(1,)))


@pytest.mark.parametrize("scheduler", [None, "euler"], ids=["checkpoint-unipc", "flowmatch-euler"])
def test_no_references_sample_equals_the_wan_pipeline(wan_model, wan_tiny, scheduler):
    """CinemaPipeline with no references == WanPipeline given the same prompt_embeds, latents and scheduler."""
    model, layout = wan_model
    model.eval()
    chosen = model.base.swap_scheduler(model.scheduler, scheduler) if scheduler else model.scheduler
    pipe = CinemaPipeline(model, chosen)
    height, width = model.config.height, model.config.width
    latents = torch.randn(1, 3, *model.vae.latent_size(height, width), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = pipe(prompt="a cat", reference_images=[], num_frames=9, num_inference_steps=3, guidance_scale=5.0, latents=latents, output_type="latent").frames
        guided = pipe.guided_conditions(model.encode_conditions([[]], ["a cat"]))
        text = model.aligner(guided.mllm_states, guided.mllm_mask)
    stock = WanPipeline.from_pretrained(
        wan_tiny / layout,
        transformer=WanTransformer3DModel.from_pretrained(wan_tiny / layout, subfolder="transformer"),
        scheduler=type(chosen).from_config(chosen.config),
    )
    with torch.no_grad():
        expected = stock(
            prompt_embeds=text[:1], negative_prompt_embeds=text[1:], latents=latents.permute(0, 2, 1, 3, 4), height=height, width=width,
            num_frames=9, num_inference_steps=3, guidance_scale=5.0, output_type="latent",
        ).frames  # fmt: skip
    assert not torch.allclose(ours, latents, atol=1e-3)  # it denoised
    torch.testing.assert_close(ours, expected.permute(0, 2, 1, 3, 4), rtol=0, atol=1e-5)


def test_alignment_loss_leaves_the_cosine_out_on_zero_padding_rows():
    """Wan's UMT5 target is zero past the real tokens: there only the MSE (at the padding weight) counts."""
    from model.cinema.aligner import alignment_loss

    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(1, 6, 8, generator=generator), torch.randn(1, 6, 8, generator=generator)
    mask = torch.tensor([[True, True, False, False, False, False]])
    target[:, 2:] = 0
    squared = (prediction - target).pow(2).mean(-1)[0]
    cosine = F.cosine_similarity(prediction, target, dim=-1)[0]
    expected = ((squared[:2] + 1 - cosine[:2]).sum() + 0.1 * squared[2:].sum()) / (2 + 0.1 * 4)
    torch.testing.assert_close(alignment_loss(prediction, target, mask, padding_weight=0.1), expected)
    assert alignment_loss(prediction, target, mask) == pytest.approx(((squared[:2] + 1 - cosine[:2]).sum() / 2).item())
