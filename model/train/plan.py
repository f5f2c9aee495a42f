"""`python -m model.train.plan CONFIG --gpus N`: per-GPU peak memory of one joint training step, planned on a CPU.

The trained parts (AlignerNet + DiT, or AlignerNet + LoRA adapters) are built from their real
configs on the meta device and run for two steps (the second holds the optimizer state) under
FakeTensorMode, so no weight is downloaded and no memory is allocated. A full fine-tune is
sharded with FSDP2 (`fully_shard` per transformer block, fp32 master weights, bf16 compute) over a
fake process group of N ranks and measured with FSDPMemTracker, as torchtitan's memory estimation
does; LoRA runs on one device under MemTracker. The frozen encoders (MLLM, VAE, T5 / UMT5) are
counted by their bf16 weights: they are not on the GPU when training from cached features. The
step is the config's clip (`data.frames` x `model.height` x `model.width`); what differs between
bases (DiT class, VAE compression, text length) comes from the base the transformer config names.

A part whose ref is a local folder is read from its own `config.json`; a hub id must be one of
the real configs written below (nothing is fetched).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from manifests.exits import command
from model.cinema.bases import Base, base_named
from model.cinema.model import CinemaConfig, PartRef
from model.train.config import TrainConfig, load_train_config

GIB = 2**30
GPU_MEMORY = 80 * GIB  # the GPUs the issue plans for (A100 / H100 80 GB)

# Real configs (the checkpoints' own config.json values), so the plan runs offline.
COGVIDEOX_5B = dict(
    _class_name="CogVideoXTransformer3DModel", num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True, freq_shift=0,
    time_embed_dim=512, text_embed_dim=4096, num_layers=42, dropout=0.0, attention_bias=True, sample_width=90,
    sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
    activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
    spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
)  # fmt: skip
COGVIDEOX_2B = {**COGVIDEOX_5B, "num_attention_heads": 30, "num_layers": 30, "use_rotary_positional_embeddings": False}
COGVIDEOX_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 512], latent_channels=16, layers_per_block=3,
    norm_num_groups=32, temporal_compression_ratio=4, sample_height=480, sample_width=720,
)  # fmt: skip
QWEN2_5_VL_3B = dict(
    hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    vision_config=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=2048, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu",
    ),
)  # fmt: skip
T5_XXL = dict(
    d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
)  # fmt: skip
WAN_1_3B = dict(
    _class_name="WanTransformer3DModel", patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128,
    in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)  # fmt: skip
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
WAN_5B = {**WAN_1_3B, "num_attention_heads": 24, "ffn_dim": 14336, "in_channels": 48, "out_channels": 48}
WAN_2_1_VAE = dict(
    _class_name="AutoencoderKLWan", base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, scale_factor_temporal=4, scale_factor_spatial=8,
)  # fmt: skip
WAN_2_2_VAE = {
    **WAN_2_1_VAE, "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
    "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
}  # fmt: skip
UMT5_XXL = {**T5_XXL, "vocab_size": 256384}
WAN = {"Wan2.1-T2V-1.3B-Diffusers": (WAN_1_3B, WAN_2_1_VAE), "Wan2.1-T2V-14B-Diffusers": (WAN_14B, WAN_2_1_VAE), "Wan2.2-TI2V-5B-Diffusers": (WAN_5B, WAN_2_2_VAE)}
REAL = {
    **{(name, "transformer"): dit for name, (dit, _) in WAN.items()},
    **{(name, "vae"): vae for name, (_, vae) in WAN.items()},
    **{(name, "text_encoder"): UMT5_XXL for name in WAN},
    ("CogVideoX-5b", "transformer"): COGVIDEOX_5B,
    ("CogVideoX-2b", "transformer"): COGVIDEOX_2B,
    ("CogVideoX-5b", "vae"): COGVIDEOX_VAE,
    ("CogVideoX-2b", "vae"): COGVIDEOX_VAE,
    ("Qwen2.5-VL-3B-Instruct", None): QWEN2_5_VL_3B,
    ("CogVideoX-5b", "text_encoder"): T5_XXL,
    ("CogVideoX-2b", "text_encoder"): T5_XXL,
}


def architecture(part: PartRef) -> dict:
    """A part's config: its local folder's config.json, else the real config of a known hub id."""
    folder = Path(part.ref) / (part.subfolder or "")
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    name = part.ref.split("/")[-1]  # the organisation may move (THUDM -> zai-org); the model is the same
    if (name, part.subfolder) in REAL:
        return REAL[(name, part.subfolder)]
    raise KeyError(f"no config for {part.ref}/{part.subfolder or ''}: not a local folder, not one of {sorted(REAL)}")


def _fields(cls, config: dict) -> dict:
    """The keys of a config.json that the class's __init__ takes."""
    import inspect

    names = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in config.items() if k in names}


