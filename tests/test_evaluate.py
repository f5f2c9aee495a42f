"""Evaluation metrics on real images and videos whose answers are known, with tiny random models of the real classes.

A random network still maps identical pixels to identical embeddings (cosine 1) and different
photos to different ones (cosine < 1); a frozen video has no motion and consecutive frames alike.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REAL, run_cli

from model.cinema.evaluate import (
    METRICS,
    Evaluator,
    Reference,
    Sample,
    best_region_similarity,
    clip_t,
    main,
    motion_magnitude,
    temporal_consistency,
    tiny_config,
)
from stages.video import encode_mp4, iter_frames

EVAL_MODELS = ["clip_eval", "dino", "grounding_dino", "arcface"]
SIZE = (160, 192)  # height, width of the test videos


def rgb(name: str) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(REAL / name)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Evaluator:
    from model.testing.tiny import ensure

    models = ensure(tmp_path_factory.mktemp("eval-models"), EVAL_MODELS)
    return Evaluator(tiny_config(models))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """A frozen astronaut, a frozen Grace Hopper, and the first second of the real bikes footage."""
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for name, image in [("astronaut", rgb("astronaut.png")), ("grace", rgb("grace_hopper.jpg"))]:
        out[name] = folder / f"{name}.mp4"
        encode_mp4(out[name], iter([image] * 9), Fraction(8), crf=0)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # the reference photo
    out["bikes"] = folder / "bikes.mp4"
    frames = [f.image for f in iter_frames(REAL / "bikes.mp4", fmt="rgb24", end_frame=12, size=(SIZE[1], SIZE[0]))]
    encode_mp4(out["bikes"], iter(frames), Fraction(25))
    return out


def test_subject_similarity_picks_the_region_that_shows_the_reference(evaluator):
    """CLIP-I, DINO-I and ArcFace on one frame holding both photos: each reference finds its own region exactly."""
    astronaut, grace = rgb("astronaut.png"), rgb("grace_hopper.jpg")
    frame = np.zeros((SIZE[0] + 40, 2 * SIZE[1] + 30, 3), np.uint8)
    frame[20 : 20 + SIZE[0], 10 : 10 + SIZE[1]] = astronaut
    frame[20 : 20 + SIZE[0], 20 + SIZE[1] : 20 + 2 * SIZE[1]] = grace
    regions = [frame[20 : 20 + SIZE[0], 10 : 10 + SIZE[1]], frame[20 : 20 + SIZE[0], 20 + SIZE[1] : 20 + 2 * SIZE[1]]]
    for embed in (evaluator.clip_images, evaluator.dino_images, evaluator.face.embed):
        a, g = embed([astronaut]), embed([grace])
        both, only_grace = embed(regions), embed(regions[1:])
        assert best_region_similarity(a[0], [both]) == pytest.approx(1.0, abs=1e-5)
        assert best_region_similarity(g[0], [both]) == pytest.approx(1.0, abs=1e-5)
        assert best_region_similarity(a[0], [only_grace]) < 0.999
        assert best_region_similarity(a[0], [both, only_grace]) == pytest.approx((1 + float(torch.cosine_similarity(a, g)[0])) / 2, abs=1e-5)


def test_clip_t_is_the_mean_over_frames_of_prompt_frame_cosine(evaluator):
    frames = evaluator.clip_images([rgb("astronaut.png"), rgb("grace_hopper.jpg")])
    text = evaluator.clip_text("an astronaut in a white suit")
    each = [float(torch.cosine_similarity(text, f, dim=0)) for f in frames]
    assert clip_t(text, frames) == pytest.approx(np.mean(each), abs=1e-6)
    assert clip_t(text, frames[:1]) == pytest.approx(each[0], abs=1e-6) != pytest.approx(each[1], abs=1e-3)
    assert evaluator.clip_text("an astronaut").shape == text.shape  # open_clip's own tokenizer drives the model


def test_frozen_video_has_no_motion_and_full_consistency(videos):
    frozen = [f.image for f in iter_frames(videos["astronaut"], fmt="rgb24")]
    moving = [f.image for f in iter_frames(videos["bikes"], fmt="rgb24")]
    assert motion_magnitude(frozen, 8.0, "dis", 180) == pytest.approx(0.0, abs=1e-3)
    assert motion_magnitude(moving, 25.0, "dis", 180) > 0.5
    same = torch.randn(1, 16).repeat(5, 1)
    assert temporal_consistency(same) == pytest.approx(1.0, abs=1e-6)
    assert temporal_consistency(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_whole_sample_scores_its_own_reference_higher(evaluator, videos):
    """Through decoding, detection and every model: the video of a photo matches that photo best."""
    folder = videos["astronaut"].parent
    refs = [Reference(image=str(folder / f"{n}.png"), kind="face", label="face") for n in ("astronaut", "grace")]
    evaluator.config = evaluator.config.model_copy(update={"min_score": 1.01})  # no box passes: the whole frame is the region
    try:
        own = evaluator.evaluate(Sample(video=str(videos["astronaut"]), prompt="an astronaut", references=refs[:1]))
        other = evaluator.evaluate(Sample(video=str(videos["astronaut"]), prompt="an astronaut", references=refs[1:]))
    finally:
        evaluator.config = evaluator.config.model_copy(update={"min_score": 0.0})
    for metric in ("clip_i", "dino_i", "face_sim"):
        assert own[metric] > 0.99 and own[metric] > other[metric], metric
    assert own["detected"] == 0.0 and own["motion"] == pytest.approx(0.0, abs=1e-3)
    assert own["temporal_consistency"] > 0.999 and own["n_frames"] == 9 and own["random_weights"]

    moving = evaluator.evaluate(Sample(video=str(videos["bikes"]), prompt="bikes", references=refs[:1]))
    assert moving["motion"] > 0.5 and moving["temporal_consistency"] < own["temporal_consistency"]
    assert moving["detected"] == 1.0  # threshold 0: the detector's boxes are the regions


def test_cli_writes_parquet_and_markdown(evaluator, videos, tmp_path):
    models = Path(evaluator.config.clip).parent
    folder = videos["astronaut"].parent
    samples = tmp_path / "samples.jsonl"
    lines = [
        {"video": str(videos["astronaut"]), "prompt": "an astronaut", "references": [{"image": str(folder / "astronaut.png"), "kind": "face", "label": "face"}]},
        {"video": str(videos["bikes"]), "prompt": "bikes in a street", "references": [{"image": str(folder / "grace.png"), "kind": "object", "label": "bicycle"}]},
    ]  # fmt: skip
    samples.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_cli(main, [samples, "--tiny-models", models, "--out", tmp_path / "eval"])
    assert result.code == 0, result.err
    rows = pq.read_table(tmp_path / "eval" / "metrics.parquet").to_pylist()
    assert [r["prompt"] for r in rows] == ["an astronaut", "bikes in a street"]
    assert rows[0]["face_sim"] is not None and rows[1]["face_sim"] is None  # only face references get ArcFace
    assert all(-1 <= r[m] <= 1 for r in rows for m in ("clip_t", "clip_i", "dino_i", "temporal_consistency"))
    markdown = (tmp_path / "eval" / "metrics.md").read_text()
    assert "RANDOM WEIGHTS" in markdown and "| **mean of 2** |" in markdown and all(m in markdown for m in METRICS)

    samples.write_text('{"video": "a.mp4", "prompt": "x", "references": [{"image": "r.png", "kind": "animal", "label": "dog"}]}\n')
    result = run_cli(main, [samples, "--tiny-models", models])
    assert result.code == 2 and "samples.jsonl:1" in result.err
    samples.write_text(json.dumps(lines[0]) + "\n")
    result = run_cli(main, [samples, "--tiny-models", tmp_path / "no-models"])
    assert result.code == 4 and "no-models" in result.err
