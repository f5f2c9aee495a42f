"""Benchmark: run-wide identity clustering at scale (blocking by video + IVF), against exact all-pairs search.

Synthetic face embeddings with dlib's geometry (128-D; one person's faces about 0.35 apart, two
people about 0.95, threshold 0.6): identities appear in a few videos each, ten faces per video.
Times `stages.identities.linked` + `stages.neighbours.components` (the identities stage's numerical
core: candidate pairs, then complete linkage inside each group they link) at each size; recall is
the share of truly linked pairs (same identity) that end in one identity, and of the pairs exact
search finds on a subset. Then complete linkage of one large candidate group, sparse (ours) against
the textbook algorithm on the full distance matrix. Writes `bench/results/references.md`.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench.model import machine
from bench.sections import section_path, write_section
from stages.identities import linked
from stages.neighbours import complete_linkage, components, pairs_within, radius_pairs

RADIUS = 0.6
FACES_PER_VIDEO = 10
FACES_PER_IDENTITY = 20
VIDEOS_PER_IDENTITY = 3


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors, identity per vector, video per vector)."""
    rng = np.random.default_rng(seed)
    identities = max(1, n // FACES_PER_IDENTITY)
    centres = rng.normal(scale=0.95 / np.sqrt(256), size=(identities, 128)).astype(np.float32)
    identity = rng.integers(0, identities, n)
    vectors = centres[identity] + rng.normal(scale=0.35 / np.sqrt(256), size=(n, 128)).astype(np.float32)
    homes = rng.integers(0, max(1, n // FACES_PER_VIDEO), (identities, VIDEOS_PER_IDENTITY))
    video = homes[identity, rng.integers(0, VIDEOS_PER_IDENTITY, n)]
    return vectors, identity, [str(v) for v in video]


def pair_recall(labels: np.ndarray, truth: np.ndarray, sample: int = 200_000, seed: int = 1) -> tuple[float, float]:
    """(recall, precision) of 'same identity' over random pairs of one true identity and random pairs overall."""
    rng = np.random.default_rng(seed)
    order = np.argsort(truth, kind="stable")
    starts = np.searchsorted(truth[order], truth)
    counts = np.bincount(truth, minlength=truth.max() + 1)[truth]
    a = rng.integers(0, len(truth), sample)
    b = order[starts[a] + rng.integers(0, counts[a])]
    keep = a != b
    recall = float(np.mean(labels[a[keep]] == labels[b[keep]]))
    c, d = rng.integers(0, len(truth), (2, sample))
    linked = labels[c] == labels[d]
    precision = float(np.mean(truth[c[linked]] == truth[d[linked]])) if linked.any() else 1.0
    return recall, precision


def cluster_time(n: int) -> tuple[float, float, float, int]:
    vectors, truth, videos = synthetic(n)
    started = time.perf_counter()
    pairs = linked(vectors, videos, RADIUS, probes=2, unit=False)
    labels = components(n, pairs)
    seconds = time.perf_counter() - started
    recall, precision = pair_recall(labels, truth)
    return seconds, recall, precision, len(np.unique(labels))


def exact_comparison(n: int) -> tuple[float, float, float]:
    """(exact all-pairs seconds, IVF seconds, IVF recall of the exact pairs) on one set of n vectors."""
    vectors, _, _ = synthetic(n, seed=2)
    started = time.perf_counter()
    exact = pairs_within(vectors, RADIUS)
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    approx = radius_pairs(vectors, RADIUS, probes=2)
    ivf_s = time.perf_counter() - started
    found = {tuple(p) for p in approx.tolist()}
    recall = sum(tuple(p) in found for p in exact.tolist()) / max(1, len(exact))
    return exact_s, ivf_s, recall


def dense_complete_linkage(x: np.ndarray, radius: float) -> np.ndarray:
    """The textbook algorithm on the full distance matrix (the baseline; tests check ours equals it)."""
    x = np.asarray(x, np.float64)
    n, label = len(x), np.arange(len(x))
    d = np.sqrt(np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T, 0.0)) if n > 512 else \
        np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))  # fmt: skip
    np.fill_diagonal(d, np.inf)
    alive = np.ones(n, bool)
    while True:
        masked = np.where(alive[:, None] & alive[None, :], d, np.inf)
        i, j = divmod(int(np.argmin(masked)), n)
        if masked[i, j] >= radius:
            return label
        i, j = min(i, j), max(i, j)
        d[i, :] = d[:, i] = np.maximum(d[i, :], d[j, :])
        d[i, i] = np.inf
        alive[j] = False
        label[label == j] = i


