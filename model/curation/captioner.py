"""Clip captions and subject lists from a Qwen2-VL-family chat model (any Qwen2-VL / Qwen2.5-VL checkpoint).

Frames go in as images of one user turn; generation is greedy and batched (left padding), so
the same frames always give the same text.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from model.hub import resolve


class Captioner:
    def __init__(self, model, processor, max_pixels: int):
        self.model = model.eval()
        self.processor = processor
        self.max_pixels = max_pixels

    @classmethod
    def from_pretrained(cls, ref: str, max_pixels: int, dtype: torch.dtype = torch.float32) -> Captioner:
        folder = resolve(ref)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
        return cls(model, AutoProcessor.from_pretrained(folder), max_pixels)

    def chat(self, n_images: int, prompt: str) -> str:
        user = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        return self.processor.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

    def inputs(self, frames: list[list[np.ndarray]], prompts: list[str]):
        """Processor tensors for one request per (frames, prompt) pair: the CPU part of captioning."""
        images = [Image.fromarray(f) for clip in frames for f in clip]
        return self.processor(
            text=[self.chat(len(clip), prompt) for clip, prompt in zip(frames, prompts)],
            images=images,
            size={"shortest_edge": 28 * 28, "longest_edge": self.max_pixels},
            padding=True,
            padding_side="left",  # generation continues every row from its last real token
            return_tensors="pt",
        )

    @torch.inference_mode()
    def generate(self, inputs, max_new_tokens: int) -> list[str]:
        inputs = inputs.to(self.model.device)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]
