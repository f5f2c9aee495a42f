"""The CogVideoX 3D VAE, frozen: videos and reference images in, scaled latents out, and back.

Latents leave here in the transformer's layout (batch, frames, channels, height, width) and
multiplied by the checkpoint's own `scaling_factor` (1.15258426 for 2B, 0.7 for 5B), never a
constant. A reference image is encoded as a one-frame video, giving one latent frame.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLCogVideoX
from torch import nn

from model.hub import resolve


class VideoVAE(nn.Module):
    def __init__(self, vae: AutoencoderKLCogVideoX):
        super().__init__()
        self.vae = vae
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, ref: str, subfolder: str | None = "vae", dtype: torch.dtype = torch.float32) -> VideoVAE:
        vae = AutoencoderKLCogVideoX.from_pretrained(resolve(ref), subfolder=subfolder, dtype=dtype)
        return cls(vae)

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    @property
    def temporal_compression(self) -> int:
        return self.vae.config.temporal_compression_ratio

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_size(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, height, width) of the latents of a height x width frame."""
        spatial = self.spatial_compression
        return self.vae.config.latent_channels, height // spatial, width // spatial

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, 3, 4k+1 frames, H, W) in [-1, 1] -> (batch, k+1, C, H/8, W/8), a posterior sample.

        Sampling (not the mean) is what CogVideoX's own fine-tuning does with training videos.
        """
        frames = video.shape[2]
        if (frames - 1) % self.temporal_compression:
            raise ValueError(f"a video needs {self.temporal_compression}k+1 frames, got {frames}")
        posterior = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        return (posterior.sample(generator) * self.scaling_factor).permute(0, 2, 1, 3, 4)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) in [-1, 1] -> (n, C, H/8, W/8): each image a one-frame video, so one latent frame.

        The posterior mean, so that a reference conditions the same way every time it is seen.
        """
        posterior = self.vae.encode(images.unsqueeze(2).to(self.vae.dtype)).latent_dist
        return posterior.mode()[:, :, 0] * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(batch, frames, C, h, w) scaled latents -> (batch, 3, 4(frames-1)+1, 8h, 8w) in about [-1, 1].

        CogVideoX 1.0's decoder keeps the first latent frame single only for an odd count: an even
        count (45 frames = 12 latent frames) decodes to 4 frames each, 48. The last ones are the video.
        """
        frames = self.temporal_compression * (latents.shape[1] - 1) + 1
        return self.vae.decode(latents.permute(0, 2, 1, 3, 4) / self.scaling_factor).sample[:, :, -frames:]
