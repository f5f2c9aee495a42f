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

The binding world (`run_binding_world`, below) asks what this one cannot: with two subjects in a
clip and a caption that says which goes where, does the model tell which reference is which?
`python -m model.testing.toy_world` prints the tables; `make bench` keeps them in BENCHMARKS.md.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from model.cinema import checkpoint
from model.cinema.model import CinemaModel, Conditions, PartRef, encode_conditions, on_white
from model.testing.tiny import tiny_cinema_config
from model.train.config import DataConfig, TrainConfig, ValidationConfig
from model.train.data import latent_seed
from stages.shards import Shards, ShardsConfig
from stages.video import encode_mp4

HEIGHT, WIDTH, FRAMES = 32, 48, 9
SUBJECT_SIZE = 20  # pixels: big enough to own several latent cells of the 4 x 6 grid
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 230)}
SUBJECTS = {name: COLOURS[name.split()[0]] for name in ("red disc", "green square", "blue triangle")}
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


def colour(name: str) -> str:
    return name.split()[0]


def shape(name: str) -> str:
    return name.split()[1]


def draw(frame: np.ndarray, name: str, left: int) -> None:
    """A subject ("<colour> <shape>") of SUBJECT_SIZE, vertically centred, its left edge at `left`."""
    top = (HEIGHT - SUBJECT_SIZE) // 2
    frame[top : top + SUBJECT_SIZE, left : left + SUBJECT_SIZE][subject_mask(name, SUBJECT_SIZE)] = COLOURS[colour(name)]


def toy_clip(name: str) -> list[np.ndarray]:
    """The subject crossing a grey frame from left to right, FRAMES frames of HEIGHT x WIDTH."""
    frames = []
    for t in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
        draw(frame, name, round(2 + t * (WIDTH - SUBJECT_SIZE - 4) / (FRAMES - 1)))
        frames.append(frame)
    return frames


def toy_reference(name: str) -> np.ndarray:
    """The subject alone, as the subjects stage cuts one out: RGBA, transparent around it, at twice the size."""
    mask = subject_mask(name, 2 * SUBJECT_SIZE)
    out = np.zeros((mask.shape[0] + 4, mask.shape[1] + 4, 4), np.uint8)
    out[2:-2, 2:-2][mask] = (*COLOURS[colour(name)], 255)
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


def toy_train_config(
    models: Path, shards: Path, run: Path, steps: int, batch: int = len(SUBJECTS), references: int = 1, base: str = "cogvideox_toy"
) -> TrainConfig:
    """The tiny model on toy shards: the whole world in every batch (or `batch` of it), no validation videos.

    No reference augmentation and no joint drop of caption and references: they regularise training
    on real footage, and in a 1500-step proof that the references decide the subject they only blur it.
    References keep their shard order: cached MLLM states were computed in that order, and a reorder
    drawn at load time would move only the VAE latents, teaching that the two disagree. `base` is the
    tiny model folder: `cogvideox_toy`, or `wan_toy` for the same proof through the Wan base."""
    model = tiny_cinema_config(models, base).model_copy(update={"unconditional_dropout": 0.0})
    data = DataConfig(shards=str(shards), frames=FRAMES, buckets=[(HEIGHT, WIDTH)], max_references=references, batch_size=batch,
                      workers=0, shuffle_references=False, reference_augment=None)  # fmt: skip
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


@dataclass
class Trained:
    pipe: object  # the CinemaPipeline of the run's last checkpoint
    config: TrainConfig
    losses: list[float]  # logged every 50 steps
    seconds: float


def train_world(
    models: Path, workdir: Path, samples: list[dict], steps: int, batch: int, references: int, base: str = "cogvideox_toy"
) -> Trained:
    """Samples -> shard -> `make encode` -> the trainer, under `workdir`; the trained sampler."""
    from model.cinema.sample import CinemaPipeline
    from model.train.trainer import Trainer

    raw = workdir / "curated"
    shards = write_shard(raw, samples)
    config, _ = encode_shard(toy_train_config(models, shards, workdir / "train", steps, batch, references, base), raw)
    started = time.perf_counter()
    Trainer(config).fit()
    seconds = time.perf_counter() - started
    losses = [json.loads(line)["loss"] for line in (workdir / "train" / "metrics.jsonl").read_text().splitlines()]
    return Trained(CinemaPipeline.from_pretrained(checkpoint.latest(workdir / "train")), config, losses, seconds)


