"""model/train/plan.py: the planned peak memory of a step against the allocator's own count on a CPU run."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from train_fixtures import cinema_models, tiny_train_config, tiny_wan_train_config, wan_models  # noqa: F401

from model.train.config import LoraConfig
from model.train.plan import adamw, attention, build_parts, estimate, shard, step_inputs, step_of, train_steps


def live_bytes(module: torch.nn.Module, inputs: dict) -> int:
    """Bytes of the distinct storages of the module's (local shards of) parameters and buffers and the inputs."""
    from torch.distributed.tensor import DTensor

    values = [t for v in inputs.values() for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
    tensors = [t.to_local() if isinstance(t, DTensor) else t for t in [*module.parameters(), *module.buffers(), *values]]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def measured_peak(step) -> int:
    """Two real steps on the CPU (a full fine-tune: FSDP2 over a one-process gloo group; LoRA: one
    device, bf16 autocast); peak = bytes live before + the highest running sum of the profiler's per-op
    allocations net of frees, in time order, during the steps."""
    from torch.distributed.device_mesh import init_device_mesh

    if step.lora is None:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parts = build_parts(step)
        if step.lora is None:
            shard(parts, step.bf16, init_device_mesh("cpu", (1,)))
        inputs = step_inputs(step, torch.device("cpu"), torch.Generator().manual_seed(0))
        before = live_bytes(parts, inputs)
        optimizer = adamw(parts)
        with attention(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
            train_steps(parts, optimizer, inputs, autocast=step.lora is not None and step.bf16)
        events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in profile.events() if e.self_cpu_memory_usage)
        running, highest = 0, 0
        for _, change in events:
            running += change
            highest = max(highest, running)
        return before + highest
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("references", [0, 2])
def test_planned_peak_is_within_15_percent_of_the_measured_one(cinema_models, tmp_path, references):
    torch.set_num_threads(1)
    config = tiny_train_config(cinema_models, tmp_path, tmp_path / "run", precision="bf16", gradient_checkpointing=True)
    step = step_of(config, references, size=(17, 64, 96))  # the tiny model, big enough for activations to count
    planned = estimate(step, gpus=1).peak
    measured = measured_peak(step)
    print(f"{references} references: planned {planned / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert planned == pytest.approx(measured, rel=0.15)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lora", "reference_timestep"), [(None, "video"), (LoraConfig(rank=8), "video"), (None, "zero")], ids=["fsdp2", "lora", "fsdp2-zero"]
)
def test_wan_planned_peak_is_within_15_percent_of_the_measured_one(wan_models, tmp_path, lora, reference_timestep):
    """The tiny Wan2.1 base, 2 references: its DiT's blocks sharded, its VAE's 8x compression, 512 text tokens;
    with `reference_timestep: zero`, the per-token timestep's modulation (every block's, per token) counted too."""
    torch.set_num_threads(1)
    config = tiny_wan_train_config(wan_models, tmp_path, tmp_path / "run", precision="bf16", gradient_checkpointing=True, lora=lora)
    config.model.reference_timestep = reference_timestep
    step = step_of(config, 2, size=(17, 64, 96))
    planned = estimate(step, gpus=1).peak
    measured = measured_peak(step)
    print(f"Wan {'LoRA' if lora else 'FSDP2'}, {reference_timestep}: planned {planned / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert planned == pytest.approx(measured, rel=0.15)
    if reference_timestep == "zero":
        assert planned > estimate(replace(step, reference_timestep="video"), gpus=1).peak


def test_lora_planned_peak_is_within_15_percent_of_the_measured_one(cinema_models, tmp_path):
    """LoRA: MemTracker on one device, the frozen base in bf16, the adapters and the aligner trained in fp32."""
    torch.set_num_threads(1)
    config = tiny_train_config(
        cinema_models, tmp_path, tmp_path / "run", precision="bf16", gradient_checkpointing=True, lora=LoraConfig(rank=8)
    )
    step = step_of(config, 2, size=(17, 64, 96))
    found = estimate(step, gpus=1)
    assert 0 < found.trained_params < found.all_params
    measured = measured_peak(step)
    print(f"LoRA: planned {found.peak / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert found.peak == pytest.approx(measured, rel=0.15)


def test_gpu_check_measures_the_planned_step(cinema_models, tmp_path):
    """`make gpu-check` runs only with CUDA; its measuring path (FSDP2 over one rank, warm-up, timed steps)
    runs here on the CPU over gloo, on the step the plan sees, and its FLOP count grows as the tokens do."""
    from model.train.gpu_check import measure, step_flops

    torch.set_num_threads(1)
    config = tiny_train_config(cinema_models, tmp_path, tmp_path / "run", precision="bf16", gradient_checkpointing=True)
    step = step_of(config, 2, size=(9, 32, 48))
    assert measure(step, torch.device("cpu"), steps=1) > 0
    assert step_flops(step_of(config, 4, size=(9, 32, 48))) > step_flops(step) > 0


def test_gpu_check_measures_a_wan_step(wan_models, tmp_path):
    """The Wan rows of `make gpu-check`: the same measuring path on the tiny Wan2.1 base, its FLOPs from its base
    (self-attention over video and references, cross-attention to 512 text tokens), and the real configs it names."""
    from model.train.gpu_check import TRANSFORMERS, config_step, measure, step_flops

    torch.set_num_threads(1)
    config = tiny_wan_train_config(wan_models, tmp_path, tmp_path / "run", precision="bf16", gradient_checkpointing=True)
    step = step_of(config, 2, size=(9, 32, 48))
    assert measure(step, torch.device("cpu"), steps=1) > 0
    assert step_flops(step_of(config, 4, size=(9, 32, 48))) > step_flops(step) > 0
    real = {name: config_step(path, name, 4) for name, path in TRANSFORMERS.items() if name.startswith("Wan-AI/")}
    assert [(s.frames, s.height, s.width, s.transformer["in_channels"]) for s in real.values()] == [(81, 480, 832, 16), (121, 704, 1280, 48)]
    # Wan2.1-1.3B at 81 x 480 x 832 with 4 references: 25 latent frames of 30 x 52 tokens, 39,000 tokens.
    assert step_flops(real["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]) == pytest.approx(4 * 30 * 2 * (39000 * (6 * 1536**2 + 2 * 1536 * 8960) + 512 * 2 * 1536**2 + 2 * 39000**2 * 1536 + 2 * 39000 * 512 * 1536))


@pytest.mark.parametrize(
    ("name", "clip", "channels", "compression"),
    [("1_3b", (81, 480, 832), 16, (4, 8)), ("5b", (121, 704, 1280), 48, (4, 16)), ("14b", (81, 480, 832), 16, (4, 8))],
)
def test_the_wan_configs_plan_their_clip_on_the_wan_base(name, clip, channels, compression):
    """configs/train_wan_*.yaml: the real Wan configs (nothing fetched), each clip a multiple of its VAE and patch."""
    from pathlib import Path

    from model.cinema.bases import base_named
    from model.cinema.bases.wan import WanBase
    from model.train.config import load_train_config

    config = load_train_config(Path(__file__).resolve().parents[1] / "configs" / f"train_wan_{name}.yaml")
    step = step_of(config, 4)
    base = base_named(step.transformer)
    assert isinstance(base, WanBase) and base.text_length(step.transformer) == 512
    assert (step.frames, step.height, step.width) == clip and step.transformer["in_channels"] == channels
    assert base.compression(step.vae) == compression
    assert all(side % (2 * compression[1]) == 0 for bucket in config.data.buckets for side in bucket)
    assert config.data.fps == base.native(step.vae).fps
