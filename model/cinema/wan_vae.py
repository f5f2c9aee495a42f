"""The Wan VAE, frozen: videos and reference images in, normalised latents out, and back.

Same interface as the CogVideoX `VideoVAE` (latents in the transformer's CINEMA layout (batch,
frames, channels, height, width)), Wan's arithmetic: per-channel `latents_mean` / `latents_std`
from the checkpoint, normalised and denormalised exactly as `WanPipeline` does; 4x8x8 with 16
channels for Wan2.1, 4x16x16 with 48 for Wan2.2-TI2V-5B (`scale_factor_*` in its config). Wan's
encoder is causal in time, so an image (a one-frame video) gives one latent frame. Videos and
images both take the posterior mode, as Wan's own pipelines encode their conditions.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from model.hub import resolve


class WanVideoVAE(nn.Module):
    def __init__(self, vae: AutoencoderKLWan):
        super().__init__()
        self.vae = vae
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, ref: str, subfolder: str | None = "vae", dtype: torch.dtype = torch.float32) -> WanVideoVAE:
        return cls(AutoencoderKLWan.from_pretrained(resolve(ref), subfolder=subfolder, dtype=dtype))

    @property
    def temporal_compression(self) -> int:
        return self.vae.config.scale_factor_temporal

    @property
    def spatial_compression(self) -> int:
        return self.vae.config.scale_factor_spatial

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def latent_size(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, height, width) of the latents of a height x width frame."""
        spatial = self.spatial_compression
        return self.vae.config.z_dim, height // spatial, width // spatial

    def statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents_mean, 1 / latents_std) shaped (1, C, 1, 1, 1), built as `WanPipeline` builds them."""
        channels = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
        return mean, inverse_std

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw (batch, C, frames, h, w) latents -> the DiT's space: (x - mean) / std."""
        mean, inverse_std = self.statistics(latents)
        return (latents - mean) * inverse_std

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, 3, 4k+1 frames, H, W) in [-1, 1] -> (batch, k+1, C, H/s, W/s), the normalised posterior mode.

        `generator` is not drawn from: the mode is deterministic (kept for the one VAE interface)."""
        frames = video.shape[2]
        if (frames - 1) % self.temporal_compression:
            raise ValueError(f"a video needs {self.temporal_compression}k+1 frames, got {frames}")
        posterior = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        return self.normalise(posterior.mode()).permute(0, 2, 1, 3, 4)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) in [-1, 1] -> (n, C, H/s, W/s): each image a one-frame video, so one latent frame."""
        posterior = self.vae.encode(images.unsqueeze(2).to(self.vae.dtype)).latent_dist
        return self.normalise(posterior.mode())[:, :, 0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(batch, frames, C, h, w) normalised latents -> (batch, 3, 4(frames-1)+1, s*h, s*w) in about [-1, 1]."""
        latents = latents.permute(0, 2, 1, 3, 4).to(self.vae.dtype)
        mean, inverse_std = self.statistics(latents)
        return self.vae.decode(latents / inverse_std + mean).sample
