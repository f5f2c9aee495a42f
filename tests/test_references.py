"""References that teach identity: one subject per identity, references from another shot, no copies, dedup.

The test video is built from the shipped footage: carphone's man (frames 0-59), a shot of bikes,
then the man again (carphone frames 60-119): one person in two separate shots of one video.
"""

from __future__ import annotations

import json
import random
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from bench.references import dense_complete_linkage
from conftest import REAL, pipeline_cli
from learned_fixtures import tiny_args, tiny_models  # noqa: F401  (fixture)
from PIL import Image
from train_fixtures import cinema_models, tiny_train_config  # noqa: F401  (fixture)

from manifests import store, views
from model.curation.faces import FaceModel, margin_box
from model.train.config import DataConfig, ReferenceAugment
from model.train.data import augment, decode
from pipeline.config import load_config
from stages.identities import Identities, psnr, thumbnail
from stages.neighbours import complete_linkage, components, pairs_within, radius_pairs
from stages.subjects import Found, Track, link_tracks, merge_duplicates, merge_humans_by_face
from stages.video import encode_mp4, iter_frames

FPS = Fraction(30000, 1001)
CHAIN_ARGS = ["--set", "filter.min_duration_s=0.5", "--set", "filter.min_motion=0"]
FIXED_SUBJECTS = [{"kind": "human", "label": "man in a red jacket"}]  # the captioner's answer, fixed


def carphone(keep=None) -> list[np.ndarray]:
    return [f.image for f in iter_frames(REAL / "carphone_pristine.mp4", fmt="rgb24", keep=keep)]


def two_shots(path: Path) -> Path:
    man = carphone()
    bikes = [cv2.resize(f.image, (176, 144), interpolation=cv2.INTER_AREA) for f in iter_frames(REAL / "bikes.mp4", fmt="rgb24", end_frame=30)]
    encode_mp4(path, iter(man[:60] + bikes + man[60:]), FPS)
    return path


def fixed_captions(run: Path) -> None:
    """The caption stage's rows with a fixed answer: the man is listed as "man in a red jacket" (and person is added)."""
    clips = views.query(run, "SELECT clip_id FROM clips").column("clip_id").to_pylist()
    rows = [{"clip_id": c, "caption": "A man talks on the phone.", "subjects_json": json.dumps(FIXED_SUBJECTS),
             "subjects_source": "model", "model": "fixed (test)", "prompt_version": "test", "random_weights": False} for c in clips]  # fmt: skip
    store.write_part(run, "captions", rows)


@pytest.fixture(scope="module")
def shots_run(tiny_models, tmp_path_factory) -> Path:  # noqa: F811
    src = tmp_path_factory.mktemp("shots-src")
    two_shots(src / "two_shots.mp4")
    run = tmp_path_factory.mktemp("shots") / "run"
    args = [*tiny_args(tiny_models), *CHAIN_ARGS, "--set", "identities.policy=other_shot"]
    result = pipeline_cli("curate", src, "--out", run, "--stages", "probe,scenes,motion,aesthetic,clips", *args)
    assert result.code == 0, result.out + result.err
    fixed_captions(run)
    result = pipeline_cli("curate", src, "--out", run, "--stages", "subjects,dedup,identities,shards", *args)
    assert result.code == 0, result.out + result.err
    return run


def man_windows(run: Path) -> list[dict]:
    rows = views.query(run, "SELECT clip_id, shot_index, start_frame, end_frame FROM scenes ORDER BY start_frame").to_pylist()
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 60), (60, 90), (90, 150)], rows  # three shots
    return [rows[0], rows[2]]


def face_references(references: list[dict]) -> list[dict]:
    return [r for r in references if r["kind"] == "face"]


