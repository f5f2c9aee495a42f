"""`python -m bench.train`: what a training step costs, and whether training learns; writes `bench/results/train.md`.

At tiny size on this CPU, on shards of the shipped real footage: the trainer's step time and peak
memory on raw and on cached (`make encode`) shards, and the data loader's batches per second with
0 and 2 worker processes against the batches per second the steps consume (the loader must
deliver faster than the steps take them). Then the toy-world proof and its distance tables, the
binding world (`--binding-only`: that section alone, trained again, the rest kept), and the memory
plan at real size (`--plan-only`: that section alone, planned again, the rest kept).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.sections import ROOT, section_path, write_section

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


BINDING_HEADING = "### Binding world (`model/testing/toy_world.py`, issue 14)"


def binding_section(result) -> str:
    """Markdown of a `run_binding_world` result: what was trained and sampled, the outcome tables, what they show."""
    from model.testing.toy_world import OUTCOMES, binding_table

    placed = {space: {arm: result.placed(space, arm) for arm in ("own", "swapped", "crossed")} for space in ("latent", "pixels")}
    own, control, crossed = ([result.rows[n]["latent"] for n in list(result.rows)[i : i + 2]] for i in (0, 2, 4))  # as in ROWS
    lines = [
        BINDING_HEADING,
        "",
        "Two subjects per clip, standing left and right; colour (red, blue) and shape (disc, square, triangle) drawn "
        "independently. The caption names the sides by colour only (\"the red one on the left, the blue one on the right\"), "
        "the references show each subject whole, in either order: the caption cannot tell the shapes, the references cannot "
        "tell the sides. 12 arrangements x 2 reference orders = 24 samples; trained "
        f"{len(result.losses) * 50} steps (batch 12, cached shards, one thread) in {result.train_seconds:.0f} s, loss "
        f"{statistics.median(result.losses[:5]):.3f} -> {statistics.median(result.losses[-10:]):.3f}. Each arrangement "
        "sampled with both reference orders, seed 0, 20 DDIM steps, guidance 3 (24 videos), and again with the MLLM shown "
        f"the references in the other order than the VAE (crossed, 24 videos): {result.sample_seconds:.0f} s. "
        f"A video is named by the nearest (mean squared distance) of the four world clips its two references can make "
        f"({', '.join(OUTCOMES)}), each through the same VAE; the world's own clips, with another VAE posterior sample, "
        f"are named right {result.sanity['latent'][0]}/{result.sanity['latent'][1]} in latents and "
        f"{result.sanity['pixels'][0]}/{result.sanity['pixels'][1]} in decoded frames. Control: the video made with the "
        "caption's colours swapped (same references, same seed), scored against the original caption. AlignerNet starts "
        "fresh, as in the toy-world proof: the trainer's align phase cannot run on the toy DiT (T5 targets have 226 "
        "positions, its text input 16).",
        "",
        "| videos placed as the caption says | latents | decoded frames |",
        "|---|---|---|",
        *(f"| {name} | {placed['latent'][arm][0]}/{placed['latent'][arm][1]} | {placed['pixels'][arm][0]}/{placed['pixels'][arm][1]} |"
          for name, arm in (("condition", "own"), ("control (caption's colours swapped)", "swapped"), ("crossed (MLLM and VAE references in opposite orders)", "crossed"))),
        "",
        f"AlignerNet's output (the DiT's text input) moves by {result.text_change['caption swapped']:.1e} of its norm when "
        f"the caption's colours are swapped, {result.text_change['references reversed']:.1e} when the references are reversed "
        "(mean over the arrangements).",
        "",
        "Latents:",
        "",
        binding_table(result, "latent"),
        "",
        "Decoded frames:",
        "",
        binding_table(result, "pixels"),
        "",
    ]  # fmt: skip
    shows = []
    if own == control:
        shows.append("the caption changes nothing: in latents every row of the control names the same outcomes as the condition, so the "
                     "tiny model does not read which colour the caption puts on which side, and no binding can be claimed")  # fmt: skip
    else:
        shows.append(f"the caption moves the subjects: {placed['latent']['own'][0]} videos as the caption says against "
                     f"{placed['latent']['swapped'][0]} in the control (latents)")  # fmt: skip
    if own == crossed:
        shows.append("showing the MLLM the references in the other order changes no outcome in latents: where a subject goes does not "
                     "come from what the MLLM read of the references")  # fmt: skip
    lines += ["What it shows: " + "; ".join(shows) + ".", ""]
    return "\n".join(lines)


def with_binding_section(markdown: str, section: str) -> str:
    """bench/results/train.md with the binding world's section put in place of the old one, just before the memory plan."""
    from model.train.plan import PLAN_HEADING

    plan = markdown.index(PLAN_HEADING)
    start = markdown.index(BINDING_HEADING) if BINDING_HEADING in markdown else plan
    return markdown[:start] + section + "\n" + markdown[plan:]


def run_binding(tmp: Path):
    """The binding world on one thread (tiny tensors gain nothing from more; on a busy machine they lose a lot)."""
    import torch

    from model.testing.tiny import ensure
    from model.testing.toy_world import run_binding_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_binding_world(ensure(tmp / "models", ["qwen2_5_vl", "cogvideox_toy"]), tmp / "binding")
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    if sys.argv[1:] == ["--binding-only"]:  # the binding world's section alone, trained again; the rest kept
        out = section_path("train")
        with tempfile.TemporaryDirectory() as tmp:
            section = binding_section(run_binding(Path(tmp)))
        out.write_text(with_binding_section(out.read_text(), section))
        print(section)
        return
    if sys.argv[1:] == ["--plan-only"]:  # the memory plan's section alone, planned again; the rest kept
        from model.train.plan import bench_section, with_bench_section

        section = bench_section(ROOT / "configs" / "train_full.yaml")  # minutes: the file is read after, as it is then
        out = section_path("train")
        out.write_text(with_bench_section(out.read_text(), section))
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
        binding = run_binding(tmp)
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
        binding_section(binding),
    ]
    text = "\n".join(lines) + "\n" + bench_section(ROOT / "configs" / "train_full.yaml")
    print(text)
    print(f"wrote {write_section('train', text)}")


if __name__ == "__main__":
    main()
