"""`python -m bench.wan`: CINEMA on the Wan base; writes `bench/results/wan.md`.

The toy-world proof through a tiny Wan2.1 base (the world, trainer, sampler and measurement of
CogVideoX's proof in `bench/train.py`, the DiT, VAE, UMT5 target, flow-matching objective and UniPC
sampler Wan's), then the memory plan at real size of the three Wan configs: FSDP2 over 8 GPUs and
LoRA on one, with 0 to 4 references (and `reference_timestep: zero` with 4), and the 14B at its
native 720p clip, which does not fit 80 GB, beside the 480p it trains at and what else would fit.
`--plan-only` / `--toy-only` redo one section and keep the other.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.sections import ROOT, section_path, write_section

HEAD = "## CINEMA on Wan (issue 21)\n\n"
TOY_HEADING = "### Toy-world proof on a tiny Wan2.1 base (`model/testing/toy_world.py`, base `wan_toy`)"
PLAN_HEADING = "### Memory plan of the Wan configs at real size (`python -m model.train.plan configs/train_wan_*.yaml`)"
ALL = [0, 1, 2, 3, 4]
ZERO = ["model.reference_timestep=zero"]
PLANS = {  # title: config, overrides, reference counts
    "Wan2.1-T2V-1.3B, full fine-tune (81 x 480 x 832)": ("train_wan_1_3b.yaml", [], ALL),
    "Wan2.1-T2V-1.3B, full fine-tune, `reference_timestep: zero`": ("train_wan_1_3b.yaml", ZERO, [4]),
    "Wan2.1-T2V-1.3B, LoRA": ("train_wan_1_3b.yaml", ["lora.rank=64"], ALL),
    "Wan2.2-TI2V-5B, full fine-tune (121 x 704 x 1280)": ("train_wan_5b.yaml", [], ALL),
    "Wan2.2-TI2V-5B, LoRA": ("train_wan_5b.yaml", ["lora.rank=64"], ALL),
    "Wan2.1-T2V-14B at 480p (81 x 480 x 832, configs/train_wan_14b.yaml), full fine-tune": ("train_wan_14b.yaml", [], ALL),
    "Wan2.1-T2V-14B at 480p, full fine-tune, `reference_timestep: zero`": ("train_wan_14b.yaml", ZERO, [4]),
    "Wan2.1-T2V-14B at 480p, LoRA": ("train_wan_14b.yaml", ["lora.rank=64"], ALL),
    "Wan2.1-T2V-14B at its 720p (81 x 720 x 1280), full fine-tune": ("train_wan_14b.yaml", ["model.height=720", "model.width=1280"], ALL),
}


def toy_section(steps: int = 1500) -> str:
    from model.testing.tiny import ensure
    from model.testing.toy_world import run_toy_world, table, wins

    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        models = ensure(Path(tmp) / "models", ["qwen2_5_vl", "wan_toy"])
        result = run_toy_world(models, Path(tmp) / "toy", steps=steps, base="wan_toy")
    load = max(load, os.getloadavg()[0])
    videos = len(result.subjects) * len(result.latent)
    lines = [
        TOY_HEADING,
        "",
        f"The CogVideoX proof's world (three subjects, one caption for all), trained {steps} steps (batch 3, cached shards, "
        "one thread) through `make encode`'s stage and the trainer on the tiny Wan2.1 base (`wan_toy`: 2 layers, width 64, "
        "FFN 256, time embedding 64, as the CogVideoX toy; 512 UMT5 text positions in cross-attention; flow matching on the "
        f"checkpoint's shift 3, uniform sampling of s; references at the video's timestep) in {result.train_seconds:.0f} s "
        f"on {os.cpu_count()} shared cores (load average up to {load:.0f}), loss {statistics.median(result.losses[:5]):.3f} -> "
        f"{statistics.median(result.losses[-10:]):.3f} (median of the first 5 and last 10 logged); sampled with its UniPC "
        "scheduler, 20 steps, guidance 3, seeds 0, 1, 2. A cell is the mean squared distance of the video made with that "
        "reference to that clip, mean over seeds. `tests/test_train_toy_world.py` asserts this run's latent criteria.",
        "",
        "Why it once got 3/9 (every video nearest one clip whatever its reference): the tiny Wan VAE's random encoder gave "
        "nearly the same latents for every input, its biases' pattern. The three clips differed by 2.5% of a latent "
        "channel's variance (the CogVideoX toy VAE's by 31%), the references by as little, so nothing told them apart: on "
        "held clips the trained model's loss was the same with each clip's own reference and with another's (0.2907 and "
        "0.2907 at s = 1), its gradient with respect to the reference latents 4e-4 (by hand, width-48 toy, 1500 "
        "steps; after the fix, this toy: 0.566 with its own reference, 0.891 with another's, gradient 0.01-0.02). The "
        "tiny VAE now has no biases and its own latents' per-channel statistics (as the real VAE's are of real latents): "
        "the clips differ by 0.63-0.79 in normalised latents, about a channel's variance. With that alone the width-48 "
        "toy got 9/9 at 1500 steps, the nearest other clip only 1.23x as far as its own; at the CogVideoX toy's width, "
        "below. `reference_timestep: zero` lifted the width-48 toy's margin to 1.33x; at width 64 it changed nothing "
        "(9/9 either way, the nearest other clip 1.43-1.47x as far).",
    ]
    for space in ("latent", "pixels"):
        lines += ["", f"{space}: {wins(result, space)}/{videos} videos closest to their own reference's clip", "", table(result, space)]
    return "\n".join(lines) + "\n"


def table_rows(table: str) -> dict[int, dict[str, float]]:
    """A `plan_table`'s rows by reference count: the per-GPU peak ("peak") and the breakdown at it, in GiB."""
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if cells and cells[0].isdigit():
            kinds = dict(part.rsplit(" ", 1) for part in cells[4].split(", "))
            rows[int(cells[0])] = {"peak": float(cells[2]), **{kind: float(size) for kind, size in kinds.items()}}
    return rows


