"""Wan's DiT with reference frames: each reference's latent is one more latent frame, the stock forward on it.

References are appended after the video's F latent frames on the frame axis, so reference k sits
at RoPE time index F + k on the video's spatial grid (as Phantom places them), and the stock
`WanTransformer3DModel.forward` runs on the concatenation unchanged: no parameter is added, and
with no references the call is the stock one, token for token. The reference frames' outputs are
dropped. `references_at_zero` gives the reference tokens timestep 0 through Wan's per-token
timestep input (what TI2V does for its conditioning frame; Stand-In and Lynx use t = 0), so they
read as clean images at every noise level.

Latents come in and go out in the CINEMA layout (batch, frames, C, h, w), as the CogVideoX DiT's do,
so the model, trainer and sampler call both bases the same way. Supported: the text-to-video
layouts (Wan2.1 1.3B / 14B, Wan2.2-TI2V-5B); image-conditioned ones are refused by the base.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from model.cinema.references import forward_grouped


class CinemaWanTransformer3DModel(WanTransformer3DModel):
    """Loads from any Wan text-to-video `transformer/` folder; `forward` takes per-sample references."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        references: list[torch.Tensor] | None = None,
        references_at_zero: bool = False,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict for the video latents (batch, frames, C, h, w); `references[i]` is (n_i, C, h, w).

        `timestep` is per sample (batch,) or per video token (batch, frames * h/2 * w/2), as Wan takes it.
        """
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(hidden_states.shape[0])

        def frames(video, text, steps, reference_frames=None):
            return self.forward_frames(video, text, steps, reference_frames, references_at_zero)

        if references is None:
            sample = frames(hidden_states, encoder_hidden_states, timestep)
        else:
            sample = forward_grouped(frames, hidden_states, encoder_hidden_states, timestep, references)
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)

    def forward_frames(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        timestep: torch.Tensor,
        reference_frames: torch.Tensor | None = None,
        references_at_zero: bool = False,
    ) -> torch.Tensor:
        """The stock forward over video + reference frames (batch, n, C, h, w), the video frames' output."""
        self._check_layout()
        num_frames = video.shape[1]
        frames = video if reference_frames is None else torch.cat([video, reference_frames.to(video.dtype)], dim=1)
        if reference_frames is not None:
            timestep = self.token_timesteps(timestep, video, reference_frames.shape[1], references_at_zero)
        output = super().forward(frames.permute(0, 2, 1, 3, 4), timestep, text, return_dict=False)[0]
        return output[:, :, :num_frames].permute(0, 2, 1, 3, 4)

    def token_timesteps(
        self, timestep: torch.Tensor, video: torch.Tensor, count: int, references_at_zero: bool
    ) -> torch.Tensor:
        """Timesteps for the video and reference tokens together: per sample when every token shares one,
        else per token (batch, tokens), the references' 0 or their sample's first video token's."""
        if timestep.ndim == 1 and not references_at_zero:
            return timestep
        _, p_h, p_w = self.config.patch_size
        per_frame = (video.shape[3] // p_h) * (video.shape[4] // p_w)
        video_steps = timestep[:, None].expand(-1, video.shape[1] * per_frame) if timestep.ndim == 1 else timestep
        reference_steps = torch.zeros_like(video_steps[:, :1]) if references_at_zero else video_steps[:, :1]
        return torch.cat([video_steps, reference_steps.expand(-1, count * per_frame)], dim=1)

    @property
    def blocks_to_shard(self) -> torch.nn.ModuleList:
        """The repeated blocks: FSDP2's units (`model.train.plan.shard`)."""
        return self.blocks

    def _check_layout(self) -> None:
        config = self.config
        if config.patch_size[0] != 1 or config.image_dim is not None or config.in_channels != config.out_channels:
            raise NotImplementedError(
                "reference frames need a Wan text-to-video layout (Wan2.1 T2V, Wan2.2-TI2V): one latent frame "
                "per patch in time, no image embedding, as many input channels as output channels"
            )