@torch.no_grad()
def through_vae(pipe, frames: list[np.ndarray], noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip as the trainer saw it (VAE latents, one posterior sample) and as the same VAE decodes them."""
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1
    latents = pipe.model.vae.encode_video(video[None], torch.Generator().manual_seed(noise_seed))
    return latents, pipe.model.vae.decode(latents).clamp(-1, 1)


def generate(pipe, caption: str, references: list[str], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampled video: its latents and its decoded frames in [-1, 1], (1, 3, FRAMES, HEIGHT, WIDTH)."""
    made = pipe(
        prompt=caption, reference_images=[png_image(toy_reference(name)) for name in references], num_frames=FRAMES,
        height=HEIGHT, width=WIDTH, num_inference_steps=20, guidance_scale=3.0, generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).frames  # fmt: skip
    frames = pipe.decode(made)[0]  # what output_type="pil" returns, without denoising again
    video = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    return made, video


def run_toy_world(
    models: Path, workdir: Path, steps: int = 1500, seeds: tuple[int, ...] = (0, 1, 2), base: str = "cogvideox_toy"
) -> ToyResult:
    """Train on the toy world under `workdir` (through the tiny `base`), then sample each reference with each seed and measure."""
    names = list(SUBJECTS)
    samples = [{"key": f"toy-{i}", "frames": toy_clip(n), "refs": [toy_reference(n)], "caption": CAPTION} for i, n in enumerate(names)]
    trained = train_world(models, workdir, samples, steps, batch=len(names), references=1, base=base)
    clips = [through_vae(trained.pipe, toy_clip(n), latent_seed(trained.config.seed, f"toy-{i}")) for i, n in enumerate(names)]
    result = ToyResult(names, trained.losses, trained.seconds)
    for seed in seeds:
        latent, pixels = np.zeros((len(names), len(names))), np.zeros((len(names), len(names)))
        for row, name in enumerate(names):
            made, video = generate(trained.pipe, CAPTION, [name], seed)
            latent[row] = [(made - target).pow(2).mean().item() for target, _ in clips]
            pixels[row] = [(video - target).pow(2).mean().item() for _, target in clips]
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


# The binding world: two subjects in a clip, and only the caption says which goes where.
#
# A subject is a colour and a shape drawn independently (red or blue; disc, square or triangle).
# A clip shows two of them standing still, one on the left and one on the right, with two
# different colours and two different shapes. The caption names the sides by colour only ("the
# red one on the left, the blue one on the right"); the references show each subject whole, in
# either order. So the caption alone cannot tell the shapes, the references alone cannot tell the
# sides: the model must find which reference is the red one and put its shape on the left. The
# MLLM reads the references and the caption together, so it is where that can be worked out.

BINDING_COLOURS = ("red", "blue")
SHAPES = ("disc", "square", "triangle")
SIDES = (2, WIDTH - SUBJECT_SIZE - 2)  # left edges of the left and the right subject
OUTCOMES = ("as the caption says", "subjects exchanged", "shapes exchanged", "colours exchanged")


def binding_clip(left: str, right: str) -> list[np.ndarray]:
    frame = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    draw(frame, left, SIDES[0])
    draw(frame, right, SIDES[1])
    return [frame.copy() for _ in range(FRAMES)]


def binding_caption(left: str, right: str) -> str:
    return f"the {colour(left)} one on the left, the {colour(right)} one on the right"


def binding_arrangements() -> list[tuple[str, str]]:
    """Every (left, right) of the world: 2 colour orders x 6 ordered pairs of different shapes."""
    return [
        (f"{a} {p}", f"{b} {q}")
        for a, b in (BINDING_COLOURS, BINDING_COLOURS[::-1])
        for p in SHAPES
        for q in SHAPES
        if p != q
    ]  # fmt: skip


def outcomes(left: str, right: str) -> dict[str, tuple[str, str]]:
    """What a video for (left, right) can show, each an arrangement of the world, named against the caption.

    "shapes exchanged": the colours on the sides the caption says, each with the other reference's
    shape (the references bound to the wrong colour); "colours exchanged": the reverse."""
    swapped = (f"{colour(left)} {shape(right)}", f"{colour(right)} {shape(left)}")
    return dict(zip(OUTCOMES, [(left, right), (right, left), swapped, swapped[::-1]]))


def nearest_outcome(video: torch.Tensor, arrangement: tuple[str, str], clips: dict[tuple[str, str], torch.Tensor]) -> str:
    """The outcome whose clip (in the same space as `video`) is nearest by mean squared distance."""
    distances = {name: (video - clips[shown]).pow(2).mean().item() for name, shown in outcomes(*arrangement).items()}
    return min(distances, key=distances.get)


class CrossedReferences(CinemaModel):
    """The trained model with its MLLM shown the references in reverse order, the VAE in the order given.

    Which of the two the video follows says which path tells the references apart (the issue's
    "9 of 9 videos follow the VAE" in the one-subject world)."""

    def encode_conditions(self, references: list[list[Image.Image]], captions: list[str], size: tuple[int, int] | None = None) -> Conditions:
        size = size or (self.config.height, self.config.width)
        read = encode_conditions(self.mllm, self.vae, [sample[::-1] for sample in references], captions, size)
        return replace(read, reference_latents=encode_conditions(self.mllm, self.vae, references, captions, size).reference_latents)


ROWS = {  # what was sampled -> (the caption it is scored against, relative to its own; references in that caption's order?)
    "condition: references in the caption's order": ("own", True),
    "condition: references in the other order": ("own", False),
    "control (colours of the caption swapped): references in the scored caption's order": ("swapped", True),
    "control (colours of the caption swapped): references in the other order": ("swapped", False),
    "crossed: VAE references in the caption's order, MLLM's in the other": ("crossed", True),
    "crossed: VAE references in the other order, MLLM's in the caption's": ("crossed", False),
}


@dataclass
class BindingResult:
    losses: list[float]  # logged every 50 steps
    train_seconds: float
    sample_seconds: float
    rows: dict[str, dict[str, Counter]]  # ROWS name -> space ("latent", "pixels") -> outcome counts
    sanity: dict[str, list[int]]  # space -> [outcomes named right, all]: the world's own clips (another posterior sample)
    text_change: dict[str, float]  # "caption swapped" / "references reversed" -> relative change of AlignerNet's output

    def placed(self, space: str, arm: str) -> tuple[int, int]:
        """Videos of an arm ("own", "swapped", "crossed") that show the scored caption's arrangement, of all its videos."""
        counts = [self.rows[name][space] for name, (kind, _) in ROWS.items() if kind == arm]
        return sum(c[OUTCOMES[0]] for c in counts), sum(sum(c.values()) for c in counts)


def run_binding_world(models: Path, workdir: Path, steps: int = 1500, seeds: tuple[int, ...] = (0,)) -> BindingResult:
    """Train on the binding world under `workdir`; sample every arrangement, both reference orders, each seed; score.

    Control: the video sampled for "the blue one on the left, the red one on the right" is scored
    against "the red one on the left, ..." with the same references and seed. If the model reads
    the caption, the control shows "subjects exchanged"; if it does not, it scores as the condition.
    Crossed: the MLLM reads the references in the other order than the VAE latents give them."""
    from model.cinema.sample import CinemaPipeline

    arrangements = binding_arrangements()
    orders = {a: [list(a), list(a[::-1])] for a in arrangements}
    samples = [
        {"key": f"bind-{i}-{k}", "frames": binding_clip(*a), "refs": [toy_reference(n) for n in refs], "caption": binding_caption(*a)}
        for i, a in enumerate(arrangements)
        for k, refs in enumerate(orders[a])
    ]  # fmt: skip
    trained = train_world(models, workdir, samples, steps, batch=len(arrangements), references=2)
    pipe, model = trained.pipe, trained.pipe.model
    crossed = CinemaPipeline(CrossedReferences(model.mllm, model.aligner, model.vae, model.transformer, model.scheduler, model.config, model.base), pipe.scheduler)
    clips = {a: through_vae(pipe, binding_clip(*a), latent_seed(trained.config.seed, f"bind-{i}-0")) for i, a in enumerate(arrangements)}
    spaces = {"latent": {a: c[0] for a, c in clips.items()}, "pixels": {a: c[1] for a, c in clips.items()}}

    again = {a: through_vae(pipe, binding_clip(*a), latent_seed(trained.config.seed, f"bind-{i}-1")) for i, a in enumerate(arrangements)}
    sanity = {space: [0, 0] for space in spaces}  # the world's clips of each outcome, scored: [named right, all]
    for a in arrangements:
        for outcome, shown in outcomes(*a).items():
            for index, space in enumerate(spaces):
                sanity[space][0] += nearest_outcome(again[shown][index], a, spaces[space]) == outcome
                sanity[space][1] += 1

    started = time.perf_counter()
    made = {}  # (sampler, arrangement the caption names, reference order, seed) -> (latents, frames)
    for a in arrangements:
        for refs in orders[a]:
            for seed in seeds:
                for sampler, arm in ((pipe, "own"), (crossed, "crossed")):
                    made[arm, a, tuple(refs), seed] = generate(sampler, binding_caption(*a), refs, seed)
    sample_seconds = time.perf_counter() - started
    rows = {name: {space: Counter() for space in spaces} for name in ROWS}
    for a in arrangements:
        for refs in orders[a]:
            for seed in seeds:
                videos = {"own": made["own", a, tuple(refs), seed], "swapped": made["own", a[::-1], tuple(refs), seed],
                          "crossed": made["crossed", a, tuple(refs), seed]}  # fmt: skip
                for name, (arm, in_order) in ROWS.items():
                    if (refs == list(a)) == in_order:
                        for index, space in enumerate(spaces):
                            rows[name][space][nearest_outcome(videos[arm][index], a, spaces[space])] += 1
    return BindingResult(trained.losses, trained.seconds, sample_seconds, rows, sanity, text_change(model, arrangements))


@torch.no_grad()
def text_change(model: CinemaModel, arrangements: list[tuple[str, str]]) -> dict[str, float]:
    """How much the DiT's text input (AlignerNet's output) moves when the caption's colours are swapped, and when
    the references are given in the other order: ||change|| / ||output||, mean over the arrangements."""

    def text(caption: str, references: list[str]) -> torch.Tensor:
        conditions = model.encode_conditions([[png_image(toy_reference(n)) for n in references]], [caption], (HEIGHT, WIDTH))
        return model.aligner(conditions.mllm_states, conditions.mllm_mask)

    changes = {"caption swapped": [], "references reversed": []}
    for a in arrangements:
        base = text(binding_caption(*a), list(a))
        for name, other in (("caption swapped", text(binding_caption(*a[::-1]), list(a))), ("references reversed", text(binding_caption(*a), list(a[::-1])))):
            changes[name].append(((other - base).norm() / base.norm()).item())
    return {name: float(np.mean(values)) for name, values in changes.items()}


def binding_table(result: BindingResult, space: str) -> str:
    """Markdown: per row of ROWS, how many videos show each outcome (against the caption they are scored by)."""
    lines = ["| videos | " + " | ".join(OUTCOMES) + " |", "|---" * (len(OUTCOMES) + 1) + "|"]
    for name, counts in result.rows.items():
        lines.append(f"| {name} | " + " | ".join(str(counts[space][o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main() -> None:
    from model.testing.tiny import ensure

    with tempfile.TemporaryDirectory() as tmp:
        models = ensure(Path(tmp) / "models", ["qwen2_5_vl", "cogvideox_toy"])
        result = run_toy_world(models, Path(tmp) / "toy")
        binding = run_binding_world(models, Path(tmp) / "binding")
    print(f"trained in {result.train_seconds:.0f} s; loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    for space in ("latent", "pixels"):
        print(f"\n{space}: {wins(result, space)}/{len(result.subjects) * len(result.latent)} closest to their own clip\n{table(result, space)}")
    print(f"\nbinding: trained in {binding.train_seconds:.0f} s; loss {binding.losses[0]:.3f} -> {binding.losses[-1]:.3f}")
    for space in ("latent", "pixels"):
        print(f"\n{space}:\n{binding_table(binding, space)}")


if __name__ == "__main__":
    main()