def fits_instead(table: str) -> str:
    """What the 14B's 720p step would need with context parallelism or activation offload: arithmetic on its
    4-reference breakdown, not planned."""
    from model.train.plan import WAN_14B

    row = table_rows(table).get(4)
    if row is None:
        return ""
    blocks, width = WAN_14B["num_layers"], WAN_14B["num_attention_heads"] * WAN_14B["attention_head_dim"]
    states = sum(row.get(kind, 0.0) for kind in ("Sharded Param", "Sharded Grad", "OptState", "EMA"))
    gathers = sum(row.get(kind, 0.0) for kind in ("Unsharded Param", "All Gather", "Reduce Scatter"))
    working = row.get("Activation", 0.0) + row.get("Temp", 0.0)
    tokens = (81 // 4 + 1 + 4) * (720 // 16) * (1280 // 16)  # 4x8x8 VAE, 2x2 patches, 4 reference frames
    inputs = blocks * tokens * width * 2 / 2**30  # the checkpointed blocks' inputs, bf16
    return "\n".join([
        "",
        f"{row['peak']:.1f} GiB per GPU with 4 references: {states:.1f} GiB of sharded weights, gradients, AdamW state and "
        f"EMA, {gathers:.1f} GiB of gathered blocks and reductions, {working:.1f} GiB of activations and temporaries for "
        f"{tokens:,} tokens. What fits instead (arithmetic on this breakdown, not planned, except 480p):",
        "- **480p** (`configs/train_wan_14b.yaml`, planned above).",
        f"- **Context parallelism** (the sequence split, as diffusers' `_cp_plan` for Wan): activations and temporaries "
        f"divide, {states:.1f} + {gathers:.1f} + {working:.1f} / 2 = {states + gathers + working / 2:.1f} GiB over 2 GPUs, "
        f"{states + gathers + working / 4:.1f} GiB over 4, before the attention's all-to-all buffers. The trainer does not do "
        "context parallelism.",
        f"- **Activation offload** (`torch.autograd.graph.save_on_cpu` on the checkpointed blocks): their inputs are "
        f"{inputs:.1f} GiB ({blocks} blocks x {tokens:,} tokens x {width} x 2 B); in host memory the step would need about "
        f"{row['peak'] - inputs:.1f} GiB, too close to 80 to call fitting without also moving the EMA "
        f"({row.get('EMA', 0.0):.1f} GiB) off the GPU. Not built: the plan runs on one fake CPU device and cannot tell "
        "host memory from GPU memory, so it could not measure it.",
    ])


def plan_sections(gpus: int = 8) -> Iterator[str]:
    """The plan's section, again after each table is planned (each takes minutes of this CPU)."""
    from model.train.config import load_train_config
    from model.train.plan import plan_table

    tables, times, load = {}, {}, os.getloadavg()[0]
    for title, (config, overrides, references) in PLANS.items():
        loaded = load_train_config(ROOT / "configs" / config, ["data.batch_size=1", *overrides])
        started = time.perf_counter()
        tables[title] = plan_table(loaded, gpus, references)
        times[title], load = time.perf_counter() - started, max(load, os.getloadavg()[0])
        lines = [
            PLAN_HEADING,
            "",
            f"Planned on this CPU ({platform.machine()}, {os.cpu_count()} cores shared, load average up to {load:.0f}; torch "
            f"{torch.__version__}) as the CogVideoX plan (bench/results/train.md): FakeTensorMode, FSDPMemTracker over 8 fake "
            "ranks or MemTracker on one device, two AdamW steps, flash attention, the EMA added; each config's native clip, "
            "the references at the video's timestep (the configs' default) except in the two `reference_timestep: zero` "
            "tables, which plan its per-token timestep and modulation. The tiny Wan2.1 plan is within 15% of a measured CPU run, FSDP2, "
            "LoRA and `reference_timestep: zero` (`tests/test_train_plan.py`). `python -m bench.wan --plan-only` makes this "
            "section; a row alone: `python -m model.train.plan configs/train_wan_*.yaml --references N`.",
        ]
        for done, table in tables.items():
            lines += ["", f"#### {done}", "", f"Planned in {times[done]:.0f} s.", "", table]
            if "720p" in done:
                lines.append(fits_instead(table))
        yield "\n".join(lines) + "\n"


def main() -> None:
    out, flags = section_path("wan"), sys.argv[1:]
    kept = out.read_text() if out.exists() else ""
    toy = kept[len(HEAD) : kept.index(PLAN_HEADING)] if "--plan-only" in flags else toy_section() + "\n"
    if "--toy-only" in flags:
        print(write_section("wan", HEAD + toy + kept[kept.index(PLAN_HEADING) :]))
        return
    for plan in plan_sections():  # written as each table is done: a stopped run keeps what it planned
        written = write_section("wan", HEAD + toy + plan)
    print(written)


if __name__ == "__main__":
    main()
