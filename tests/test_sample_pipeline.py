"""The sampler: `pipe(prompt=..., reference_images=[...]).frames` and `python -m model.cinema.sample` write what was asked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import REAL, cinema_models  # noqa: F401

from model.cinema import checkpoint
from model.cinema.model import CinemaModel
from model.cinema.evaluate import read_samples
from model.cinema.sample import CinemaPipeline, main
from model.testing.tiny import tiny_cinema_config
from stages.video import iter_frames, open_video


@pytest.fixture(scope="module")
def tiny_checkpoint(cinema_models, tmp_path_factory) -> Path:
    """A checkpoint folder as the trainer writes it (untrained weights: this tests the plumbing)."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints" / "step-0000001"
    checkpoint.save_parts(folder, CinemaModel.from_config(tiny_cinema_config(cinema_models)), ["aligner", "transformer"])
    return folder


def references() -> list[Image.Image]:
    image = Image.open(REAL / "grace_hopper.jpg").convert("RGB")
    return [image.crop((0, 0, 200, 300)), image.crop((200, 100, 400, 400))]


def as_array(frames: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(f) for f in frames]).astype(np.int16)


def test_pipeline_frames_are_seeded_and_guided(tiny_checkpoint):
    pipe = CinemaPipeline.from_pretrained(tiny_checkpoint)
    call = dict(prompt="a woman in uniform", reference_images=references(), num_frames=9, num_inference_steps=3)
    first = pipe(**call, generator=torch.Generator().manual_seed(1)).frames
    assert len(first) == 1 and len(first[0]) == 9 and first[0][0].size == (48, 32)
    again = pipe(**call, generator=torch.Generator().manual_seed(1)).frames[0]
    other_seed = pipe(**call, generator=torch.Generator().manual_seed(2)).frames[0]
    unguided = pipe(**{**call, "guidance_scale": 1.0}, generator=torch.Generator().manual_seed(1)).frames[0]
    assert np.array_equal(as_array(first[0]), as_array(again))
    assert np.abs(as_array(first[0]) - as_array(other_seed)).mean() > 1
    assert np.abs(as_array(first[0]) - as_array(unguided)).mean() > 0.1
    other_size = pipe(**{**call, "num_frames": 5, "height": 32, "width": 32}).frames[0]
    assert len(other_size) == 5 and other_size[0].size == (32, 32)


def test_cli_writes_playable_mp4_of_requested_shape(tiny_checkpoint, tmp_path):
    refs = []
    for i, image in enumerate(references()):
        refs.append(tmp_path / f"ref{i}.png")
        image.convert("RGBA").save(refs[-1])
    samples = tiny_checkpoint.parent.parent / "samples"
    shutil.rmtree(samples, ignore_errors=True)
    args = ["--checkpoint", str(tiny_checkpoint), "--refs", ",".join(map(str, refs)), "--frames", "9", "--steps", "3",
            "--scheduler", "dpm", "--seed", "3", "--kinds", "face,human", "--labels", "woman,woman"]  # fmt: skip
    assert main([*args, "--prompt", "two people"]) == 0
    assert main([*args, "--prompt", "one person"]) == 0  # another prompt: another file, the first kept
    videos = sorted(samples.glob("*.mp4"))
    assert len(videos) == 2 and all(v.name.startswith("step-0000001-seed3-") for v in videos)
    for out in videos:
        container, stream = open_video(out)
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 48, 32)
        container.close()
        assert len(list(iter_frames(out))) == 9
    listed = read_samples(samples / "samples.jsonl")  # what `make eval` reads
    assert sorted(s.prompt for s in listed) == ["one person", "two people"]
    assert {s.video for s in listed} == {str(v) for v in videos}
    assert [(r.image, r.kind, r.label) for r in listed[0].references] == [(str(refs[0]), "face", "woman"), (str(refs[1]), "human", "woman")]


def test_cli_without_a_checkpoint_fails_at_once_in_one_line(tmp_path, capsys):
    ref = tmp_path / "ref.png"
    references()[0].save(ref)
    code = main(["--checkpoint", str(tmp_path / "checkpoints" / "step-9"), "--refs", str(ref), "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no checkpoint" in err and "make train" in err, err