@pytest.mark.slow
def test_other_shot_takes_the_face_from_the_other_shot_and_same_clip_from_its_own(shots_run):
    run = shots_run
    first, second = man_windows(run)
    refs = {r["clip_id"]: r for r in store.read_table(run, "sample_refs").to_pylist()}
    for own, other in [(first, second), (second, first)]:
        row = refs[own["clip_id"]]
        assert row["policy"] == "other_shot"
        faces = face_references(json.loads(row["references_json"]))
        assert len(faces) == 1, row
        face = faces[0]
        assert face["source_clip_id"] == other["clip_id"] and face["policy"] == "other_shot"
        assert not own["start_frame"] <= face["source_video_frame"] < own["end_frame"]
        assert other["start_frame"] <= face["source_video_frame"] < other["end_frame"]
        assert face["identity_id"] and face["similarity"] > 0.9 and face["copy_psnr"] < 25.0
    # one identity for the man's two faces, linked by the face embedding
    faces = views.query(run, "SELECT identity_id, via, identity_size FROM identities WHERE kind = 'face'").to_pylist()
    assert len({f["identity_id"] for f in faces}) == 1 and {f["via"] for f in faces} == {"face"}

    # same_clip: the same stage, the paper's policy: each face comes from the sample's own frames
    config = load_config(overrides=["identities.policy=same_clip"]).identities
    stage = Identities(config, run)
    pending = views.query(run, "SELECT * FROM candidates WHERE n_subjects > 0 ORDER BY clip_id").to_pylist()
    for item in stage.plan(pending):
        row = stage.process(item)["sample_refs"][0]
        own = next(w for w in (first, second) if w["clip_id"] == row["clip_id"]) if row["clip_id"] in (first["clip_id"], second["clip_id"]) else None
        for ref in json.loads(row["references_json"]):
            assert ref["source_clip_id"] == row["clip_id"] and ref["policy"] == "same_clip" and ref["copy_psnr"] is None
        if own:
            (face,) = face_references(json.loads(row["references_json"]))
            assert own["start_frame"] <= face["source_video_frame"] < own["end_frame"]


@pytest.mark.slow
def test_anti_copy_check_drops_a_source_frame_inside_the_sample(shots_run, tmp_path):
    """A source that is a frame of the sample itself (as a repeated shot would be) is dropped by the PSNR check."""
    run = tmp_path / "run"  # without its identities, so that the plan has every clip to do
    shutil.copytree(shots_run, run, ignore=shutil.ignore_patterns("identities", "sample_refs", ".lock"))
    first, _ = man_windows(run)
    stage = Identities(load_config(overrides=["identities.policy=other_shot"]).identities, run)
    inputs = views.query(run, f"SELECT * FROM candidates WHERE {Identities.needs}").to_pylist()  # a whole stage plans over all its inputs
    item = next(item for item in stage.plan(inputs) if item["clip_id"] == first["clip_id"])
    choices = json.loads(item["choices"])
    face = next(c for c in choices if c["candidates"] and c["candidates"][0]["kind"] == "face")
    own_path = views.query(run, f"SELECT path FROM clips WHERE clip_id = '{first['clip_id']}'").column("path")[0].as_py()
    face["candidates"] = [{**face["candidates"][0], "source_clip_path": own_path, "source_frame_index": 30}]
    row = stage.process({**item, "choices": json.dumps(choices)})["sample_refs"][0]
    assert face_references(json.loads(row["references_json"])) == []
    assert json.loads(row["dropped_json"]).get("only_near_identical_sources") == 1


def test_copy_measure_separates_a_reencode_from_another_moment(tmp_path):
    """The anti-copy measure on real footage: PSNR of 64x64 grey thumbnails; the threshold is 25 dB."""
    frames = carphone()
    encode_mp4(tmp_path / "again.mp4", iter(frames), FPS, crf=35)
    again = [f.image for f in iter_frames(tmp_path / "again.mp4", fmt="rgb24")]
    reencoded = min(psnr(thumbnail(frames[i]), thumbnail(again[i])) for i in (10, 60, 110))
    moments = max(psnr(thumbnail(frames[a]), thumbnail(frames[b])) for a, b in [(10, 70), (30, 100), (0, 119)])
    print(f"re-encode (crf 35) >= {reencoded:.1f} dB; two moments of one shot <= {moments:.1f} dB")
    assert reencoded > load_config().identities.copy_max_psnr > moments


