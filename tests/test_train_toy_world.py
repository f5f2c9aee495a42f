"""The paper's claim, at toy scale: the references, not the caption, decide which subjects appear.

A toy world of three subjects (a red disc, a blue square, a green bar), each defined by a
reference cut-out. Every clip shows two of them, the first reference's subject moving on the left,
the second's on the right; all captions are the same sentence, so only the references tell the
model who is who. The tiny model is trained end to end through the real path (shards written by
the shard stage, the loader, the trainer, a checkpoint), then sampled from the checkpoint: the
video must be nearest to the clip of its references, and swapping the references must swap the
subjects. Distances are per-frame MSE against the VAE reconstructions of the clips (the tiny VAE
is random, so its reconstruction, not the raw clip, is what a perfect model could produce).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model import checkpoint
from model.cinema import CinemaModel
from model.sample import CinemaPipeline
from model.train import Trainer
from train_fixtures import FRAMES, SIZE, cinema_models, rgba_cutout, tiny_train_config, write_shard  # noqa: F401

CAPTION = "two things move around"
BACKGROUND = 128


def subject(name: str) -> np.ndarray:
    """A 14x14 RGB patch: the subject's look (colour and shape) on white."""
    patch = np.full((14, 14, 3), 255, np.uint8)
    y, x = np.ogrid[:14, :14]
    if name == "disc":
        patch[(y - 6.5) ** 2 + (x - 6.5) ** 2 <= 42] = (230, 30, 30)
    elif name == "square":
        patch[2:12, 2:12] = (30, 60, 230)
    else:
        patch[:, 4:10] = (30, 200, 60)
    return patch


SUBJECTS = ["disc", "square", "bar"]


def clip(left: str, right: str) -> list[np.ndarray]:
    """The left subject moves down while the right one moves up, on grey."""
    frames = []
    for t in range(FRAMES):
        frame = np.full((*SIZE, 3), BACKGROUND, np.uint8)
        for name, x, y in ((left, 4, 2 + 2 * t), (right, 30, 16 - 2 * t)):
            patch = subject(name)
            shape = patch.min(axis=2) < 250
            frame[y : y + 14, x : x + 14][shape] = patch[shape]
        frames.append(frame)
    return frames


def reference(name: str) -> np.ndarray:
    patch = subject(name)
    cutout = rgba_cutout(patch)
    cutout[..., 3] = np.where(patch.min(axis=2) < 250, 255, 0)
    return cutout


PAIRS = list(itertools.permutations(SUBJECTS, 2))


@pytest.fixture(scope="module")
def trained(cinema_models, tmp_path_factory):
    run = tmp_path_factory.mktemp("toy")
    samples = [
        {"key": f"{a}-{b}", "frames": clip(a, b), "refs": [reference(a), reference(b)], "caption": CAPTION}
        for a, b in PAIRS
    ]
    shards = write_shard(run, samples)
    config = tiny_train_config(
        cinema_models, shards, run / "train", max_steps=300, checkpoint_every=300, learning_rate=2e-3, warmup_steps=20, log_every=50
    )
    Trainer(config).fit()
    return checkpoint.latest(run / "train")


def reconstructions(model: CinemaModel) -> dict[tuple[str, str], np.ndarray]:
    """Each pair's clip through the VAE and back, as the pipeline outputs frames."""
    out = {}
    with torch.no_grad():
        for pair in PAIRS:
            video = torch.from_numpy(np.stack(clip(*pair))).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            decoded = model.vae.decode(model.vae.vae.encode(video).latent_dist.mode().permute(0, 2, 1, 3, 4) * model.vae.scaling_factor)
            out[pair] = ((decoded[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).numpy()
    return out


@pytest.mark.slow
def test_references_decide_the_subjects_and_swapping_them_swaps_the_video(trained):
    from PIL import Image

    pipe = CinemaPipeline.from_pretrained(trained)
    targets = reconstructions(pipe.model)
    distances = {}
    for query in PAIRS:
        refs = [Image.fromarray(reference(name)) for name in query]
        frames = pipe(prompt=CAPTION, reference_images=[_on_white(r) for r in refs], num_frames=FRAMES,
                      num_inference_steps=10, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
        video = np.stack([np.asarray(f) for f in frames]).astype(np.float64)
        distances[query] = {pair: float(((video - target) ** 2).mean()) for pair, target in targets.items()}
    for query, row in distances.items():
        print(query, {"-".join(k): round(v, 1) for k, v in row.items()})
    for query, row in distances.items():
        swapped = query[::-1]
        assert min(row, key=row.get) == query, (query, row)  # nearest of all six clips: its own
        assert row[query] < 0.7 * row[swapped], (query, row)  # swapping the references swaps the subjects


def _on_white(image):
    from PIL import Image

    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
