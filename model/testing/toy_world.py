"""The proof that training teaches what the paper claims: the references, not the caption, pick the subject.

A toy world of three subjects (a red disc, a green square, a blue triangle), each defined only
by its reference image. Each clip shows one of them crossing a grey frame; every caption is the
same sentence, so nothing but the references says which subject a clip holds. The tiny model
is trained end to end through the real path: the shard writer, `make encode`'s stage, the
loader, the trainer and its checkpoint; then it samples one video per reference and seed, and
each is compared with every clip.

Distances are measured where the DiT works, on latents (the sampler's `output_type="latent"`
against the clips' VAE latents), and on decoded frames against the clips as the same VAE
reproduces them. The tiny VAE has random weights, so its decoder maps distinct latents to
similar-looking frames: the pixel margins are thin, the latent ones are not.
`python -m model.testing.toy_world` prints the tables; `make bench` keeps them in BENCHMARKS.md.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from model.cinema import checkpoint
from model.cinema.model import PartRef, on_white
from model.testing.tiny import tiny_cinema_config
from model.train.config import DataConfig, TrainConfig, ValidationConfig
from model.train.data import latent_seed
from stages.shards import Shards, ShardsConfig
from stages.video import encode_mp4

HEIGHT, WIDTH, FRAMES = 32, 48, 9
SUBJECT_SIZE = 20  # pixels: big enough to own several latent cells of the 4 x 6 grid
SUBJECTS = {"red disc": (220, 40, 40), "green square": (40, 200, 60), "blue triangle": (40, 70, 230)}
CAPTION = "a shape moves from left to right"  # the same for every clip: it cannot tell them apart
BACKGROUND = 128


def subject_mask(name: str, size: int) -> np.ndarray:
    y, x = np.ogrid[:size, :size]
    centre = (size - 1) / 2
    if name.endswith("disc"):
        return (y - centre) ** 2 + (x - centre) ** 2 <= (size / 2) ** 2
    if name.endswith("square"):
        return np.ones((size, size), bool)
    return y >= size - 1 - 2 * np.abs(x - centre)  # a triangle standing on its base


def toy_clip(name: str) -> list[np.ndarray]:
    """The subject crossing a grey frame from left to right, FRAMES frames of HEIGHT x WIDTH."""
    mask, frames = subject_mask(name, SUBJECT_SIZE), []
    for t in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
        left = round(2 + t * (WIDTH - SUBJECT_SIZE - 4) / (FRAMES - 1))
        top = (HEIGHT - SUBJECT_SIZE) // 2
        frame[top : top + SUBJECT_SIZE, left : left + SUBJECT_SIZE][mask] = SUBJECTS[name]
        frames.append(frame)
    return frames


def toy_reference(name: str) -> np.ndarray:
    """The subject alone, as the subjects stage cuts one out: RGBA, transparent around it, at twice the size."""
    mask = subject_mask(name, 2 * SUBJECT_SIZE)
    out = np.zeros((mask.shape[0] + 4, mask.shape[1] + 4, 4), np.uint8)
    out[2:-2, 2:-2][mask] = (*SUBJECTS[name], 255)
    return out


def write_shard(run: Path, samples: list[dict], name: str = "train-toy") -> Path:
    """Clips and references as files of a run folder, then one shard through the real shard writer.

    A sample is {"key", "frames" (HxWx3 uint8 arrays), "refs" (RGBA arrays), "caption"}.
    """
    rows = []
    for sample in samples:
        key = sample["key"]
        clip = Path("clips") / f"{key}.mp4"
        (run / clip).parent.mkdir(parents=True, exist_ok=True)
        encode_mp4(run / clip, iter(sample["frames"]), Fraction(8))
        subjects = []
        for i, ref in enumerate(sample["refs"]):
            masked, crop = Path("refs") / f"{key}_{i}.png", Path("refs") / f"{key}_{i}_crop.png"
            (run / masked).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ref).save(run / masked)
            Image.fromarray(ref[..., :3]).save(run / crop)
            subjects.append({"subject_id": f"{key}-{i}", "kind": "object", "label": "thing", "masked_path": str(masked), "crop_path": str(crop)})
        rows.append({"clip_id": key, "clip_path": str(clip), "caption": sample["caption"], "subjects": json.dumps(subjects)})
    Shards(ShardsConfig(), run).process({"shard": name, "samples_json": json.dumps(rows)})
    return run / "shards"


def encode_shard(config: TrainConfig, run: Path, shard: str = "train-toy") -> tuple[TrainConfig, float]:
    """`make encode`'s stage, run here on one shard of `run` for `config` (written beside it as YAML).

    Returns the config that trains on the cached features, and the seconds the stage's work took
    (its model loading left out).
    """
    from stages.encode import Encode, EncodeConfig

    config_file = run / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    encode = Encode(EncodeConfig(train_config=str(config_file)), run)
    encode.setup()
    started = time.perf_counter()
    encode.process({"shard": shard, "path": f"shards/{shard}.tar"})
    seconds = time.perf_counter() - started
    return config.model_copy(update={"data": config.data.model_copy(update={"shards": str(run / "encoded")})}), seconds


def toy_train_config(models: Path, shards: Path, run: Path, steps: int) -> TrainConfig:
    """The tiny model on the toy shards: the three clips in every batch, no validation videos.

    No reference augmentation and no joint drop of caption and references: they regularise training
    on real footage, and in a 1500-step proof that the references decide the subject they only blur it."""
    model = tiny_cinema_config(models, "cogvideox_toy").model_copy(update={"unconditional_dropout": 0.0})
    data = DataConfig(shards=str(shards), frames=FRAMES, buckets=[(HEIGHT, WIDTH)], max_references=1, batch_size=len(SUBJECTS),
                      workers=0, reference_augment=None)  # fmt: skip
    return TrainConfig(
        run=str(run), model=model, t5=PartRef(ref=model.vae.ref), data=data, precision="fp32", max_steps=steps,
        learning_rate=1e-3, warmup_steps=1, log_every=50, checkpoint_every=steps, validation=ValidationConfig(every=0),
    )  # fmt: skip


@dataclass
class ToyResult:
    subjects: list[str]
    losses: list[float]  # logged every 50 steps
    train_seconds: float
    latent: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> [given reference, clip] mean squared distance
    pixels: dict[int, np.ndarray] = field(default_factory=dict)


def png_image(rgba: np.ndarray) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return on_white(buffer.getvalue())


def run_toy_world(models: Path, workdir: Path, steps: int = 1500, seeds: tuple[int, ...] = (0, 1, 2)) -> ToyResult:
    """Train on the toy world under `workdir`, then sample each reference with each seed and measure."""
    from model.cinema.sample import CinemaPipeline
    from model.train.trainer import Trainer

    names = list(SUBJECTS)
    samples = [{"key": f"toy-{i}", "frames": toy_clip(n), "refs": [toy_reference(n)], "caption": CAPTION} for i, n in enumerate(names)]
    raw = workdir / "curated"
    shards = write_shard(raw, samples)
    config, _ = encode_shard(toy_train_config(models, shards, workdir / "train", steps), raw)

    started = time.perf_counter()
    Trainer(config).fit()
    train_seconds = time.perf_counter() - started
    losses = [json.loads(line)["loss"] for line in (workdir / "train" / "metrics.jsonl").read_text().splitlines()]

    pipe = CinemaPipeline.from_pretrained(checkpoint.latest(workdir / "train"))
    vae = pipe.model.vae
    with torch.no_grad():
        clip_latents = []
        for index, name in enumerate(names):
            video = torch.from_numpy(np.stack(toy_clip(name))).permute(3, 0, 1, 2).float() / 127.5 - 1
            noise = torch.Generator().manual_seed(latent_seed(config.seed, f"toy-{index}"))
            clip_latents.append(vae.encode_video(video[None], noise))  # the training targets
        clip_pixels = [vae.decode(latents).clamp(-1, 1) for latents in clip_latents]
    result = ToyResult(names, losses, train_seconds)
    for seed in seeds:
        latent, pixels = np.zeros((len(names), len(names))), np.zeros((len(names), len(names)))
        for row, name in enumerate(names):
            made = pipe(
                prompt=CAPTION, reference_images=[png_image(toy_reference(name))], num_frames=FRAMES, height=HEIGHT,
                width=WIDTH, num_inference_steps=20, guidance_scale=3.0, generator=torch.Generator().manual_seed(seed),
                output_type="latent",
            ).frames  # fmt: skip
            frames = pipe.decode(made)[0]  # what output_type="pil" returns, without denoising again
            video = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            latent[row] = [(made - target).pow(2).mean().item() for target in clip_latents]
            pixels[row] = [(video - target).pow(2).mean().item() for target in clip_pixels]
        result.latent[seed], result.pixels[seed] = latent, pixels
    return result


def table(result: ToyResult, space: str) -> str:
    """Markdown: rows are the reference given, columns the clip compared with, mean over seeds."""
    matrix = np.mean(list(getattr(result, space).values()), axis=0)
    lines = ["| reference given | " + " | ".join(f"vs {n} clip" for n in result.subjects) + " |"]
    lines.append("|---" * (len(result.subjects) + 1) + "|")
    for name, row in zip(result.subjects, matrix):
        cells = [f"**{v:.4f}**" if v == row.min() else f"{v:.4f}" for v in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wins(result: ToyResult, space: str) -> int:
    """Videos (reference x seed) closest to the clip of their own reference."""
    return sum(int((m.argmin(axis=1) == np.arange(len(m))).sum()) for m in getattr(result, space).values())


def main() -> None:
    from model.testing.tiny import ensure

    with tempfile.TemporaryDirectory() as tmp:
        models = ensure(Path(tmp) / "models", ["qwen2_5_vl", "cogvideox_toy"])
        result = run_toy_world(models, Path(tmp))
    print(f"trained in {result.train_seconds:.0f} s; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    for space in ("latent", "pixels"):
        print(f"\n{space}: {wins(result, space)}/{len(result.subjects) * len(result.latent)} closest to their own clip\n{table(result, space)}")


if __name__ == "__main__":
    main()
