"""T5 features of a caption: the targets AlignerNet learns to reproduce from the MLLM states.

Computed exactly as CogVideoX's pipeline computes its text condition (padded to 226 tokens, the
encoder run without an attention mask), so the targets are what the DiT was pre-trained on. The
mask marks the real tokens, for the loss only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, T5EncoderModel

from model.cinema.model import PartRef
from model.hub import resolve

MAX_LENGTH = 226  # CogVideoX's max_text_seq_length
FILES = ["tokenizer/*", "text_encoder/*"]  # what `from_pretrained` reads of a CogVideoX checkpoint


def text_length(transformer: PartRef) -> int:
    """The DiT's text positions (`max_text_seq_length`), read from its config: the T5 targets' length."""
    folder = Path(resolve(transformer.ref)) / (transformer.subfolder or "")
    return json.loads((folder / "config.json").read_text()).get("max_text_seq_length", MAX_LENGTH)


class T5TargetEncoder(nn.Module):
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
        model = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)
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
