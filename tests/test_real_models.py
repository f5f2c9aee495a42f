"""The real models whose weights ship in packages: faces and identities, text area, NSFW, TransNetV2.

They serve every profile, so these tests check what they find on real footage, not just shapes.
"""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import GOLDEN, KEEP_ALL, REAL, pipeline_cli
from learned_fixtures import run_model_stage, tiny_models  # noqa: F401  (fixture)
from videos import write_video

from manifests import views
from manifests.filters import FilterConfig
from model.curation.faces import SAME_PERSON_DISTANCE, FaceModel, distance
from model.curation.transnet import HEIGHT, WIDTH, ShotDetector, load_network
from pipeline.config import load_config
from stages.crops import box_crop
from stages.scenes import detect_cuts
from stages.subjects import Subjects
from stages.video import iter_frames

FOOTAGE = [REAL / "carphone_pristine.mp4", GOLDEN / "goldeneye-vfr-drop3.mp4", REAL / "bikes.mp4"]
HAAR = [cv2.CascadeClassifier(cv2.data.haarcascades + name) for name in ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml")]


@pytest.fixture(scope="module")
def faces() -> FaceModel:
    return FaceModel.load()


def rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def frames_of(path, every: int) -> list[np.ndarray]:
    return [f.image for f in iter_frames(path, fmt="rgb24", keep=lambda i: i % every == 0)]


def haar_sees_a_face(crop: np.ndarray) -> bool:
    """OpenCV's frontal Haar cascades, the crop upscaled to 160 px and turned by up to 20 degrees (heads tilt)."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    scale = 160 / min(gray.shape)
    if scale > 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    h, w = gray.shape
    for angle in (0, -20, 20):
        turned = cv2.warpAffine(gray, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)
        if any(len(c.detectMultiScale(turned, 1.05, 3, minSize=(min(h, w) // 4,) * 2)) for c in HAAR):
            return True
    return False


def test_face_crops_hold_a_face_by_an_independent_check(faces, tmp_path):
    """Every 10th frame of the shipped footage, cropped as the subjects stage crops faces (its margin)."""
    stage = Subjects(load_config().subjects, tmp_path)
    crops = [box_crop(image, f.box) for path in FOOTAGE for image in frames_of(path, 10) for f in stage.find_faces(image, 0)]
    checked = [haar_sees_a_face(c) for c in crops]
    assert len(crops) >= 25  # carphone's man in every frame, goldeneye's two faces
    assert sum(checked) / len(checked) >= 0.9, f"{sum(checked)} of {len(checked)} crops hold a face by Haar"


def test_identity_same_man_seconds_apart_is_closer_than_two_people(faces):
    """Measured: carphone frames 5 and 100 (3.2 s apart) 0.25; astronaut vs Grace Hopper 0.69; carphone vs either >= 0.76."""
    man = {f.index: f.image for f in iter_frames(REAL / "carphone_pristine.mp4", fmt="rgb24", keep={5, 100}.__contains__)}
    images = {"man@5": man[5], "man@100": man[100], "astronaut": rgb(REAL / "astronaut.png"), "hopper": rgb(REAL / "grace_hopper.jpg")}
    embedding = {}
    for name, image in images.items():
        found = faces.detect(image)
        assert len(found) == 1, name
        embedding[name] = faces.embed(image, found)[0]
    same = distance(embedding["man@5"], embedding["man@100"])
    others = [distance(embedding[a], embedding[b]) for a, b in [("astronaut", "hopper"), ("man@5", "astronaut"), ("man@5", "hopper"), ("man@100", "astronaut"), ("man@100", "hopper")]]
    assert same < SAME_PERSON_DISTANCE < min(others), (same, others)


def test_subjects_give_one_real_face_per_identity_linked_to_its_human(tiny_models, tmp_path):  # noqa: F811
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"]).subjects
    stage = Subjects(config, tmp_path)
    stage.setup()
    frames = [f.image for f in iter_frames(REAL / "carphone_pristine.mp4", fmt="rgb24", keep={10, 60, 110}.__contains__)]
    rows, errors = run_model_stage(stage, [stage.inputs("c1", frames, [10, 60, 110], {"person": "human"})])
    assert not errors
    face_rows = [r for r in rows if r["kind"] == "face"]
    assert len(face_rows) == 1  # the same man on three key frames is one subject
    face = face_rows[0]
    assert not face["random_weights"] and "dlib" in face["model"] and len(face["embedding"]) == 128
    assert all(r["random_weights"] for r in rows if r["kind"] != "face")  # GroundingDINO + SAM are tiny here
    humans = {r["subject_id"] for r in rows if r["kind"] == "human"}
    assert face["human_id"] is None or face["human_id"] in humans
    crop = cv2.cvtColor(cv2.imread(str(tmp_path / face["crop_path"])), cv2.COLOR_BGR2RGB)
    assert haar_sees_a_face(crop)


def slide(path, footage, n: int = 60) -> None:
    """Three lines of large text over real footage, as a lecture or title slide."""
    frames = [f.image.copy() for f in iter_frames(footage, fmt="rgb24", end_frame=n)]
    for image in frames:
        for i, line in enumerate(["Quarterly results 2024", "Revenue grew 12 percent", "Next: hire, ship, repeat"]):
            cv2.putText(image, line, (30, 60 + 70 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (255, 255, 255), 3, cv2.LINE_AA)
    write_video(path, frames, fps=25)


@pytest.mark.slow
def test_text_rule_removes_a_slide_and_keeps_real_clips(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for path in FOOTAGE:
        shutil.copy(path, src)
    slide(src / "slide.mp4", REAL / "bikes.mp4")
    run = tmp_path / "run"
    result = pipeline_cli("curate", src, "--out", run, *KEEP_ALL, "--stages", "probe,scenes,motion,screen")
    assert result.code == 0, result.out + result.err
    assert not (run / "frames").exists()  # the frames the scene pass kept for screen went with the run's end
    every = views.query(run, "SELECT c.clip_id, c.video_path, c.text_area, c.nsfw_score FROM candidates c JOIN screen USING (clip_id)").to_pylist()
    assert len(every) == views.query(run, "SELECT count(*) AS n FROM candidates").column("n")[0].as_py()
    kept = set(views.candidates(run, ["text", "nsfw"], FilterConfig()).column("clip_id").to_pylist())
    for row in every:
        assert (row["clip_id"] in kept) == (not row["video_path"].endswith("slide.mp4")), row
    assert [step for step, *_ in views.funnel(run) if step.startswith("filter: ")][-4:] == ["filter: text", "filter: slide", "filter: blur", "filter: nsfw"]



def transnet_cuts(network, path) -> tuple[list[int], ShotDetector]:
    detector = ShotDetector(network)
    for frame in iter_frames(path, fmt="rgb24", size=(WIDTH, HEIGHT)):
        detector.push(frame.image)
    return detector.finish(), detector


@pytest.fixture(scope="module")
def transnet() -> torch.nn.Module:
    return load_network()


def test_transnet_streaming_equals_the_package_on_the_whole_video(transnet):
    frames = np.stack([f.image for f in iter_frames(GOLDEN / "goldeneye-vfr-drop3.mp4", fmt="rgb24", size=(WIDTH, HEIGHT))])
    cuts, detector = transnet_cuts(transnet, GOLDEN / "goldeneye-vfr-drop3.mp4")
    with torch.inference_mode():
        single, _ = transnet.predict_frames(torch.from_numpy(frames), quiet=True)
    np.testing.assert_allclose(detector.probabilities, single.numpy(), atol=1e-5)
    assert cuts == detect_cuts(str(GOLDEN / "goldeneye-vfr-drop3.mp4"), "adaptive", {}).cuts == [60, 140]
    with pytest.raises(ValueError, match="48"):
        ShotDetector(transnet).push(frames[0][:20])


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, expected",
    [
        (REAL / "bikes.mp4", [30, 76, 137, 187, 242]),  # the five hard cuts; PySceneDetect finds the same
        (GOLDEN / "counter.mp4", [10, 21]),  # 30 numbered cards; PySceneDetect's adaptive golden: [20]
        (GOLDEN / "fades.mp4", [23, 64, 106, 148, 190, 231]),  # fades count as transitions; PySceneDetect: none
        (GOLDEN / "testvideo.mp4", [30, 180, 226, 346, 409, 544, 679]),  # PySceneDetect adaptive: [30, 180, 394, 691]
    ],
)
def test_transnet_cuts_on_real_footage_and_goldens(transnet, path, expected):
    assert transnet_cuts(transnet, path)[0] == expected
