"""The multimodal LLM that reads the reference images and the caption together (Qwen2-VL family).

Its last hidden states are CINEMA's condition: the MLLM, not a keyword list, works out which
reference is which subject of the caption. It is frozen, so its states can be cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, AutoProcessor

from model.hub import resolve

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "instruction_v1"
DEFAULT_MAX_PIXELS = 448 * 448  # about 256 MLLM tokens per reference image


def load_instruction(version: str) -> str:
    """The instruction text of one template version (`model/cinema/templates/<version>.txt`)."""
    return (TEMPLATES / f"{version}.txt").read_text().strip()


@dataclass
class MLLMStates:
    states: torch.Tensor  # (batch, tokens, hidden): last hidden states, right-padded
    mask: torch.Tensor  # (batch, tokens) bool: True on real tokens


class MLLMEncoder(nn.Module):
    """Chat = instruction (system turn) + the sample's reference images and caption (user turn)."""

    def __init__(self, model: nn.Module, processor, instruction: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        self.model = model
        self.processor = processor
        self.instruction = instruction
        self.max_pixels = max_pixels
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        ref: str,
        template: str = DEFAULT_TEMPLATE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        dtype: torch.dtype = torch.float32,
    ) -> MLLMEncoder:
        folder = resolve(ref)
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=dtype)
        return cls(model, processor, load_instruction(template), max_pixels)

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    def chat(self, references: list[Image.Image], caption: str) -> str:
        user = [{"type": "image"} for _ in references] + [{"type": "text", "text": caption}]
        messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": user}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def forward(self, references: list[list[Image.Image]], captions: list[str]) -> MLLMStates:
        """One sample per caption, each with its own (possibly empty) list of reference images."""
        if len(references) != len(captions):
            raise ValueError(f"{len(references)} reference lists for {len(captions)} captions")
        images = [image.convert("RGB") for sample in references for image in sample]
        inputs = self.processor(
            text=[self.chat(sample, caption) for sample, caption in zip(references, captions)],
            images=images or None,
            size={"shortest_edge": 28 * 28, "longest_edge": self.max_pixels},
            padding=True,
            padding_side="right",  # causal attention: real tokens never see the padding after them
            return_tensors="pt",
        ).to(self.model.device)
        output = self.model(**inputs)
        return MLLMStates(states=output.last_hidden_state, mask=inputs["attention_mask"].bool())
