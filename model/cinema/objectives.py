"""Training objectives: what a clean latent becomes at a drawn noise level, and what the DiT must predict.

Each objective draws one index per sample into its training schedule (from the sample's own
generator when given a list, so a sample trains the same in any batch), turns it into the DiT's
timestep, and gives the noisy input and the target. CogVideoX: v-prediction on the checkpoint's
own DDPM-style scheduler. Wan: flow matching, x_t = (1 - s) x0 + s eps, target eps - x0, timestep
1000 s, s on the shifted grid of `FlowMatchEulerDiscreteScheduler(shift)`.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

Generators = torch.Generator | list[torch.Generator] | None


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def draw_uniform(draws: int, batch: int, generator: Generators) -> torch.Tensor:
    """(draws, batch) uniform numbers; from a list, column i comes from generator i."""
    if isinstance(generator, list):
        return torch.stack([torch.rand(draws, generator=g, device=_device(g)).cpu() for g in generator], dim=1)
    return torch.rand(draws, batch, generator=generator, device=_device(generator)).cpu()


def draw_normal(batch: int, generator: Generators) -> torch.Tensor:
    """(batch,) standard normal numbers; from a list, entry i comes from generator i."""
    if isinstance(generator, list):
        return torch.cat([torch.randn(1, generator=g, device=_device(g)).cpu() for g in generator])
    return torch.randn(batch, generator=generator, device=_device(generator)).cpu()


def draw_index(high: int, batch: int, generator: Generators) -> torch.Tensor:
    """(batch,) integers in [0, high); from a list, entry i comes from generator i."""
    if isinstance(generator, list):
        return torch.cat([torch.randint(high, (1,), generator=g, device=_device(g)).cpu() for g in generator])
    return torch.randint(high, (batch,), generator=generator, device=_device(generator))


class VPrediction:
    """CogVideoX: the scheduler's own `add_noise` and `get_velocity` (v-prediction, zero terminal SNR)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def draw(self, batch: int, generator: Generators) -> torch.Tensor:
        return draw_index(self.scheduler.config.num_train_timesteps, batch, generator)

    def timesteps(self, index: torch.Tensor) -> torch.Tensor:
        return index

    def noisy_and_target(self, latents: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scheduler.add_noise(latents, noise, index), self.scheduler.get_velocity(latents, noise, index)


class FlowMatching:
    """Wan: rectified flow on the shifted sigma grid; `sampling` draws the grid position (uniform, or
    logit-normal as SD3 and several Wan trainers do: more weight on the middle noise levels)."""

    def __init__(self, num_train_timesteps: int, shift: float, sampling: Literal["uniform", "logit_normal"] = "uniform"):
        self.schedule = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        self.sampling = sampling

    def draw(self, batch: int, generator: Generators) -> torch.Tensor:
        """Grid indices; index 0 is the noisiest (sigma 1), as in the scheduler."""
        size = len(self.schedule.sigmas)
        if self.sampling == "uniform":
            return draw_index(size, batch, generator).cpu()
        position = torch.sigmoid(draw_normal(batch, generator))  # the noise level s in (0, 1)
        return ((1 - position) * size).long().clamp(0, size - 1)

    def timesteps(self, index: torch.Tensor) -> torch.Tensor:
        return self.schedule.timesteps[index.cpu()]

    def noisy_and_target(self, latents: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (latents.ndim - 1)
        sigma = self.schedule.sigmas[index.cpu()].view(shape).to(latents.device)
        x0, eps = latents.float(), noise.float()
        return ((1 - sigma) * x0 + sigma * eps).to(latents.dtype), eps - x0
