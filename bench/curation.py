"""`python -m bench.curation`: curation speed as ratios against baselines measured in the same run.

Baseline: decode-only PyAV (the physical limit of a decode-bound stage). Each time is the best of a
few repeats, so other load on the machine inflates it least. The scene pass end to end against
PySceneDetect's command line, both with every core, is `bench.scenes`. Writes
`bench/results/curation.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av

from bench.sections import ROOT, write_section
from stages.aesthetic import AestheticConfig
from stages.motion import MotionConfig
from stages.probe import Probe, ProbeConfig
from stages.scenes import Scenes, ScenesConfig
from stages.screen import ScreenConfig
from stages.video import open_video

FOLDER_VIDEOS = ["tests/data/pyscenedetect/testvideo.mp4", "tests/data/pyscenedetect/fades.mp4",
                 "tests/data/pyscenedetect/goldeneye-vfr-drop3.mp4", "tests/data/pyscenedetect/counter.mp4",
                 "tests/data/real/bikes.mp4", "tests/data/real/carphone_pristine.mp4"]
REPEATS = 3


def best_of(fn, repeats: int = REPEATS) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def decode_only(path: Path) -> int:
    container, stream = open_video(path)
    with container:
        return sum(1 for _ in container.decode(stream))


def video_row(path: Path) -> dict:
    (row,) = Probe(ProbeConfig(), Path(tempfile.gettempdir())).process({"path": str(path)})
    return row


def scene_pass(row: dict, motion: bool, windows: bool = False) -> dict:
    """The scene stage's work on one video; with motion, the same decode scores every window's motion;
    with windows, it also keeps the frames aesthetic and screen read (written under a temporary run folder)."""
    fused = {"motion": MotionConfig()} if motion else {}
    fed = {"aesthetic": AestheticConfig(), "screen": ScreenConfig()} if windows else {}
    with tempfile.TemporaryDirectory() as run:
        return Scenes(ScenesConfig(), Path(run), fused, fed).process(row)


def curate(src: Path, run: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "curate", str(src), "--out", str(run), *args], check=True, cwd=ROOT,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"})  # fmt: skip
    return time.perf_counter() - start


STAGE_BY_STAGE = """
import sys, time
from pathlib import Path
from pipeline.config import load_config, write_run_config
from pipeline.registry import STAGES
from pipeline.runner import run_chain
config = load_config(None, sys.argv[3:], "tiny")
config.src = sys.argv[1]
run = Path(sys.argv[2])
write_run_config(run, config)
for name in config.stages:  # each stage alone, after the one before it ended: the runner of before
    run_chain([STAGES[name]], config, run)
