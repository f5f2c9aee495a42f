"""model/cinema/vae.py: the frozen CogVideoX VAE, with the checkpoint's own scaling factor."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from model_fixtures import cinema_tiny, one_thread  # noqa: F401  (fixtures)

from model.cinema.vae import VideoVAE
from model.testing.tiny import TINY_VIDEO_SHAPE

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, HEIGHT, WIDTH = TINY_VIDEO_SHAPE["frames"], TINY_VIDEO_SHAPE["height"], TINY_VIDEO_SHAPE["width"]


@pytest.fixture(scope="module", params=["2b", "5b"])
def vaes(request, cinema_tiny):
    folder = cinema_tiny / f"cogvideox_{request.param}"
    stock = AutoencoderKLCogVideoX.from_pretrained(folder, subfolder="vae").eval()
    return VideoVAE.from_pretrained(str(folder)), stock


def video(batch=2, frames=FRAMES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, HEIGHT, WIDTH, generator=generator) * 2 - 1


def test_video_latents_are_scaled_posterior_samples_in_transformer_layout(vaes):
    ours, stock = vaes
    assert ours.scaling_factor == stock.config.scaling_factor
    pixels = video()
    with torch.no_grad():
        latents = ours.encode_video(pixels, torch.Generator().manual_seed(7))
        posterior = stock.encode(pixels).latent_dist
        expected = posterior.sample(torch.Generator().manual_seed(7)) * stock.config.scaling_factor
    assert latents.shape == (2, (FRAMES - 1) // 4 + 1, 16, HEIGHT // 8, WIDTH // 8)
    torch.testing.assert_close(latents, expected.permute(0, 2, 1, 3, 4))


def test_checkpoints_bring_their_own_scaling_factor(cinema_tiny):
    folders = {layout: str(cinema_tiny / f"cogvideox_{layout}") for layout in ["2b", "5b"]}
    factors = {layout: VideoVAE.from_pretrained(folder).scaling_factor for layout, folder in folders.items()}
    assert factors == {"2b": 1.15258426, "5b": 0.7}


def test_videos_need_4k_plus_1_frames(vaes):
    ours, _ = vaes
    with pytest.raises(ValueError, match="4k\\+1"):
        ours.encode_video(video(frames=8))


def test_reference_images_are_one_frame_videos(vaes):
    ours, stock = vaes
    images = video(batch=3, frames=1)[:, :, 0]
    with torch.no_grad():
        latents = ours.encode_images(images)
        expected = stock.encode(images.unsqueeze(2)).latent_dist.mode()[:, :, 0] * stock.config.scaling_factor
    assert latents.shape == (3, 16, HEIGHT // 8, WIDTH // 8) == (3, *ours.latent_size(HEIGHT, WIDTH))
    torch.testing.assert_close(latents, expected)


def test_decode_undoes_the_scaling(vaes):
    ours, stock = vaes
    latents = torch.randn(1, 3, 16, HEIGHT // 8, WIDTH // 8)
    with torch.no_grad():
        decoded = ours.decode(latents)
        expected = stock.decode(latents.permute(0, 2, 1, 3, 4) / stock.config.scaling_factor).sample
    assert decoded.shape == (1, 3, FRAMES, HEIGHT, WIDTH)
    torch.testing.assert_close(decoded, expected)


def test_vae_is_frozen(vaes):
    ours, _ = vaes
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())


def test_an_even_latent_count_decodes_to_the_frames_it_stands_for(vaes):
    """CogVideoX 1.0 decodes 4 latent frames to 16 frames; the video they encode is 13 (4k+1) frames."""
    ours, _ = vaes
    latents = torch.randn(1, 4, *ours.latent_size(HEIGHT, WIDTH), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert ours.decode(latents).shape == (1, 3, 13, HEIGHT, WIDTH)
