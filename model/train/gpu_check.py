"""`make gpu-check`: real-size joint steps of CogVideoX-2B / 5B and Wan2.1-1.3B / Wan2.2-TI2V-5B on one CUDA GPU, against the plan.

Random weights (nothing downloads): AlignerNet + DiT built from the real configs and wrapped as
the plan wraps them (FSDP2, here over one rank: fp32 master weights and AdamW, bf16 compute),
gradient checkpointing, one clip of each config's size (CogVideoX 45 x 480 x 720, Wan 1.3B
81 x 480 x 832, Wan 5B 121 x 704 x 1280) with 4 references.
Per model it measures step time, MFU (model FLOPs of forward + backward over the GPU's bf16 peak)
and peak memory, and prints them beside `model.train.plan`'s estimate for the same step on one GPU.
The plans run in CPU processes while the GPU measures, with the torch of the machine: plan with
the project's pinned torch (`python -m model.train.plan`), since other versions' memory trackers
count differently. Writes `bench/results/gpu.md`, which `make bench` joins into BENCHMARKS.md.
Fails at once without CUDA.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from model.cinema.bases import base_named
from model.train.config import load_train_config
from model.train.plan import GIB, Step, adamw, attention, build_parts, estimate, shard, step_inputs, step_of, train_steps

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, no sparsity
TRANSFORMERS = {  # transformer -> the training config whose step is measured (its clip size, its VAE)
    "zai-org/CogVideoX-2b": "configs/train_full.yaml",
    "zai-org/CogVideoX-5b": "configs/train_full.yaml",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "configs/train_wan_1_3b.yaml",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": "configs/train_wan_5b.yaml",
}


def step_flops(step: Step) -> float:
    """Forward + backward (3x forward) + checkpoint recompute (1x forward) matmul FLOPs of the DiT."""
    base = base_named(step.transformer)
    temporal, spatial = base.compression(step.vae)
    frames = (step.frames - 1) // temporal + 1 + step.references
    passes = 4 if step.checkpointing else 3
    return passes * base.forward_flops(step.transformer, frames, step.height // spatial, step.width // spatial) * step.batch


def peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"no bf16 peak known for {name}; add it to PEAK_BF16_TFLOPS")


def config_step(config_path: str, transformer: str, references: int) -> Step:
    config = load_train_config(config_path, [f"model.transformer.ref={transformer}", "data.batch_size=1"])
    return step_of(config, references)


def planned_peak(config_path: str, transformer: str, references: int) -> int:
    return estimate(config_step(config_path, transformer, references), gpus=1).peak


def measure(step: Step, device: torch.device, steps: int) -> float:
    """Seconds per optimizer step after two warm-up steps (the optimizer state appears in the first)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        with torch.device(device):
            parts = build_parts(step)
        shard(parts, step.bf16, init_device_mesh(device.type, (1,)))
        inputs = step_inputs(step, device)
        optimizer = adamw(parts)
        with attention():
            train_steps(parts, optimizer, inputs, steps=2)
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            train_steps(parts, optimizer, inputs, steps=steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps
    finally:
        dist.destroy_process_group()


def row(transformer: str, step: Step, seconds: float | None, peak: int, planned: int | None, capacity: int) -> str:
    plan = f"{planned / GIB:.1f}" if planned is not None else "not planned"
    clip = f"{step.frames} x {step.height} x {step.width}"
    if seconds is None:
        return f"| {transformer} | {clip} | {step.references} | out of memory | | > {capacity / GIB:.0f} | {plan} | |"
    mfu = step_flops(step) / seconds / (peak_tflops() * 1e12)
    versus = f"{100 * (planned - peak) / peak:+.0f}%" if planned is not None else ""
    return f"| {transformer} | {clip} | {step.references} | {seconds:.2f} | {100 * mfu:.0f}% | {peak / GIB:.1f} | {plan} | {versus} |"


def planned_or_none(future) -> int | None:
    """The plan's peak; None where the plan cannot run with this machine's torch (it uses the
    pinned torch's memory trackers): plan with `python -m model.train.plan` on the project's torch then."""
    try:
        return future.result()
    except Exception as error:  # the measurements stand without it
        print(f"no plan with torch {torch.__version__}: {type(error).__name__}: {error}", flush=True)
        return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--references", type=int, default=4)
    p.add_argument("--only", nargs="+", choices=list(TRANSFORMERS), help="measure these transformers (default: all)")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    device = torch.device("cuda")
    capacity = torch.cuda.get_device_properties(0).total_memory
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n", flush=True)
    chosen = {t: TRANSFORMERS[t] for t in args.only or TRANSFORMERS}
    with ProcessPoolExecutor(len(chosen), mp_context=multiprocessing.get_context("spawn")) as pool:
        plans = {t: pool.submit(planned_peak, config, t, args.references) for t, config in chosen.items()}
        measured = {}
        for transformer, config in chosen.items():
            step = config_step(config, transformer, args.references)
            torch.cuda.reset_peak_memory_stats()
            try:
                seconds = measure(step, device, args.steps)
            except torch.OutOfMemoryError:
                seconds = None
            measured[transformer] = step, seconds, torch.cuda.max_memory_allocated()
            print(f"{transformer}: {seconds} s per step, peak {measured[transformer][2] / GIB:.1f} GiB", flush=True)
            torch.cuda.empty_cache()
        lines = [
            "### Real-size training steps on a GPU (`make gpu-check`)",
            "",
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}; random weights, FSDP2 over one rank (fp32 master "
            f"weights and AdamW, bf16 compute), gradient checkpointing, each config's clip with {args.references} references, "
            f"mean of {args.steps} steps after 2 warm-up steps; MFU against {peak_tflops():.0f} TFLOP/s dense bf16.",
            "",
            "| model | clip | references | step (s) | MFU | peak (GiB) | planned (GiB) | plan vs measured |",
            "|---|---|---|---|---|---|---|---|",
            *(row(t, step, s, peak, planned_or_none(plans[t]), capacity) for t, (step, s, peak) in measured.items()),
        ]
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/gpu.md").write_text(text)


if __name__ == "__main__":
    main()