"""


def real_videos(folder: Path, pieces: int = 4) -> list[Path]:
    """20+ distinct real videos: each shipped clip cut into `pieces` parts (re-encoded, so each is its own content)."""
    from fractions import Fraction

    from stages.video import encode_mp4, iter_frames

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for source in FOLDER_VIDEOS:
        row = video_row(ROOT / source)
        n = row["n_frames"]
        for k in range(pieces):
            lo, hi = k * n // pieces, (k + 1) * n // pieces
            out = folder / f"{Path(source).stem}-{k}.mp4"
            frames = (f.image for f in iter_frames(ROOT / source, fmt="rgb24", keep=lambda i, lo=lo, hi=hi: lo <= i < hi))
            if encode_mp4(out, frames, Fraction(row["fps"]).limit_denominator(1001)) >= 2:
                made.append(out)
            else:
                out.unlink(missing_ok=True)
    return made


def stage_runs(run: Path) -> dict[str, dict]:
    from manifests import store

    return {r["stage"]: r for r in store.read_table(run, "stage_runs").to_pylist()}


def measure() -> str:
    from manifests import store

    files = [ROOT / v for v in FOLDER_VIDEOS]
    rows = [video_row(p) for p in files]
    frames = sum(decode_only(p) for p in files)
    t_decode, _ = best_of(lambda: [decode_only(p) for p in files])
    t_scenes, _ = best_of(lambda: [scene_pass(r, motion=False) for r in rows])
    t_fused, made = best_of(lambda: [scene_pass(r, motion=True) for r in rows])
    t_kept, _ = best_of(lambda: [scene_pass(r, motion=True, windows=True) for r in rows])
    with ProcessPoolExecutor(2) as pool:  # as the runner does: one video per worker, two at once
        list(pool.map(scene_pass, rows, [True] * len(rows)))  # start the workers
        t_parallel, _ = best_of(lambda: list(pool.map(scene_pass, rows, [True] * len(rows))))
    windows = sum(len(m["scenes"]) for m in made)
    scored = sum(len(m["motion"]) for m in made)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = real_videos(Path(tmp) / "corpus")
        tiny = ["--profile", "tiny", "--set", "tiny_models=tiny-models", "--set", "filter.min_duration_s=0.5"]
        t_stream = curate(Path(tmp) / "corpus", Path(tmp) / "stream", *tiny)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", STAGE_BY_STAGE, str(Path(tmp) / "corpus"), str(Path(tmp) / "staged"),
                        "tiny_models=tiny-models", "filter.min_duration_s=0.5"], check=True, cwd=ROOT, capture_output=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"})  # fmt: skip
        t_staged = time.perf_counter() - started
        streamed, staged = stage_runs(Path(tmp) / "stream"), stage_runs(Path(tmp) / "staged")
        n_captions = store.count(Path(tmp) / "stream", "captions")
    model_stages = [s for s in ("aesthetic", "screen", "caption", "subjects") if s in streamed]
    lines = [
        "## Curation: one streaming pass (issues 2 and 11)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, PyAV {av.__version__}. "
        f"Files: the {len(files)} videos of `bench/curation.py` FOLDER_VIDEOS ({frames} frames, 352x288 to 1280x720). "
        f"Best of {REPEATS} runs each unless said. Other processes on the machine add noise; ratios are taken within one run.",
        "",
        "| one worker, all files one after the other | seconds | ratio to decode-only |",
        "|---|---|---|",
        f"| decode only (PyAV, every frame) | {t_decode:.2f} | 1.00 |",
        f"| scene pass alone (AdaptiveDetector) | {t_scenes:.2f} | {t_decode / t_scenes:.2f} |",
        f"| **scene pass scoring motion in the same decode** ({windows} windows, {scored} scored in the pass) | {t_fused:.2f} | **{t_decode / t_fused:.2f}** (goal 0.5; before: scenes then motion, 0.30) |",
        f"| the same, two videos at once (two processes, as the runner's workers) | {t_parallel:.2f} | **{t_decode / t_parallel:.2f}** |",
        f"| scene pass with motion, also keeping the frames aesthetic and screen read (they then decode nothing) | {t_kept:.2f} | {t_decode / t_kept:.2f} |",
        "",
        f"Whole chain, tiny profile, {len(corpus)} real videos (the files above cut in pieces), `filter.min_duration_s=0.5`:",
        "",
        "| runner | wall seconds | first caption at | model actors busy (of their wall time from first input) |",
        "|---|---|---|---|",
        f"| streaming (`pipeline curate`) | {t_stream:.1f} | {streamed['caption']['first_result_s']:.1f} s ({streamed['caption']['first_result_s'] / t_stream:.0%} of the run) | "
        + ", ".join(f"{s} {streamed[s]['utilisation']:.0%}" for s in model_stages) + " |",
        f"| stage by stage (each stage alone, as before) | {t_staged:.1f} | after every stage before it ended | "
        + ", ".join(f"{s} {staged[s]['utilisation']:.0%}" for s in model_stages if s in staged) + " |",
        f"| ratio streaming / stage by stage | **{t_stream / t_staged:.2f}** | | {n_captions} captions |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    text = measure()
    print(text)
    print(f"wrote {write_section('curation', text)}")


if __name__ == "__main__":
    main()