def body(face_box, height: int, width: int) -> tuple[float, float, float, float]:
    x0, y0, x1, _ = face_box
    w = x1 - x0
    return max(0.0, x0 - w), max(0.0, y0 - 0.3 * w), min(float(width), x1 + w), float(height)


def found(kind: str, label: str, frame: int, box, shape, score: float) -> Found:
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = True
    return Found(kind, label, frame, score, box, mask, float(mask.mean()), quality=score)


def test_one_person_labelled_two_ways_is_one_subject():
    """Boxes from the man's real face (dlib) on three key frames, detected as "person" and as the
    captioner's "man in a red jacket": one human track, with the captioner's label."""
    faces = FaceModel.load()
    images = carphone(keep={10, 60, 110}.__contains__)
    per_frame, face_views = [], []
    for position, image in enumerate(images):
        h, w = image.shape[:2]
        (face,) = faces.detect(image)
        person = body(face.box, h, w)
        wider = (max(0.0, person[0] - 4), person[1], min(float(w), person[2] + 4), person[3])
        labels = [["person", "man in a red jacket"], ["person"], ["man in a red jacket"]][position]
        detections = [found("human", label, position, box, (h, w), 0.5 + 0.1 * i) for i, (label, box) in enumerate(zip(labels, [person, wider]))]
        per_frame.append(merge_duplicates(detections, 0.7))
        face_views.append(found("face", "face", position, margin_box(face.box, h, w, 0.4), (h, w), 1.0))
    tracks = link_tracks(per_frame, 0.3)
    assert len(tracks) == 1 and len(tracks[0].views) == 3
    assert tracks[0].labels() == ["man in a red jacket", "person"]
    # two human tracks that hold the same face are one human, whatever their boxes
    split = [Track(tracks[0].views[:1]), Track(tracks[0].views[1:])]
    merged = merge_humans_by_face(split, [Track(face_views)])
    assert len(merged) == 1 and len(merged[0].views) == 3


@pytest.mark.slow
def test_dedup_removes_a_reencoded_window_and_keeps_other_scenes(tiny_models, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src)
    shutil.copy(REAL / "bikes.mp4", src)
    encode_mp4(src / "carphone_reupload.mp4", iter(carphone()), FPS, crf=30)
    run = tmp_path / "run"
    result = pipeline_cli("curate", src, "--out", run, "--stages", "probe,scenes,motion,aesthetic,dedup", *tiny_args(tiny_models), *CHAIN_ARGS)
    assert result.code == 0, result.out + result.err
    rows = views.query(run, "SELECT d.*, c.video_path FROM dedup d JOIN candidates c USING (clip_id)").to_pylist()
    removed = [r for r in rows if r["duplicate_of"] is not None]
    assert len(removed) == 1 and "carphone" in removed[0]["video_path"], rows
    assert removed[0]["similarity"] >= 0.999 and removed[0]["group_size"] == 2
    kept = {r["clip_id"]: r for r in rows}[removed[0]["duplicate_of"]]
    assert "carphone" in kept["video_path"] and kept["video_path"] != removed[0]["video_path"]
    assert all(r["duplicate_of"] is None for r in rows if "bikes" in r["video_path"])
    config = load_config(profile="tiny", overrides=CHAIN_ARGS[1::2]).filter
    funnel = {step: gone for step, _, gone in views.funnel(run, config)}
    assert funnel["filter: dedup"] == 1


def test_ivf_pairs_match_exact_search_and_components_link_them():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, 32)).astype(np.float32)
    label = rng.integers(0, len(centres), 12000)
    x = centres[label] + rng.normal(scale=0.05, size=(len(label), 32)).astype(np.float32)
    exact = {tuple(p) for p in pairs_within(x, 0.6)}
    approx = {tuple(p) for p in radius_pairs(x, 0.6)}  # above EXACT_MAX: IVF
    assert approx <= exact and len(approx) >= 0.95 * len(exact), (len(approx), len(exact))
    groups = components(len(x), np.array(sorted(exact)))
    same = label[:, None] == label[None, :200]
    assert np.array_equal(groups[:, None] == groups[None, :200], same)


