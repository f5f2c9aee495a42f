"""The joined view `candidates`, the filter rules as SQL over it, and the funnel.

`candidates` is one row per clip window with everything known about it so far: the video it
comes from, its scores, its clip file, caption, subjects (as JSON) and shard when they exist.
Stages read from it; users query it with `python -m manifests sql`. Like every table it is a
view over the Parquet parts: a query reads the columns it names and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from manifests import store
from manifests.files import write_bytes
from manifests.filters import RULES, FilterConfig, applies, predicate, scored_in
from manifests.schemas import TABLES

# Per clip: its subjects, aggregated from `source` (the table, or the rows of some clips).
SUBJECTS = """  SELECT clip_id, count(*) AS n_subjects, bool_or(random_weights) AS random_weights,
         to_json(list(struct_pack(subject_id, kind, label, frame_index, box, score, area_fraction,
                                  crop_path, masked_path, model) ORDER BY subject_id))::VARCHAR AS subjects
  FROM {source} GROUP BY clip_id"""
# The tables `candidates` LEFT JOINs to each window, each with the columns it adds, in the view's order.
# The filter rules read these columns (`manifests.filters`): one join per table, where a semi-join
# per rule (a subquery on `motion`, `screen`, ...) made the funnel's scan at 10M windows 90 s, not 50.
JOINED = {
    "motion": (["m.score AS motion_score", "m.residual_px", "m.camera_motion"], "LEFT JOIN motion m USING (clip_id)"),
    "aesthetic": (["a.score AS aesthetic_score", "a.score_min AS aesthetic_min"], "LEFT JOIN aesthetic a USING (clip_id)"),
    "screen": (["sc.text_area", "sc.text_content", "sc.sharpness", "sc.nsfw_score"], "LEFT JOIN screen sc USING (clip_id)"),
    "clips": (["c.path AS clip_path", "c.bytes AS clip_bytes"], "LEFT JOIN clips c USING (clip_id)"),
    "captions": (["cap.caption", "cap.subjects_json", "cap.model AS caption_model", "cap.prompt_version"],
                 "LEFT JOIN captions cap USING (clip_id)"),
    "subjects": (["sub.n_subjects", "sub.subjects"], f"LEFT JOIN (\n{SUBJECTS.format(source='subjects')}\n) sub USING (clip_id)"),
    "dedup": (["d.clip_id IS NOT NULL AS deduped", "d.duplicate_of"], "LEFT JOIN dedup d USING (clip_id)"),
    "sample_refs": (["r.n_references"], "LEFT JOIN sample_refs r USING (clip_id)"),
    "shards": (["sh.shard"], "LEFT JOIN (\n  SELECT clip_id, min(shard) AS shard FROM (SELECT unnest(clip_ids) AS clip_id, shard FROM shards) GROUP BY clip_id\n) sh USING (clip_id)"),
}  # fmt: skip
RANDOM_WEIGHTS = ("aesthetic", "captions", "subjects")  # random_weights: whether any of their models had random weights


def candidates_view(tables: Sequence[str] = tuple(JOINED)) -> str:
    """`candidates` with these of its joined tables (their columns; the others' left out)."""
    columns = [c for table, (cs, _) in JOINED.items() if table in tables for c in cs]
    if set(RANDOM_WEIGHTS) <= set(tables):
        columns.append("COALESCE(a.random_weights, FALSE) OR COALESCE(cap.random_weights, FALSE)\n         OR COALESCE(sub.random_weights, FALSE) AS random_weights")
    joins = "\n".join(join for table, (_, join) in JOINED.items() if table in tables)
    return f"""
CREATE VIEW candidates AS
SELECT s.*, s.n_frames / v.fps AS duration_s,
       v.path AS video_path, v.fps, v.bytes AS video_bytes, v.duration_s AS video_duration_s, v.width, v.height, v.rotation{"".join(f", {c}" for c in columns)}
FROM scenes s
JOIN videos v USING (video_id)
{joins}
"""


CANDIDATES = candidates_view()

# The tables each `candidates` column not of `scenes` or `videos` comes from: what a condition on it reads.
SOURCES = {c.split()[-1].split(".")[-1]: (table,) for table, (cs, _) in JOINED.items() for c in cs} | {"random_weights": RANDOM_WEIGHTS}


def reading(sql: str) -> list[str]:
    """The joined tables a query on `candidates` can read: those of the columns it names. All of
    them for `*` (not in `count(*)`) or COLUMNS(...): DuckDB keeps every LEFT JOIN of a view,
    used or not, and the subjects' aggregate alone is most of a query at a million windows."""
    if re.search(r"(?<!\()\*", sql) or re.search(r"\bcolumns\s*\(", sql, re.IGNORECASE):
        return list(JOINED)
    words = {w.lower() for w in re.findall(r"\w+", sql)}
    return [table for table in JOINED if any(table in SOURCES.get(w, ()) for w in words)]


COSTLY = ("subjects",)  # candidates columns built by aggregating a large table: only asked for by name


def connect(run: Path, windows: Sequence[tuple[str, str]] | None = None, sql: str | None = None) -> duckdb.DuckDBPyConnection:
    """Every table and `candidates` as views over the parts: nothing is read until a query runs.

    Given `windows` ((clip_id, video_id) pairs), every table holds only their rows and their videos', so
    `candidates` and the rules (their columns and the `vlm` rule's subquery) see just those windows, exactly as a whole connection
    sees them (each row of `candidates` and each rule reads only rows of its own clip and video).
    A restricted ask then reads a few rows of each table instead of joining all of them. Given the
    `sql` that will run, `candidates` joins only the tables it can read (`reading`)."""
    where = None
    if windows is not None:
        ids = ", ".join(store.literal(c) for c, _ in windows) or "NULL"
        videos = ", ".join(sorted({store.literal(v) for _, v in windows})) or "NULL"
        where = {name: f"clip_id IN ({ids})" for name, table in TABLES.items() if "clip_id" in table.schema.names}
        where |= {"videos": f"video_id IN ({videos})", "shards": f"list_has_any(clip_ids, [{ids}])"}
    con = store.connect(run, where)
    con.execute(CANDIDATES if sql is None else candidates_view(reading(sql)))
    return con


def query(run: Path, sql: str) -> pa.Table:
    return store.guarded(run, lambda: connect(run, sql=sql).sql(sql).to_arrow_table())


def active_rules(run: Path, rules: Sequence[str], scoring: Sequence[str] = ()) -> list[str]:
    """The rules whose scoring stage has run in this run, or is running (`scoring`)."""
    active = []
    for rule in rules:
        stage = RULES[rule][0]
        if stage is None or stage in scoring or store.has_rows(run, scored_in(stage)) or _has_errors(run, stage):
            active.append(rule)
    return active


def _has_errors(run: Path, stage: str) -> bool:
    return store.has_rows(run, "errors") and bool(query(run, f"SELECT 1 FROM errors WHERE stage = '{stage}' LIMIT 1").num_rows)


def where(run: Path, rules: Sequence[str], config: FilterConfig | None = None, scoring: Sequence[str] = ()) -> str:
    """SQL condition on `candidates` for the rules that can be evaluated."""
    config = config or FilterConfig()
    return " AND ".join(predicate(r, config) for r in active_rules(run, rules, scoring)) or "TRUE"


def candidates(run: Path, rules: Sequence[str] = (), config: FilterConfig | None = None) -> pa.Table:
    """Clip windows that pass the given rules (those that can be evaluated yet)."""
    return query(run, f"SELECT * FROM candidates WHERE {where(run, rules, config)} ORDER BY clip_id")


LATER_STAGES = {
    "clips": "clip_path IS NOT NULL",
    "captions": "caption IS NOT NULL",
    "subjects": "n_subjects > 0",
    "shards": "shard IS NOT NULL",
}


def funnel_steps(run: Path, config: FilterConfig) -> list[tuple[str, str]]:
    """(step, condition) after "windows": the rules that can filter something, in order, then the later stages that have rows."""
    steps = [(f"filter: {rule}", predicate(rule, config)) for rule in active_rules(run, list(RULES)) if applies(rule, config)]
    return steps + [(table, done) for table, done in LATER_STAGES.items() if store.has_rows(run, table)]


def first_failed(steps: list[tuple[str, str]]) -> str:
    """SQL for the index of the first step a window fails (len(steps): none). Each condition is
    evaluated only on the windows that passed the ones before (every condition on every window
    was a quarter of the funnel's time at 1M windows)."""
    cases = " ".join(f"WHEN NOT COALESCE({condition}, FALSE) THEN {i}" for i, (_, condition) in enumerate(steps))
    return f"CASE {cases} ELSE {len(steps)} END" if steps else "0"


def funnel_of(steps: list[tuple[str, str]], failed: dict[int, int]) -> list[tuple[str, int, int]]:
    """(step, clips left, removed by this step) from the count of windows by the first step they fail."""
    left = [sum(failed.values())]
    for i in range(len(steps)):
        left.append(left[-1] - failed.get(i, 0))
    return [(step, n, (left[i - 1] - n) if i else 0) for i, (step, n) in enumerate(zip(["windows", *(name for name, _ in steps)], left))]


def funnel(run: Path, config: FilterConfig | None = None) -> list[tuple[str, int, int]]:
    """(step, clips left, removed by this step) for each rule in order, then the later stages: one
    scan of `candidates`, counting the windows by the first step they fail; or, when the tables it
    reads have the same parts as when it was last counted (here or by the report), that count."""
    steps = funnel_steps(run, config or FilterConfig())
    basis = funnel_basis(run, steps)
    if (known := known_funnel(run, basis)) is not None:
        return known
    sql = f"SELECT {first_failed(steps)} AS failed, count(*) AS n FROM candidates GROUP BY failed"
    counted = funnel_of(steps, dict(store.guarded(run, lambda: connect(run).execute(sql).fetchall())))
    remember_funnel(run, basis, counted)
    return counted


FUNNEL = "funnel.json"  # in RUN/finished/ beside the stages' records: a quarantine removes it with them


def funnel_basis(run: Path, steps: list[tuple[str, str]]) -> dict:
    """What a funnel's counts depend on: its conditions and the view (their text) and the parts of
    every table they name. A scan at 10M windows joins every table of `candidates` (tens of
    seconds); a finished run's funnel is asked for again and again with nothing changed."""
    text = f"{first_failed(steps)}\n{[name for name, _ in steps]}\n{CANDIDATES}"
    tables = sorted(set(re.findall(r"\w+", text)) & set(TABLES))
    return {"digest": hashlib.sha256(text.encode()).hexdigest(), "parts": store.snapshot(run, tables)}


def known_funnel(run: Path, basis: dict) -> list[tuple[str, int, int]] | None:
    try:
        known = json.loads((Path(run) / store.FINISHED / FUNNEL).read_text())
    except (OSError, ValueError):
        return None
    if {k: known.get(k) for k in basis} != basis:
        return None
    return [(step, left, removed) for step, left, removed in known["funnel"]]


def remember_funnel(run: Path, basis: dict, counted: list[tuple[str, int, int]]) -> None:
    """Keep the count for the next ask, if no part changed while it was counted. A run folder this
    process cannot write to (a read-only copy) only loses the shortcut."""
    if store.snapshot(run, list(basis["parts"])) != basis["parts"]:
        return
    try:
        write_bytes(run, Path(run) / store.FINISHED / FUNNEL, json.dumps({**basis, "funnel": counted}).encode())
    except OSError:
        pass
