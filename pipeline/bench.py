"""`make bench`: curation speed as ratios against baselines measured in the same run.

Baselines: decode-only PyAV (the physical limit of a decode-bound stage) and PySceneDetect's own
command line. Each time is the best of a few repeats, so other load on the machine inflates it
least. `--assemble` joins every bench/*.md section into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from stages.motion import Motion, MotionConfig
from stages.scenes import Scenes, ScenesConfig, detect_cuts
from stages.video import open_video

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "tests/data/pyscenedetect/testvideo.mp4"
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


def cores_busy(fn) -> float:
    """CPU seconds per wall second of one call (threads included): how much of the machine one worker takes."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def decode_only(path: Path) -> int:
    container, stream = open_video(path)
    with container:
        return sum(1 for _ in container.decode(stream))


def video_row(path: Path) -> dict:
    container, stream = open_video(path, threads=False)
    with container:
        return {"video_id": "bench", "path": str(path), "fps": float(stream.average_rate),
                "duration_s": float(stream.duration * stream.time_base), "width": stream.width, "height": stream.height}


def motion_all(row: dict, scenes: list[dict], method: str) -> int:
    stage = Motion(MotionConfig(method=method), Path(tempfile.gettempdir()))
    items = [{**s, "video_path": row["path"], "fps": row["fps"], "width": row["width"], "height": row["height"]} for s in scenes]
    return len([stage.process(i) for i in items])


def cli_cuts(path: Path) -> list[int]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([str(Path(sys.executable).with_name("scenedetect")), "-q", "-i", str(path), "-b", "pyav",
                        "detect-adaptive", "list-scenes", "-o", out, "-f", "scenes.csv"], check=True)
        rows = list(csv.reader(open(Path(out) / "scenes.csv")))
    header = next(i for i, r in enumerate(rows) if r and r[0] == "Scene Number")
    starts = [int(r[1]) - 1 for r in rows[header + 1:] if r]  # the CSV counts frames from 1
    return starts[1:]


def our_cli_cuts(path: Path) -> None:
    code = f"from stages.scenes import detect_cuts; detect_cuts({str(path)!r}, 'adaptive', {{}})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def curate_seconds(workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for v in FOLDER_VIDEOS:
            shutil.copy(ROOT / v, src)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "curate", str(src), "--out", str(Path(tmp) / "run"),
                        "--workers", str(workers), "--stages", "probe,scenes,motion,clips"], check=True, cwd=ROOT, capture_output=True)
        return time.perf_counter() - start


def measure() -> str:
    container, stream = open_video(VIDEO, threads=False)
    with container:
        size = f"{stream.width}x{stream.height}, {stream.frames} frames, {stream.codec_context.name}"
    t_decode, n = best_of(lambda: decode_only(VIDEO))
    row = video_row(VIDEO)
    t_scenes, scenes = best_of(lambda: Scenes(ScenesConfig(), Path(tempfile.gettempdir())).process(row))
    t_dis, _ = best_of(lambda: motion_all(row, scenes, "dis"))
    t_farneback, _ = best_of(lambda: motion_all(row, scenes, "farneback"), repeats=1)
    ours_cuts, _, _, _ = detect_cuts(str(VIDEO), "adaptive", {})
    t_cli, theirs = best_of(lambda: cli_cuts(VIDEO))
    t_ours_cli, _ = best_of(lambda: our_cli_cuts(VIDEO))
    busy = cores_busy(lambda: (Scenes(ScenesConfig(), Path(tempfile.gettempdir())).process(row), motion_all(row, scenes, "dis")))
    t_w1 = curate_seconds(1)
    t_w2 = curate_seconds(2)
    fps = n / t_decode
    lines = [
        "## Curation core (issue 2)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"PyAV {av.__version__}; file `{VIDEO.relative_to(ROOT)}` ({size}). Best of {REPEATS} runs each. "
        "Other processes on the machine add noise; the ratios are taken within one run.",
        "",
        "| measurement | seconds | frames/s | ratio to decode-only |",
        "|---|---|---|---|",
        f"| decode only (PyAV, all frames) | {t_decode:.2f} | {fps:.0f} | 1.00 |",
        f"| scenes stage (AdaptiveDetector, {len(scenes)} windows) | {t_scenes:.2f} | {n / t_scenes:.0f} | {t_decode / t_scenes:.2f} |",
        f"| motion stage, DIS, all windows | {t_dis:.2f} | {n / t_dis:.0f} | {t_decode / t_dis:.2f} |",
        f"| motion stage, Farneback, all windows | {t_farneback:.2f} | {n / t_farneback:.0f} | {t_decode / t_farneback:.2f} |",
        f"| **scenes + motion (DIS)** | {t_scenes + t_dis:.2f} | {n / (t_scenes + t_dis):.0f} | **{t_decode / (t_scenes + t_dis):.2f}** (goal 0.5) |",
        "",
        "| scene detection, whole command with interpreter start | seconds | cuts |",
        "|---|---|---|",
        f"| `scenedetect -b pyav detect-adaptive list-scenes` | {t_cli:.2f} | {theirs} |",
        f"| ours (`stages.scenes.detect_cuts`, same detector) | {t_ours_cli:.2f} | {ours_cuts} |",
        f"| ratio (theirs / ours; above 1 means ours is faster) | {t_cli / t_ours_cli:.2f} | identical: {ours_cuts == theirs} |",
        "",
        f"| `pipeline curate` (probe, scenes, motion, clips) on {len(FOLDER_VIDEOS)} videos, Ray start included | seconds |",
        "|---|---|",
        f"| 1 worker | {t_w1:.1f} |",
        f"| 2 workers | {t_w2:.1f} |",
        f"| speed-up | {t_w1 / t_w2:.2f}x |",
        "",
        f"One worker already keeps {busy:.2f} of the {os.cpu_count()} cores busy in the scenes and motion stages (threaded "
        f"decoding, frame prefetch), so a second worker can gain at most {os.cpu_count() / busy:.2f}x here, less Ray's "
        "per-stage start-up; the parallel speed-up needs more cores than this machine has.",
        "",
    ]
    return "\n".join(lines)


def assemble() -> Path:
    sections = sorted((ROOT / "bench").glob("*.md"))
    head = "# Benchmarks\n\nProduced by `make bench`; each section names its machine. Ratios compare runs made in the same session.\n\n"
    out = ROOT / "BENCHMARKS.md"
    out.write_text(head + "\n".join(p.read_text() for p in sections))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--assemble", action="store_true", help="only join bench/*.md into BENCHMARKS.md")
    args = parser.parse_args()
    if not args.assemble:
        text = measure()
        (ROOT / "bench").mkdir(exist_ok=True)
        (ROOT / "bench" / "curation.md").write_text(text)
        print(text)
    print(f"wrote {assemble()}")


if __name__ == "__main__":
    main()
