"""Atomic, append-only Parquet parts per table, and readers that return one deduplicated table.

Layout: `RUN/manifests/<table>/part-<digest>.parquet`. A part is written under a temporary name
and renamed, so a killed run never leaves half a part. The digest is of the keys a part holds, so
writing the same rows again replaces the part instead of duplicating it. Readers keep the last
written row of each key, which is how a retried input replaces its old error.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schemas import TABLES, spec

TMP_PREFIX = ".tmp-"


def table_dir(run: Path, table: str) -> Path:
    return Path(run) / "manifests" / table


def to_arrow(table: str, rows: Sequence[dict] | pa.Table) -> pa.Table:
    """Rows as a table of the manifest's schema; unknown or mistyped columns fail loudly."""
    schema = spec(table).schema
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(schema)
    return pa.Table.from_pylist(list(rows), schema=schema)


def _digest(table: pa.Table, key: Sequence[str]) -> str:
    h = hashlib.sha1()
    for row in sorted(zip(*(table.column(k).to_pylist() for k in key))):
        h.update(repr(row).encode())
    return h.hexdigest()[:20]


def write_part(run: Path, table: str, rows: Sequence[dict] | pa.Table) -> Path | None:
    """Write rows as one part, atomically. Returns the part's path, or None for no rows."""
    data = to_arrow(table, rows)
    if data.num_rows == 0:
        return None
    folder = table_dir(run, table)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"part-{_digest(data, spec(table).key)}.parquet"
    tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
    pq.write_table(data, tmp)
    os.replace(tmp, final)
    return final


def parts(run: Path, table: str) -> list[Path]:
    """Finished parts in write order (modification time, then name)."""
    folder = table_dir(run, table)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("part-*.parquet")]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def read_raw(run: Path, table: str) -> pa.Table:
    """Every row of every part, duplicates included, in write order."""
    schema = spec(table).schema
    pieces = [pq.read_table(p, schema=schema) for p in parts(run, table)]
    return pa.concat_tables(pieces) if pieces else schema.empty_table()


def dedupe(data: pa.Table, key: Sequence[str]) -> pa.Table:
    """Keep the last row of each key, then sort by key so equal runs give equal tables."""
    if data.num_rows == 0:
        return data
    data = data.append_column("_row", pa.array(range(data.num_rows), pa.int64()))
    last = data.group_by(list(key), use_threads=False).aggregate([("_row", "max")])
    keep = pc.is_in(data.column("_row"), value_set=last.column("_row_max"))
    data = data.filter(keep).drop_columns(["_row"])
    return data.sort_by([(k, "ascending") for k in key])


def read_table(run: Path, table: str) -> pa.Table:
    """The table as users and stages see it: one row per key."""
    return dedupe(read_raw(run, table), spec(table).key)


def keys(run: Path, table: str, column: str) -> set:
    """The distinct values of one column: what a stage has done already."""
    if not parts(run, table):
        return set()
    return set(read_raw(run, table).column(column).to_pylist())


def error_keys(run: Path, stage: str) -> set[str]:
    errors = read_raw(run, "errors")
    return set(errors.filter(pc.equal(errors.column("stage"), stage)).column("key").to_pylist())


def remove_temporaries(run: Path) -> list[Path]:
    """Delete what a killed run left half-written (parts and any other `.tmp-` file)."""
    removed = []
    for path in Path(run).rglob(f"{TMP_PREFIX}*"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def existing_tables(run: Path) -> list[str]:
    return [t for t in TABLES if parts(run, t)]


def iter_tables(run: Path, names: Iterable[str] | None = None) -> Iterable[tuple[str, pa.Table]]:
    for name in names or TABLES:
        yield name, read_table(run, name)
