"""CogVideoX 1.0 (2B, 5B) as a base: T5 text of 226 tokens unmasked, the scaled 4x8x8 VAE, v-prediction.

What the project did before it had several bases, moved here unchanged: the DiT is
`CinemaTransformer3DModel`, the VAE `VideoVAE`, the scheduler the checkpoint's CogVideoX DDIM or DPM.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from model.cinema.bases import Base, Native, Sampler
from model.cinema.objectives import VPrediction
from model.hub import resolve

SCHEDULERS = {cls.__name__: cls for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler)}


class CogVideoXSampler(Sampler):
    def __init__(self, scheduler):
        super().__init__(scheduler)
        self.previous_x0 = None  # the DPM solver's state

    def initial(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.scheduler.init_noise_sigma

    def model_input(self, latents: torch.Tensor, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.scheduler.scale_model_input(latents, timestep)

    def step(self, prediction: torch.Tensor, i: int, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        timesteps = self.scheduler.timesteps
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            back = timesteps[i - 1] if i > 0 else None
            latents, self.previous_x0 = self.scheduler.step(
                prediction, self.previous_x0, timesteps[i], back, latents, generator=generator, return_dict=False
            )
            return latents
        return self.scheduler.step(prediction, timesteps[i], latents, return_dict=False)[0]


class CogVideoXBase(Base):
    name = "cogvideox"
    transformer_classes = ("CogVideoXTransformer3DModel", "CinemaTransformer3DModel")
    latent_dtype_follows_transformer = True
    scheduler_names = {"ddim": "CogVideoXDDIMScheduler", "dpm": "CogVideoXDPMScheduler"}

    def check(self, transformer: dict, release: dict | None) -> None:
        """The DiT checks its own layout when it runs (`CinemaTransformer3DModel._check_layout`)."""

    def load_transformer(self, part, dtype):
        from model.cinema.dit import CinemaTransformer3DModel

        return CinemaTransformer3DModel.from_pretrained(resolve(part.ref), subfolder=part.subfolder, dtype=dtype)

    def load_vae(self, part, dtype):
        from model.cinema.vae import VideoVAE

        return VideoVAE.from_pretrained(part.ref, part.subfolder, dtype)

    def load_scheduler(self, part):
        """The scheduler class and values the checkpoint names in its own config."""
        config = CogVideoXDDIMScheduler.load_config(resolve(part.ref), subfolder=part.subfolder)
        if config["_class_name"] not in SCHEDULERS:
            raise ValueError(f"expected a CogVideoX scheduler, the checkpoint has {config['_class_name']}")
        return SCHEDULERS[config["_class_name"]].from_config(config)

    def swap_scheduler(self, scheduler, name: str):
        return SCHEDULERS[self.scheduler_names[name]].from_config(scheduler.config)

    def text_length(self, transformer: dict) -> int:
        if "max_text_seq_length" not in transformer:
            raise ValueError("a CogVideoX transformer config without max_text_seq_length: its text length is unknown")
        return transformer["max_text_seq_length"]

    def text_width(self, transformer: dict) -> int:
        return transformer["text_embed_dim"]

    def load_text_target(self, ref: str, max_length: int, dtype: torch.dtype):
        from model.train.text_encoder import T5TargetEncoder

        return T5TargetEncoder.from_pretrained(ref, max_length, dtype)

    def objective(self, scheduler, config):
        return VPrediction(scheduler)

    def sampler(self, scheduler) -> Sampler:
        return CogVideoXSampler(scheduler)

    def native(self, vae: dict) -> Native:
        return Native(frames=45, height=480, width=720, fps=8)  # the paper's 45 frames; CogVideoX's 8 fps

    def compression(self, vae: dict) -> tuple[int, int]:
        return vae["temporal_compression_ratio"], 2 ** (len(vae["block_out_channels"]) - 1)

    def dit_class(self) -> type:
        from model.cinema.dit import CinemaTransformer3DModel

        return CinemaTransformer3DModel

    def vae_class(self) -> type:
        from diffusers import AutoencoderKLCogVideoX

        return AutoencoderKLCogVideoX

    def text_encoder_classes(self) -> tuple[type, type]:
        from transformers import T5Config, T5EncoderModel

        return T5Config, T5EncoderModel

    def forward_flops(self, transformer: dict, frames: int, height: int, width: int) -> float:
        """Joint attention over text + video tokens: QKV and out (4 w^2), MLP 4x (8 w^2), scores and values."""
        patch = transformer["patch_size"]
        tokens = frames * (height // patch) * (width // patch) + transformer["max_text_seq_length"]
        width = transformer["num_attention_heads"] * transformer["attention_head_dim"]
        per_layer = 2 * tokens * (4 * width * width + 2 * 4 * width * width) + 4 * tokens * tokens * width
        return transformer["num_layers"] * per_layer

    def predict(self, transformer, noisy, text, timestep, references, reference_timestep) -> torch.Tensor:
        if reference_timestep != "video":
            raise ValueError("CogVideoX has one timestep per sample: reference_timestep must be 'video'")
        return transformer(noisy, text, timestep, references=references).sample