def measured(call) -> tuple[object, float, float]:
    """(result, seconds, peak MiB of Python allocations, numpy's included)."""
    tracemalloc.start()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def one_group(sizes: list[int], dense_max: int) -> list[str]:
    """Complete linkage of one candidate group of n faces (every face a candidate of the others)."""
    lines = ["| faces in one candidate group | sparse: seconds / peak MiB | dense: seconds / peak MiB | same labels |", "|---:|---:|---:|---|"]
    for n in sizes:
        vectors, _, _ = synthetic(n, seed=3)
        sparse, s_seconds, s_peak = measured(lambda: complete_linkage(vectors, RADIUS))
        if n <= dense_max:
            dense, d_seconds, d_peak = measured(lambda: dense_complete_linkage(vectors, RADIUS))
            baseline, same = f"{d_seconds:.1f} / {d_peak:.0f}", str(bool(np.array_equal(sparse, dense))).lower()
        else:
            baseline, same = f"not run (its matrix alone: {n * n * 8 / 2**30:.1f} GiB)", ""
        lines.append(f"| {n:,} | {s_seconds:.1f} / {s_peak:.0f} | {baseline} | {same} |")
        print(lines[-1], flush=True)
    return lines


def report(sizes: list[int], exact_n: int, groups: list[int], dense_max: int) -> str:
    lines = [
        "## Identities at scale: blocking by video + IVF",
        "",
        f"Machine: {machine()}. `python -m bench.references`. Synthetic 128-D face embeddings with dlib's",
        f"geometry (same person ~0.35 apart, two people ~0.95, threshold {RADIUS}); {FACES_PER_VIDEO} faces per video,",
        f"{FACES_PER_IDENTITY} per identity over {VIDEOS_PER_IDENTITY} videos. Exact inside each video, IVF (k-means cells of",
        "~512, each vector in its 2 nearest cells) on one mean vector per within-video group across videos.",
        "",
        "| subjects | seconds | identities found | pair recall (same identity linked) | pair precision |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        seconds, recall, precision, found = cluster_time(n)
        lines.append(f"| {n:,} | {seconds:.1f} | {found:,} (true {n // FACES_PER_IDENTITY:,}) | {recall:.4f} | {precision:.4f} |")
        print(lines[-1], flush=True)
    exact_s, ivf_s, recall = exact_comparison(exact_n)
    biggest = sizes[-1]
    lines += [
        "",
        (
            f"Baseline, same run: exact all-pairs search of {exact_n:,} vectors {exact_s:.1f} s, IVF {ivf_s:.1f} s "
            f"({exact_s / ivf_s:.1f}x), IVF finds {recall:.4f} of the exact pairs. Exact search grows as n^2: at {biggest:,} "
            f"it would take about {exact_s * (biggest / exact_n) ** 2 / 3600:.1f} h here."
        ),
        "",
        "Complete linkage inside one candidate group (the same synthetic faces, all in one group), ours",
        "sparse (only pairs under the threshold kept, with per pair of clusters their count and largest",
        "distance) against the textbook algorithm on the full distance matrix, in the same run:",
        "",
        *one_group(groups, dense_max),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000", help="subject counts, comma-separated")
    parser.add_argument("--exact", type=int, default=30000, help="vectors in the exact-search baseline")
    parser.add_argument("--groups", default="500,2000,20000", help="faces in one candidate group, comma-separated")
    parser.add_argument("--dense-max", type=int, default=2000, help="largest group the dense baseline runs on")
    parser.add_argument("--out", type=Path, default=section_path("references"))
    args = parser.parse_args()
    text = report([int(s) for s in args.sizes.split(",")], args.exact, [int(g) for g in args.groups.split(",")], args.dense_max)
    print(text)
    print(f"wrote {write_section('references', text, args.out)}")


if __name__ == "__main__":
    main()
