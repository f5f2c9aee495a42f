"""caption: a Qwen2-VL-family model answers once per clip: a caption, its subjects and reject checks.

The clip goes in as one video with its timing, and one answer carries the caption paragraph and a
JSON line with the subject list and the reject checks (`stages.caption_answer`), so the vision
tower runs once per clip. The prompt lives in a versioned file
(`model/curation/prompts/<version>.txt`), recorded per row.

Split at the GPU: `prepare` (a CPU task) decodes the frames and runs the processor (chat template,
video preprocessing, tokens); `process_batch` (the model actor) only stacks tensors and generates;
`finish` decodes and parses the answers. On the CPU the actor generates clip by clip (batched
CPU matmuls round differently and could change a greedy answer); on CUDA in one batch.

An answer whose JSON line does not parse is recorded as a `bad_model_output` error row AND the
clip goes on with the default subjects (person, face) and unknown checks: the captions row is
written too, so the error is a warning (the summary counts it apart from failures). An empty
caption stops the clip: an error row only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from manifests.filters import VLM_CHECKS, rules_through
from stages.aesthetic import model_name
from stages.base import BadInput, BadModelOutput, ModelStageConfig, Resources, Row, Stage, error_row
from stages.caption_answer import DEFAULT_SUBJECTS, parse_answer
from stages.video import clip_frames

PROMPTS = Path(__file__).resolve().parent.parent / "model" / "curation" / "prompts"
EMPTY = "empty caption"  # the error message of an answer without a caption (the summary counts them)


class CaptionConfig(ModelStageConfig):
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # any Qwen2-VL / Qwen2.5-VL checkpoint
    prompt_version: str = "caption_v2"
    n_frames: int = 4  # even: Qwen's temporal patches take frames in pairs
    max_side: int = 448  # frames are scaled down to this longest side before the processor
    max_pixels: int = 448 * 448  # per frame, for the Qwen processor
    max_new_tokens: int = 320  # a caption paragraph (about 120 tokens) and the JSON line (up to about 180)
    max_subjects: int = 6

    def weights(self) -> dict[str, tuple[str, str | None]]:
        return {"caption.model": (self.model, None)}

    def clip_request(self) -> int:
        """Frames per clip (`stages.video.clip_frames`), kept by the clips stage when both run."""
        return self.n_frames


def load_prompt(version: str) -> str:
    """The `[answer]` section of one prompt file (caption_v1, two questions, is kept as the record of older rows)."""
    text = (PROMPTS / f"{version}.txt").read_text()
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[\w+\]\n|\Z)", text, flags=re.M | re.S))
    if "answer" not in sections:
        raise ValueError(f"prompt file {version}.txt lacks an [answer] section")
    return sections["answer"].strip()


class Caption(Stage):
    name = "caption"
    reads = "candidates"
    writes = "captions"
    input_key = "clip_id"
    filters = rules_through("nsfw")
    needs = "clip_path IS NOT NULL"
    resources = Resources(cpus=1.0, uses_model=True, gpu_memory_gb=14)  # Qwen2.5-VL-3B in bf16 (7.5 GB) and a batch's frames and cache
    batch_size = 4
    Config = CaptionConfig

    def setup(self) -> None:
        from model.curation.captioner import CaptionModel
        from model.curation.device import runtime

        on, dtype = runtime()
        self.on = on
        self.captioner = CaptionModel.from_pretrained(self.config.model, on, dtype)

    def processor(self):
        from model.curation.captioner import CaptionProcessor

        return CaptionProcessor(self.config.model, self.config.max_pixels)  # loaded once per process

    def prepare(self, item: Row) -> Row:
        """Decode n frames spread over the clip file, scaled to at most `max_side`, and make the model's inputs."""
        if not item.get("clip_path"):
            raise BadInput(f"clip {item['clip_id']} has no clip file (run the clips stage)")
        cfg = self.config
        n = item["end_frame"] - item["start_frame"]
        frames = [image for _, image in clip_frames(self.run_dir, item, cfg.clip_request())]
        h, w = frames[0].shape[:2]
        scale = min(1.0, cfg.max_side / max(h, w))
        if scale < 1.0:
            size = (max(28, round(w * scale)), max(28, round(h * scale)))
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        fps = len(frames) * item["fps"] / n  # frames per second of the clip, as sampled
        return {"clip_id": item["clip_id"], "request": self.processor().request(np.stack(frames), fps, load_prompt(cfg.prompt_version))}

    def process_batch(self, items: list[Row]) -> tuple[dict[str, list[Row]], list[Row]]:
        """Tensors in, token ids out: one generate call on CUDA, one per clip on the CPU."""
        requests = [item["request"] for item in items]
        try:
            with self.timed("forward"):
                generate = self.captioner.generate_each if self.on == "cpu" else self.captioner.generate
                answers = generate(requests, self.config.max_new_tokens)
        except Exception as exc:
            return {}, [error_row(self.name, item["clip_id"], exc) for item in items]
        dtype = str(self.captioner.dtype).removeprefix("torch.")
        raw = [{"clip_id": item["clip_id"], "tokens": a.tokens.tolist(), "finished": a.finished, "dtype": dtype}
               for item, a in zip(items, answers)]  # fmt: skip
        return {self.writes: raw}, []

    def finish(self, rows: dict[str, list[Row]]) -> dict[str, list[Row]]:
        """Decode and parse one clip's answer (in a CPU task after the actor): its captions row, and the
        error row of a bad answer (a warning when the row is there too)."""
        from model.curation.captioner import Answer

        raw = rows[self.writes][0]
        text = self.processor().decode(Answer(np.asarray(raw["tokens"]), raw["finished"]))
        row, error = self.row(raw, text)
        return {self.writes: [row] if row else [], "errors": [error] if error else []}

    def row(self, raw: Row, text: str) -> tuple[Row | None, Row | None]:
        """The captions row (None for an empty caption) and the error row of a bad answer, if any."""
        clip_id, cfg = raw["clip_id"], self.config
        parsed = parse_answer(text, cfg.max_subjects)
        if not parsed.caption:
            return None, error_row(self.name, clip_id, BadModelOutput(EMPTY))
        error = None
        if parsed.problem:
            error = error_row(self.name, clip_id, BadModelOutput(f"{parsed.problem}; went on with the default subjects"))
        row = {
            "clip_id": clip_id,
            "caption": parsed.caption,
            "subjects_json": json.dumps(parsed.subjects or DEFAULT_SUBJECTS),
            "subjects_source": "default" if parsed.subjects is None else "model",
            "model": model_name(cfg.model, cfg.random_weights),
            "prompt_version": cfg.prompt_version,
            "random_weights": cfg.random_weights,
            "answer": "truncated" if not raw["finished"] else "unparsable" if parsed.problem else "ok",
            "output_tokens": len(raw["tokens"]),
            "dtype": raw["dtype"],
            **{f"reject_{name}": (parsed.checks or {}).get(name) for name in VLM_CHECKS},
        }
        return row, error