def test_sparse_complete_linkage_equals_the_dense_algorithm_and_never_chains():
    rng = np.random.default_rng(0)
    for trial in range(20):
        centres = rng.normal(scale=1.5, size=(int(rng.integers(2, 12)), 4))
        x = centres[rng.integers(0, len(centres), int(rng.integers(2, 150)))] + rng.normal(scale=0.6, size=(1, 4))
        x = x + rng.normal(scale=0.4, size=x.shape)
        assert np.array_equal(complete_linkage(x, 1.0), dense_complete_linkage(x, 1.0)), trial
    line = np.arange(10, dtype=np.float64)[:, None]  # each point 1 from the next: one chain for single linkage
    assert complete_linkage(line, 1.5).tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8]  # ties: the lowest indices merge first


def test_reference_order_and_augmentation_are_drawn_per_sample():
    image = Image.fromarray(carphone(keep={0}.__contains__)[0])
    config = ReferenceAugment(mask=1.0)
    first, again = augment(image, config, random.Random(7)), augment(image, config, random.Random(7))
    assert np.array_equal(np.asarray(first), np.asarray(again))  # deterministic per seed
    assert first.size != image.size or not np.array_equal(np.asarray(first), np.asarray(image))
    assert augment(image, None, random.Random(7)) is image

    pngs = {}
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        _, data = cv2.imencode(".png", np.full((8, 8, 3), colour[::-1], np.uint8))
        pngs[f"ref_{i}.png"] = data.tobytes()
    meta = {"subjects": [{"ref": name} for name in pngs]}
    raw = {"__key__": "k", "json": json.dumps(meta).encode(), "txt": b"x", **pngs}
    data = DataConfig(max_references=3, reference_augment=None)
    orders = {tuple(int(np.argmax(np.asarray(r)[0, 0])) for r in decode(raw, data, False, 0, epoch).references) for epoch in range(8)}
    assert len(orders) > 1  # the order changes from draw to draw
    fixed = DataConfig(max_references=3, reference_augment=None, shuffle_references=False)
    assert {tuple(int(np.argmax(np.asarray(r)[0, 0])) for r in decode(raw, fixed, False, 0, e).references) for e in range(4)} == {(0, 1, 2)}


@pytest.mark.slow
def test_shards_read_back_and_the_tiny_trainer_trains_on_them(shots_run, cinema_models, tmp_path):  # noqa: F811
    import webdataset as wds

    from model.train.trainer import Trainer

    run = shots_run
    paths = [str(run / p) for p in store.read_table(run, "shards").column("path").to_pylist()]
    samples = list(wds.WebDataset(paths, shardshuffle=False))
    refs = {r["clip_id"]: json.loads(r["references_json"]) for r in store.read_table(run, "sample_refs").to_pylist()}
    assert samples and {s["__key__"] for s in samples} == {c for c, r in refs.items() if r}
    subjects = {r["subject_id"]: r for r in store.read_table(run, "subjects").to_pylist()}
    for sample in samples:
        meta = json.loads(sample["json"])
        assert [s["source_subject_id"] for s in meta["subjects"]] == [r["source_subject_id"] for r in refs[meta["clip_id"]]]
        for s in meta["subjects"]:
            assert sample[s["ref"]] == (run / subjects[s["source_subject_id"]]["masked_path"]).read_bytes()
            assert {"source_clip_id", "source_video_frame", "identity_id", "similarity", "policy", "copy_psnr"} <= set(s)
    config = tiny_train_config(cinema_models, run / "shards", tmp_path / "train", max_steps=2, checkpoint_every=2)
    Trainer(config).fit()
    assert (tmp_path / "train" / "checkpoints" / "step-0000002").is_dir()


