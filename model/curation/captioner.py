"""Clip captions from a Qwen2-VL-family chat model (any Qwen2-VL / Qwen2.5-VL checkpoint), split at the GPU.

`CaptionProcessor` is the CPU half: the chat template, the video preprocessing and the
tokenisation of one clip (`request`), and the decoding of its answer. `CaptionModel` is the GPU
half: it stacks requests into one left-padded batch and calls `generate`, tensors only. A clip goes
in as one video with its timing (`fps`, hence `second_per_grid_ts`): Qwen's temporal patches
pair frames, so the same frames take half the tokens of separate stills.

Generation is greedy. Left padding with its attention mask gives each row the positions it has
alone (Qwen's rope index counts attended tokens only), so on CUDA a clip's answer does not depend
on its batch up to bf16 rounding; on the CPU `generate_each` runs clip by clip, which is exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.video_utils import VideoMetadata

from model.hub import resolve

Request = dict[str, np.ndarray]  # one clip's model inputs, without a batch dimension; plain arrays travel between processes
PADDED = ("input_ids", "attention_mask", "mm_token_type_ids")  # per-token inputs, left-padded to the batch's longest
STACKED = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")  # per-clip inputs, concatenated


@dataclass(frozen=True)
class Answer:
    tokens: np.ndarray  # generated ids up to and including the end-of-turn token, if it came
    finished: bool  # False: generation stopped at max_new_tokens


@functools.lru_cache(maxsize=2)
def load_processor(ref: str):
    """The checkpoint's processor, once per process (CPU tasks reuse their worker process)."""
    return AutoProcessor.from_pretrained(resolve(ref))


class CaptionProcessor:
    def __init__(self, ref: str, max_pixels: int):
        self.processor = load_processor(ref)
        self.max_pixels = max_pixels

    def request(self, frames: np.ndarray, fps: float, prompt: str) -> Request:
        """One clip's inputs: `frames` (T, H, W, 3) RGB sampled at `fps` frames per second of the clip."""
        user = [{"type": "video"}, {"type": "text", "text": prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        inputs = self.processor(
            text=[text],
            videos=[list(frames)],
            video_metadata=[VideoMetadata(total_num_frames=len(frames), fps=fps)],
            do_sample_frames=False,  # the clip's frames were chosen by the stage
            size={"shortest_edge": 28 * 28, "longest_edge": self.max_pixels},
            return_tensors="np",
        )
        return {key: np.asarray(value)[0] if key in PADDED else np.asarray(value) for key, value in inputs.items()}

    def decode(self, answer: Answer) -> str:
        return self.processor.batch_decode([answer.tokens], skip_special_tokens=True)[0].strip()


class CaptionModel:
    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        generation = model.generation_config
        eos = generation.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad = generation.pad_token_id if generation.pad_token_id is not None else min(self.eos)

    @classmethod
    def from_pretrained(cls, ref: str, device: str, dtype: torch.dtype) -> CaptionModel:
        model = AutoModelForImageTextToText.from_pretrained(resolve(ref), dtype=dtype, attn_implementation="sdpa")
        return cls(model.to(device))

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def batch(self, requests: list[Request]) -> dict[str, torch.Tensor]:
        """One left-padded batch: every row ends at its last prompt token, where generation goes on."""
        longest = max(len(r["input_ids"]) for r in requests)
        out = {}
        for key in (k for k in PADDED if k in requests[0]):
            fill = self.pad if key == "input_ids" else 0
            out[key] = torch.from_numpy(np.stack([np.pad(r[key], (longest - len(r[key]), 0), constant_values=fill) for r in requests]))
        for key in (k for k in STACKED if k in requests[0]):
            out[key] = torch.from_numpy(np.concatenate([r[key] for r in requests]))
        if "pixel_values_videos" in out:
            out["pixel_values_videos"] = out["pixel_values_videos"].to(self.dtype)
        return {key: value.to(self.model.device) for key, value in out.items()}

    @torch.inference_mode()
    def generate(self, requests: list[Request], max_new_tokens: int) -> list[Answer]:
        """Greedy answers, one per request, in order."""
        inputs = self.batch(requests)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = []
        for row in out[:, inputs["input_ids"].shape[1] :].cpu().numpy():
            ends = [i for i, token in enumerate(row) if token in self.eos]
            answers.append(Answer(row[: ends[0] + 1] if ends else row, bool(ends)))
        return answers

    def generate_each(self, requests: list[Request], max_new_tokens: int) -> list[Answer]:
        """Clip by clip: on the CPU, where a batch's matmul blocking could change a rounding and with it an answer."""
        return [answer for request in requests for answer in self.generate([request], max_new_tokens)]
