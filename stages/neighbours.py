"""Every pair of vectors closer than a radius, and the groups those pairs link, at run scale.

Exact all-pairs search is quadratic (1M vectors: 5e11 distances). Above `EXACT_MAX` vectors we use
an inverted file (IVF): k-means cells trained on a sample, each vector stored in its `probes`
nearest cells, and pairs searched exactly within each cell by matrix products. Why IVF and not a
graph index (HNSW): the question is a fixed-radius one (all pairs under a threshold, not the k
nearest), which IVF answers cell by cell in plain numpy with memory equal to the vectors, no new
dependency; and it is SemDeDup's scheme (k-means clusters, then pairwise within each). A pair is
missed only when its two vectors share none of their `probes` nearest cells; recall against
exact search is measured in bench/results/references.md (bench/references.py).
"""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np

EXACT_MAX = 8192  # up to this many vectors exact blocks cost less than training cells
CELL_SIZE = 512  # mean vectors per k-means cell
BLOCK = 4096  # rows per matrix-product block (memory: BLOCK x BLOCK floats)


def pairs_within(x: np.ndarray, radius: float) -> np.ndarray:
    """(m, 2) index pairs i < j with Euclidean distance below `radius`, exactly."""
    x = np.asarray(x, np.float32)
    norms = (x * x).sum(1)
    found = []
    for start in range(0, len(x), BLOCK):
        block = x[start : start + BLOCK]
        d2 = norms[start : start + BLOCK, None] + norms[None, start:] - 2.0 * block @ x[start:].T
        i, j = np.nonzero(d2 < radius * radius)
        keep = start + i < start + j
        found.append(np.stack([start + i[keep], start + j[keep]], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def nearest_cells(x: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """(n, probes) indices of each vector's nearest centroids."""
    c2 = (centroids * centroids).sum(1)
    out = np.empty((len(x), probes), np.int64)
    for start in range(0, len(x), BLOCK * 4):
        d = c2[None, :] - 2.0 * x[start : start + BLOCK * 4] @ centroids.T
        out[start : start + len(d)] = np.argpartition(d, probes - 1, axis=1)[:, :probes] if probes < len(centroids) else np.argsort(d, 1)
    return out


def kmeans(x: np.ndarray, k: int, iterations: int = 8, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means on a sample of at most 32 points per cell; an emptied cell keeps its centroid."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), 32 * k), replace=False)]
    centroids = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(iterations):
        cell = nearest_cells(sample, centroids, 1)[:, 0]
        sums = np.zeros_like(centroids)
        np.add.at(sums, cell, sample)
        counts = np.bincount(cell, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def radius_pairs(x: np.ndarray, radius: float, probes: int = 2, seed: int = 0) -> np.ndarray:
    """(m, 2) unique pairs i < j closer than `radius`: exact up to EXACT_MAX vectors, IVF above."""
    x = np.ascontiguousarray(x, np.float32)
    if len(x) <= EXACT_MAX:
        return pairs_within(x, radius)
    centroids = kmeans(x, max(2, len(x) // CELL_SIZE), seed=seed)
    cells = nearest_cells(x, centroids, min(probes, len(centroids))).ravel()
    members = np.repeat(np.arange(len(x)), cells.size // len(x))
    order = np.argsort(cells, kind="stable")
    cells, members = cells[order], members[order]
    bounds = np.flatnonzero(np.diff(cells)) + 1
    found = []
    for group in np.split(members, bounds):
        if len(group) > 1:
            found.append(group[pairs_within(x[group], radius)])
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of n nodes linked by `pairs`: each node's label is the smallest node of its component."""
    parent = np.arange(n)
    if len(pairs) == 0:
        return parent
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(parent[a], parent[b])
        np.minimum.at(parent, parent[a], low)
        np.minimum.at(parent, parent[b], low)
        while True:  # pointer jumping: every node points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent[a], parent[b]):
            return parent


def cosine_radius(similarity: float) -> float:
    """The Euclidean radius between unit vectors that equals a cosine similarity threshold."""
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity)))


def complete_linkage(x: np.ndarray, radius: float, probes: int = 2) -> np.ndarray:
    """Clusters in which every two members are closer than `radius` (complete linkage): the closest
    two clusters merge first, ties to the lowest indices, so the answer depends only on the vectors
    and their order. A member is never linked through a chain of neighbours. Each label is the
    smallest index of its cluster.

    Sparse: two clusters can merge only when every pair across them is closer than `radius`, so
    only those pairs are kept (found by `radius_pairs`, distances then exact in float64), with per
    pair of clusters the count of close pairs and the largest distance. Memory and time grow with
    the close pairs, not the square of the group (a group of 20,000 faces: 3 GB dense)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 2:
        return np.arange(n)
    found = radius_pairs(x, radius * (1 + 1e-4) + 1e-6, probes)  # float32 search, a margin for its rounding
    d = np.sqrt(np.maximum(((x[found[:, 0]] - x[found[:, 1]]) ** 2).sum(-1), 0.0))
    close = d < radius
    if close.sum() == n * (n - 1) // 2:  # every pair close (one person's faces, the usual group): one cluster
        return np.zeros(n, np.int64)
    links: dict[int, dict[int, list]] = defaultdict(dict)  # cluster -> other cluster -> [close pairs, largest distance]
    for a, b, dist in zip(found[close, 0].tolist(), found[close, 1].tolist(), d[close].tolist()):
        links[a][b] = links[b][a] = [1, dist]
    heap = [(dist, a, b) for a, b, dist in zip(found[close, 0].tolist(), found[close, 1].tolist(), d[close].tolist())]
    heapq.heapify(heap)
    members = {i: [i] for i in range(n)}  # cluster (its smallest index) -> its members
    while heap:
        dist, i, j = heapq.heappop(heap)
        link = links[i].get(j) if i in members and j in members else None
        if link is None or link[1] != dist or link[0] != len(members[i]) * len(members[j]):
            continue  # stale: a cluster merged since, or not every pair across is close
        for k, (count, far) in links.pop(j).items():  # j joins i: i's links are the sums of both
            del links[k][j]
            if k == i:
                continue
            mine = links[i].setdefault(k, [0, 0.0])
            mine[0] += count
            mine[1] = max(mine[1], far)
            links[k][i] = mine
        members[i] += members.pop(j)
        for k, (count, far) in links[i].items():
            if count == len(members[i]) * len(members[k]):
                heapq.heappush(heap, (far, min(i, k), max(i, k)))
    label = np.empty(n, np.int64)
    for first, inside in members.items():
        label[inside] = first
    return label
