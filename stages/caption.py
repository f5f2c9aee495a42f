"""caption: a Qwen2-VL-family model captions each clip and lists its subjects as JSON.

Both questions go to the model in one batched, greedy generation. The prompts live in a
versioned file (`model/curation/prompts/<version>.txt`), recorded per row. A subject list that does not
parse is recorded as a `bad_model_output` error row AND the clip goes on with the default
subjects (person, face): the captions row is written too, so the error is a warning (the summary
counts it apart from failures). An empty caption stops the clip: an error row only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from stages.aesthetic import model_name
from stages.base import BadInput, BadModelOutput, ModelStageConfig, Resources, Row, Stage, error_row
from stages.video import clip_frames

PROMPTS = Path(__file__).resolve().parent.parent / "model" / "curation" / "prompts"
KINDS = ("human", "face", "object")
DEFAULT_SUBJECTS = [{"kind": "human", "label": "person"}, {"kind": "face", "label": "face"}]


class CaptionConfig(ModelStageConfig):
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # any Qwen2-VL / Qwen2.5-VL checkpoint
    prompt_version: str = "caption_v1"
    n_frames: int = 4
    max_side: int = 448  # frames are scaled down to this longest side before the processor
    max_pixels: int = 448 * 448  # per frame, for the Qwen processor
    max_new_tokens: int = 160
    max_subjects: int = 6

    def weights(self) -> dict[str, tuple[str, str | None]]:
        return {"caption.model": (self.model, None)}

    def clip_request(self) -> int:
        """Frames per clip (`stages.video.clip_frames`), kept by the clips stage when both run."""
        return self.n_frames


def load_prompts(version: str) -> dict[str, str]:
    """The `[caption]` and `[subjects]` sections of one prompt file."""
    text = (PROMPTS / f"{version}.txt").read_text()
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[\w+\]\n|\Z)", text, flags=re.M | re.S))
    missing = {"caption", "subjects"} - set(sections)
    if missing:
        raise ValueError(f"prompt file {version}.txt lacks section(s) {sorted(missing)}")
    return {name: body.strip() for name, body in sections.items()}


def parse_subjects(text: str, limit: int) -> list[dict[str, str]]:
    """A JSON list of {"kind", "label"}: one optional ```json fence allowed, nothing else; else BadModelOutput."""
    body = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.S)
    try:
        data = json.loads(body.group(1) if body else text)
    except json.JSONDecodeError as exc:
        raise BadModelOutput(f"subject list is not JSON ({exc.msg}): {text[:120]!r}") from None
    if not isinstance(data, list) or not data:
        raise BadModelOutput(f"subject list is not a non-empty JSON list: {text[:120]!r}")
    subjects = []
    for entry in data:
        if not (isinstance(entry, dict) and entry.get("kind") in KINDS and isinstance(entry.get("label"), str) and entry["label"].strip()):
            raise BadModelOutput(f"subject entry {entry!r} needs kind in {KINDS} and a label")
        subject = {"kind": entry["kind"], "label": entry["label"].strip()}
        if subject not in subjects:
            subjects.append(subject)
    return subjects[:limit]


class Caption(Stage):
    name = "caption"
    reads = "candidates"
    writes = "captions"
    input_key = "clip_id"
    filters = ("duration", "resolution", "motion", "aesthetic", "text", "nsfw")
    needs = "clip_path IS NOT NULL"
    resources = Resources(cpus=1.0, uses_model=True, gpu_memory_gb=14)  # Qwen2.5-VL-3B in bf16 (7.5 GB) and a batch's frames and cache
    batch_size = 4
    Config = CaptionConfig

    def setup(self) -> None:
        from model.curation.device import device
        from model.curation.captioner import Captioner

        cfg = self.config
        self.prompts = load_prompts(cfg.prompt_version)
        self.captioner = Captioner.from_pretrained(cfg.model, cfg.max_pixels)
        self.captioner.model.to(device())

    def prepare(self, item: Row) -> Row:
        """Decode n frames spread over the clip file, scaled to at most `max_side`."""
        if not item.get("clip_path"):
            raise BadInput(f"clip {item['clip_id']} has no clip file (run the clips stage)")
        n = item["end_frame"] - item["start_frame"]
        frames = [image for _, image in clip_frames(self.run_dir, item["clip_id"], item["clip_path"], n, self.config.clip_request())]
        h, w = frames[0].shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        if scale < 1.0:
            size = (max(28, round(w * scale)), max(28, round(h * scale)))
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        return {"clip_id": item["clip_id"], "frames": np.stack(frames)}

    def process_batch(self, items: list[Row]) -> tuple[list[Row], list[Row]]:
        """One generate call: the caption and the subject question of every clip of the batch."""
        try:
            with self.timed("preprocess"):
                frames = [list(item["frames"]) for item in items] * 2
                prompts = [self.prompts["caption"]] * len(items) + [self.prompts["subjects"]] * len(items)
                inputs = self.captioner.inputs(frames, prompts)
            with self.timed("forward"):
                answers = self.captioner.generate(inputs, self.config.max_new_tokens)
        except Exception as exc:
            return [], [error_row(self.name, item["clip_id"], exc) for item in items]
        with self.timed("postprocess"):
            rows, errors = [], []
            for item, caption, listed in zip(items, answers[: len(items)], answers[len(items) :]):
                row, error = self.row(item["clip_id"], caption, listed)
                rows += [row] if row else []
                errors += [error] if error else []
        return rows, errors

    def row(self, clip_id: str, caption: str, listed: str) -> tuple[Row | None, Row | None]:
        """The captions row (None for an empty caption) and the error row of a bad answer, if any."""
        if not caption.strip():
            return None, error_row(self.name, clip_id, BadModelOutput("empty caption"))
        try:
            subjects, source, error = parse_subjects(listed, self.config.max_subjects), "model", None
        except BadModelOutput as exc:
            subjects, source = DEFAULT_SUBJECTS, "default"
            error = error_row(self.name, clip_id, BadModelOutput(f"{exc}; went on with the default subjects"))
        cfg = self.config
        row = {
            "clip_id": clip_id,
            "caption": caption.strip(),
            "subjects_json": json.dumps(subjects),
            "subjects_source": source,
            "model": model_name(cfg.model, cfg.random_weights),
            "prompt_version": cfg.prompt_version,
            "random_weights": cfg.random_weights,
        }
        return row, error