class TrainedParts(nn.Module):
    """AlignerNet and the DiT: what a joint step trains, and the only module FSDP shards.

    The DiT is called as the model calls it (`Base.predict`), so Wan's per-token timestep of
    `reference_timestep: zero` is in the step."""

    def __init__(self, aligner: nn.Module, transformer: nn.Module, base: Base, reference_timestep: str = "video"):
        super().__init__()
        self.aligner, self.transformer = aligner, transformer
        self.base, self.reference_timestep = base, reference_timestep

    def forward(self, states, mask, noisy, timestep, references, target) -> torch.Tensor:
        text = self.aligner(states, mask).to(noisy.dtype)
        prediction = self.base.predict(self.transformer, noisy, text, timestep, references, self.reference_timestep)
        return F.mse_loss(prediction.float(), target.float())


@dataclass
class Step:
    """What one joint step is made of: the parts, the trained set, the inputs' sizes."""

    transformer: dict
    vae: dict
    mllm_width: int
    aligner: dict  # AlignerShape values
    lora: object | None  # train_config.LoraConfig
    checkpointing: bool
    bf16: bool
    batch: int
    frames: int
    height: int
    width: int
    references: int
    mllm_tokens: int
    reference_timestep: str = "video"  # CinemaConfig's: "zero" gives Wan's reference tokens timestep 0, per token


def step_of(config: TrainConfig, references: int, size: tuple[int, int, int] | None = None) -> Step:
    """The config's joint step with `references` references at (frames, height, width) (default: the config's clip)."""
    model = config.model
    frames, height, width = size or (config.data.frames, model.height, model.width)
    mllm = architecture(model.mllm)
    per_image = max(4, model.max_pixels // (28 * 28))  # Qwen2.5-VL: one token per 28 x 28 pixels
    return Step(
        transformer=architecture(model.transformer), vae=architecture(model.vae), mllm_width=mllm.get("text_config", mllm)["hidden_size"], aligner=model.aligner_shape.model_dump(),
        lora=config.lora, checkpointing=config.gradient_checkpointing, bf16=config.precision == "bf16",
        batch=config.data.batch_size, frames=frames, height=height, width=width, references=references,
        mllm_tokens=references * per_image + 64,  # the instruction template and caption: about 64 tokens
        reference_timestep=model.reference_timestep,
    )  # fmt: skip


def build_parts(step: Step) -> TrainedParts:
    """The trained parts, fp32 where trained; a LoRA base in bf16 (frozen)."""
    from model.cinema.aligner import AlignerNet

    base = base_named(step.transformer)
    dit = base.dit_class()
    transformer = dit(**_fields(dit, step.transformer))
    aligner = AlignerNet(
        input_dim=step.mllm_width, output_dim=base.text_width(step.transformer),
        num_queries=base.text_length(step.transformer), **step.aligner,
    )  # fmt: skip
    if step.checkpointing:
        transformer.enable_gradient_checkpointing()
    if step.lora is not None:
        from peft import LoraConfig

        transformer.requires_grad_(False)
        if step.bf16:
            transformer.to(torch.bfloat16)
        lora = step.lora
        transformer.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules))
        for name, p in transformer.named_parameters():
            if "lora" in name:
                p.data = p.data.float()
    return TrainedParts(aligner, transformer, base, step.reference_timestep)


