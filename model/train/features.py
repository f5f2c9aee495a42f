"""The frozen features of one training sample, made by one function for both ways of training.

`make encode` caches them in the shards (`cache.safetensors`); from raw shards the trainer
computes them itself, step by step, with the same function, the same per-clip seed for the VAE
posterior sample and the same letterbox size, so a run on cached shards sees the same numbers as
a run on raw ones, only sooner.
"""

from __future__ import annotations

import torch
from PIL import Image

from model.cinema.mllm import MLLMEncoder
from model.cinema.model import encode_conditions
from model.cinema.vae import VideoVAE
from model.cinema.wan_vae import WanVideoVAE
from model.train.text_encoder import T5TargetEncoder, UMT5TargetEncoder


@torch.no_grad()
def sample_features(
    mllm: MLLMEncoder,
    vae: VideoVAE | WanVideoVAE,
    references: list[Image.Image],
    caption: str,
    size: tuple[int, int],
    video: torch.Tensor | None = None,
    latent_seed: int = 0,
    t5: T5TargetEncoder | UMT5TargetEncoder | None = None,
) -> dict[str, torch.Tensor]:
    """Per sample: `latents` (frames, C, h, w) of `video` (3, 4k+1, H, W) when given, `mllm_states`,
    `mllm_mask`, `reference_latents` (n, C, h, w) letterboxed to `size`, and with `t5` the
    caption's `t5` targets and `t5_mask`. Tensors stay on the encoders' device."""
    conditions = encode_conditions(mllm, vae, [references], [caption], size)
    features = {
        "mllm_states": conditions.mllm_states[0],
        "mllm_mask": conditions.mllm_mask[0],
        "reference_latents": conditions.reference_latents[0],
    }
    if video is not None:
        noise = torch.Generator().manual_seed(latent_seed)
        features["latents"] = vae.encode_video(video[None].to(vae.device, vae.vae.dtype), noise)[0]
    if t5 is not None:
        targets, mask = t5([caption])
        features["t5"], features["t5_mask"] = targets[0], mask[0]
    return features
