"""A stage's record of having nothing left to do, so a rerun need not anti-join the whole run.

When a stage ends with nothing pending, the runner writes `RUN/finished/<stage>.json`: a digest of
its ask (the pending SQL, which spells out its filters and thresholds, needs and the chain's
active rules, and the stage's config, which its plan reads) and the part names of the tables that
decide its inputs (`input_tables`). Its own output table and `errors` only ever take inputs away
(compaction keeps every key; a quarantine, which loses rows, removes every record), so they are
not among them. A later ask with the same digest:
- finds the same parts: nothing is pending, and no query runs;
- finds the recorded first part of each table still there, and new parts: only inputs named in a
  new part can be pending, so the ask is restricted to those keys (`restriction`). A recorded part
  gone after it was merged by a tiered compaction (`store.compact`), whose output is a new part
  holding every key of its inputs;
- finds a table's first part gone (a whole compaction), or another digest: the full ask.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from manifests import store, views
from manifests.files import write_bytes
from manifests.schemas import TABLES, spec
from stages.base import Stage

BASE = {"candidates": ["videos", "scenes"]}  # the view's rows: a window of a video; its other tables are LEFT JOINed
CONSTANT_KEYS = 10_000  # keys of new parts written into an ask as constants, up to this many


class Record(BaseModel):
    digest: str
    parts: dict[str, list[str]]  # table -> its part names, schema parts included
    output: list[str] = []  # the output table's parts when `done` was counted
    done: int | None = None  # inputs done then, shown by a rerun with nothing to do


def input_tables(stage_cls: type[Stage], conditions: str) -> list[str]:
    """Tables whose rows decide the stage's inputs: the rows of the view it reads, and the tables
    its conditions (needs, filter rules, the input key) name, directly or by a `candidates` column."""
    words = set(re.findall(r"\w+", conditions)) | {stage_cls.input_key}
    named = {w for w in words if w in TABLES} | {t for w in words for t in views.SOURCES.get(w, ())}
    return sorted(set(BASE.get(stage_cls.reads, [stage_cls.reads])) | named)


def digest(run: Path, sql: str, stage_config: BaseModel) -> str:
    """Of what decides the stage's work; the run's own path left out, so a moved run keeps its records."""
    text = f"{sql.replace(str(run), 'RUN')}\n{stage_config.model_dump_json()}\n{views.CANDIDATES}"
    return hashlib.sha256(text.encode()).hexdigest()


def path(run: Path, stage: str) -> Path:
    return Path(run) / store.FINISHED / f"{stage}.json"


def load(run: Path, stage: str) -> Record | None:
    file = path(run, stage)
    if not file.is_file():
        return None
    try:
        return Record.model_validate_json(file.read_text())
    except ValueError:  # unreadable: as if there were none, the full ask decides
        return None


def save(run: Path, stage: str, record: Record) -> None:
    write_bytes(run, path(run, stage), record.model_dump_json().encode())


def restriction(run: Path, stage_cls: type[Stage], record: Record | None, now: dict[str, list[str]]) -> str | None:
    """SQL condition on the input `i` that every pending input meets, given the record: "FALSE"
    when nothing changed; the keys of the new parts when the recorded first part of each table is
    still there; None (no restriction: the full ask) when it is not or a new part cannot be keyed."""
    if record is None or set(record.parts) != set(now):
        return None
    conditions = []
    for table, names in now.items():
        before = set(record.parts[table])
        first = [n for n in record.parts[table] if not n.startswith(store.SCHEMA_PREFIX)][:1]
        if not set(first) <= set(names):
            return None
        added = [store.table_dir(run, table) / n for n in names if n not in before and not n.startswith(store.SCHEMA_PREFIX)]
        if added:
            key = _key_column(stage_cls, table)
            if key is None:
                return None
            conditions.append(f'i."{key[0]}" IN ({_keys(run, table, added, key[1])})')
    return " OR ".join(conditions) or "FALSE"


def _keys(run: Path, table: str, files: list[Path], column: str) -> str:
    """SQL for the values of `column` in these parts: a list of constants when there are few, which
    DuckDB pushes into the scans of every table of `candidates` (a subquery it joins after
    joining them all: a new video's ask took seconds at a million windows), else a subquery."""
    if sum(pq.ParquetFile(f).metadata.num_rows for f in files) <= CONSTANT_KEYS:
        values = pa.concat_tables(pq.read_table(f, columns=[column]) for f in files).column(column)
        values = pc.unique(pc.list_flatten(values) if column == "clip_ids" else values).to_pylist()
        if len(values) <= CONSTANT_KEYS:
            return ", ".join(store.literal(v) if isinstance(v, str) else str(v) for v in values) or "NULL"
    selected = f"unnest({column})" if column == "clip_ids" else f'"{column}"'
    return f"SELECT {selected} FROM {store.scan(run, table, files)}"


def _key_column(stage_cls: type[Stage], table: str) -> tuple[str, str] | None:
    """(input column, column of the table) naming the inputs a row of the table can change."""
    names = spec(table).schema.names
    if stage_cls.reads != "candidates":
        return (stage_cls.input_key, stage_cls.input_key) if stage_cls.input_key in names else None
    column = next((c for c in ("clip_id", "video_id", "clip_ids") if c in names), None)
    return None if column is None else ("clip_id" if column == "clip_ids" else column, column)