def test_quality_prefers_sharp_frontal_views_and_every_kind_gets_a_place():
    from stages.identities import choose
    from stages.subjects import frontal, rate

    faces = FaceModel.load()
    image = carphone(keep={60}.__contains__)[0]
    (face,) = faces.detect(image)
    h, w = image.shape[:2]
    view = found("face", "face", 0, margin_box(face.box, h, w, 0.4), (h, w), face.score)
    view.frontal = frontal(face.landmarks)
    blurred = cv2.GaussianBlur(image, (0, 0), 3)
    profile = face.landmarks.copy()
    profile[4] = profile[0:2].mean(0)  # the nose in line with one eye: a face in profile
    assert view.frontal > 0.7 and frontal(profile) < 0.1
    assert rate(view, image, 100.0) > rate(view, blurred, 100.0)

    # four views of people and one dog: the dog keeps a place among the first two references
    own = [{"identity_id": f"p{i}", "kind": "human", "quality": 0.9 - 0.01 * i, "subject_id": f"h{i}"} for i in range(4)]
    own += [{"identity_id": "p0", "kind": "human", "quality": 0.95, "subject_id": "h-again"},
            {"identity_id": "dog", "kind": "object", "quality": 0.3, "subject_id": "dog"}]  # fmt: skip
    chosen = choose(own, 2)
    assert [s["subject_id"] for s in chosen] == ["h-again", "dog"]
    assert len({s["identity_id"] for s in choose(own, 6)}) == 5  # one per identity and kind


def test_sources_are_those_the_policy_rules_pick_from_every_member(monkeypatch):
    """`Members.sources` (columns and codes, a few identities' rows kept as dicts) picks what the
    rules say over the whole identity: other_shot from the same video, frames disjoint, another shot
    first, then quality, then subject_id; cross_video from other videos, by quality then subject_id."""
    import stages.identities as identities

    monkeypatch.setattr(identities, "CACHED_ROWS", 5)  # identities' rows drop out of the cache and come back
    rng = random.Random(7)
    rows = []
    for i in range(400):
        start = rng.randrange(0, 300, 30)
        rows.append({"subject_id": f"s{rng.randrange(10**6):06d}-{i}", "clip_id": f"c{i // 2}", "kind": rng.choice(["face", "human"]),
                     "embedding": rng.choice([None, [float(np.float32(rng.random())) for _ in range(2)]]), "quality": rng.choice([None, 0.0, 0.5, 0.9]), "video_id": f"v{rng.randrange(4)}",
                     "shot_index": start // 90, "start_frame": start, "end_frame": start + rng.choice([30, 60, 120])})  # fmt: skip
    label = np.array([rng.randrange(12) for _ in rows])
    members = identities.Members(pa.Table.from_pylist(rows), np.arange(len(rows)), label)

    def expected(policy: str, i: int) -> list[str]:
        s = rows[i]
        same = [m for j, m in enumerate(rows) if label[j] == label[i] and m["kind"] == s["kind"] and m["clip_id"] != s["clip_id"]]
        if policy == "other_shot":
            found = [m for m in same if m["video_id"] == s["video_id"] and (m["end_frame"] <= s["start_frame"] or s["end_frame"] <= m["start_frame"])]
            found.sort(key=lambda m: (m["shot_index"] == s["shot_index"], -(m["quality"] or 0.0), m["subject_id"]))
        else:
            found = sorted((m for m in same if m["video_id"] != s["video_id"]), key=lambda m: (-(m["quality"] or 0.0), m["subject_id"]))
        return [(m["subject_id"], m["embedding"]) for m in found[:3]]

    picked = 0
    for i in rng.sample(range(len(rows)), 150):
        for policy in ("other_shot", "cross_video"):
            got = [(m["subject_id"], m["embedding"] if m["embedding"] is None else m["embedding"].tolist()) for m in members.sources(policy, {"row": i}, 3)]
            assert got == expected(policy, i), (policy, i)
            picked += len(got)
    assert picked > 300  # most subjects had sources: the ordering was tested, not empty lists
    assert members.identity(label[0]) == identities.identity_id(min(r["subject_id"] for r, g in zip(rows, label) if g == label[0]))
