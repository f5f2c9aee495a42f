"""One DuckDB connection with every table registered as a view, plus the joined views.

`candidates` is one row per clip window with everything known about it so far: the video it
comes from, its scores, its clip file, caption, subjects (as JSON) and shard when they exist. Stages read from it; users
query it with `python -m manifests sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from manifests.filters import RULES, FilterConfig, predicate
from manifests.schemas import TABLES
from manifests.store import error_keys, parts, read_table

CANDIDATES = """
CREATE VIEW candidates AS
SELECT s.*, s.n_frames / v.fps AS duration_s,
       v.path AS video_path, v.fps, v.width, v.height, v.rotation,
       m.score AS motion_score, a.score AS aesthetic_score, a.score_min AS aesthetic_min,
       c.path AS clip_path, c.bytes AS clip_bytes,
       cap.caption, cap.subjects_json, cap.model AS caption_model, cap.prompt_version,
       sub.n_subjects, sub.subjects, sh.shard,
       COALESCE(a.random_weights, FALSE) OR COALESCE(cap.random_weights, FALSE)
         OR COALESCE(sub.random_weights, FALSE) AS random_weights
FROM scenes s
JOIN videos v USING (video_id)
LEFT JOIN motion m USING (clip_id)
LEFT JOIN aesthetic a USING (clip_id)
LEFT JOIN clips c USING (clip_id)
LEFT JOIN captions cap USING (clip_id)
LEFT JOIN (
  SELECT clip_id, count(*) AS n_subjects, bool_or(random_weights) AS random_weights,
         to_json(list(struct_pack(subject_id, kind, label, frame_index, box, score, area_fraction,
                                  crop_path, masked_path, model) ORDER BY subject_id))::VARCHAR AS subjects
  FROM subjects GROUP BY clip_id
) sub USING (clip_id)
LEFT JOIN (
  SELECT clip_id, min(shard) AS shard FROM (SELECT unnest(clip_ids) AS clip_id, shard FROM shards) GROUP BY clip_id
) sh USING (clip_id)
"""


def connect(run: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in TABLES:
        con.register(f"_{name}", read_table(run, name))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
    con.execute(CANDIDATES)
    return con


def active_rules(run: Path, rules: Sequence[str]) -> list[str]:
    """The rules whose scoring stage has run in this run."""
    active = []
    for rule in rules:
        stage = RULES[rule][0]
        if stage is None or parts(run, stage) or error_keys(run, stage):
            active.append(rule)
    return active


def candidates(run: Path, rules: Sequence[str] = (), config: FilterConfig | None = None) -> pa.Table:
    """Clip windows that pass the given rules (those that can be evaluated yet)."""
    con = connect(run)
    where = " AND ".join(predicate(r, config or FilterConfig()) for r in active_rules(run, rules)) or "TRUE"
    return con.sql(f"SELECT * FROM candidates WHERE {where} ORDER BY clip_id").to_arrow_table()


def funnel(run: Path, config: FilterConfig | None = None) -> list[tuple[str, int, int]]:
    """(step, clips left, removed by this step) for each rule in order, then the later stages."""
    config = config or FilterConfig()
    con = connect(run)
    total = con.execute("SELECT count(*) FROM candidates").fetchone()[0]
    steps = [("windows", total, 0)]
    where = []
    left = total
    for rule in active_rules(run, list(RULES)):
        where.append(predicate(rule, config))
        now = con.execute(f"SELECT count(*) FROM candidates WHERE {' AND '.join(where)}").fetchone()[0]
        steps.append((f"filter: {rule}", now, left - now))
        left = now
    later = {
        "clips": "clip_path IS NOT NULL",
        "captions": "caption IS NOT NULL",
        "subjects": "n_subjects > 0",
        "shards": "shard IS NOT NULL",
    }
    for table, done in later.items():
        if parts(run, table):
            where.append(done)
            now = con.execute(f"SELECT count(*) FROM candidates WHERE {' AND '.join(where)}").fetchone()[0]
            steps.append((table, now, left - now))
            left = now
    return steps
