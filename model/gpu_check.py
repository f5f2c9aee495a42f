"""`make gpu-check`: real-size joint steps of CogVideoX-2B and 5B on one CUDA GPU, against the plan.

Random weights (nothing downloads): AlignerNet + DiT built from the real configs and wrapped as
the plan wraps them (FSDP2, here over one rank: fp32 master weights and AdamW, bf16 compute),
gradient checkpointing, one 45 x 480 x 720 clip with 4 references.
Per model it measures step time, MFU (model FLOPs of forward + backward over the GPU's bf16 peak)
and peak memory, and prints them beside `model.plan`'s estimate for the same step on one GPU.
Fails at once without CUDA. About 5 minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from model.plan import GIB, build_parts, estimate, shard, step_inputs, step_of, train_steps
from model.train_config import load_train_config

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, no sparsity


def step_flops(step) -> float:
    """Forward + backward (3x forward) + checkpoint recompute (1x forward) matmul FLOPs of the DiT."""
    config = step.transformer
    width = config["num_attention_heads"] * config["attention_head_dim"]
    latent_frames = (step.frames - 1) // 4 + 1
    tokens_per_frame = (step.height // 8 // config["patch_size"]) * (step.width // 8 // config["patch_size"])
    tokens = (latent_frames + step.references) * tokens_per_frame + config["max_text_seq_length"]
    per_layer = 2 * tokens * (4 * width * width + 2 * 4 * width * width) + 4 * tokens * tokens * width
    passes = 4 if step.checkpointing else 3
    return passes * config["num_layers"] * per_layer * step.batch


def peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"no bf16 peak known for {name}; add it to PEAK_BF16_TFLOPS")


def check(config_path: str, transformer: str, references: int, steps: int) -> str:
    config = load_train_config(config_path, [f"model.transformer.ref={transformer}", "data.batch_size=1"])
    step = step_of(config, references)
    planned = estimate(step, gpus=1).peak
    device = torch.device("cuda")
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with torch.device(device):
            parts = build_parts(step)
        shard(parts, step.bf16, init_device_mesh("cuda", (1,)))
        inputs = step_inputs(step, device)
        torch.cuda.reset_peak_memory_stats()
        train_steps(parts, inputs, steps=2)  # warm-up; the optimizer state appears here
        torch.cuda.synchronize()
        started = time.perf_counter()
        train_steps(parts, inputs, steps=steps)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
        peak = torch.cuda.max_memory_allocated()
    except torch.OutOfMemoryError:
        return f"| {transformer} | {references} | out of memory | | > {torch.cuda.get_device_properties(0).total_memory / GIB:.0f} | {planned / GIB:.1f} | |"
    finally:
        dist.destroy_process_group()
        torch.cuda.empty_cache()
    mfu = step_flops(step) / seconds / (peak_tflops() * 1e12)
    return (
        f"| {transformer} | {references} | {seconds:.2f} | {100 * mfu:.0f}% | {peak / GIB:.1f} | {planned / GIB:.1f} | "
        f"{100 * (planned - peak) / peak:+.0f}% |"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/train_full.yaml")
    p.add_argument("--references", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| model | references | step (s) | MFU | peak (GiB) | planned (GiB) | plan vs measured |")
    print("|---|---|---|---|---|---|---|")
    for transformer in ("zai-org/CogVideoX-2b", "zai-org/CogVideoX-5b"):
        print(check(args.config, transformer, args.references, args.steps), flush=True)


if __name__ == "__main__":
    main()
