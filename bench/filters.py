"""`python -m bench.filters`: false positives and false negatives of the text, face and NSFW rules on
the shipped real footage, with the rules before issue 24 and now. Writes `bench/results/filters.md`.

Windows and labels (what a person sees in them, tests/data/opencv/LICENSES.md): every shot of
Megamind.avi, carphone, bikes and goldeneye holds no text and must be kept; slides made from the
shipped stills (3 s of one picture): the text page and a line of it as white-on-black credits
must be dropped, the logo, the robot and the music notes kept. Each window is screened as the
stage does (3 frames centred in its thirds, at most 640 px). Faces: every detection of dlib's
HOG detector on every 15th frame of the footage and on the stills, labelled by where it is: a
face of the four Megamind shots, carphone and goldeneye is a face, except the blurred figure
behind the woman in Megamind (box 73 px wide, right of x=400: not usable as a reference); the
stills hold none. NSFW: nothing shipped is explicit, so every window above `filter.max_nsfw` is a
false positive; `--images DIR` adds every still in DIR (for example OpenCV's 89 sample images
from Debian's opencv-doc) as more negatives.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from bench.model import machine
from bench.sections import ROOT, section_path, write_section
from manifests.filters import FilterConfig
from model.curation.faces import FaceModel
from model.curation.nsfw import NsfwScorer
from model.curation.ocr import TextArea, covered
from pipeline.config import load_config
from stages.screen import detail_area, scaled_size
from stages.video import iter_frames

DATA = ROOT / "tests/data"
SHOTS = {  # footage: first frames of its shots, then its frame count
    "opencv/Megamind.avi": [1, 98, 154, 200, 270],
    "real/carphone_pristine.mp4": [0, 120],
    "real/bikes.mp4": [0, 30, 76, 137, 187, 250],
    "pyscenedetect/goldeneye-vfr-drop3.mp4": [0, 90, 200],
}
STILLS = {"imageTextN.png": True, "credits": True, "opencv-logo.png": False, "ml.png": False, "notes.png": False}  # name: mostly text
OLD_TEXT_AREA = 0.1  # the rule before: largest detector-only share over the frames


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def fit(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, scaled_size(image.shape[1], image.shape[0], 640), interpolation=cv2.INTER_AREA)


def credits() -> np.ndarray:
    """A line of the real text page, white on black (as in tests/test_filters.py)."""
    image = np.zeros((360, 640, 3), np.uint8)
    image[165:195, 42:598] = 255 - rgb(DATA / "opencv/imageTextN.png")[120:150]
    return image


def windows() -> list[tuple[str, list[np.ndarray], bool]]:
    """(name, 3 screen frames, mostly text) for every shot and slide."""
    out = []
    for name, cuts in SHOTS.items():
        for a, b in zip(cuts[:-1], cuts[1:]):
            wanted = {a + (b - a) * (2 * k + 1) // 6 for k in range(3)}
            images = [fit(f.image) for f in iter_frames(DATA / name, fmt="rgb24", end_frame=b, keep=wanted.__contains__)]
            out.append((f"{Path(name).name} {a}-{b}", images, False))
    for name, text in STILLS.items():
        image = credits() if name == "credits" else fit(rgb(DATA / "opencv" / name))
        out.append((name, [image] * 3, text))
    return out


def text_counts(text: TextArea, shots) -> tuple[list[str], dict]:
    cfg = FilterConfig()
    counts = {"before": [0, 0], "after": [0, 0]}  # [false positives, false negatives]
    lines = ["| window | mostly text | detected (max) | recognised (median) | text / detail (median) | before | after |", "|---|---|---|---|---|---|---|"]
    for name, images, truth in shots:
        read = [text.read(i) for i in images]
        detected = max(covered(i.shape[:2], [b.points for b in r]) for i, r in zip(images, read))
        areas = [covered(i.shape[:2], [b.points for b in text.confirmed(r)]) for i, r in zip(images, read)]
        content = float(np.median([a / max(detail_area(i), a, 1e-6) for a, i in zip(areas, images)]))
        area = float(np.median(areas))
        drops = {"before": detected > OLD_TEXT_AREA, "after": area > cfg.max_text_area or content > cfg.max_text_content}
        for when, dropped in drops.items():
            counts[when][0] += dropped and not truth
            counts[when][1] += truth and not dropped
        lines.append(f"| {name} | {'yes' if truth else 'no'} | {detected:.3f} | {area:.3f} | {content:.2f} | {'drop' if drops['before'] else 'keep'} | {'drop' if drops['after'] else 'keep'} |")
    return lines, counts


def face_frames() -> list[tuple[str, np.ndarray, object]]:
    """(name, frame, labeller) for every 15th frame of the footage and each still, at source size."""
    out = []
    for name in SHOTS:
        for f in iter_frames(DATA / name, fmt="rgb24", keep=lambda i: i % 15 == 0):
            blurred_figure = name.endswith("Megamind.avi")
            out.append((name, f.image, (lambda box: not (box[2] - box[0] < 90 and box[0] > 400)) if blurred_figure else (lambda box: True)))
    for name in ("ml.png", "opencv-logo.png", "notes.png"):
        image = rgb(DATA / "opencv" / name)
        for height in (240, 280, image.shape[0]):  # as frames of videos of several sizes (HOG upsamples small ones)
            scaled = cv2.resize(image, (round(image.shape[1] * height / image.shape[0] / 2) * 2, height), interpolation=cv2.INTER_AREA)
            out.append((f"{name}@{height}", scaled, lambda box: False))
    return out


def face_counts(faces: FaceModel) -> tuple[int, dict, float]:
    """(HOG detections, [false pos., false neg.] before and after, ms per detection of the checks)."""
    cfg = load_config().subjects
    counts = {"before": [0, 0], "after": [0, 0]}
    total, seconds = 0, 0.0
    for _, image, is_face in face_frames():
        image = np.ascontiguousarray(image)
        for f in faces.detect(image):
            total += 1
            truth = is_face(f.box)
            started = time.perf_counter()
            plausible = faces.plausible(image, f, cfg.face_min_score, cfg.face_min_side, cfg.face_min_sharpness, cfg.face_min_confirmation)
            seconds += time.perf_counter() - started
            kept = {"before": f.score > 0, "after": plausible}
            for when, keep in kept.items():
                counts[when][0] += keep and not truth
                counts[when][1] += truth and not keep
    return total, counts, 1000 * seconds / max(total, 1)


def nsfw_counts(nsfw: NsfwScorer, shots, images: Path | None) -> tuple[int, int, float, str]:
    scores = [(name, max(nsfw.score(i) for i in frames)) for name, frames, _ in shots]
    if images:
        for path in sorted(images.glob("*.[jp][pn]g")):
            image = cv2.imread(str(path))
            if image is not None:
                scores.append((path.name, nsfw.score(fit(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))))
    worst = max(scores, key=lambda s: s[1])
    return len(scores), sum(s > FilterConfig().max_nsfw for _, s in scores), worst[1], worst[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, help="a folder of stills with no nudity, more NSFW negatives")
    parser.add_argument("--out", type=Path, default=section_path("filters"))
    args = parser.parse_args()
    shots = windows()
    text_lines, text = text_counts(TextArea.load(), shots)
    n_faces, face, check_ms = face_counts(FaceModel.load())
    n_nsfw, nsfw_fp, worst, worst_name = nsfw_counts(NsfwScorer.load(), shots, args.images)
    cfg = FilterConfig()
    out = [
        "## Filters on real footage: false positives and false negatives (issue 24)",
        "",
        f"Machine: {machine()}. Produced by `python -m bench.filters{' --images ' + str(args.images) if args.images else ''}`; labels in its docstring.",
        "",
        "| rule | items | before: false pos. / false neg. | after: false pos. / false neg. |",
        "|---|---|---|---|",
        f"| text (before: detector boxes, largest frame > {OLD_TEXT_AREA}; after: recognised text, median > {cfg.max_text_area}, or text / detail > {cfg.max_text_content}) | {len(shots)} windows | {text['before'][0]} / {text['before'][1]} | {text['after'][0]} / {text['after'][1]} |",
        f"| face (before: HOG score > 0; after: `FaceModel.plausible` with the subjects defaults) | {n_faces} HOG detections | {face['before'][0]} / {face['before'][1]} | {face['after'][0]} / {face['after'][1]} |",
        f"| NSFW (NudeNet, highest frame > {cfg.max_nsfw}; unchanged) | {n_nsfw} windows and stills, none explicit | {nsfw_fp} / - | {nsfw_fp} / - (highest score {worst:.2f}, {worst_name}) |",
        "",
        f"The face checks cost {check_ms:.0f} ms per HOG detection (mostly the CNN on its crop; the cheap checks run first).",
        "",
        "Text, per window:",
        "",
        *text_lines,
        "",
    ]
    print(f"wrote {write_section('filters', chr(10).join(out), args.out)}")


if __name__ == "__main__":
    main()