def shard(parts: TrainedParts, bf16: bool, mesh) -> None:
    """FSDP2 over `mesh`: each transformer and aligner block a unit, the rest in the root's."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    # Only the root casts its inputs: a block's cast is skipped when checkpointing recomputes it in
    # backward, so the 5B's fp32 rotary embedding would come back fp32 where the forward saw bf16.
    blocks = replace(policy, cast_forward_inputs=False)
    transformer = getattr(parts, "transformer", None)  # absent when the aligner trains alone (align phase)
    for block in [*(transformer.blocks_to_shard if transformer is not None else []), *parts.aligner.layers]:
        fully_shard(block, mesh=mesh, mp_policy=blocks)
    fully_shard(parts, mesh=mesh, mp_policy=policy)


def step_inputs(step: Step, device: torch.device, generator: torch.Generator | None = None) -> dict:
    temporal, spatial = base_named(step.transformer).compression(step.vae)
    latent_frames = (step.frames - 1) // temporal + 1
    channels, h, w = step.transformer["in_channels"], step.height // spatial, step.width // spatial

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    return dict(
        states=randn(step.batch, step.mllm_tokens, step.mllm_width),
        mask=torch.ones(step.batch, step.mllm_tokens, dtype=torch.bool, device=device),
        noisy=randn(step.batch, latent_frames, channels, h, w),
        timestep=torch.full((step.batch,), 500, device=device),
        references=[randn(step.references, channels, h, w) for _ in range(step.batch)],
        target=randn(step.batch, latent_frames, channels, h, w),
    )


def adamw(parts: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in parts.parameters() if p.requires_grad], lr=1e-5, foreach=True)


def train_steps(
    parts: nn.Module, optimizer: torch.optim.Optimizer, inputs: dict, steps: int = 2, autocast: bool = False, after_step=None
) -> None:
    """`steps` optimizer steps: forward, backward, AdamW (its state appears at the first)."""
    device = next(parts.parameters()).device.type
    context = torch.autocast(device, torch.bfloat16) if autocast else contextlib.nullcontext()
    for _ in range(steps):
        with context:
            loss = parts(**inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()


def attention():
    """Fused attention, as the GPU runs it: never the (heads x tokens x tokens) scores of the math kernel.
    Flash where it can; the memory-efficient kernel for AlignerNet's masked cross-attention on CUDA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


class _NoHook:
    def remove(self) -> None:
        pass


def planning(tracker: type) -> type:
    """The tracker, as the plan needs it (its private tables, torch 2.13).

    It keeps the global peak only: the stock tracker also updates the peak of every module active at
    every op, looping over every module it has seen (LoRA: MemTracker sees each of the 5B's
    thousands of modules and their adapters, which made a 5 x 64 x 96 plan run past 15 minutes).
    And a frozen parameter (LoRA's base), which cannot take the gradient hook MemTracker installs on
    every parameter, is marked as hooked already.
    """
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY

    class Planning(tracker):
        def _update_peak_stats(self, peak_state) -> None:
            for device, snapshot in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snapshot[_TOTAL_KEY]:
                    self._peak_mem[device] = snapshot[_TOTAL_KEY]
                    self._peak_mem_snap[device] = dict(snapshot)

        def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True):
            for p in module.parameters():
                if not p.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(p, (_NoHook(), _NoHook()))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return Planning


class _OwnFakeMode:
    """Sharding propagation's context (in place of `ShardingPropagator._fake_mode_lock`, a no-op).

    DTensor works out an op's output shape the first time it meets the op on those shapes (then
    caches it) by running it on fake tensors of the global shapes, under the active fake mode. Under
    the plan's, the tracker counts them as memory (FSDP2 over 8, the optimizer's first step: 53 GiB
    that no GPU allocates). With the plan's mode unset here, DTensor makes a fake mode of its own,
    whose ops the tracker skips.
    """

    def __enter__(self) -> None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        self.unset = unset_fake_temporarily()
        self.unset.__enter__()

    def __exit__(self, *exc) -> None:
        self.unset.__exit__(*exc)


@contextlib.contextmanager
def own_fake_mode_in_sharding_propagation():
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    stock = ShardingPropagator._fake_mode_lock
    ShardingPropagator._fake_mode_lock = _OwnFakeMode()
    try:
        yield
    finally:
        ShardingPropagator._fake_mode_lock = stock


