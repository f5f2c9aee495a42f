"""`python -m bench.wan`: CINEMA on the Wan base; writes `bench/results/wan.md`.

The toy-world proof through a tiny Wan2.1 base (the world, trainer, sampler and measurement of
CogVideoX's proof in `bench/train.py`, the DiT, VAE, UMT5 target, flow-matching objective and UniPC
sampler Wan's), then the memory plan at real size of the three Wan configs: FSDP2 over 8 GPUs and
LoRA on one, with 0 and 4 references (each row takes minutes of this CPU: the counts between are
left out), and the 14B at its native 720p clip, which does not fit 80 GB, beside the 480p it trains at.
`--plan-only` / `--toy-only` redo one section and keep the other.
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

import torch

from bench.sections import ROOT, section_path, write_section

HEAD = "## CINEMA on Wan (issue 21)\n\n"
TOY_HEADING = "### Toy-world proof on a tiny Wan2.1 base (`model/testing/toy_world.py`, base `wan_toy`)"
PLAN_HEADING = "### Memory plan of the Wan configs at real size (`python -m model.train.plan configs/train_wan_*.yaml`)"
PLANS = {  # title: config, overrides, reference counts
    "Wan2.1-T2V-1.3B, full fine-tune (81 x 480 x 832)": ("train_wan_1_3b.yaml", [], [0, 4]),
    "Wan2.1-T2V-1.3B, LoRA": ("train_wan_1_3b.yaml", ["lora.rank=64"], [0, 4]),
    "Wan2.2-TI2V-5B, full fine-tune (121 x 704 x 1280)": ("train_wan_5b.yaml", [], [0, 4]),
    "Wan2.2-TI2V-5B, LoRA": ("train_wan_5b.yaml", ["lora.rank=64"], [0, 4]),
    "Wan2.1-T2V-14B at its 720p (81 x 720 x 1280), full fine-tune": ("train_wan_14b.yaml", ["model.height=720", "model.width=1280"], [0, 4]),
    "Wan2.1-T2V-14B at 480p (81 x 480 x 832, configs/train_wan_14b.yaml), full fine-tune": ("train_wan_14b.yaml", [], [0, 4]),
    "Wan2.1-T2V-14B at 480p, LoRA": ("train_wan_14b.yaml", ["lora.rank=64"], [4]),
}


def toy_section(steps: int = 1500) -> str:
    from model.testing.tiny import ensure
    from model.testing.toy_world import run_toy_world, table, wins

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        models = ensure(Path(tmp) / "models", ["qwen2_5_vl", "wan_toy"])
        result = run_toy_world(models, Path(tmp) / "toy", steps=steps, base="wan_toy")
    videos = len(result.subjects) * len(result.latent)
    lines = [
        TOY_HEADING,
        "",
        f"The CogVideoX proof's world (three subjects, one caption for all), trained {steps} steps (batch 3, cached shards, "
        f"one thread) through `make encode`'s stage and the trainer on the tiny Wan2.1 base (`wan_toy`: 2 layers, width 48, "
        f"512 UMT5 text positions in cross-attention, flow matching with the checkpoint's shift 3) in {result.train_seconds:.0f} s, "
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; sampled with its UniPC scheduler, 20 steps, guidance 3, "
        "seeds 0, 1, 2. A cell is the mean squared distance of the video made with that reference to that clip.",
    ]
    for space in ("latent", "pixels"):
        lines += ["", f"{space}: {wins(result, space)}/{videos} videos closest to their own reference's clip", "", table(result, space)]
    return "\n".join(lines) + "\n"


def plan_section(gpus: int = 8) -> str:
    from model.train.config import load_train_config
    from model.train.plan import plan_table

    lines = [
        PLAN_HEADING,
        "",
        f"Planned on this CPU ({platform.machine()}, torch {torch.__version__}) as the CogVideoX plan (bench/results/train.md): "
        "FakeTensorMode, FSDPMemTracker over 8 fake ranks or MemTracker on one device, two AdamW steps, flash attention, "
        "the EMA added; each config's native clip. The tiny Wan2.1 plan is within 15% of a measured CPU run "
        "(`tests/test_train_plan.py`).",
    ]
    for title, (config, overrides, references) in PLANS.items():
        loaded = load_train_config(ROOT / "configs" / config, ["data.batch_size=1", *overrides])
        lines += ["", f"#### {title}", "", plan_table(loaded, gpus, references)]
    return "\n".join(lines) + "\n"


def main() -> None:
    out, flags = section_path("wan"), sys.argv[1:]
    kept = out.read_text() if out.exists() else ""
    toy = kept[len(HEAD) : kept.index(PLAN_HEADING)] if "--plan-only" in flags else toy_section() + "\n"
    plan = kept[kept.index(PLAN_HEADING) :] if "--toy-only" in flags else plan_section()
    print(write_section("wan", HEAD + toy + plan))


if __name__ == "__main__":
    main()
