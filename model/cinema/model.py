"""CINEMA: MLLM encoder + AlignerNet + VAE reference latents + MM-DiT, and its training loss.

`encode_conditions` runs the frozen parts (MLLM, VAE), whose outputs can be cached;
`forward` runs the trained parts (AlignerNet, DiT). What differs between base video models (DiT,
VAE, text target, objective, sampler) comes from the base the transformer checkpoint names
(`model/cinema/bases/`); the noise schedule is the checkpoint's own scheduler config (v-prediction
with zero terminal SNR for CogVideoX, flow matching with its shift for Wan), never class defaults.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from pydantic import BaseModel, ConfigDict
from torch import nn

from model.cinema.aligner import AlignerNet
from model.cinema.bases import Base, base_of
from model.cinema.mllm import DEFAULT_MAX_PIXELS, DEFAULT_TEMPLATE, MLLMEncoder, MLLMStates
from model.cinema.objectives import draw_uniform
from model.hub import require, resolve

REFERENCE_BACKGROUND = 255  # subject cut-outs sit on white; letterbox bars match it


class PartRef(BaseModel):
    """A hub id or local folder, and the subfolder of it that holds this part."""

    model_config = ConfigDict(extra="forbid")
    ref: str
    subfolder: str | None = None


class AlignerShape(BaseModel):
    """A fresh AlignerNet's size (the paper's by default); its ends come from the MLLM and DiT configs."""

    model_config = ConfigDict(extra="forbid")
    num_layers: int = 6
    width: int = 768
    num_heads: int = 8
    mlp_ratio: int = 4


class FlowMatchingConfig(BaseModel):
    """The flow-matching objective of a Wan base (a v-prediction base reads its schedule from its checkpoint)."""

    model_config = ConfigDict(extra="forbid")
    shift: float | None = None  # sigma shift; None: the checkpoint scheduler's (3.0 Wan2.1, 5.0 Wan2.2-TI2V)
    sampling: Literal["uniform", "logit_normal"] = "uniform"  # how a sample's noise level is drawn


class CinemaConfig(BaseModel):
    """Defaults are the full profile. The paper gives no dropout rates: 0.1 each is our choice.

    Caption and reference dropout are drawn independently, so alone they would train the sampler's
    unconditional input (no caption, no references) on 1% of samples; `unconditional_dropout`
    drops both together, so that input is trained on about 11% (0.1 + 0.9 x 0.1 x 0.1).
    """

    model_config = ConfigDict(extra="forbid")
    mllm: PartRef = PartRef(ref="Qwen/Qwen2.5-VL-3B-Instruct")
    vae: PartRef = PartRef(ref="zai-org/CogVideoX-5b", subfolder="vae")
    transformer: PartRef = PartRef(ref="zai-org/CogVideoX-5b", subfolder="transformer")
    scheduler: PartRef = PartRef(ref="zai-org/CogVideoX-5b", subfolder="scheduler")
    aligner: PartRef | None = None  # a pre-trained AlignerNet; None starts a fresh one
    aligner_shape: AlignerShape = AlignerShape()
    template: str = DEFAULT_TEMPLATE
    max_pixels: int = DEFAULT_MAX_PIXELS  # MLLM pixel budget per reference image
    height: int = 480  # video (and reference) size in pixels
    width: int = 720
    caption_dropout: float = 0.1  # chance a sample's MLLM states are replaced by the empty prompt's
    reference_dropout: float = 0.1  # chance a sample's VAE reference latents are removed
    unconditional_dropout: float = 0.1  # chance both are dropped together: the guidance's unconditional input
    reference_timestep: Literal["video", "zero"] = "video"  # the reference tokens' timestep ("zero": Wan only)
    flow_matching: FlowMatchingConfig = FlowMatchingConfig()

    def refs(self) -> dict[str, str]:
        parts = {"mllm": self.mllm, "vae": self.vae, "transformer": self.transformer, "scheduler": self.scheduler}
        if self.aligner is not None:
            parts["aligner"] = self.aligner
        return {name: part.ref for name, part in parts.items()}


@dataclass
class Conditions:
    mllm_states: torch.Tensor  # (batch, tokens, mllm hidden)
    mllm_mask: torch.Tensor  # (batch, tokens) bool
    reference_latents: list[torch.Tensor]  # per sample (n_i, C, h, w), n_i >= 0


def letterbox(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """Fit the image inside height x width keeping its aspect, on white; (3, H, W) in [-1, 1]."""
    image = image.convert("RGB")
    scale = min(height / image.height, width / image.width)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", (width, height), (REFERENCE_BACKGROUND,) * 3)
    canvas.paste(image.resize(size, Image.BICUBIC), ((width - size[0]) // 2, (height - size[1]) // 2))
    pixels = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1


def pad_tokens(states: MLLMStates, length: int) -> MLLMStates:
    extra = length - states.states.shape[1]
    return MLLMStates(F.pad(states.states, (0, 0, 0, extra)), F.pad(states.mask, (0, extra), value=False))


def encode_conditions(
    mllm: MLLMEncoder, vae, references: list[list[Image.Image]], captions: list[str], size: tuple[int, int]
) -> Conditions:
    """The frozen parts' view of each sample: MLLM states of references + caption, VAE latents of the references."""
    height, width = size
    states = mllm(references, captions)
    counts = [len(sample) for sample in references]
    images = [image for sample in references for image in sample]
    if images:
        pixels = torch.stack([letterbox(image, height, width) for image in images])
        latents = vae.encode_images(pixels.to(vae.device))
    else:
        latents = torch.zeros(0, *vae.latent_size(height, width), device=vae.device)
    return Conditions(states.states, states.mask, list(latents.split(counts)))


