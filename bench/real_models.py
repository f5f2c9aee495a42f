"""`python -m bench.real_models`: per-frame CPU cost of the real packaged models, and TransNetV2 against
PySceneDetect on real footage. Writes `bench/results/real_models.md`.

Each model runs on frames of the shipped footage at the size its stage gives it: faces (dlib HOG
detection, landmarks, 128-D embedding) on key frames at source size, text area (PP-OCRv4
detection, each box read by its recognizer) and NudeNet on frames at most 640 px wide. Shot detection: the whole video through
our decode (TransNetV2 at 48x27; PySceneDetect's adaptive detector through `detect_cuts`), both
timed end to end from the file, on one machine in one session.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.model import machine
from bench.sections import ROOT, section_path, write_section
from model.curation.faces import FaceModel
from model.curation.nsfw import NsfwScorer
from model.curation.ocr import TextArea
from model.curation.transnet import HEIGHT, WIDTH, ShotDetector, load_network
from stages.scenes import detect_cuts
from stages.screen import scaled_size
from stages.video import iter_frames

FOOTAGE = [ROOT / "tests/data/real/carphone_pristine.mp4", ROOT / "tests/data/pyscenedetect/goldeneye-vfr-drop3.mp4", ROOT / "tests/data/real/bikes.mp4"]
SHOTS = [ROOT / "tests/data/real/bikes.mp4", ROOT / "tests/data/pyscenedetect/goldeneye-vfr-drop3.mp4", ROOT / "tests/data/pyscenedetect/testvideo.mp4"]


def frames(path: Path, every: int, max_side: int | None = None) -> list[np.ndarray]:
    size = None
    if max_side:
        first = next(iter_frames(path, fmt="rgb24", keep=(0).__eq__)).image
        size = scaled_size(first.shape[1], first.shape[0], max_side)
    return [f.image for f in iter_frames(path, fmt="rgb24", size=size, keep=lambda i: i % every == 0)]


def per_frame_ms(fn, images: list[np.ndarray]) -> float:
    fn(images[0])  # warm-up
    started = time.perf_counter()
    for image in images:
        fn(image)
    return 1000 * (time.perf_counter() - started) / len(images)


def model_costs() -> list[str]:
    faces, text, nsfw = FaceModel.load(), TextArea.load(), NsfwScorer.load()
    lines = ["| footage | frame | faces: detect | faces: detect + embed | faces found | text area (PP-OCRv4 det + rec) | NSFW (NudeNet 320n) |", "|---|---|---|---|---|---|---|"]
    for path in FOOTAGE:
        full, small = frames(path, 10), frames(path, 10, 640)
        found = sum(len(faces.detect(image)) for image in full)

        def detect_and_embed(image):
            found = faces.detect(image)
            if found:
                faces.embed(image, found)

        lines.append(
            f"| {path.name} | {full[0].shape[1]}x{full[0].shape[0]} | {per_frame_ms(faces.detect, full):.0f} ms | "
            f"{per_frame_ms(detect_and_embed, full):.0f} ms | {found} in {len(full)} frames | "
            f"{per_frame_ms(text.area, small):.0f} ms at {small[0].shape[1]}x{small[0].shape[0]} | {per_frame_ms(nsfw.score, small):.0f} ms |"
        )
    return lines


def shot_detection() -> list[str]:
    network = load_network()
    lines = ["| video | frames | PySceneDetect adaptive: cuts | s | TransNetV2: cuts | s | TransNetV2 / PySceneDetect time |", "|---|---|---|---|---|---|---|"]
    for path in SHOTS:
        started = time.perf_counter()
        found = detect_cuts(str(path), "adaptive", {})
        psd_cuts, pts = found.cuts, found.pts
        psd = time.perf_counter() - started
        started = time.perf_counter()
        detector = ShotDetector(network)
        for frame in iter_frames(path, fmt="rgb24", size=(WIDTH, HEIGHT)):
            detector.push(frame.image)
        tn_cuts = detector.finish()
        tn = time.perf_counter() - started
        lines.append(f"| {path.name} | {len(pts)} | {psd_cuts} | {psd:.2f} | {tn_cuts} | {tn:.2f} | {tn / psd:.1f}x |")
    return lines


def report() -> str:
    return "\n".join(
        [
            "## Real packaged models (faces, text area, NSFW, TransNetV2)",
            "",
            f"Machine: {machine()}. `python -m bench.real_models`; every 10th frame of each video, after one warm-up call.",
            "",
            "Per-frame CPU cost:",
            "",
            *model_costs(),
            "",
            "Shot detection, whole video from the file (decode included):",
            "",
            *shot_detection(),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=section_path("real_models"))
    args = parser.parse_args()
    text = report()
    print(text)
    print(f"wrote {write_section('real_models', text, args.out)}")


if __name__ == "__main__":
    main()
