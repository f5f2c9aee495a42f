"""`python -m bench.caption`: the caption stage's CPU work per clip, in the model actor and out of it, before and after.

Before (commit c256b03): the actor ran the Qwen processor itself, on two prompts (caption, subjects)
that each sent the clip's 4 frames as stills. After: `prepare` (a CPU task) runs the processor
once, on the clip as one video; the actor only stacks tensors and generates; `finish` (a CPU task
after the actor) decodes and parses the answer. Same frames, the
real preprocessing sizes (the tiny processor has Qwen2.5-VL-3B's), so the processor times are
real; the tiny model's forward is not, and is left out. Writes `bench/results/caption.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.sections import ROOT, write_section
from model.curation.captioner import Answer, CaptionProcessor
from model.testing.tiny import ensure
from pipeline.config import load_config
from stages.caption import Caption, load_prompt
from stages.video import iter_frames, spread

SOURCES = [ROOT / "tests/data/real/bikes.mp4", ROOT / "tests/data/real/carphone_pristine.mp4"]
OLD_PROMPTS = ("caption", "subjects")  # caption_v1's two questions, each with the same frames


def clip(path: Path, n_frames: int, max_side: int) -> np.ndarray:
    """The frames `prepare` gives the processor: n spread over the first 60 frames, scaled to `max_side`."""
    picks = set(spread(0, 60, n_frames))
    frames = [f.image for f in iter_frames(path, fmt="rgb24", end_frame=60) if f.index in picks]
    h, w = frames[0].shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(28, round(w * scale)), max(28, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def before(processor, frames: np.ndarray, prompts: dict[str, str], max_pixels: int):
    """c256b03's `Captioner.inputs` for one clip: both prompts, the frames as stills in each."""
    user = lambda prompt: [{"type": "image"} for _ in frames] + [{"type": "text", "text": prompt}]  # noqa: E731
    chats = [processor.apply_chat_template([{"role": "user", "content": user(prompts[p])}], tokenize=False, add_generation_prompt=True)
             for p in OLD_PROMPTS]  # fmt: skip
    images = [Image.fromarray(f) for f in frames] * len(OLD_PROMPTS)
    return processor(text=chats, images=images, size={"shortest_edge": 28 * 28, "longest_edge": max_pixels}, padding=True,
                     padding_side="left", return_tensors="pt")  # fmt: skip


def timed(fns: list, repeats: int) -> list[tuple[float, object]]:
    """Each call's fastest time of `repeats`, the calls taking turns (after a warm-up of each), so that on
    a shared machine they meet the same load; the least disturbed run of each counts."""
    outs = [fn() for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - started)
    return list(zip(best, outs))


def measure(models: Path, repeats: int) -> list[str]:
    config = load_config(profile="tiny", overrides=[f"tiny_models={models}"]).caption
    stage = Caption(config, Path(tempfile.mkdtemp(prefix="bench-caption-")))
    stage.setup()
    cpu = CaptionProcessor(config.model, config.max_pixels)
    old_prompts = dict(zip(OLD_PROMPTS, (ROOT / "model/curation/prompts/caption_v1.txt").read_text().split("[subjects]\n")))
    old_prompts = {k: v.removeprefix("[caption]\n").strip() for k, v in old_prompts.items()}
    prompt = load_prompt(config.prompt_version)
    rows = []
    for source in SOURCES:
        frames = clip(source, config.n_frames, config.max_side)
        (old_s, old), (new_s, request) = timed([lambda: before(cpu.processor, frames, old_prompts, config.max_pixels),
                                                 lambda: cpu.request(frames, 2.0, prompt)], repeats)  # fmt: skip
        answer = Answer(np.arange(3, 3 + 160) % 300, True)  # an answer of 160 tokens, decoded and parsed
        raw = {"clip_id": "c", "tokens": answer.tokens.tolist(), "finished": True, "dtype": "float32"}
        (stack_s, _), (finish_s, _) = timed([lambda: stage.captioner.batch([request]), lambda: stage.finish({"captions": [raw]})], repeats)
        vision_old = int(old["image_grid_thw"].prod(-1).sum()) // 4
        vision_new = int(request["video_grid_thw"].prod(-1).sum()) // 4
        rows.append((source.name, frames.shape, old_s, stack_s, new_s, finish_s, vision_old, vision_new))
    lines = [
        "## Caption stage: CPU work out of the model actor",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs (noisy; each row's numbers come from the",
        f"same run). Per clip, {config.n_frames} frames at most {config.max_side} px a side, the processor at Qwen2.5-VL-3B's sizes",
        f"(`caption.max_pixels` {config.max_pixels}), the fastest of {repeats} calls after a warm-up, before and after taking turns. Before: commit c256b03, where the",
        "actor ran the processor on two prompts with the frames as stills in each (its decode of the answers is left out).",
        "After: the processor runs once in `prepare` (a CPU task) on the clip as one video, the actor only stacks the tensors,",
        "and `finish` (a CPU task after the actor) decodes and parses the answer (160 tokens here). Vision tokens: what the",
        "language model reads of the frames per clip. `python -m bench.caption`.",
        "",
        "| clip (frames) | actor CPU before | actor CPU after | prepare: processor after | finish: decode + parse after | vision tokens before / after |",
        "|---|---|---|---|---|---|",
    ]
    for name, shape, old_s, stack_s, new_s, finish_s, vision_old, vision_new in rows:
        lines.append(f"| {name} ({shape[0]} x {shape[2]}x{shape[1]}) | {1000 * old_s:.0f} ms | {1000 * stack_s:.2f} ms | "
                     f"{1000 * new_s:.0f} ms | {1000 * finish_s:.2f} ms | {vision_old} / {vision_new} |")  # fmt: skip
        print(lines[-1], flush=True)
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.caption", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="another file than bench/results/caption.md")
    args = p.parse_args(argv)
    models = ensure(Path(tempfile.mkdtemp(prefix="bench-caption-models-")), ["qwen2_5_vl"])
    print(f"wrote {write_section('caption', chr(10).join(measure(models, args.repeats)), args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