@dataclass
class Estimate:
    peak: int  # bytes on one GPU
    trained_params: int
    all_params: int
    breakdown: dict[str, int]  # bytes by kind (parameters, gradients, optimizer state, activations...) at the peak


def estimate(step: Step, gpus: int) -> Estimate:
    """One GPU's peak over two steps, FSDP2 over `gpus` fake ranks (full fine-tune) or one device (LoRA)."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.testing._internal.distributed.fake_pg import FakeStore

    with torch.device("meta"):  # outside fake mode: a meta LoRA base casts to bf16 here, not under it
        parts = build_parts(step)
    trained = sum(p.numel() for p in parts.parameters() if p.requires_grad)
    total = sum(p.numel() for p in parts.parameters())
    mesh = None
    if step.lora is None:
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("fake", rank=0, world_size=gpus, store=FakeStore())
        mesh = init_device_mesh("cpu", (gpus,))  # outside fake mode: the mesh reads its ranks
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), attention(), own_fake_mode_in_sharding_propagation():
            if step.lora is None:
                shard(parts, step.bf16, mesh)
            parts.to_empty(device="cpu")  # the meta parts become fake
            inputs = step_inputs(step, torch.device("cpu"))
            optimizer = adamw(parts)
            if step.lora is None:
                tracker = planning(FSDPMemTracker)(parts, optimizer)
            else:
                tracker = planning(MemTracker)()
                tracker.track_external(parts, optimizer)
            with tracker:
                # FSDPMemTracker takes one step at a time: its per-module stats are cleared after each
                train_steps(parts, optimizer, inputs, autocast=step.lora is not None and step.bf16, after_step=tracker.reset_mod_stats)
            peak = tracker.get_tracker_snapshot("peak")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    parts_at_peak = Counter()
    for categories in peak.values():
        parts_at_peak.update({str(getattr(k, "value", k)): v for k, v in categories.items()})
    return Estimate(parts_at_peak.pop("Total"), trained, total, dict(parts_at_peak))


def frozen_bytes(model: CinemaConfig, t5: PartRef | None) -> dict[str, int]:
    """bf16 bytes of the frozen encoders' weights (MLLM, VAE, and the text target for the align phase)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    base = base_named(architecture(model.transformer))
    vae_class, (text_config, text_model) = base.vae_class(), base.text_encoder_classes()
    sizes = {}
    with torch.device("meta"):
        mllm = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**architecture(model.mllm)))
        sizes["mllm"] = sum(p.numel() for n, p in mllm.named_parameters() if not n.startswith("lm_head"))
        vae = vae_class(**_fields(vae_class, architecture(model.vae)))
        sizes["vae"] = sum(p.numel() for p in vae.parameters())
        if t5 is not None:
            sizes["t5"] = sum(p.numel() for p in text_model(text_config(**architecture(t5))).parameters())
    return {name: 2 * count for name, count in sizes.items()}


