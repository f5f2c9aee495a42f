"""`python -m model.bench.train`: what a training step costs, and whether training learns; writes `bench/train.md`.

At tiny size on this CPU, on shards of the shipped real footage: the trainer's step time and peak
memory on raw and on cached (`make encode`) shards, and the data loader's batches per second with
0 and 2 worker processes against the batches per second the steps consume (the loader must
deliver faster than the steps take them). Then the toy-world proof and its distance tables, and
the memory plan at real size (`--plan-only`: that section alone, planned again, the rest kept).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: model/bench/train.py)
sys.path.insert(0, str(ROOT / "tests"))  # the fixtures that write shards through the shard stage


def loader_rate(config, batches: int) -> float:
    """Batches per second the loader delivers once started (the first batch, worker start-up, excluded)."""
    from model.train.data import make_loader

    stream = iter(make_loader(config, seed=0, rank=0, world=1, decode_video=True))
    next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches / (time.perf_counter() - started)


def step_stats(run: Path) -> tuple[float, float]:
    """Median step time (steps 6 on) and peak memory of a finished run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][5:]
    return statistics.median(r["step_time_s"] for r in rows), max(r["peak_memory_gib"] for r in rows)


def main() -> None:
    if sys.argv[1:] == ["--plan-only"]:  # the memory plan's section alone, planned again; the rest kept
        from model.train.plan import with_bench_section

        out = ROOT / "bench" / "train.md"
        out.write_text(with_bench_section(out.read_text(), ROOT / "configs" / "train_full.yaml"))
        return
    from train_fixtures import CINEMA_MODELS, real_samples, tiny_train_config, write_shard

    from model.testing.tiny import ensure
    from model.testing.toy_world import encode_shard, run_toy_world, table, wins
    from model.train.plan import bench_section
    from model.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = ensure(tmp / "models", [*CINEMA_MODELS, "cogvideox_toy"])
        samples = real_samples(8)
        shards = write_shard(tmp / "data", samples)
        config = tiny_train_config(models, shards, tmp / "raw", max_steps=30, checkpoint_every=30)
        Trainer(config).fit()
        step_s, memory = step_stats(tmp / "raw")
        rates = {workers: loader_rate(config.data.model_copy(update={"workers": workers}), 24) for workers in (0, 2)}

        cached, encode_s = encode_shard(config.model_copy(update={"run": str(tmp / "cached")}), tmp / "data")
        encode_s /= len(samples)
        Trainer(cached).fit()
        cached_step_s, cached_memory = step_stats(tmp / "cached")

        toy = run_toy_world(models, tmp / "toy")
    videos = len(toy.subjects) * len(toy.latent)
    lines = [
        "## Training (issue 5)",
        "",
        f"Machine: {platform.machine()}, CPU only, Python {platform.python_version()}; other processes share its 2 cores. "
        "Tiny models (`model/testing/tiny.py`), 9 frames of 32x48, 2 references, batch 1, fp32, shards of the shipped footage; "
        "median over steps 6-30.",
        "",
        "| measurement | raw shards | cached shards (`make encode`) |",
        "|---|---|---|",
        f"| step time | {step_s * 1000:.0f} ms | {cached_step_s * 1000:.0f} ms ({step_s / cached_step_s:.2f}x faster) |",
        f"| steps consume | {1 / step_s:.1f} batches/s | {1 / cached_step_s:.1f} batches/s |",
        f"| peak memory (process RSS) | {memory:.2f} GiB | {cached_memory:.2f} GiB |",
        *(f"| loader, {w} workers | {rate:.1f} batches/s ({rate * step_s:.1f}x what raw steps consume) | |" for w, rate in rates.items()),
        f"| encode stage, per sample (MLLM + VAE + T5, once) | | {encode_s * 1000:.0f} ms |",
        "",
        "A raw step runs the frozen MLLM and VAE on every sample; a cached one reads their outputs. Both see the same "
        "numbers (`tests/test_train_encode.py`: equal losses). At tiny size the frozen models are as small as the DiT, "
        "so the ratio says little about real size, where the MLLM (3B) and the VAE dominate the frozen work. "
        "Not measured: real size on a GPU (no GPU was lent to this task).",
        "",
        "### Toy-world proof (`model/testing/toy_world.py`, `tests/test_train_toy_world.py`)",
        "",
        f"Three subjects, one caption for all; trained {len(toy.losses) * 50} steps (batch 3, cached shards) in "
        f"{toy.train_seconds:.0f} s, loss {statistics.median(toy.losses[:5]):.3f} -> {statistics.median(toy.losses[-10:]):.3f} "
        "(median of the first 5 and last 10 logged). Each reference sampled with seeds 0-2 (20 DDIM steps, guidance 3); "
        "mean squared distance of each video to each clip, mean over seeds, nearest in bold.",
        "",
        f"Latents (sampler output against the clips' VAE latents): {wins(toy, 'latent')}/{videos} videos nearest their own clip.",
        "",
        table(toy, "latent"),
        "",
        f"Decoded frames (against the clips as the same random tiny VAE reproduces them): {wins(toy, 'pixels')}/{videos}.",
        "",
        table(toy, "pixels"),
        "",
    ]
    out = ROOT / "bench" / "train.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + bench_section(ROOT / "configs" / "train_full.yaml"))
    print(out.read_text())


if __name__ == "__main__":
    main()
