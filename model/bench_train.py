"""`python -m model.bench_train`: what a training step costs, and whether the loader keeps up; writes `bench/train.md`.

At tiny size on this CPU, on shards of the shipped real footage: the trainer's step time and peak
memory, and the data loader's batches per second with 0 and 2 worker processes, against the
batches per second the steps consume. The loader must deliver faster than the steps take them.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fixtures that write shards through the shard stage


def loader_rate(config, batches: int) -> float:
    """Batches per second the loader delivers once started (the first batch, worker start-up, excluded)."""
    from model.data import make_loader

    stream = iter(make_loader(config, seed=0, rank=0, world=1, decode_video=True))
    next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches / (time.perf_counter() - started)


def main() -> None:
    from model.tiny import ensure
    from model.train import Trainer
    from train_fixtures import CINEMA_MODELS, real_samples, tiny_train_config, write_shard

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = ensure(tmp / "models", CINEMA_MODELS)
        shards = write_shard(tmp / "data", real_samples(8))
        config = tiny_train_config(models, shards, tmp / "run", max_steps=30, checkpoint_every=30)
        Trainer(config).fit()
        rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()][5:]
        step_s = statistics.median(r["step_time_s"] for r in rows)
        memory = max(r["peak_memory_gib"] for r in rows)
        rates = {workers: loader_rate(config.data.model_copy(update={"workers": workers}), 24) for workers in (0, 2)}
    lines = [
        "## Training (issue 5)",
        "",
        f"Machine: {platform.machine()}, CPU only, Python {platform.python_version()}; other processes share its 2 cores. "
        "Tiny models (`model/tiny.py`), 9 frames of 32x48, 2 references, batch 1, fp32, raw shards of the shipped footage; "
        "median over steps 6-30.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| step time (MLLM + VAE encoding, DiT forward/backward, AdamW) | {step_s * 1000:.0f} ms |",
        f"| steps consume | {1 / step_s:.1f} batches/s |",
        f"| peak memory (process RSS) | {memory:.2f} GiB |",
        *(f"| loader, {w} workers | {rate:.1f} batches/s ({rate * step_s:.1f}x what the steps consume) |" for w, rate in rates.items()),
        "",
        "Not measured yet: cached (`make encode`) against raw shards (the encode stage is not written), "
        "and real size on a GPU.",
        "",
    ]
    out = ROOT / "bench" / "train.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