def plan_table(config: TrainConfig, gpus: int, references: list[int]) -> str:
    """The markdown table of per-GPU peaks for 0..4 references, with the frozen encoders' weights below."""
    kind = f"LoRA rank {config.lora.rank}, 1 GPU" if config.lora else f"full fine-tune, FSDP2 over {gpus} GPUs"
    rows = [
        f"| references | trained params | per-GPU peak (GiB) | headroom on {GPU_MEMORY / GIB:.0f} GiB | at the peak (GiB) |",
        "|---|---|---|---|---|",
    ]
    print(f"planning {config.model.transformer.ref}, {kind}, for {', '.join(map(str, references))} reference(s): "
          "a row as each is planned (minutes each on a CPU for real sizes)", flush=True)  # fmt: skip
    for count in references:
        started = time.perf_counter()
        found = estimate(step_of(config, count), 1 if config.lora else gpus)
        # The EMA (model/train/ema.py) lives on the GPU all along: an fp32 copy of the trained weights, sharded as they are.
        ema = 4 * found.trained_params // (1 if config.lora else gpus) if config.ema_decay is not None else 0
        peak = found.peak + ema
        kinds = ", ".join(f"{kind} {size / GIB:.1f}" for kind, size in {**found.breakdown, "EMA": ema}.items() if size >= GIB / 20)
        rows.append(
            f"| {count} | {found.trained_params / 1e9:.3f} B of {found.all_params / 1e9:.3f} B | {peak / GIB:.1f} | "
            f"{(GPU_MEMORY - peak) / GIB:.1f} | {kinds} |"
        )
        print(rows[-1], f"({time.perf_counter() - started:.0f} s to plan)", flush=True)
    t5_ref = PartRef(ref=config.t5.ref, subfolder="text_encoder")
    frozen = frozen_bytes(config.model, t5_ref if config.phase == "align" else None)
    weights = ", ".join(f"{name} {size / GIB:.1f} GiB" for name, size in frozen.items())
    transformer, step = config.model.transformer.ref, step_of(config, 0)
    return (
        f"**{transformer}, {kind}** ({step.frames} x {step.height} x {step.width}, batch {config.data.batch_size} per GPU, "
        f"gradient checkpointing {'on' if config.gradient_checkpointing else 'off'}, {config.precision}; "
        f"from cached features). Raw shards add the frozen encoders' bf16 weights: {weights}.\n\n" + "\n".join(rows)
    )


TWO_B = [f"model.{part}.ref=zai-org/CogVideoX-2b" for part in ("vae", "transformer", "scheduler")]
BENCH_PLANS = {  # what BENCHMARKS.md keeps: configs/train_full.yaml, then these overrides; reference counts
    "CogVideoX-5B, full fine-tune": ([], [0, 1, 2, 3, 4]),
    "CogVideoX-5B, LoRA": (["lora.rank=64"], [0, 1, 2, 3, 4]),
    "CogVideoX-2B, full fine-tune": (TWO_B, [0, 4]),
    "CogVideoX-2B, LoRA": (["lora.rank=64", *TWO_B], [0, 4]),
}


PLAN_HEADING = "### Memory plan at real size (`python -m model.train.plan configs/train_full.yaml --gpus 8`)"


def bench_section(config_file: Path = Path("configs/train_full.yaml"), gpus: int = 8) -> str:
    """The memory plan's section of bench/results/train.md: every BENCH_PLANS setting with 0..4 references."""
    import platform

    lines = [
        PLAN_HEADING,
        "",
        f"Planned on this CPU ({platform.machine()}, torch {torch.__version__}) under FakeTensorMode: FSDPMemTracker "
        "(full fine-tune) or MemTracker (LoRA) over two optimizer steps, AdamW state included; flash attention as on "
        "the GPU; the EMA of the trained weights (fp32, sharded as they are) added. Goal: 5B full fine-tune on 8 x 80 GB and LoRA on 1 x 80 GB, with headroom. The tiny model's "
        "estimates (FSDP2 and LoRA) are within 15% of measured CPU runs (`tests/test_train_plan.py`); on an H200 the "
        "plan of one GPU's 5B and 2B full fine-tune step came within 0.5% of the measured peak (bench/results/gpu.md). Not "
        "planned: ZeRO-2, which keeps the whole bf16 weights on every GPU (5B: 10.4 GiB), where FSDP2 gathers one "
        "block at a time.",
    ]
    for title, (overrides, references) in BENCH_PLANS.items():
        config = load_train_config(config_file, ["data.batch_size=1", *overrides])
        lines += ["", f"#### {title}", "", plan_table(config, gpus, references)]
    return "\n".join(lines) + "\n"


def with_bench_section(markdown: str, section: str) -> str:
    """bench/results/train.md with `section` in place of its memory plan's section (its last); the rest kept."""
    return markdown[: markdown.index(PLAN_HEADING)] + section


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.train.plan", description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="YAML training config (configs/train_*.yaml)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the full fine-tune is sharded over")
    p.add_argument("--references", type=int, nargs="+", default=list(range(5)), help="reference counts to plan for")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = p.parse_args(argv)
    print(plan_table(load_train_config(args.config, args.set), args.gpus, args.references))
    return 0


if __name__ == "__main__":
    sys.exit(main())
