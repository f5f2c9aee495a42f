"""`python -m bench.learned`: per-clip time of each model stage, split by phase, at batch 1 and 8.

Phases: decode + resize (the stage's `prepare`, which the runner runs in CPU tasks apart from
the model actors; subjects' processors and faces are there too), processor (tensorising inside
the actor), model forward, postprocessing (in the actor, plus `finish`, the CPU task after it).
Inputs are the real sample clips curated with profile tiny (random-initialised tiny models of
the real classes), so the numbers say where time goes, not what real-size models cost. Writes
`bench/results/learned.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.sections import ROOT, section_path, write_section
from manifests import views
from model.testing.tiny import ensure
from pipeline.__main__ import main as pipeline_main
from pipeline.config import load_config
from pipeline.registry import STAGES
from stages.base import BadModelOutput, tables
from stages.clips import Clips
from stages.scenes import Scenes

SRC = ROOT / "tests/data/real"
MODELS = ["clip", "aesthetic_head", "qwen2_5_vl", "grounding_dino", "sam"]
PHASES = ["decode + resize", "processor", "forward", "postprocess"]


def measure(name: str, run: Path, config, batch: int, items: list[dict]) -> dict[str, float]:
    """Seconds per clip in each phase over `items`, processed in batches of `batch` (after one warm-up batch)."""
    stage = STAGES[name](getattr(config, name), run)
    stage.setup()
    stage.process_batch([stage.prepare(items[0])])  # warm-up: first-call allocations
    stage.timings.clear()
    decode = 0.0
    for at in range(0, len(items), batch):
        started = time.perf_counter()
        prepared = [stage.prepare(item) for item in items[at : at + batch]]
        decode += time.perf_counter() - started
        rows, errors = stage.process_batch(prepared)
        assert rows or errors
        with stage.timed("finish"):  # the CPU task after the actor
            for row in tables(stage.writes, rows)[stage.writes]:
                try:
                    stage.finish({stage.writes: [row]})
                except BadModelOutput:
                    pass
    postprocess = stage.timings["postprocess"] + stage.timings["finish"]
    parts = {"decode + resize": decode, "processor": stage.timings["preprocess"], "forward": stage.timings["forward"], "postprocess": postprocess}
    return {k: v / len(items) for k, v in parts.items()}


def prepare_s(name: str, run: Path, config, items: list[dict]) -> float:
    """Seconds per item of the stage's `prepare` (its CPU side: frames in, resized)."""
    stage = STAGES[name](getattr(config, name), run)
    started = time.perf_counter()
    for item in items:
        stage.prepare(item)
    return (time.perf_counter() - started) / len(items)


def keep_frames(run: Path, config) -> None:
    """What the decodes of a whole chain keep: the scene pass for aesthetic and screen, the clips stage for caption and subjects."""
    fed = {name: getattr(config, name) for name in ("aesthetic", "screen")}
    for video in views.query(run, "SELECT * FROM videos").to_pylist():
        Scenes(config.scenes, run, fed=fed).process(video)
    clips = Clips(config.clips, run, fed={name: getattr(config, name) for name in ("caption", "subjects")})
    for item in views.query(run, "SELECT * FROM candidates WHERE clip_path IS NOT NULL").to_pylist():
        clips.process(item)


def kept_table(run: Path, config, clips: int) -> list[str]:
    """Each model stage's `prepare` per clip: decoding its frames itself, against reading those its chain's decode kept."""
    inputs = {}
    for name in ("aesthetic", "screen", "caption", "subjects"):
        items = views.candidates(run, STAGES[name].filters, config.filter).to_pylist()
        items = [i for i in items if name in ("aesthetic", "screen") or (i["clip_path"] and i["caption"])]
        inputs[name] = (items * clips)[:clips]
    decoded = {name: prepare_s(name, run, config, items) for name, items in inputs.items()}
    keep_frames(run, config)
    kept = {name: prepare_s(name, run, config, items) for name, items in inputs.items()}
    lines = ["", "Frames in `prepare`, per clip: decoded by the stage itself (run alone: `python -m pipeline stage NAME`) against "
             "read from what its chain's one decode kept (the scene pass for aesthetic and screen, the clips stage for caption "
             "and subjects; `stages/kept.py`). Same clips, same run.", "",
             "| stage | decoded | kept | kept / decoded |", "|---|---|---|---|"]  # fmt: skip
    for name in inputs:
        lines.append(f"| {name} | {1000 * decoded[name]:.0f} ms | {1000 * kept[name]:.0f} ms | {kept[name] / decoded[name]:.2f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learned", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=section_path("learned"))
    p.add_argument("--clips", type=int, default=8, help="clips timed per setting (the sample clips repeated)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-learned-"))
    models = ensure(work / "models", MODELS)
    run = work / "run"
    tiny = ["--profile", "tiny", "--set", f"tiny_models={models}"]
    if pipeline_main(["curate", str(SRC), "--out", str(run), *tiny]) not in (0, 3):
        raise SystemExit("curation of the sample clips failed")
    config = load_config(run / "config.yaml")
    lines = [
        "## Learned curation stages (tiny models, CPU)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch on CPU. Models: profile tiny",
        "(random-initialised tiny models of the real classes), so these split the time per clip by phase;",
        "they are not real-size costs. Per clip, milliseconds; `decode + resize` is the stage's `prepare` run alone",
        "(decoding its own frames), which the runner runs as separate CPU tasks (`prepare_batch`, half a CPU each)",
        "that keep batches queued at the model actors, so on a GPU cluster the model does not wait on decode.",
        "",
        "| stage | batch | decode + resize | processor | forward | postprocess | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("aesthetic", "caption", "subjects"):
        items = views.candidates(run, STAGES[name].filters, config.filter).to_pylist()
        items = [i for i in items if name == "aesthetic" or (i["clip_path"] and i["caption"])]
        items = (items * args.clips)[: args.clips]
        for batch in (1, 8):
            per = measure(name, run, config, batch, items)
            cells = " | ".join(f"{1000 * per[k]:.0f}" for k in PHASES)
            lines.append(f"| {name} | {batch} | {cells} | {1000 * sum(per.values()):.0f} |")
            print(lines[-1], flush=True)
    lines += [
        "",
"subjects batches the (key frame x label) prompts of one clip in one GroundingDINO forward and runs SAM",
        "once per key frame, but does not batch across clips yet, so its batch 8 row shows no gain.",
        *kept_table(run, config, args.clips),
        "",
        "Real-size throughput (clips per second for aesthetic, caption and subjects at the full profile's",
        "sizes, random weights, on a GPU): not measured; this session had no GPU.",
        "",
    ]
    out = write_section("learned", "\n".join(lines), args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