class CinemaModel(nn.Module):
    def __init__(
        self,
        mllm: MLLMEncoder,
        aligner: AlignerNet,
        vae: nn.Module,
        transformer: nn.Module,
        scheduler,
        config: CinemaConfig,
        base: Base,
    ):
        super().__init__()
        self.mllm, self.aligner, self.vae, self.transformer = mllm, aligner, vae, transformer
        self.scheduler = scheduler
        self.config = config
        self.base = base
        self.objective = base.objective(scheduler, config)
        self._empty_prompt: MLLMStates | None = None

    @classmethod
    def from_config(cls, config: CinemaConfig, dtype: torch.dtype = torch.float32) -> CinemaModel:
        """Load every part; if any is missing, fail at once naming all of them."""
        require(config.refs())
        base = base_of(config.transformer)
        mllm = MLLMEncoder.from_pretrained(config.mllm.ref, config.template, config.max_pixels, dtype)
        vae = base.load_vae(config.vae, dtype)
        transformer = base.load_transformer(config.transformer, dtype)
        if config.aligner is not None:
            aligner = AlignerNet.from_pretrained(
                resolve(config.aligner.ref), subfolder=config.aligner.subfolder, dtype=dtype
            )
        else:
            aligner = AlignerNet(
                input_dim=mllm.hidden_size,
                output_dim=base.text_width(transformer.config),
                num_queries=base.text_length(transformer.config),
                **config.aligner_shape.model_dump(),
            )
            aligner = aligner if dtype == aligner.dtype else aligner.to(dtype)
        return cls(mllm, aligner, vae, transformer, base.load_scheduler(config.scheduler), config, base)

    def train(self, mode: bool = True) -> CinemaModel:
        """The frozen parts stay in eval mode whatever the trained parts do."""
        super().train(mode)
        self.mllm.eval()
        self.vae.eval()
        return self

    def encode_conditions(
        self, references: list[list[Image.Image]], captions: list[str], size: tuple[int, int] | None = None
    ) -> Conditions:
        """Per sample: its reference images (any number, none included) and its caption.

        References are letterboxed to `size` (height, width), the video's; default the config's.
        """
        return encode_conditions(self.mllm, self.vae, references, captions, size or (self.config.height, self.config.width))

    def forward(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """The DiT's prediction (v for CogVideoX, the flow eps - x0 for Wan) for the video latents
        (batch, frames, C, h, w); references are not predicted."""
        text = self.aligner(conditions.mllm_states, conditions.mllm_mask).to(self.transformer.dtype)
        references = [latents.to(noisy_latents.dtype) for latents in conditions.reference_latents]
        return self.base.predict(self.transformer, noisy_latents, text, timestep, references, self.config.reference_timestep)

    def training_loss(
        self, latents: torch.Tensor, conditions: Conditions, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """The base's objective (v-prediction, flow matching) as an MSE on the video latents, with CFG
        dropout of the conditions while training.

        One forward for the whole batch; with a list of generators (one per sample) each sample's
        dropout, noise level and noise come from its own, so a sample trains the same in any batch.
        """
        if self.training:
            conditions = self.drop_conditions(conditions, generator)
        index = self.objective.draw(latents.shape[0], generator).to(latents.device)
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noisy, target = self.objective.noisy_and_target(latents, noise, index)
        steps = self.objective.timesteps(index).to(latents.device)
        return F.mse_loss(self(noisy, steps, conditions).float(), target.float())

    def drop_conditions(
        self, conditions: Conditions, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Conditions:
        """Classifier-free guidance dropout: empty-prompt MLLM states, and/or no reference latents."""
        chances = draw_uniform(3, conditions.mllm_states.shape[0], generator)
        unconditional = chances[0] < self.config.unconditional_dropout
        drop_caption = unconditional | (chances[1] < self.config.caption_dropout)
        drop_references = unconditional | (chances[2] < self.config.reference_dropout)
        conditions = replace(
            conditions,
            reference_latents=[
                latents[:0] if drop else latents for latents, drop in zip(conditions.reference_latents, drop_references)
            ],
        )
        if not drop_caption.any():
            return conditions
        empty = self.empty_prompt()
        length = max(conditions.mllm_states.shape[1], empty.states.shape[1])
        kept = pad_tokens(MLLMStates(conditions.mllm_states, conditions.mllm_mask), length)
        empty = pad_tokens(empty, length)
        rows = drop_caption.to(kept.states.device)
        return replace(
            conditions,
            mllm_states=torch.where(rows[:, None, None], empty.states.to(kept.states), kept.states),
            mllm_mask=torch.where(rows[:, None], empty.mask.to(kept.mask.device), kept.mask),
        )

    def empty_prompt(self) -> MLLMStates:
        """The MLLM states of no references and an empty caption: the unconditional input."""
        if self._empty_prompt is None:
            with torch.no_grad():
                self._empty_prompt = self.mllm([[]], [""])
        return self._empty_prompt


def on_white(png: bytes) -> Image.Image:
    """A subject cut-out (RGBA, transparent background) on the white the model expects."""
    image = Image.open(io.BytesIO(png))
    image.load()
    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", image.size, (REFERENCE_BACKGROUND,) * 4)
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")
