"""The MM-DiT with reference frames: CogVideoX's transformer, references joining along the sequence.

Each reference image's latent (one latent frame) is appended after the video's latent frames and
goes through the stock patch embedding, blocks and positional code as if it were one more frame.
So reference k of a video with F latent frames sits at temporal position F + k, on the video's
spatial grid. Why there: the stock position code (3D sincos for the 2B layout, 3D RoPE for 5B)
extends to it unchanged, no parameter is added, every reference gets a position no video frame
and no other reference has (so the model can tell them apart), and with no references nothing
moves: the computation is the stock transformer's, token for token. The outputs at reference
positions are dropped before the output head, so they cost nothing and carry no loss.

Only the CogVideoX 1.0 text-to-video layouts (2B, 5B) are supported: CogVideoX 1.5 patches two
latent frames together (`patch_size_t`), which a one-frame reference cannot fill.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from model.cinema.references import forward_grouped


class CinemaTransformer3DModel(CogVideoXTransformer3DModel):
    """Loads from any CogVideoX 1.0 `transformer/` folder; `forward` takes per-sample references."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        references: list[torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict for the video latents (batch, frames, C, h, w); `references[i]` is (n_i, C, h, w).

        Samples with different reference counts are run in groups of equal count (see `bench/results/model.md`
        for the measurement against padding with an attention mask).
        """
        timestep = torch.as_tensor(timestep, device=hidden_states.device).expand(hidden_states.shape[0])
        if references is None:
            sample = self.forward_frames(hidden_states, encoder_hidden_states, timestep)
        else:
            sample = self.forward_grouped(hidden_states, encoder_hidden_states, timestep, references)
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)

    def forward_grouped(
        self, video: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor, references: list[torch.Tensor]
    ) -> torch.Tensor:
        """One stock-shaped call per distinct reference count, no padding, outputs back in batch order."""
        return forward_grouped(self.forward_frames, video, text, timestep, references)

    def forward_padded(
        self, video: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor, references: list[torch.Tensor]
    ) -> torch.Tensor:
        """One call, every sample padded to the most references and the padding masked out of attention.

        The measured alternative to grouping (slower once attention costs anything), and a check on it.
        """
        most = max(len(sample) for sample in references)
        if most == 0:
            return self.forward_frames(video, text, timestep)
        frames = video.new_zeros(video.shape[0], most, *video.shape[2:])
        valid = torch.zeros(video.shape[0], most, dtype=torch.bool, device=video.device)
        for row, sample in enumerate(references):
            frames[row, : len(sample)] = sample
            valid[row, : len(sample)] = True
        return self.forward_frames(video, text, timestep, frames, valid)

    def forward_frames(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        timestep: torch.Tensor,
        reference_frames: torch.Tensor | None = None,
        reference_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The stock forward over video + reference frames; `reference_valid` (batch, refs) masks padding."""
        self._check_layout()
        batch, num_frames, _, height, width = video.shape
        frames = video if reference_frames is None else torch.cat([video, reference_frames.to(video.dtype)], dim=1)

        temb = self.time_embedding(self.time_proj(timestep).to(video.dtype))
        tokens = self.embedding_dropout(self.patch_embed(text, frames))
        text_length = text.shape[1]
        text_tokens, frame_tokens = tokens[:, :text_length], tokens[:, text_length:]

        rotary = self.rotary_embedding(frames.shape[1], height, width, video.device)
        tokens_per_frame = (height // self.config.patch_size) * (width // self.config.patch_size)
        attention_kwargs = None
        if reference_valid is not None:
            visible = text_length + num_frames * tokens_per_frame  # text and video keys: never padding
            always = torch.ones(batch, visible, dtype=torch.bool, device=video.device)
            keys = torch.cat([always, reference_valid.repeat_interleave(tokens_per_frame, dim=1)], dim=1)
            attention_kwargs = {"attention_mask": keys[:, None, :]}

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                frame_tokens, text_tokens = self._gradient_checkpointing_func(
                    block, frame_tokens, text_tokens, temb, rotary, attention_kwargs
                )
            else:
                frame_tokens, text_tokens = block(
                    hidden_states=frame_tokens,
                    encoder_hidden_states=text_tokens,
                    temb=temb,
                    image_rotary_emb=rotary,
                    attention_kwargs=attention_kwargs,
                )

        video_tokens = frame_tokens[:, : num_frames * tokens_per_frame]  # reference outputs dropped
        video_tokens = self.proj_out(self.norm_out(self.norm_final(video_tokens), temb=temb))
        return self.unpatchify(video_tokens, num_frames, height, width)

    @property
    def blocks_to_shard(self) -> torch.nn.ModuleList:
        """The repeated blocks: FSDP2's units (`model.train.plan.shard`)."""
        return self.transformer_blocks

    def rotary_embedding(
        self, num_frames: int, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """3D RoPE as CogVideoXPipeline builds it, over `num_frames` latent frames (None for sincos)."""
        if not self.config.use_rotary_positional_embeddings:
            return None
        p = self.config.patch_size
        grid = (height // p, width // p)
        crops = get_resize_crop_region_for_grid(grid, self.config.sample_width // p, self.config.sample_height // p)
        return get_3d_rotary_pos_embed(
            embed_dim=self.config.attention_head_dim,
            crops_coords=crops,
            grid_size=grid,
            temporal_size=num_frames,
            device=device,
        )

    def unpatchify(self, tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        p = self.config.patch_size
        output = tokens.reshape(tokens.shape[0], num_frames, height // p, width // p, -1, p, p)
        return output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def _check_layout(self) -> None:
        config = self.config
        if config.patch_size_t is not None or config.ofs_embed_dim or config.use_learned_positional_embeddings:
            raise NotImplementedError(
                "reference frames need a CogVideoX 1.0 text-to-video layout (2B or 5B): "
                "no patch_size_t, ofs embedding or learned positional embeddings"
            )
