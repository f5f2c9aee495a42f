"""AlignerNet: maps the MLLM's hidden states into the T5 feature space the video DiT was trained on.

Learnable queries, one per text position (226 T5 for CogVideoX, 512 UMT5 for Wan), cross-attend
to the MLLM states, as in Kosmos-G's AlignerNet; the output keeps the DiT's text interface
unchanged. It is pre-trained alone to match the text target on the same captions, then fine-tuned
with the DiT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class AlignerLayer(nn.Module):
    """Pre-norm block: queries attend to each other, then to the MLLM states, then an MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, queries: torch.Tensor, states: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        x = self.self_norm(queries)
        queries = queries + self.self_attention(x, x, x, need_weights=False)[0]
        x = self.cross_norm(queries)
        queries = queries + self.cross_attention(x, states, states, key_padding_mask=ignore, need_weights=False)[0]
        return queries + self.mlp(self.mlp_norm(queries))


class AlignerNet(ModelMixin, ConfigMixin):
    """Defaults are the paper's: 226 queries, 6 layers, width 768, 8 heads, Qwen2.5-VL-3B in, T5-XXL out."""

    @register_to_config
    def __init__(
        self,
        input_dim: int = 2048,
        output_dim: int = 4096,
        num_queries: int = 226,
        num_layers: int = 6,
        width: int = 768,
        num_heads: int = 8,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.input_proj = nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, width))
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.layers = nn.ModuleList(AlignerLayer(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, output_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, input_dim) MLLM states and their bool mask -> (batch, num_queries, output_dim)."""
        states = self.input_proj(states.to(self.dtype))
        queries = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        ignore = ~mask.bool()
        for layer in self.layers:
            queries = layer(queries, states, ignore)
        return self.output_proj(self.output_norm(queries))


def masked_cosine(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the real (mask True) token positions."""
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    weights = mask.float()
    return (cosine * weights).sum() / weights.sum()


def alignment_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, padding_weight: float = 0.0
) -> torch.Tensor:
    """MSE + (1 - cosine similarity) to the text target, a weighted mean over the token positions.

    A real token weighs 1, a padding position `padding_weight`: the DiT attends to all positions,
    padding included, so training sets it above 0. The cosine term is left out where the target row
    is zero (Wan's UMT5 target is zero past the real tokens: no direction to match, and most of its
    512 rows), so there only the MSE pulls the prediction to zero; CogVideoX's unmasked T5 padding
    rows are not zero and keep both terms.
    """
    weights = torch.where(mask.bool(), 1.0, padding_weight).to(prediction.device, torch.float32)
    squared = (prediction.float() - target.float()).pow(2).mean(-1)
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    directed = target.abs().amax(-1) > 0
    return (torch.where(directed, squared + 1 - cosine, squared) * weights).sum() / weights.sum()
