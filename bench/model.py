"""`python -m bench.model`: what CINEMA's model costs, written as Markdown to `bench/results/model.md`.

At tiny size on this machine's CPU: forward+backward time and peak tensor memory against the
number of references, reference batching by groups against padding, and AlignerNet pre-training
on fixed captions. The token count formula for any size. Where a CUDA GPU is present: the
CogVideoX-2B and 5B layouts with random weights at 45 frames of 480x720 in bf16 with gradient
checkpointing, with model FLOPs utilisation against the GPU's measured bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.sections import section_path, write_section
from model.cinema.aligner import AlignerNet, alignment_loss, masked_cosine
from model.cinema.dit import CinemaTransformer3DModel
from model.cinema.mllm import MLLMEncoder
from model.cinema.model import CinemaConfig, CinemaModel
from model.testing.tiny import TINY_VIDEO_SHAPE, ensure, tiny_cinema_config
from model.train.text_encoder import T5TargetEncoder

REFERENCE_COUNTS = (0, 1, 2, 4)
MIXED_COUNTS = [0, 1, 2, 4]  # one batch, four samples with different reference counts

# Short captions of the kind the curation captioner writes: 30 to train on, 10 held out.
ALIGNER_CAPTIONS = [
    "a man in a red jacket walks his dog along the beach at sunset",
    "two women laugh while cooking pasta in a small kitchen",
    "a little girl rides a pink bicycle down a quiet street",
    "a chef slices onions on a wooden board",
    "an old man plays chess with a boy in the park",
    "a black cat jumps onto a sofa and curls up",
    "a woman in a yellow raincoat dances in the rain",
    "a runner crosses a snowy forest at dawn",
    "a couple walks hand in hand through a night market",
    "a teddy bear sits on a shelf next to a plant",
    "a boy throws a ball to a golden retriever on the grass",
    "a barista pours milk into a cup of coffee",
    "a man with a beard reads a newspaper on a bench",
    "a girl in a blue dress spins in a field of flowers",
    "two men shake hands in front of an office building",
    "a woman rides a horse along a mountain trail",
    "a toddler stacks wooden blocks on the floor",
    "a guitarist plays on a stage under purple lights",
    "a grandmother knits a scarf by the window",
    "a skateboarder jumps over a bench in a plaza",
    "a dog chases a frisbee across a sunny park",
    "a man repairs a bicycle in his garage",
    "a woman paints a landscape on a large canvas",
    "two children build a sandcastle at the beach",
    "a cyclist rides through a busy city street",
    "a man in a suit waits for a train on the platform",
    "a parrot sits on a woman's shoulder in the garden",
    "a boy feeds ducks at the edge of a pond",
    "a woman jogs with her dog by the river",
    "a waiter carries plates through a crowded restaurant",
    # held out
    "a girl walks her puppy along a quiet beach",
    "a man cooks dinner in a bright kitchen",
    "two boys ride bicycles through the park",
    "a woman reads a book on a bench by the river",
    "a cat sleeps on a chair next to the window",
    "a chef pours sauce over a plate of pasta",
    "an old woman feeds birds in a snowy park",
    "a man and his dog walk through a forest",
    "a girl in a red dress dances on a stage",
    "a couple drinks coffee at a street cafe",
]
HELD_OUT = 10


def token_counts(
    frames: int,
    height: int,
    width: int,
    references: int,
    patch: int = 2,
    spatial: int = 8,
    temporal: int = 4,
    text: int = 226,
) -> dict[str, int]:
    """DiT sequence: text + video + references, each reference one latent frame of the video's grid."""
    per_frame = (height // spatial // patch) * (width // spatial // patch)
    latent_frames = (frames - 1) // temporal + 1
    counts = {"text": text, "video": latent_frames * per_frame, "references": references * per_frame}
    return counts | {"total": sum(counts.values())}


def dit_flops(width: int, layers: int, tokens: int) -> float:
    """Forward+backward FLOPs of the transformer blocks (projections, MLP, attention; 3x the forward)."""
    per_layer = 24 * tokens * width**2 + 4 * tokens**2 * width
    return 3.0 * layers * per_layer


def _median_seconds(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_peak_bytes(step: Callable[[], None], *modules: torch.nn.Module) -> dict[str, int]:
    """Peak live tensor bytes in one step, in all and of activations + temporaries (torch's MemTracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*modules)
    with tracker:
        step()
    snapshot = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    peak = {str(kind).split(".")[-1]: size for kind, size in snapshot.items()}
    return {"total": peak["Total"], "activations": peak["ACT"] + peak["TEMP"]}


@contextmanager
def trackable(*modules: torch.nn.Module) -> Iterator[None]:
    """MemTracker hooks the gradient of every parameter of a module that runs, so it refuses frozen ones.

    The frozen parts do not run in the measured step (its conditions are cached); marking them
    trainable for the measurement changes no computation.
    """
    frozen = [p for module in modules for p in module.parameters() if not p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


def tiny_config(tiny: Path, layout: str) -> CinemaConfig:
    return tiny_cinema_config(tiny, f"cogvideox_{layout}")


def random_images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)) for _ in range(count)]


def tiny_rows(tiny: Path, repeats: int, batch: int = 2) -> list[str]:
    rows = []
    for layout in ("2b", "5b"):
        model = CinemaModel.from_config(tiny_config(tiny, layout)).eval()  # eval: no CFG dropout of the references
        shape = TINY_VIDEO_SHAPE
        video = torch.rand(batch, 3, shape["frames"], shape["height"], shape["width"]) * 2 - 1
        latents = model.vae.encode_video(video, torch.Generator().manual_seed(0))
        for count in REFERENCE_COUNTS:
            references = [random_images(count, seed) for seed in range(batch)]
            captions = ALIGNER_CAPTIONS[:batch]
            start = time.perf_counter()
            conditions = model.encode_conditions(references, captions)
            encode_s = time.perf_counter() - start

            def step() -> None:
                model.zero_grad(set_to_none=True)
                model.training_loss(latents, conditions, torch.Generator().manual_seed(0)).backward()

            seconds = _median_seconds(step, repeats)
            with trackable(model.mllm, model.vae):
                peak = cpu_peak_bytes(step, model)
            tokens = token_counts(shape["frames"], shape["height"], shape["width"], count)["total"]
            rows.append(
                f"| {layout.upper()} | {count} | {tokens} | {encode_s * 1e3:.0f} | {seconds * 1e3:.0f} "
                f"| {peak['total'] / 2**20:.2f} | {peak['activations'] / 2**20:.2f} |"
            )
    return rows


@dataclass
class BatchingResult:
    name: str
    grouped_s: list[float]
    padded_s: list[float]


def batching_comparison(repeats: int) -> list[BatchingResult]:
    """Mixed reference counts in one batch: run in groups of equal count, or pad and mask."""
    sizes = {
        "tiny (2 layers, width 32, 4x6 latents, 3 frames)": (
            {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "text_embed_dim": 32},
            (3, 4, 6),
        ),
        "medium (4 layers, width 256, 16x24 latents, 4 frames)": (
            {"num_attention_heads": 8, "attention_head_dim": 32, "num_layers": 4, "text_embed_dim": 64},
            (4, 16, 24),
        ),
    }
    results = []
    for name, (config, (frames, height, width)) in sizes.items():
        torch.manual_seed(0)
        model = CinemaTransformer3DModel(
            **config, time_embed_dim=64, sample_height=height, sample_width=width, use_rotary_positional_embeddings=True
        )
        batch = len(MIXED_COUNTS)
        video = torch.randn(batch, frames, 16, height, width)
        text = torch.randn(batch, 226, config["text_embed_dim"])
        timestep = torch.randint(0, 1000, (batch,))
        references = [torch.randn(count, 16, height, width) for count in MIXED_COUNTS]
        timings: dict[str, list[float]] = {"grouped": [], "padded": []}
        forwards = {"grouped": model.forward_grouped, "padded": model.forward_padded}
        for _ in range(repeats + 1):  # interleaved, so load changes hit both alike
            for key, forward in forwards.items():
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                forward(video, text, timestep, references).square().mean().backward()
                timings[key].append(time.perf_counter() - start)
        results.append(BatchingResult(name, sorted(timings["grouped"][1:]), sorted(timings["padded"][1:])))
    return results


@dataclass
class AlignerProbe:
    cosine_before: float
    cosine_after: float
    cosine_mean_target: float  # held-out cosine of the training targets' per-position mean
    seconds: float
    steps: int


def pretrain_aligner(tiny: Path, steps: int = 200, batch: int = 10, seed: int = 0) -> AlignerProbe:
    """AlignerNet pre-training on captions alone: held-out mean cosine to T5 before and after."""
    mllm = MLLMEncoder.from_pretrained(str(tiny / "qwen2_5_vl"), max_pixels=56 * 56)
    t5 = T5TargetEncoder.from_pretrained(str(tiny / "cogvideox_2b"))
    with torch.no_grad():
        states = mllm([[] for _ in ALIGNER_CAPTIONS], ALIGNER_CAPTIONS)
        targets, target_mask = t5(ALIGNER_CAPTIONS)
    train, held = slice(0, -HELD_OUT), slice(-HELD_OUT, None)
    torch.manual_seed(seed)
    aligner = AlignerNet(
        input_dim=mllm.hidden_size,
        output_dim=t5.width,
        num_queries=t5.max_length,
        num_layers=2,
        width=32,
        num_heads=4,
        mlp_ratio=2,
    )
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=1e-3, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)

    def held_out_cosine() -> float:
        with torch.no_grad():
            prediction = aligner(states.states[held], states.mask[held])
            return masked_cosine(prediction, targets[held], target_mask[held]).item()

    before = held_out_cosine()
    start = time.perf_counter()
    for _ in range(steps):
        rows = torch.randperm(len(ALIGNER_CAPTIONS) - HELD_OUT, generator=order)[:batch]
        prediction = aligner(states.states[rows], states.mask[rows])
        loss = alignment_loss(prediction, targets[rows], target_mask[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    weights = target_mask[train].float().unsqueeze(-1)
    mean_target = (targets[train] * weights).sum(0) / weights.sum(0).clamp(min=1)
    baseline = masked_cosine(mean_target.expand_as(targets[held]), targets[held], target_mask[held]).item()
    return AlignerProbe(before, held_out_cosine(), baseline, seconds, steps)


COGVIDEOX_LAYOUTS = {  # the real transformer configs' differences (the rest are the class defaults)
    "2B": {"num_attention_heads": 30, "num_layers": 30, "use_rotary_positional_embeddings": False},
    "5B": {"num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True},
}


def gpu_rows(
    repeats: int,
    layouts: dict[str, dict] = COGVIDEOX_LAYOUTS,
    video: tuple[int, int, int] = (45, 480, 720),
    matmul_size: int = 8192,
    device: str = "cuda",
) -> list[str]:
    """Random-weight transformers at `video` (frames, height, width), bf16, gradient checkpointing, batch 1."""
    a = torch.randn(matmul_size, matmul_size, device=device, dtype=torch.bfloat16)
    matmul_s = _median_seconds(lambda: (a @ a, torch.cuda.synchronize()), repeats)
    peak_flops = 2 * matmul_size**3 / matmul_s
    frames, height, width = video
    rows = [f"Measured bf16 matmul rate ({matmul_size}^3): {peak_flops / 1e12:.0f} TFLOP/s.", ""]
    rows += ["| layout | refs | tokens | step s | peak GiB | MFU |", "|---|---|---|---|---|---|"]
    for name, layout in layouts.items():
        torch.manual_seed(0)
        model = CinemaTransformer3DModel(**layout).to(device, torch.bfloat16)
        model.enable_gradient_checkpointing()
        latent = (1, (frames - 1) // 4 + 1, model.config.in_channels, height // 8, width // 8)
        text_shape = (1, model.config.max_text_seq_length, model.config.text_embed_dim)
        text = torch.randn(text_shape, device=device, dtype=torch.bfloat16)
        for count in REFERENCE_COUNTS:
            noisy = torch.randn(latent, device=device, dtype=torch.bfloat16)
            references = [torch.randn(count, *latent[2:], device=device, dtype=torch.bfloat16)]

            def step() -> None:
                model.zero_grad(set_to_none=True)
                prediction = model(noisy, text, torch.tensor([500], device=device), references).sample
                prediction.float().square().mean().backward()
                torch.cuda.synchronize()

            torch.cuda.reset_peak_memory_stats()
            seconds = _median_seconds(step, repeats)
            tokens = token_counts(frames, height, width, count, text=model.config.max_text_seq_length)["total"]
            model_width = model.config.num_attention_heads * model.config.attention_head_dim
            flops = dit_flops(model_width, model.config.num_layers, tokens)
            rows.append(
                f"| {name} | {count} | {tokens} | {seconds:.2f} | {torch.cuda.max_memory_allocated() / 2**30:.1f} "
                f"| {flops / seconds / peak_flops:.0%} |"
            )
        del model
        torch.cuda.empty_cache()
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0]
    return (
        f"CPU {cpu}, {os.cpu_count()} cores (load average {load:.1f} when measured: shared with other jobs), "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s); GPU: {gpu}"
    )


def report(tiny: Path, repeats: int) -> str:
    lines = ["## Model (CINEMA: AlignerNet + MM-DiT with reference frames)", "", f"Machine: {machine()}.", ""]

    lines += [
        "### Token count",
        "",
        "DiT sequence = text + video + references, with latent frames `(F - 1) / 4 + 1`, tokens per frame "
        "`(H / 8 / p) * (W / 8 / p)` (VAE 8x spatial, 4x temporal, patch p = 2), and each reference one latent "
        "frame on the video's grid:",
        "",
        "`tokens = 226 + ((F - 1) / 4 + 1) * (H / 16) * (W / 16) + R * (H / 16) * (W / 16)`",
        "",
        "| frames | size | refs | text | video | refs | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for frames, height, width in ((45, 480, 720), (49, 480, 720), (TINY_VIDEO_SHAPE["frames"], 32, 48)):
        for count in REFERENCE_COUNTS:
            c = token_counts(frames, height, width, count)
            parts = " | ".join(str(c[key]) for key in ("text", "video", "references", "total"))
            lines.append(f"| {frames} | {height}x{width} | {count} | {parts} |")

    lines += [
        "",
        f"### Tiny models on CPU: one training step against reference count (batch 2, {TINY_VIDEO_SHAPE['frames']} "
        f"frames of {TINY_VIDEO_SHAPE['height']}x{TINY_VIDEO_SHAPE['width']})",
        "",
        "Step = `training_loss` forward+backward of the trained parts (AlignerNet + DiT) on cached conditions, "
        f"median of {repeats}. Encode = MLLM + VAE references, no grad, once. Peak memory = peak of live tensor bytes "
        "in the step, measured with torch's `MemTracker` (`torch.distributed._tools.mem_tracker`: parameters of all "
        "four parts, gradients, activations, temporaries), not process RSS.",
        "",
        "| layout | refs | DiT tokens | encode ms | step ms | peak MiB | of which activations + temporaries MiB |",
        "|---|---|---|---|---|---|---|",
        *tiny_rows(tiny, repeats),
    ]

    results = batching_comparison(repeats)
    lines += [
        "",
        f"### Mixed reference counts in one batch ({MIXED_COUNTS}): grouping against padding",
        "",
        "Forward+backward of the DiT alone, one thread, grouped and padded runs interleaved; seconds as min / median "
        f"of {repeats}.",
        "",
        "| size | grouped (min / median) | padded + mask (min / median) |",
        "|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.grouped_s[0]:.3f} / {statistics.median(result.grouped_s):.3f} "
            f"| {result.padded_s[0]:.3f} / {statistics.median(result.padded_s):.3f} |"
        )
    real_padded = len(MIXED_COUNTS) * token_counts(45, 480, 720, max(MIXED_COUNTS))["total"] ** 2
    real_grouped = sum(token_counts(45, 480, 720, count)["total"] ** 2 for count in MIXED_COUNTS)
    lines += [
        "",
        "Padding makes every sample as long as the longest, and an arbitrary attention mask rules out the "
        "flash-attention kernel on GPU (PyTorch falls back to its memory-efficient kernel); "
        "grouping runs one call per distinct count. At tiny size the per-call overhead dominates and padding can win; "
        "once attention costs anything, grouping wins. At 45 frames of 480x720 this batch's attention work is "
        f"{real_padded / real_grouped:.2f}x larger padded than grouped, so `CinemaTransformer3DModel.forward` groups.",
    ]

    probe = pretrain_aligner(tiny)
    lines += [
        "",
        "### AlignerNet pre-training on the tiny profile",
        "",
        f"{len(ALIGNER_CAPTIONS) - HELD_OUT} captions to train on, {HELD_OUT} held out; tiny Qwen2.5-VL states in, "
        f"tiny T5 targets out; AlignerNet 2 layers, width 32; AdamW lr 1e-3, batches of 10, {probe.steps} steps "
        f"({probe.seconds:.1f} s). Held-out mean cosine similarity to T5 (real tokens): "
        f"**{probe.cosine_before:.3f} at initialisation, {probe.cosine_after:.3f} after**. For scale: predicting "
        f"the per-position mean of the training targets scores {probe.cosine_mean_target:.3f}; random models share "
        "little caption meaning to learn beyond that, so the rise shows the loss and the training path work, "
        "not alignment quality.",
        "",
        "### GPU",
        "",
    ]
    if torch.cuda.is_available():
        lines += gpu_rows(repeats)
    else:
        lines.append(
            "No GPU in this session: the CogVideoX-2B and 5B rows (random weights, 45 frames of 480x720, bf16, "
            "gradient checkpointing: step time, peak memory, MFU) are not measured. `python -m bench.model` "
            "measures them where CUDA is available."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=section_path("model"))
    parser.add_argument("--tiny", type=Path, help="tiny model folder (built into a temporary folder if absent)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = ensure(args.tiny or Path(scratch), ["qwen2_5_vl", "cogvideox_2b", "cogvideox_5b"])
        text = report(tiny, args.repeats)
    print(text)
    print(f"wrote {write_section('model', text, args.out)}")


if __name__ == "__main__":
    main()
