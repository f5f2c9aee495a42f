"""T5 features of a caption: the targets AlignerNet learns to reproduce from the MLLM states.

Computed exactly as the base's pipeline computes its text condition, so the targets are what the
DiT was pre-trained on: CogVideoX pads T5 to 226 tokens and runs the encoder without a mask
(`T5TargetEncoder`); Wan runs UMT5 with its mask over 512 tokens and zeroes the features past the
real length (`UMT5TargetEncoder`). The mask marks the real tokens, for the loss.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch import nn
from transformers import AutoTokenizer, T5EncoderModel, UMT5EncoderModel

from model.cinema.model import PartRef
from model.hub import resolve

MAX_LENGTH = 226  # CogVideoX's max_text_seq_length
FILES = ["tokenizer/*", "text_encoder/*"]  # what `from_pretrained` reads of a CogVideoX checkpoint


def text_length(transformer: PartRef) -> int:
    """The DiT's text positions, as its base reads them from its config: the targets' length."""
    from model.cinema.bases import base_of, transformer_config

    return base_of(transformer).text_length(transformer_config(transformer))


def text_target(transformer: PartRef, ref: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The text encoder of `ref` whose features the DiT of `transformer` reads, at the DiT's length."""
    from model.cinema.bases import base_of

    return base_of(transformer).load_text_target(ref, text_length(transformer), dtype)


class T5TargetEncoder(nn.Module):
    model_class = T5EncoderModel  # the checkpoint's `text_encoder/`

    def __init__(self, tokenizer, model: T5EncoderModel, max_length: int = MAX_LENGTH):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls, ref: str, max_length: int = MAX_LENGTH, dtype: torch.dtype = torch.float32
    ) -> T5TargetEncoder:
        """`ref` is a CogVideoX checkpoint (its `tokenizer/` and `text_encoder/` folders). The published
        `tokenizer/` is sentencepiece files only (no tokenizer.json): the `sentencepiece` package builds it."""
        folder = resolve(ref)
        tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
        model = cls.model_class.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)
        return cls(tokenizer, model, max_length)

    @property
    def width(self) -> int:
        return self.model.config.d_model

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, max_length, width) features and the (batch, max_length) bool mask of real tokens."""
        tokens = self.tokenizer(
            captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.model.device)
        features = self.model(tokens.input_ids).last_hidden_state
        return features, tokens.attention_mask.bool()


class UMT5TargetEncoder(T5TargetEncoder):
    """Wan's text condition, as `WanPipeline._get_t5_prompt_embeds` makes it: cleaned prompt, UMT5 run with
    the attention mask, features past each caption's real length set to zero. `ref` is a Wan checkpoint."""

    model_class = UMT5EncoderModel

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, max_length, width) features, zero past the real tokens, and their (batch, max_length) bool mask."""
        tokens = self.tokenizer(
            [prompt_clean(caption) for caption in captions],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        ).to(self.model.device)
        mask = tokens.attention_mask.bool()
        features = self.model(tokens.input_ids, tokens.attention_mask).last_hidden_state
        return torch.where(mask[..., None], features, torch.zeros((), dtype=features.dtype, device=features.device)), mask
