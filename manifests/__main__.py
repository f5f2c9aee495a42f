"""Inspect a run's manifests: `summary`, `show TABLE [--where SQL]`, `sql "SELECT ..."`, `funnel`, `report`."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import duckdb

from manifests import store, views
from manifests.exits import EXIT_RUN_IN_USE, StorageError, UsageError, command, read_yaml, storage_failure, validated
from manifests.filters import FilterConfig
from manifests.report import ReportConfig, random_tables, write_report
from manifests.schemas import TABLES

FORMATS = ["table", "csv", "json"]


def _print_table(table, limit: int, fmt: str = "table") -> None:
    """`table`: aligned columns, long cells cut to 60 characters; `csv` and `json` (one object
    per line): every value in full, for copying a path out or for another program."""
    shown = table.slice(0, limit)
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(shown.column_names)
        writer.writerows(zip(*(shown.column(c).to_pylist() for c in shown.column_names)))
    elif fmt == "json":
        for row in shown.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))
    else:
        columns = shown.column_names
        cells = [[_cell(v) for v in shown.column(c).to_pylist()] for c in columns]
        widths = [max([len(c)] + [len(v) for v in col]) for c, col in zip(columns, cells)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for i in range(shown.num_rows):
            print("  ".join(col[i].ljust(w) for col, w in zip(cells, widths)))
    if table.num_rows > limit:
        print(f"... {table.num_rows - limit} more rows (use --limit)", file=sys.stderr if fmt != "table" else sys.stdout)


def _cell(value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _filter_config(run: Path) -> FilterConfig:
    """The run's own thresholds, so the funnel shows what the run applied."""
    path = run / "config.yaml"
    data = read_yaml(path).get("config", {}) if path.exists() else {}
    return validated(FilterConfig, data.get("filter", {}))


def _query(run: Path, sql: str):
    """A user's SQL: a mistake in it is one line, as in DuckDB's own shell."""
    try:
        return views.query(run, sql)
    except duckdb.Error as error:
        raise UsageError(str(error).splitlines()[0]) from None


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manifests", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("summary", help="rows per table").add_argument("run", type=Path)
    show = sub.add_parser("show", help="print a table")
    show.add_argument("run", type=Path)
    show.add_argument("table", choices=[*TABLES, "candidates"])
    show.add_argument("--where", help="SQL condition, e.g. \"score > 3\"")
    show.add_argument("--limit", type=int, default=50)
    show.add_argument("--format", choices=FORMATS, default="table", help="table (cells cut to 60 characters), csv or json (full values)")
    sql = sub.add_parser("sql", help="run SQL; every table and `candidates` is a view")
    sql.add_argument("run", type=Path)
    sql.add_argument("query")
    sql.add_argument("--limit", type=int, default=200)
    sql.add_argument("--format", choices=FORMATS, default="table", help="table (cells cut to 60 characters), csv or json (full values)")
    sub.add_parser("funnel", help="how many clips each filter rule removes").add_argument("run", type=Path)
    sub.add_parser("compact", help="merge each table's parts into one (atomic; safe to interrupt)").add_argument("run", type=Path)
    report = sub.add_parser("report", help="write RUN/report/index.html (funnel, score histograms, clip grid)")
    report.add_argument("run", type=Path)
    report.add_argument("--per-group", type=int, default=ReportConfig().per_group, help="clips shown per group")
    report.add_argument("--check", action="store_true", help="open it in headless Chromium: fail on console messages, save report/screenshot.png")
    args = p.parse_args(argv)

    if not (args.run / "manifests").is_dir():
        raise UsageError(f"{args.run} has no manifests (not a run folder?)")
    if args.command == "summary":
        for name in TABLES:
            n_parts = len(store.parts(args.run, name))
            rows = store.count(args.run, name) if n_parts else 0
            print(f"{name:<10} {rows:>9} rows  {n_parts:>5} parts")
        randomized = store.guarded(args.run, lambda: random_tables(args.run, views.connect(args.run)))
        if randomized:
            print(f"RANDOM WEIGHTS: {', '.join(randomized)} come from random-initialised models (profile tiny); not real scores")
    elif args.command == "show":
        where = f" WHERE {args.where}" if args.where else ""
        _print_table(_query(args.run, f"SELECT * FROM {args.table}{where} LIMIT {args.limit + 1}"), args.limit, args.format)
    elif args.command == "sql":
        _print_table(_query(args.run, args.query), args.limit, args.format)
    elif args.command == "compact":
        return _compact(args.run)
    elif args.command == "funnel":
        for step, left, removed in views.funnel(args.run, _filter_config(args.run)):
            print(f"{step:<22} {left:>8} left  {f'{removed} removed' if removed else ''}".rstrip())
    elif args.command == "report":
        return _report(args.run, args.per_group, args.check)
    return 0


def _compact(run: Path) -> int:
    from manifests.files import RunInUse, RunLock, sweep_temporaries

    try:
        with RunLock(run):
            sweep_temporaries(run)
            merged = store.compact_all(run)
    except RunInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_IN_USE
    except OSError as error:  # no permission on RUN/.lock: the run folder's storage (exits.command)
        line = storage_failure(error, run)
        if line is None:
            raise
        raise StorageError(line) from None
    for table, n in merged.items():
        print(f"{table:<10} {n:>6} parts merged into one")
    if not merged:
        print("nothing to compact: every table has at most one part")
    return 0


def screenshot_height(html: str) -> int:
    """A window tall enough for the whole clip grid (a headless screenshot shows the window only):
    the page above it, then rows of three cards (about 420 px each) on its longer side."""
    kept, _, rejected = html.partition("<section id='rejected'>")
    cards = max(kept.count("<div class='card"), rejected.count("<div class='card"))
    return min(16000, 3000 + 420 * -(-cards // 3))


def _report(run: Path, per_group: int, check: bool) -> int:
    if check:
        from manifests.browser import chromium

        try:
            chromium()
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
    page = write_report(run, _filter_config(run), ReportConfig(per_group=per_group))
    print(page)
    if check:
        from manifests.browser import open_page

        view = open_page(page, page.with_name("screenshot.png"), (1400, screenshot_height(page.read_text())))
        print(view.screenshot)
        if view.console:
            print("console messages:\n  " + "\n  ".join(view.console), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into `head`, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        sys.exit(0)
