"""`python -m bench.curation_cpu`: per clip, the CPU work the subjects stage's GPU actor did before
it ran tensor work only, and what that work costs now in the CPU tasks before (`prepare`) and after
(`finish`) the actor.

Before, the actor ran GroundingDINO's processor on every (frame, label) pair at 800 / 1333, SAM's
resize to 1024, dlib's HOG at full resolution, and the merges, tracks, RLE and PNG writes. Now the
processor runs once per frame (one prompt for all labels), HOG on frames shrunk to 540p, and
nothing but the three models runs in the actor (`tests/test_curation_parity.py` patches the CPU
work to raise inside `process_batch`). Real frames (bikes.mp4, the astronaut's face) scaled to 720p
and 1080p; 3 key frames and 7 labels a clip, as the full profile; the processors at the real
sizes. `finish` is timed on the finds of the tiny models (masks at the frame's size). The
aesthetic stage had no CPU work in its actor to move (its `prepare` already decoded and resized).
Writes `bench/results/curation_cpu.md`.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.sections import ROOT, write_section
from model.curation.faces import FaceModel
from model.curation.grounding import Detector, load_processor
from model.curation.segmenter import sam_input
from model.testing.tiny import bert_tokenizer, ensure
from pipeline.config import load_config
from stages.subjects import Subjects
from stages.video import iter_frames

LABELS = ["person", "man", "woman", "dog", "cat", "chef", "bicycle"]
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
REPEAT = 3


def key_frames(size: tuple[int, int]) -> list[np.ndarray]:
    """Two frames of bikes.mp4 and the astronaut (a face for dlib), at `size` (width, height)."""
    video = [f.image for f in iter_frames(ROOT / "tests/data/real/bikes.mp4", fmt="rgb24", keep={0, 120}.__contains__)]
    face = cv2.cvtColor(cv2.imread(str(ROOT / "tests/data/real/astronaut.png")), cv2.COLOR_BGR2RGB)
    return [cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in [*video, face]]


def seconds(call) -> float:
    """Best of REPEAT runs (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(REPEAT):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure(frames: list[np.ndarray], processor_folder: Path, stage: Subjects, work: dict) -> dict[str, tuple[float, float]]:
    """work -> (seconds per clip in the actor before, seconds per clip in CPU tasks now)."""
    processor = load_processor(str(processor_folder))
    pairs = [(image, label) for image in frames for label in LABELS]
    old_processor = lambda: processor(images=[i for i, _ in pairs], text=[f"{label}." for _, label in pairs], padding=True, return_tensors="pt")  # noqa: E731
    full, capped = FaceModel.load(detect_max_short_side=10**6), FaceModel.load()
    faces = lambda model: [model.embed(f, found) for f in frames if (found := model.detect(f))]  # noqa: E731
    return {
        "GroundingDINO processor + tokenizer": (seconds(old_processor), seconds(lambda: Detector.inputs(str(processor_folder), frames, LABELS))),
        "SAM resize to 1024": (seconds(lambda: [sam_input(f, "vit_b") for f in frames]),) * 2,
        "dlib faces (HOG, landmarks, embedding)": (seconds(lambda: faces(full)), seconds(lambda: faces(capped))),
        "merges, tracks, quality, RLE, PNG crops": (seconds(lambda: stage.finish({"subjects": [work]})),) * 2,
    }


def main() -> None:
    models = ensure(ROOT / "tiny-models", ["clip", "aesthetic_head", "grounding_dino", "sam"])
    folder = Path(tempfile.mkdtemp(prefix="curation-cpu-"))
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=bert_tokenizer()).save_pretrained(folder / "processor")
    stage = Subjects(load_config(profile="tiny", overrides=[f"tiny_models={models}", "subjects.min_score=0.0"]).subjects, folder / "run")
    stage.setup()
    lines = [
        "## Curation: CPU work out of the GPU actors (subjects)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.0f} when it ended "
        f"(shared with other work: best of {REPEAT}). Seconds per clip (3 key frames, 7 labels). Before: all of it ran inside the GPU actor (1 CPU). "
        "Now: none of it does; it runs in CPU tasks (`prepare` before, `finish` after), which Ray spreads over every core.",
        "",
        "| frames | work | in the actor before (s) | in CPU tasks now (s) |",
        "|---|---|---|---|",
    ]
    for name, size in SIZES.items():
        frames = key_frames(size)
        kinds = dict.fromkeys(LABELS, "human")
        made, errors = stage.process_batch([stage.inputs("c1", frames, [0, 1, 2], kinds)])
        assert made and not errors, errors
        parts = measure(frames, folder / "processor", stage, made[0])
        for work, (before, now) in parts.items():
            lines.append(f"| {name} | {work} | {before:.3f} | {now:.3f} |")
        before, now = (sum(p[i] for p in parts.values()) for i in (0, 1))
        lines.append(f"| {name} | **total** | **{before:.3f}** (actor) | **{now:.3f}** (CPU tasks), 0 in the actor |")
    print(write_section("curation_cpu", "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
