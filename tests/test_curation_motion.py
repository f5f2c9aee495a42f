"""Motion score: ~0 for a frozen picture, the true displacement for a pan, with either flow method."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from learned_fixtures import tiny_models  # noqa: F401  (fixture)
from videos import moving_square, panning, static_frames, write_video

from pipeline.config import load_config
from stages.motion import Motion, MotionConfig
from stages.probe import Probe, ProbeConfig
from stages.scenes import Scenes, ScenesConfig

# 180 px high (the flow resolution, so no scaling), 4 fps: the motion stage compares frames
# 0.5 s apart, here every second frame, so a pan of s px a frame moves 2s px between them.
H, W, FPS = 180, 240, 4
DIAGONAL = (H**2 + W**2) ** 0.5


def _window(path: Path, folder: Path) -> dict:
    """The candidate row the motion stage would get: the scene window joined with its video."""
    (video,) = Probe(ProbeConfig(), folder).process({"path": str(path)})
    (row,) = Scenes(ScenesConfig(), folder).process(video)["scenes"]
    return {**row, **{k: video[k] for k in ("fps", "width", "height", "rotation")}, "video_path": video["path"]}


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("motion")
    videos = {
        "still": static_frames(20, H, W),
        "pan1": panning(20, H, W, step=1),
        "pan3": panning(20, H, W, step=3),
        "square": moving_square(20, H, W, step=2, size=48),
    }
    found = {name: _window(write_video(folder / f"{name}.mp4", frames, fps=FPS), folder) for name, frames in videos.items()}
    return {"folder": folder, **found}


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_frozen_video_scores_zero(windows, method):
    (row,) = Motion(MotionConfig(method=method), windows["folder"]).process(windows["still"])
    assert row["method"] == method and row["n_pairs"] == 9
    assert row["score"] < 0.01 and row["flow_mean_px"] < 0.01 and row["static_share"] == 1.0


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("step", [1, 3])
def test_pan_scores_its_true_speed(windows, method, step):
    """Score = mean flow in % of the frame diagonal per second: 2*step px per 0.5 s."""
    (row,) = Motion(MotionConfig(method=method), windows["folder"]).process(windows[f"pan{step}"])
    assert row["flow_mean_px"] == pytest.approx(2 * step, rel=0.05)
    assert row["score"] == pytest.approx(100 * 2 * step / DIAGONAL / 0.5, rel=0.05)
    assert row["static_share"] < 0.05


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_moving_square_scores_well_above_a_frozen_picture(windows, method):
    stage = Motion(MotionConfig(method=method), windows["folder"])
    (square,) = stage.process(windows["square"])
    (still,) = stage.process(windows["still"])
    assert square["score"] > 0.1 and square["score"] > 30 * max(still["score"], 0.001)
    assert 0.3 < square["static_share"] < 1.0  # the background does not move, the square does


def test_window_shorter_than_the_sampling_step_still_scores(windows):
    """A window under 0.5 s (one frame step here) compares its first and last frames."""
    item = windows["pan3"]
    with av.open(item["video_path"]) as container:
        pts = sorted(p.pts for p in container.demux(video=0) if p.pts is not None)
    short = {**item, "end_frame": 2, "n_frames": 2, "end_pts": pts[2]}
    (row,) = Motion(MotionConfig(), windows["folder"]).process(short)
    assert row["n_pairs"] == 1 and row["flow_mean_px"] == pytest.approx(3, rel=0.1)
    assert row["score"] == pytest.approx(100 * 3 / DIAGONAL / 0.25, rel=0.1)


def test_one_decode_serves_scenes_and_motion_with_the_scores_of_a_window_decode(tmp_path):
    """The scene pass decodes every frame of the source once and scores each window's motion on
    the way; decoding a window alone (the motion stage's fallback) gives the same scores."""
    from conftest import REAL

    from stages.video import DECODED

    source = REAL / "bikes.mp4"
    (video,) = Probe(ProbeConfig(), tmp_path).process({"path": str(source)})
    before = DECODED[str(source)]
    made = Scenes(ScenesConfig(max_clip_s=2.0), tmp_path, {"motion": MotionConfig()}).process(video)
    decoded = DECODED[str(source)] - before
    windows = made["scenes"]
    assert decoded == sum(w["n_frames"] for w in windows) == windows[-1]["end_frame"]  # every frame once
    scored = {row["clip_id"]: row for row in made["motion"]}
    short = [w for w in windows if w["clip_id"] not in scored]  # fewer than two grid frames: left to the motion stage
    assert len(scored) > 3 and all(w["end_s"] - w["start_s"] < 2 / MotionConfig().sample_fps for w in short)
    motion = Motion(MotionConfig(), tmp_path)
    for window in (w for w in windows if w["clip_id"] in scored):
        item = {**window, **{k: video[k] for k in ("fps", "width", "height", "rotation")}, "video_path": video["path"]}
        (alone,) = motion.process(item)
        assert alone == pytest.approx(scored[window["clip_id"]]), window["clip_id"]


def test_one_decode_keeps_the_frames_of_aesthetic_and_screen(tmp_path):
    """With aesthetic and screen in the chain, the scene pass keeps the grid frames they read: their
    CPU tasks then decode nothing, and see the frames a decode of the window alone gives."""
    import numpy as np
    from conftest import REAL

    from stages.aesthetic import Aesthetic, AestheticConfig
    from stages.kept import kept, kept_file
    from stages.screen import Screen, ScreenConfig
    from stages.video import DECODED, WINDOW_FPS

    source = REAL / "bikes.mp4"
    (video,) = Probe(ProbeConfig(), tmp_path).process({"path": str(source)})
    fed = {"aesthetic": AestheticConfig(), "screen": ScreenConfig()}
    windows = Scenes(ScenesConfig(max_clip_s=2.0), tmp_path, {"motion": MotionConfig()}, fed).process(video)["scenes"]
    items = [{**w, **{k: video[k] for k in ("fps", "width", "height", "rotation")}, "video_path": video["path"]} for w in windows]
    # A window holding no grid frame (shorter than a bin) has nothing kept: its stages decode its first frame.
    short = [item for item in items if kept(tmp_path, "scenes", item["clip_id"], fed["screen"].n_frames) is None]
    assert all(item["end_s"] - item["start_s"] < 1 / WINDOW_FPS for item in short) and len(short) < len(items) / 4
    items = [item for item in items if item not in short]
    stages = [Aesthetic(fed["aesthetic"], tmp_path), Screen(fed["screen"], tmp_path)]
    before = DECODED[str(source)]
    kept = [[stage.prepare(item)["frames"] for item in items] for stage in stages]
    assert DECODED[str(source)] == before  # nothing decoded: every window's frames were kept
    for item in items:
        kept_file(tmp_path, "scenes", item["clip_id"]).unlink()
    decoded = [[stage.prepare(item)["frames"] for item in items] for stage in stages]
    assert DECODED[str(source)] - before >= sum(item["n_frames"] for item in items)  # alone: each window decoded
    for stage, kept_frames, decoded_frames in zip(stages, kept, decoded):
        for ours, alone in zip(kept_frames, decoded_frames):
            assert ours.shape == alone.shape
            # The same frames, JPEG-stored at the larger size (screen's) and resized: a few levels apart.
            assert np.abs(ours.astype(int) - alone.astype(int)).mean() < 4, stage.name


def test_clips_keep_the_frames_of_caption_and_subjects(tmp_path, tiny_models):
    """With caption and subjects in the chain, the clips stage keeps the clip frames they read while
    it encodes: their CPU tasks decode nothing; without the archive they see the same pixels."""
    import numpy as np
    from conftest import REAL

    from stages.caption import Caption
    from stages.clips import Clips, ClipsConfig
    from stages.kept import kept_file
    from stages.subjects import Subjects
    from stages.video import DECODED

    source = REAL / "bikes.mp4"
    (video,) = Probe(ProbeConfig(), tmp_path).process({"path": str(source)})
    windows = Scenes(ScenesConfig(max_clip_s=2.0), tmp_path).process(video)["scenes"][:3]
    tiny = load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"])  # prepare runs the models' processors
    fed = {"caption": tiny.caption, "subjects": tiny.subjects.model_copy(update={"key_frames": 5})}
    items = []
    for window in windows:
        item = {**window, **{k: video[k] for k in ("fps", "width", "height", "rotation")}, "video_path": video["path"]}
        (clip,) = Clips(ClipsConfig(), tmp_path, fed=fed).process(item)
        items.append({**item, "clip_path": clip["path"], "subjects_json": "[]"})
    stages = [Caption(fed["caption"], tmp_path), Subjects(fed["subjects"], tmp_path)]
    before = sum(DECODED.values())
    kept = [[stage.prepare(item) for item in items] for stage in stages]
    assert sum(DECODED.values()) == before  # nothing decoded, neither the source nor the clip files
    for item in items:
        kept_file(tmp_path, "clips", item["clip_id"]).unlink()
    decoded = [[stage.prepare(item) for item in items] for stage in stages]
    assert sum(DECODED.values()) > before  # without the archives, the source windows are decoded again
    # ... into the very pixels the archives held: a stage's inputs never depend on which it found.
    seen = {"caption": lambda item: item["request"]["pixel_values_videos"], "subjects": lambda item: item["frames"]}
    for stage, kept_items, decoded_items in zip(stages, kept, decoded):
        for ours, alone in zip(kept_items, decoded_items):
            assert ours.get("frame_indices") == alone.get("frame_indices")
            np.testing.assert_array_equal(seen[stage.name](ours), seen[stage.name](alone), err_msg=stage.name)



def test_a_producer_keeps_nothing_while_its_readers_lag_past_the_budget(tmp_path, monkeypatch):
    """Kept frames wait on disk for their readers; past the budget, the scene pass keeps no more
    (and spends nothing on them), and the window stages decode those windows themselves."""
    from conftest import REAL

    import stages.kept
    from stages.aesthetic import Aesthetic, AestheticConfig
    from stages.kept import kept_clip_ids

    monkeypatch.setattr(stages.kept, "BUDGET", 1)  # any kept frame fills it
    fed = {"aesthetic": AestheticConfig()}
    made = {}
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        (video,) = Probe(ProbeConfig(), tmp_path).process({"path": str(REAL / name)})
        made[name] = (video, Scenes(ScenesConfig(max_clip_s=2.0), tmp_path, fed=fed).process(video)["scenes"])
    kept = set(kept_clip_ids(tmp_path, "scenes"))
    assert kept and kept <= {w["clip_id"] for w in made["bikes.mp4"][1]}  # the first video kept its frames, the second none
    video, windows = made["carphone_pristine.mp4"]
    aesthetic = Aesthetic(fed["aesthetic"], tmp_path)
    item = {**windows[0], **{k: video[k] for k in ("fps", "width", "height", "rotation")}, "video_path": video["path"]}
    assert aesthetic.prepare(item)["frames"].shape[0] > 0  # decoded from the source


def test_kept_clip_frames_of_a_rotated_source_stand_upright_as_the_clip_file(tmp_path, tiny_models):
    """Phone footage stores frames sideways with a display rotation: the frames the clips stage keeps
    are the upright ones its clip file shows, so caption and subjects see the same picture either way."""
    import numpy as np
    from videos import marked_frames, write_video

    from stages.clips import Clips, ClipsConfig
    from stages.kept import kept_file
    from stages.subjects import Subjects

    upright = marked_frames(20)  # 96 high, 64 wide, a white block top left
    source = write_video(tmp_path / "rotated.mp4", [np.rot90(f, -1) for f in upright], fps=10, rotation=90)
    (video,) = Probe(ProbeConfig(), tmp_path).process({"path": str(source)})
    (window,) = Scenes(ScenesConfig(), tmp_path).process(video)["scenes"]
    fed = {"subjects": load_config(profile="tiny", overrides=[f"tiny_models={tiny_models}"]).subjects}
    item = {**window, **{k: video[k] for k in ("fps", "width", "height", "rotation")}, "video_path": video["path"]}
    (clip,) = Clips(ClipsConfig(), tmp_path, fed=fed).process(item)
    item = {**item, "clip_path": clip["path"], "subjects_json": "[]"}
    subjects = Subjects(fed["subjects"], tmp_path)
    kept = subjects.prepare(item)["frames"]
    kept_file(tmp_path, "clips", item["clip_id"]).unlink()
    decoded = subjects.prepare(item)["frames"]
    assert kept.shape == decoded.shape == (fed["subjects"].key_frames, 96, 64, 3)
    assert kept[:, :20, :14].min() > 200 and kept[:, 30:, 20:, :2].max() < 30  # the block top left, upright
    assert np.abs(kept.astype(int) - decoded.astype(int)).mean() < 4
