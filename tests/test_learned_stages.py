"""The learned stages with tiny random-initialised models of the real classes (profile tiny)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import REAL, manifests_cli, pipeline_cli
from learned_fixtures import run_model_stage, tiny_args, tiny_models  # noqa: F401  (fixture)

from manifests import store, views
from pipeline.config import load_config
from stages.caption import Caption
from stages.scenes import Scenes
from stages.subjects import Found, Subjects, link_tracks, merge_duplicates


def found(frame: int, score: float, x: float, kind: str = "human") -> Found:
    mask = np.zeros((20, 40), bool)
    mask[5:15, int(x) : int(x) + 10] = True
    return Found(kind, "person", frame, score, (x, 5.0, x + 10, 15.0), mask, float(mask.mean()))


def test_tracks_keep_the_best_view_not_the_first():
    frames = [[found(0, 0.4, 2)], [found(1, 0.9, 3), found(1, 0.5, 25)], [found(2, 0.6, 4)]]
    tracks = link_tracks(frames, iou=0.3)
    assert len(tracks) == 2
    moving = next(t for t in tracks if len(t.views) == 3)
    assert moving.best().frame == 1 and moving.best().score == 0.9


def test_duplicates_merge_within_a_kind_only():
    same = [found(0, 0.5, 2), found(0, 0.9, 3), found(0, 0.7, 3, kind="face")]
    kept = merge_duplicates(same, iou=0.5)
    assert sorted((f.kind, f.score) for f in kept) == [("face", 0.7), ("human", 0.9)]


def test_tiny_aesthetic_head_is_the_published_layout(tiny_models):
    from model.curation.aesthetic import AestheticScorer

    state = torch.load(tiny_models / "aesthetic_head" / "aesthetic-model.pth", weights_only=True)
    assert [k for k in state if k.endswith("weight")] == [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
    assert state["layers.7.weight"].shape == (1, 16)
    scorer = AestheticScorer.from_pretrained(str(tiny_models / "clip"), str(tiny_models / "aesthetic_head"), "aesthetic-model.pth")
    frames = np.stack([cv2.resize(cv2.imread(str(REAL / "astronaut.png")), (224, 224))] * 2)
    scores = scorer.score(scorer.embed(frames))
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores[0] == scores[1]
    with pytest.raises(ValueError, match="CLIP expects"):
        scorer.embed(frames[:, :100])


def subjects_item(stage: Subjects, image: np.ndarray, kinds={"person": "human", "face": "face"}) -> dict:  # noqa: B006
    return stage.inputs("c1", [image, image[:, ::-1].copy()], [0, 7], kinds)


def test_subjects_write_crops_and_count_zero_detections(tiny_models, tmp_path):
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"]).subjects
    stage = Subjects(config, tmp_path)
    stage.setup()
    image = cv2.cvtColor(cv2.imread(str(REAL / "astronaut.png")), cv2.COLOR_BGR2RGB)[::2, ::2].copy()
    rows, errors = run_model_stage(stage, [subjects_item(stage, image)])
    assert rows and not errors
    for row in rows:
        masked = cv2.imread(str(tmp_path / row["masked_path"]), cv2.IMREAD_UNCHANGED)
        crop = cv2.imread(str(tmp_path / row["crop_path"]))
        assert masked.shape[2] == 4 and masked.shape[:2] == crop.shape[:2]
        assert (masked[..., 3] > 0).any() and row["frame_index"] in (0, 7) and row["kind"] in ("human", "face")
        assert row["random_weights"] == (row["kind"] != "face")  # faces come from the real dlib models
    stage.config = config.model_copy(update={"min_score": 1.01, "face_min_score": 100.0})  # no box, no face can pass
    rows, errors = run_model_stage(stage, [subjects_item(stage, image)])
    assert rows == [] and errors[0]["error_type"] == "bad_model_output"
    assert "0 boxes above score" in errors[0]["message"]


def test_full_profile_without_weights_fails_fast_naming_each_model(tmp_path):
    run = tmp_path / "run"
    started = time.perf_counter()
    result = pipeline_cli("curate", REAL / "bikes.mp4", "--out", run, "--profile", "full")
    assert result.code == 4, result.err
    assert time.perf_counter() - started < 10
    for ref in ["timm/vit_large_patch14_clip_224.openai", "trl-lib/ddpo-aesthetic-predictor", "Qwen/Qwen2.5-VL-3B-Instruct",
                "IDEA-Research/grounding-dino-tiny", "ybelkada/segment-anything"]:  # fmt: skip
        assert ref in result.err
    assert "make weights" in result.err
    assert not (run / "manifests").exists()  # no stage ran


@pytest.mark.slow
def test_tiny_chain_makes_shards_that_join_back(tiny_models, tmp_path):
    import webdataset as wds

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src)
    run = tmp_path / "run"
    result = pipeline_cli("curate", src, "--out", run, *tiny_args(tiny_models))
    assert result.code == 0, result.out + result.err
    assert "RANDOM WEIGHTS" in result.out and "warnings" in result.out  # random answers do not parse
    # one vocabulary: the summary's warnings are the stage lines' warnings, and nothing is called "error rows"
    (warned,) = [int(line.split()[1]) for line in result.out.splitlines() if line.split()[:1] == ["warnings"]]
    per_stage = [int(m) for m in re.findall(r"(\d+) warnings[,)]", result.out)]
    assert sum(per_stage) == warned > 0 and "error rows" not in result.out, result.out
    assert "RANDOM WEIGHTS" in manifests_cli("summary", run).out
    shards = store.read_table(run, "shards")
    clips = set(store.read_table(run, "clips").column("clip_id").to_pylist())
    subjects = {r["subject_id"]: r for r in store.read_table(run, "subjects").to_pylist()}
    captions = {r["clip_id"]: r["caption"] for r in store.read_table(run, "captions").to_pylist()}
    samples = list(wds.WebDataset([str(run / p) for p in shards.column("path").to_pylist()], shardshuffle=False))
    assert len(samples) == sum(shards.column("n_samples").to_pylist()) == len(clips) > 0
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["clip_id"] == sample["__key__"] in clips and meta["random_weights"]
        assert sample["mp4"] == (run / meta["clip_path"]).read_bytes()
        assert sample["txt"].decode() == captions[meta["clip_id"]]
        assert meta["subjects"] and all(s["subject_id"] in subjects for s in meta["subjects"])
        for s in meta["subjects"]:
            assert sample[s["ref"]] == (run / subjects[s["source_subject_id"]]["masked_path"]).read_bytes()

    # A rerun does nothing; a shard written but never listed (killed in between) is rewritten, not duplicated.
    before = sorted(p.name for p in (run / "shards").iterdir())
    result = pipeline_cli("curate", src, "--out", run)
    assert result.code == 0 and "nothing to do" in result.out
    shutil.rmtree(store.table_dir(run, "shards"))
    result = pipeline_cli("stage", "shards", "--run", run)
    assert result.code == 0, result.err
    assert sorted(p.name for p in (run / "shards").iterdir()) == before
    assert store.read_table(run, "shards").num_rows == shards.num_rows


class SlowScenes(Scenes):
    """The scene pass of a long source: the last video's goes on until a caption exists (2 minutes
    at most). A runner that finished each stage before the next would never write one in time."""

    def process(self, item):
        if item["path"].endswith("zz-last.mp4"):
            deadline = time.monotonic() + 120
            while not store.parts(self.run_dir, "captions") and time.monotonic() < deadline:
                time.sleep(0.5)
        return super().process(item)


@pytest.mark.slow
def test_stages_overlap_captions_come_before_the_last_scenes(tiny_models, tmp_path):
    import ray.cloudpickle

    from pipeline.runner import run_chain
    from stages.aesthetic import Aesthetic
    from stages.clips import Clips
    from stages.motion import Motion
    from stages.probe import Probe

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src / "a.mp4")
    shutil.copy(REAL / "carphone_pristine.mp4", src / "zz-last.mp4")
    classes = [Probe, SlowScenes, Motion, Aesthetic, Clips, Caption]
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}", "filter.min_duration_s=0.5"])
    config.src, config.stages = str(src), [c.name for c in classes]
    reports = {r.stage: r for r in run_chain(classes, config, tmp_path / "run")}
    assert reports["caption"].rows > 0
    assert reports["caption"].first_result_s < reports["scenes"].last_result_s, reports
    runs = store.read_table(tmp_path / "run", "stage_runs").to_pylist()
    caption = next(r for r in runs if r["stage"] == "caption")
    assert caption["actors"] == 1 and 0 < caption["utilisation"] <= 1


def test_kept_frames_go_as_soon_as_no_reader_of_the_chain_needs_them(tiny_models, tmp_path):
    """The sweep removes a window's kept frames once each reader has a row for it or a filter rule
    decided against it, and keeps those of the windows a reader still has to see."""
    from pipeline.runner import run_chain, sweep_kept_frames
    from stages.aesthetic import Aesthetic
    from stages.kept import kept_clip_ids
    from stages.motion import Motion
    from stages.probe import Probe
    from stages.screen import Screen, ScreenConfig

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "bikes.mp4", src)
    run = tmp_path / "run"
    config = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}", "filter.min_duration_s=0.5", "scenes.max_clip_s=2"])
    config.src = str(src)
    classes = [Probe, Scenes, Motion, Aesthetic]
    config.stages = [c.name for c in classes]
    run_chain(classes, config, run)
    scores = sorted(store.read_table(run, "aesthetic").column("score").to_pylist())
    config.filter.min_aesthetic = scores[len(scores) // 2]  # half the scored windows go on to screen
    # The scene pass again, as in a chain where screen comes next: it keeps every window's frames.
    (video,) = store.read_table(run, "videos").to_pylist()
    fed = {"aesthetic": config.aesthetic, "screen": ScreenConfig()}
    windows = Scenes(config.scenes, run, {"motion": config.motion}, fed).process({**video, "path": video["path"]})["scenes"]
    assert set(kept_clip_ids(run, "scenes")) == {w["clip_id"] for w in windows if w["end_s"] - w["start_s"] >= 0.25}
    waiting = set(views.candidates(run, Screen.filters, config.filter).column("clip_id").to_pylist())
    assert 0 < len(waiting) < len(windows), (len(waiting), len(windows))
    chain = [*config.stages, "screen"]
    sweep_kept_frames(run, [*classes, Screen], config, chain)
    assert set(kept_clip_ids(run, "scenes")) == waiting  # what screen will read, and nothing else
    first = next(row for row in views.candidates(run).to_pylist() if row["clip_id"] == min(waiting))
    screen = Screen(ScreenConfig(), run)
    screen.setup()
    store.write_part(run, "screen", screen.process(screen.prepare(first)))  # screen has seen one window
    sweep_kept_frames(run, [*classes, Screen], config, chain)
    assert set(kept_clip_ids(run, "scenes")) == waiting - {first["clip_id"]}
