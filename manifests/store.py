"""Manifest tables as folders of Parquet parts, scanned in place by DuckDB.

Layout: `RUN/manifests/<table>/part-<ns>-<id>.parquet`. Workers write their own parts (atomic:
temporary, fsync, rename); the name starts with the write time, so name order is write order and
readers keep the last written row of each key: that is how a retried input replaces its old
error and how a rewrite after a crash replaces its first copy. Every table also holds one empty
part with its current schema, so a table with no rows yet, or parts from an older schema, still
read with every column. Nothing here loads a whole table: queries project columns and push
filters down into the scan; `compact` merges parts, deduplicated, atomically and resumably (a
kill -9 during it leaves inputs and output side by side, which read the same). It is tiered: a
table's large first part (its base) is left alone while the parts after it are few and small, so
adding a video to a large run rewrites nothing and keeps the parts the `finished` records name.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.files import atomic_path, write_bytes
from manifests.schemas import TABLES, spec

T = TypeVar("T")
SCHEMA_PREFIX = "part-00000000000000000000-schema-"
QUARANTINE = "quarantine"
MEMORY_LIMIT = "2GB"  # per connection: with Python and Arrow around it, a command stays under 3 GB
GROUP_BYTES = 32 * 2**20
FINISHED = "finished"  # the runner's records of stages with nothing left to do (pipeline/finished.py)
BASE_SHARE = 4  # a first part with this many times the rows of all later parts is the table's base
TIER_PARTS = 8  # the parts after a base are merged once there are this many


def table_dir(run: Path, table: str) -> Path:
    return Path(run) / "manifests" / table


def to_arrow(table: str, rows: Sequence[dict] | pa.Table) -> pa.Table:
    """Rows as a table of the manifest's schema; unknown or mistyped columns fail loudly, missing ones are null."""
    schema = spec(table).schema
    if isinstance(rows, pa.Table):
        missing = [f for f in schema if f.name not in rows.column_names]
        for f in missing:
            rows = rows.append_column(f, pa.nulls(rows.num_rows, f.type))
        return rows.select(schema.names).cast(schema)
    return pa.Table.from_pylist(list(rows), schema=schema)


def ensure_table(run: Path, table: str) -> None:
    """The empty part that carries the table's current schema (written once per schema)."""
    schema = spec(table).schema
    digest = hashlib.sha1(schema.to_string().encode()).hexdigest()[:12]
    path = table_dir(run, table) / f"{SCHEMA_PREFIX}{digest}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = pa.BufferOutputStream()
        pq.write_table(schema.empty_table(), sink)
        write_bytes(run, path, sink.getvalue().to_pybytes())


