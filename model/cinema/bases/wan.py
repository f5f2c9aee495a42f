"""Wan as a base: Wan2.1 T2V (1.3B, 14B) and Wan2.2-TI2V-5B.

UMT5-XXL text, 512 tokens, encoded with its mask and zero-padded (`UMT5TargetEncoder`); the VAE
with per-channel statistics (`WanVideoVAE`, 4x8x8 x 16 channels or 4x16x16 x 48); flow matching
(`FlowMatching`, its shift the checkpoint scheduler's unless the config sets one); sampling with
the checkpoint's own `UniPCMultistepScheduler` or `FlowMatchEulerDiscreteScheduler`, which have no
`init_noise_sigma` / `scale_model_input`: latents start as plain noise in fp32, as in `WanPipeline`.
TI2V's per-token timestep (`expand_timesteps`) is the same t on every token when no frame is given,
so a per-sample timestep computes the same; the references' timestep 0 uses the per-token form.
Refused: Wan2.2-A14B (two expert DiTs switched at `boundary_ratio`) and every image-to-video variant.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from model.cinema.bases import Base, Native, Sampler
from model.cinema.objectives import FlowMatching
from model.hub import resolve

SCHEDULERS = {cls.__name__: cls for cls in (UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)}
TEXT_LENGTH = 512  # WanPipeline's max_sequence_length: the positions the DiT was trained on
LAYOUTS = {  # by VAE channels: the native size and rate of each release
    16: Native(frames=81, height=480, width=832, fps=16),  # Wan2.1 T2V 1.3B / 14B (14B also 720 x 1280)
    48: Native(frames=121, height=704, width=1280, fps=24),  # Wan2.2-TI2V-5B
}


def flow_shift(scheduler) -> float:
    """The shift of the checkpoint's flow schedule, whichever of the two classes holds it."""
    config = scheduler.config
    return config["flow_shift"] if isinstance(scheduler, UniPCMultistepScheduler) else config["shift"]


class WanSampler(Sampler):
    def start(self, steps: int, device: torch.device) -> torch.Tensor:
        timesteps = super().start(steps, device)
        self.scheduler.set_begin_index(0)  # as WanPipeline: no timestep lookup on the first step
        return timesteps

    def initial(self, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def model_input(self, latents: torch.Tensor, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return latents.to(dtype)

    def step(self, prediction: torch.Tensor, i: int, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.scheduler.step(prediction, self.scheduler.timesteps[i], latents, return_dict=False)[0]


class WanBase(Base):
    name = "wan"
    transformer_classes = ("WanTransformer3DModel", "CinemaWanTransformer3DModel")
    latent_dtype_follows_transformer = False
    scheduler_names = {"unipc": "UniPCMultistepScheduler", "euler": "FlowMatchEulerDiscreteScheduler"}

    def check(self, transformer: dict, release: dict | None) -> None:
        if release is not None:
            experts = (release.get("transformer_2") or [None])[0] is not None or release.get("boundary_ratio") is not None
            if experts:
                raise NotImplementedError(
                    "Wan2.2-A14B's two expert DiTs (transformer, transformer_2 switched at boundary_ratio) are not "
                    "supported: train on Wan2.1-T2V-14B / 1.3B or Wan2.2-TI2V-5B"
                )
            if "ImageToVideo" in release.get("_class_name", "") or (release.get("image_encoder") or [None])[0]:
                raise NotImplementedError(f"{release['_class_name']}: image-to-video Wan variants are not supported, use a T2V or TI2V release")
        if transformer.get("image_dim") is not None or transformer["in_channels"] != transformer["out_channels"]:
            raise NotImplementedError(
                "an image-to-video Wan transformer (image embedding or conditioning channels) is not supported: "
                "use a T2V or TI2V release"
            )

    def load_transformer(self, part, dtype):
        from model.cinema.wan_dit import CinemaWanTransformer3DModel

        return CinemaWanTransformer3DModel.from_pretrained(resolve(part.ref), subfolder=part.subfolder, dtype=dtype)

    def load_vae(self, part, dtype):
        from model.cinema.wan_vae import WanVideoVAE

        return WanVideoVAE.from_pretrained(part.ref, part.subfolder, dtype)

    def load_scheduler(self, part):
        config = UniPCMultistepScheduler.load_config(resolve(part.ref), subfolder=part.subfolder)
        name = config["_class_name"]
        if name not in SCHEDULERS:
            raise ValueError(f"expected a flow-matching scheduler (UniPC or FlowMatchEuler), the checkpoint has {name}")
        if name == "UniPCMultistepScheduler" and not (config.get("use_flow_sigmas") and config.get("prediction_type") == "flow_prediction"):
            raise ValueError("a Wan UniPC scheduler must use flow sigmas and flow_prediction, as the checkpoints do")
        return SCHEDULERS[name].from_config(config)

    def swap_scheduler(self, scheduler, name: str):
        steps, shift = scheduler.config.num_train_timesteps, flow_shift(scheduler)
        if self.scheduler_names[name] == "FlowMatchEulerDiscreteScheduler":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=shift)
        return UniPCMultistepScheduler(
            num_train_timesteps=steps, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )

    def text_length(self, transformer: dict) -> int:
        return TEXT_LENGTH

    def text_width(self, transformer: dict) -> int:
        return transformer["text_dim"]

    def load_text_target(self, ref: str, max_length: int, dtype: torch.dtype):
        from model.train.text_encoder import UMT5TargetEncoder

        return UMT5TargetEncoder.from_pretrained(ref, max_length, dtype)

    def objective(self, scheduler, config):
        shift = config.flow_matching.shift if config.flow_matching.shift is not None else flow_shift(scheduler)
        return FlowMatching(scheduler.config.num_train_timesteps, shift, config.flow_matching.sampling)

    def sampler(self, scheduler) -> Sampler:
        return WanSampler(scheduler)

    def native(self, vae: dict) -> Native:
        return LAYOUTS[vae["z_dim"]]

    def compression(self, vae: dict) -> tuple[int, int]:
        return vae["scale_factor_temporal"], vae["scale_factor_spatial"]

    def dit_class(self) -> type:
        from model.cinema.wan_dit import CinemaWanTransformer3DModel

        return CinemaWanTransformer3DModel

    def vae_class(self) -> type:
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan

    def text_encoder_classes(self) -> tuple[type, type]:
        from transformers import UMT5Config, UMT5EncoderModel

        return UMT5Config, UMT5EncoderModel

    def forward_flops(self, transformer: dict, frames: int, height: int, width: int) -> float:
        """Self-attention over the video tokens (QKV and out, 4 w^2; scores and values), cross-attention to
        the 512 text tokens (Q and out on video, K and V on text), the FFN (2 w ffn)."""
        _, p_h, p_w = transformer["patch_size"]
        video_tokens = frames * (height // p_h) * (width // p_w)
        width = transformer["num_attention_heads"] * transformer["attention_head_dim"]
        text, ffn = TEXT_LENGTH, transformer["ffn_dim"]
        projections = video_tokens * (4 * width * width + 2 * width * width + 2 * width * ffn) + text * 2 * width * width
        scores = 2 * video_tokens * video_tokens * width + 2 * video_tokens * text * width
        return transformer["num_layers"] * 2 * (projections + scores)

    def predict(self, transformer, noisy, text, timestep, references, reference_timestep) -> torch.Tensor:
        at_zero = reference_timestep == "zero"
        return transformer(noisy, text, timestep, references=references, references_at_zero=at_zero).sample
