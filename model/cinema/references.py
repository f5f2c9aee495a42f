"""Batches whose samples have different reference counts: one stock-shaped call per count.

Both bases' DiTs run references as extra latent frames, so a batch of mixed counts cannot be one
tensor without padding; grouping by count keeps every call the stock shape (see `bench/model.md`
for the measurement against padding with an attention mask) and each sample's output what it
would be alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def forward_grouped(
    forward_frames: Callable[..., torch.Tensor],
    video: torch.Tensor,
    text: torch.Tensor,
    timestep: torch.Tensor,
    references: list[torch.Tensor],
) -> torch.Tensor:
    """`forward_frames(video, text, timestep, reference_frames or None)` per distinct count, outputs back in batch order."""
    if len(references) != video.shape[0]:
        raise ValueError(f"{len(references)} reference lists for a batch of {video.shape[0]}")
    counts = torch.tensor([len(sample) for sample in references])
    order, outputs = [], []
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero().flatten()
        frames = torch.stack([references[row] for row in rows]) if count else None
        outputs.append(forward_frames(video[rows], text[rows], timestep[rows], frames))
        order.append(rows)
    return torch.cat(outputs)[torch.cat(order).argsort()]
