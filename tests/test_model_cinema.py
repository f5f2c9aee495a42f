"""model/cinema/model.py: the composed model, its loss and schedule, and where gradients go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import cinema_tiny, images, one_thread  # noqa: F401  (fixtures)
from PIL import Image

from bench.model import tiny_config
from model.cinema.model import CinemaConfig, CinemaModel, PartRef, letterbox
from model.hub import MissingWeights
from model.testing.tiny import TINY_VIDEO_SHAPE

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a dog runs on the beach", "a man walks his dog", "two women talk in a kitchen"]


@pytest.fixture(scope="module", params=["2b", "5b"])
def model(request, cinema_tiny):
    return CinemaModel.from_config(tiny_config(cinema_tiny, request.param))


def video_latents(model, batch=3, seed=0):
    shape = TINY_VIDEO_SHAPE
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, 3, shape["frames"], shape["height"], shape["width"], generator=generator) * 2 - 1
    return model.vae.encode_video(video, generator)


def test_conditions_and_prediction_for_zero_one_and_four_references(model):
    conditions = model.encode_conditions([[], images(1), images(4, seed=1)], CAPTIONS)
    latent_frame = model.vae.latent_size(model.config.height, model.config.width)
    assert [tuple(latents.shape) for latents in conditions.reference_latents] == [
        (0, *latent_frame),
        (1, *latent_frame),
        (4, *latent_frame),
    ]
    assert conditions.mllm_states.shape[2] == model.mllm.hidden_size
    latents = video_latents(model)
    with torch.no_grad():
        prediction = model(latents, torch.tensor([10, 500, 990]), conditions)
    assert prediction.shape == latents.shape


def test_gradients_reach_aligner_and_dit_only(model):
    model.train()
    model.zero_grad(set_to_none=True)
    conditions = model.encode_conditions([images(2), images(1, seed=3), []], CAPTIONS)
    assert not conditions.mllm_states.requires_grad and not any(r.requires_grad for r in conditions.reference_latents)
    model.training_loss(video_latents(model), conditions, torch.Generator().manual_seed(0)).backward()
    for part in (model.aligner, model.transformer):
        grads = {name: p.grad for name, p in part.named_parameters()}
        assert all(grad is not None and torch.isfinite(grad).all() for grad in grads.values()), part.__class__.__name__
        assert sum(grad.abs().sum() for grad in grads.values()) > 0
    for part in (model.mllm, model.vae):
        assert not part.training
        assert all(not p.requires_grad and p.grad is None for p in part.parameters())


def test_scheduler_is_the_checkpoints_own(model):
    part = model.config.scheduler
    saved = json.loads((Path(part.ref) / part.subfolder / "scheduler_config.json").read_text())
    assert type(model.scheduler).__name__ == saved["_class_name"]
    for key in ["prediction_type", "rescale_betas_zero_snr", "snr_shift_scale", "timestep_spacing", "beta_schedule"]:
        assert model.scheduler.config[key] == saved[key]
    assert model.scheduler.config.prediction_type == "v_prediction"
    assert model.scheduler.alphas_cumprod[-1] < 1e-6  # zero terminal SNR


def test_training_loss_is_v_prediction_mse_on_the_video(model):
    model.eval()  # no condition dropout: the loss must be exactly the v-prediction MSE
    conditions = model.encode_conditions([images(1), [], images(2, seed=2)], CAPTIONS)
    latents = video_latents(model)
    with torch.no_grad():
        loss = model.training_loss(latents, conditions, torch.Generator().manual_seed(4))
        generator = torch.Generator().manual_seed(4)
        steps = torch.randint(model.scheduler.config.num_train_timesteps, (3,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = model.scheduler.add_noise(latents, noise, steps)
        expected = F.mse_loss(model(noisy, steps, conditions), model.scheduler.get_velocity(latents, noise, steps))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_condition_dropout_gives_the_empty_prompt_and_no_references(model, monkeypatch):
    conditions = model.encode_conditions([images(1), images(2, seed=2), []], CAPTIONS)
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setattr(model.config, "caption_dropout", 1.0)
    monkeypatch.setattr(model.config, "reference_dropout", 1.0)
    dropped = model.drop_conditions(conditions, generator)
    monkeypatch.setattr(model.config, "caption_dropout", 0.0)
    monkeypatch.setattr(model.config, "reference_dropout", 0.0)
    monkeypatch.setattr(model.config, "unconditional_dropout", 0.0)
    kept = model.drop_conditions(conditions, generator)
    empty = model.empty_prompt()
    length = int(empty.mask.sum())
    assert all(len(latents) == 0 for latents in dropped.reference_latents)
    assert (dropped.mllm_mask.sum(1) == length).all()
    torch.testing.assert_close(dropped.mllm_states[:, :length], empty.states[:, :length].expand(3, -1, -1))
    assert torch.equal(kept.mllm_states, conditions.mllm_states)
    assert [len(latents) for latents in kept.reference_latents] == [1, 2, 0]


def test_missing_parts_fail_before_loading_naming_all(tmp_path):
    config = CinemaConfig(
        mllm=PartRef(ref=str(tmp_path / "no-mllm")),
        vae=PartRef(ref="acme/absent-cogvideox", subfolder="vae"),
        transformer=PartRef(ref="acme/absent-cogvideox", subfolder="transformer"),
        scheduler=PartRef(ref="acme/absent-cogvideox", subfolder="scheduler"),
    )
    with pytest.raises(MissingWeights) as error:
        CinemaModel.from_config(config)
    assert set(error.value.missing) == {"mllm", "vae", "transformer", "scheduler"}


def test_a_pretrained_aligner_is_loaded_from_its_folder(model, tmp_path):
    model.aligner.save_pretrained(tmp_path / "aligner")
    config = model.config.model_copy(update={"aligner": PartRef(ref=str(tmp_path / "aligner"))})
    loaded = CinemaModel.from_config(config)
    for name, tensor in model.aligner.state_dict().items():
        assert torch.equal(loaded.aligner.state_dict()[name], tensor), name


def test_letterbox_keeps_the_aspect_on_white():
    tall = Image.new("RGB", (10, 40), (0, 0, 0))
    pixels = letterbox(tall, 32, 48)
    assert pixels.shape == (3, 32, 48) and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.all(pixels[:, :, :10] == 1) and torch.all(pixels[:, :, -10:] == 1)  # white bars left and right
    assert torch.all(pixels[:, :, 22:26] == -1)  # the black image in the middle
