"""dedup: near-duplicate windows across a run (SemDeDup, as NeMo Curator and Cosmos-Curate run it).

Windows of different videos are compared (a re-upload, a re-encode, footage reused by another
video); windows of one video never are: they are successive moments of its shots, which the
`other_shot` reference policy needs, and a shot repeated inside one video is caught by the
anti-copy check of the identities stage. Windows are compared by the mean CLIP embedding the aesthetic stage keeps per window (no second
model pass). Windows whose cosine similarity is at least `min_similarity` are linked (pairs from
`stages.neighbours`: exact, or IVF at scale); of each linked group the window with the best
aesthetic score is kept (ties: the smaller clip_id) and the others name it in `duplicate_of`.
The `dedup` filter rule drops them, with its line in the funnel.

It plans over all windows at once (a barrier), so it sits late in the chain, after the subjects
stage: earlier it would hold back every stage after it until the aesthetic pass of the whole
run ends. A rerun with new videos compares the new windows with the kept ones of before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from manifests import store
from manifests.filters import rules_through
from stages.base import Row, Stage, StageConfig
from stages.neighbours import components, cosine_radius, radius_pairs


class DedupConfig(StageConfig):
    min_similarity: float = 0.95  # cosine of window embeddings (SemDeDup's eps 0.05 on CLIP)


class Dedup(Stage):
    name = "dedup"
    reads = "candidates"
    writes = "dedup"
    input_key = "clip_id"
    filters = rules_through("vlm")
    needs = "clip_id IN (SELECT clip_id FROM aesthetic WHERE embedding IS NOT NULL)"
    barrier = True
    batch_size = 4096  # each work item is one row made in `plan`: write them in few parts
    Config = DedupConfig

    def plan(self, items: Iterable[Row]) -> Iterator[Row]:
        """Group the pending windows with the windows kept before; yield each pending window's row."""
        pending = pa.table({"clip_id": pa.array([item["clip_id"] for item in items], pa.string())})
        if not pending.num_rows:
            return

        table = store.query(
            self.run_dir,
            "SELECT a.clip_id, w.video_id, a.score, a.embedding, a.model, p.clip_id IS NOT NULL AS pending "
            "FROM aesthetic a JOIN scenes w USING (clip_id) LEFT JOIN _pending p USING (clip_id) "
            "WHERE p.clip_id IS NOT NULL OR a.clip_id IN (SELECT clip_id FROM dedup WHERE duplicate_of IS NULL) "
            "ORDER BY a.clip_id",
            tables={"_pending": pending},
        )
        ids = table.column("clip_id").to_pylist()
        vectors = np.array(table.column("embedding").to_pylist(), np.float32)
        scores = np.nan_to_num(np.array(table.column("score").to_pylist(), np.float64), nan=-np.inf)
        is_pending = table.column("pending").to_pylist()
        model = table.column("model")
        videos = np.array(table.column("video_id").to_pylist())
        pairs = radius_pairs(vectors, cosine_radius(self.config.min_similarity))
        pairs = pairs[videos[pairs[:, 0]] != videos[pairs[:, 1]]]
        group = components(len(ids), pairs)
        keeper: dict[int, int] = {}
        for i in range(len(ids)):  # a window kept before stays kept; then the best score; rows are in clip_id order
            best = keeper.get(group[i])
            if best is None or (not is_pending[i], scores[i]) > (not is_pending[best], scores[best]):
                keeper[group[i]] = i
        sizes = np.bincount(group, minlength=len(ids))
        for i in range(len(ids)):
            if not is_pending[i]:
                continue
            kept = keeper[group[i]]
            yield {
                "clip_id": ids[i],
                "duplicate_of": None if kept == i else ids[kept],
                "similarity": None if kept == i else float(vectors[i] @ vectors[kept]),
                "group_size": int(sizes[group[i]]),
                "model": model[i].as_py(),
            }

    def process(self, item: Row) -> list[Row]:
        return [item]