def group_rows(rows: int, size: int) -> int:
    """Rows per Parquet row group, so a group holds about GROUP_BYTES: a reader holds a group's
    column at once, and a million rows of subject masks would not fit the memory limit."""
    return max(1024, min(1_000_000, rows * GROUP_BYTES // max(1, size)))


def write_part(run: Path, table: str, rows: Sequence[dict] | pa.Table) -> Path | None:
    """Write rows as one new part, atomically. Returns its path, or None for no rows."""
    data = to_arrow(table, rows)
    if data.num_rows == 0:
        return None
    ensure_table(run, table)
    final = table_dir(run, table) / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
    with atomic_path(run, final) as tmp:
        pq.write_table(data, tmp, compression="zstd", row_group_size=group_rows(data.num_rows, data.nbytes))
    return final


def parts(run: Path, table: str) -> list[Path]:
    """Parts holding rows, in write order."""
    folder = table_dir(run, table)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet") if not p.name.startswith(SCHEMA_PREFIX))


def snapshot(run: Path, tables: Sequence[str]) -> dict[str, list[str]]:
    """Each table's part names, schema parts included: parts are never rewritten in place (a
    compaction's output is a new part), so the same names are the same rows."""
    return {t: sorted(p.name for p in table_dir(run, t).glob("part-*.parquet")) for t in tables}


def has_rows(run: Path, table: str) -> bool:
    return bool(parts(run, table))


def literal(text: str | Path) -> str:
    """A SQL string literal: a path with a quote in it (`runs/it's here`) is never pasted bare."""
    return "'" + str(text).replace("'", "''") + "'"


def path_literal(path: Path, pattern: str = "") -> str:
    """A SQL literal of a file path for DuckDB's readers, which take every path as a glob: the
    path's own `[`, `*` and `?` (`runs/glob[1]`) match only themselves; `pattern` is appended as a glob."""
    escaped = str(path).replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")
    return literal(f"{escaped}/{pattern}" if pattern else escaped)


def scan(run: Path, table: str, files: Sequence[Path] | None = None) -> str:
    """SQL for every written row, with the file and row it came from (for last-write-wins)."""
    source = path_literal(table_dir(run, table), "part-*.parquet") if files is None else "[" + ", ".join(map(path_literal, files)) + "]"
    return f"read_parquet({source}, union_by_name = true, filename = true, file_row_number = true)"


def latest(run: Path, table: str, key: Sequence[str] | None = None, files: Sequence[Path] | None = None) -> str:
    """SQL for one row per key, the last written, with the table's columns only.

    A first part that a compaction wrote holds one row per key already: it is read without the
    deduplicating window, less the keys of the parts after it, which are read with it (the parts
    are named, so parts written later are not read unsorted). Two scans and an anti-join on the
    key: a subquery also comparing each row's file and row number made DuckDB group every row of
    the base by them (0.6 s a table at 1M windows, in every query of a run past its last compaction).
    """
    columns = ", ".join(f'"{c}"' for c in spec(table).schema.names)
    keys = key or spec(table).key
    by = ", ".join(f'"{k}"' for k in keys)
    if files is None and spec(table).identity == spec(table).key:
        found = parts(run, table)
        if found and "-z" in found[0].name:  # a compaction output
            schema_parts = sorted(table_dir(run, table).glob(f"{SCHEMA_PREFIX}*.parquet"))
            if len(found) == 1:
                return f"SELECT {columns} FROM {scan(run, table, [*schema_parts, found[0]])}"
            later = scan(run, table, [*schema_parts, *found[1:]])
            same = " AND ".join(f'l."{k}" = b."{k}"' for k in keys)
            return (f"SELECT {columns} FROM {scan(run, table, [*schema_parts, found[0]])} b WHERE NOT EXISTS (SELECT 1 FROM {later} l WHERE {same}) "
                    f"UNION ALL SELECT {columns} FROM {later} "
                    f"QUALIFY row_number() OVER (PARTITION BY {by} ORDER BY filename DESC, file_row_number DESC) = 1")
    return (
        f"SELECT {columns} FROM {scan(run, table, files)} "
        f"QUALIFY row_number() OVER (PARTITION BY {by} ORDER BY filename DESC, file_row_number DESC) = 1"
    )


def database() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose memory does not grow with the run: past MEMORY_LIMIT its joins,
    sorts and aggregates spill to a temporary folder instead (DuckDB's default is most of RAM)."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    # Joins build on their right side, as written: a table joined to the windows, not the windows.
    # DuckDB's swap of the two, led by its estimate for a compacted base less its later parts (a
    # hundredth of the rows), built every LEFT JOIN of `candidates` on the million windows with all
    # their columns, and the first full ask after adding one video ran out of memory.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    con.execute(f"SET temp_directory = '{Path(tempfile.gettempdir()) / f'cinema-duckdb-{uuid.uuid4().hex}'}'")  # its own: DuckDB removes it at close
    return con


def connect(run: Path, where: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """A connection where every table is a view over its parts (nothing is loaded); with `where`,
    the tables it names hold only the rows meeting their condition."""
    con = database()
    for name in TABLES:
        ensure_table(run, name)
        rows = latest(run, name)
        con.execute(f"CREATE VIEW {name} AS " + (f"SELECT * FROM ({rows}) WHERE {where[name]}" if name in (where or {}) else rows))
    return con


# Errors of the SQL or of the process, never of a part's bytes: raised as they are, no part read.
NOT_THE_DATA = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException, duckdb.InterruptException, duckdb.OutOfMemoryException)


def guarded(run: Path, action: Callable[[], T]) -> T:
    """Run a query; a part that cannot be read is quarantined and the query runs again.

    Which part is damaged is found by reading them (those the error names first), whatever the
    error says. Its rows are then missing from the table, so the stage that wrote them finds their
    inputs pending again and recomputes them.
    """
    while True:
        try:
            return action()
        except duckdb.Error as error:
            damaged = None if isinstance(error, NOT_THE_DATA) else unreadable_part(run, str(error))
            if damaged is None:
                raise
            quarantine(run, damaged, str(error))


def unreadable_part(run: Path, message: str) -> Path | None:
    """The first part of the run that does not read whole, trying those named in `message` first."""
    found = [p for table in TABLES for p in sorted(table_dir(run, table).glob("part-*.parquet"), reverse=True)]
    for part in sorted(found, key=lambda p: str(p) not in message):
        try:
            for _ in pq.ParquetFile(part).iter_batches():
                pass
        except (pa.ArrowException, OSError):
            return part
    return None


def quarantine(run: Path, part: Path, reason: str) -> Path:
    """Move a damaged part out of its table, with a note saying why.

    Its rows are lost, so a stage that recorded having nothing left to do may have work again:
    every such record goes, and each stage's next ask is its full anti-join.
    """
    folder = Path(run) / QUARANTINE / part.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / part.name
    shutil.rmtree(Path(run) / FINISHED, ignore_errors=True)
    shutil.move(str(part), target)
    target.with_suffix(".txt").write_text(f"{reason}\n")
    print(f"warning: quarantined {part} ({reason.splitlines()[0]}); its rows will be recomputed")
    return target


def query(run: Path, sql: str, params: Sequence | None = None, tables: dict[str, pa.Table] | None = None) -> pa.Table:
    """One query over the run's tables (views named like the tables), beside small in-memory
    `tables` (keys in flight, a batch of pending ids) that it may join with."""

    def execute() -> pa.Table:
        con = connect(run)
        for name, table in (tables or {}).items():
            con.register(name, table)
        return con.sql(sql, params=params).to_arrow_table()

    return guarded(run, execute)


def batches(run: Path, sql: str, tables: dict[str, pa.Table] | None = None, rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """`query`'s answer a batch at a time, for answers too large to hold. The query runs (and a
    damaged part is quarantined) before the first batch comes; the connection lives while it is read."""

    def execute() -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader, pa.RecordBatch | None]:
        con = connect(run)
        for name, table in (tables or {}).items():
            con.register(name, table)
        reader = con.sql(sql).to_arrow_reader(rows)
        try:
            return con, reader, reader.read_next_batch()
        except StopIteration:
            return con, reader, None

    con, reader, first = guarded(run, execute)
    if first is not None:
        yield first
        yield from reader


def read_table(run: Path, table: str, columns: Sequence[str] | None = None, where: str | None = None) -> pa.Table:
    """One row per key, sorted by key; only the asked columns, only the rows matching `where`."""
    order = ", ".join(f'"{k}"' for k in spec(table).key)
    cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    sql = f"SELECT {cols} FROM {table}{f' WHERE {where}' if where else ''} ORDER BY {order}"
    data = query(run, sql)
    return data.cast(spec(table).schema) if not columns else data


def read_raw(run: Path, table: str) -> pa.Table:
    """Every written row, duplicates included, in write order."""
    columns = ", ".join(f'"{c}"' for c in spec(table).schema.names)
    sql = f"SELECT {columns} FROM {scan(run, table)} ORDER BY filename, file_row_number"
    return guarded(run, lambda: database().sql(sql).to_arrow_table()).cast(spec(table).schema)


def count(run: Path, table: str) -> int:
    return query(run, f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()


def compact(run: Path, table: str, whole: bool = False) -> int:
    """Merge the table's newest parts (`to_merge`; all of them if `whole`) into one, deduplicated;
    returns how many parts it merged.

    Not sorted: under the memory limit DuckDB spills a deduplication of millions of wide rows
    (subject masks) but not a sort of them; readers that need an order ask for it.
    Reads an explicit list of parts and deletes exactly those after the merged part is in place.
    They are the newest, so the merged part, named after the newest of them, sorts after every
    other part and before any later one: last-write-wins reads the same rows before, during and
    after a compaction.
    """
    return _merge(run, table, lambda rows: len(rows) if whole else to_merge(rows), at_least=2)


def withdraw(run: Path, table: str, column: str, keys: pa.Table) -> int:
    """Rewrite the table without the rows whose `column` is among `keys` (a one-column table):
    rows a whole stage no longer stands by. A whole compaction that leaves them out, so a kill -9
    during it leaves the rows readable still, and the stage's next plan withdraws them again."""
    if not keys.num_rows:
        return 0
    return _merge(run, table, len, at_least=1, without=(column, keys))


def _merge(run: Path, table: str, newest: Callable[[list[int]], int], at_least: int, without: tuple[str, pa.Table] | None = None) -> int:
    """Merge the `newest(row counts)` newest parts, if at least `at_least`, leaving out `without`'s keys."""

    def merge() -> list[Path]:
        found = parts(run, table)
        metas = [pq.ParquetFile(p).metadata for p in found]
        count = newest([m.num_rows for m in metas])
        found, metas = found[len(found) - count :], metas[len(found) - count :]
        if not found or len(found) < at_least:
            return []
        final = table_dir(run, table) / f"part-{found[-1].name.split('-')[1]}-z{uuid.uuid4().hex[:11]}.parquet"
        sql = latest(run, table, spec(table).identity, found)
        con = database()
        if without is not None:
            column, keys = without
            con.register("_without", keys)
            sql = f'SELECT * FROM ({sql}) WHERE "{column}" NOT IN (SELECT "{keys.column_names[0]}" FROM _without)'
        rows = sum(m.num_rows for m in metas)
        size = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
        with atomic_path(run, final) as tmp:
            con.execute(f"COPY ({sql}) TO {literal(tmp)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {group_rows(rows, size)})")
        return found

    merged = guarded(run, merge)
    for part in merged:
        part.unlink(missing_ok=True)
    return len(merged)


def to_merge(rows: list[int]) -> int:
    """How many of the newest parts, of these row counts in write order, a compaction merges: all,
    unless the first is a base (BASE_SHARE times the rows of all later parts); then the later
    ones once there are TIER_PARTS of them, else none. The later parts grow into a base's share
    in merges of their own, so a row is rewritten a few times, not once per compaction."""
    if len(rows) > 1 and rows[0] >= BASE_SHARE * sum(rows[1:]):
        return len(rows) - 1 if len(rows) - 1 >= TIER_PARTS else 0
    return len(rows)


def compact_all(run: Path) -> dict[str, int]:
    """Every table into one part (`python -m manifests compact`)."""
    return {name: merged for name in TABLES if (merged := compact(run, name, whole=True))}
