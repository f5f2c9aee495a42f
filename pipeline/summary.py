"""What a run did, in numbers: the end-of-run summary and the exit code.

Every number is one aggregate query over the parts, so the summary of ten million windows costs
seconds and no memory that grows with the run.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from manifests import store, views
from manifests.report import answers_text, duration_text, random_tables
from pipeline.runner import StageReport

SKIPPED = ("not_video",)  # error types that are not failures: files that were never videos


def error_counts(run: Path, con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """failed / warnings / skipped: an error row whose input has output rows is a warning.

    That is an input that later succeeded (after --retry-errors), or one a stage recorded a
    problem for and still carried on (a caption whose subject list did not parse).
    """
    from pipeline.registry import STAGES

    # Only the keys that have error rows are looked up: a filter on each scan, not a set of every key done.
    done = " UNION ALL ".join(
        f"SELECT '{name}' AS stage, CAST(\"{cls.input_key}\" AS VARCHAR) AS key FROM {store.scan(run, cls.writes)} "
        f"WHERE CAST(\"{cls.input_key}\" AS VARCHAR) IN (SELECT key FROM errors WHERE stage = '{name}')"
        for name, cls in STAGES.items()
        if cls.reads != "sources"
    )
    done += f" UNION ALL SELECT 'probe', path FROM {store.scan(run, 'videos')} WHERE path IN (SELECT key FROM errors WHERE stage = 'probe')"
    skipped = ", ".join(f"'{t}'" for t in SKIPPED)
    sql = f"""
        SELECT count(*) FILTER (WHERE error_type IN ({skipped})) AS skipped,
               count(*) FILTER (WHERE error_type NOT IN ({skipped}) AND d.key IS NULL) AS failed,
               count(*) FILTER (WHERE error_type NOT IN ({skipped}) AND d.key IS NOT NULL) AS warnings
        FROM errors e LEFT JOIN (SELECT DISTINCT stage, key FROM ({done})) d USING (stage, key)
    """
    return con.sql(sql).to_arrow_table().to_pylist()[0]


def numbers(run: Path, con: duckdb.DuckDBPyConnection) -> tuple[dict, dict[str, int], list[str], str]:
    """Totals, error counts, the tables random weights made and the captioner's answers: one connection (each costs ~50 ms)."""
    totals = con.sql(
        """SELECT (SELECT count(*) FROM videos) AS videos, (SELECT coalesce(sum(duration_s), 0) FROM videos) AS footage,
                  (SELECT count(*) FROM scenes) AS windows, (SELECT count(*) FROM clips) AS clips,
                  (SELECT count(*) FROM aesthetic) AS aesthetic, (SELECT count(*) FROM captions) AS captions,
                  (SELECT count(*) FROM subjects) AS subjects, (SELECT count(*) FROM shards) AS shards,
                  (SELECT coalesce(sum(n_samples), 0) FROM shards) AS samples"""
    ).to_arrow_table().to_pylist()[0]
    return totals, error_counts(run, con), random_tables(run, con), answers_text(con) if store.has_rows(run, "captions") else ""


def summarize(run: Path, reports: list[StageReport], seconds: float) -> tuple[str, int]:
    """The summary text and the number of inputs that failed (all stages, this run and before)."""
    totals, errors, random, answers = store.guarded(run, lambda: numbers(run, views.connect(run)))
    lines = [f"run: {run}"]
    lines.append(f"  videos    {totals['videos']:>8}   ({duration_text(totals['footage'])} of footage)")
    if errors["skipped"]:
        lines.append(f"  skipped   {errors['skipped']:>8}   files: not video files (see: python -m manifests show {run} errors --where \"error_type = 'not_video'\")")
    lines.append(f"  failed    {errors['failed']:>8}   (see: python -m manifests show {run} errors)")
    lines.append(f"  windows   {totals['windows']:>8}")
    if errors["warnings"]:
        lines.append(f"  warnings  {errors['warnings']:>8}   (handled, e.g. bad model output; same table)")
    lines.append(f"  clips     {totals['clips']:>8}")
    for table in ("aesthetic", "captions", "subjects"):
        if store.has_rows(run, table):
            lines.append(f"  {table:<9} {totals[table]:>8}" + (f"   ({answers})" if table == "captions" and answers else ""))
    if totals["shards"]:
        lines.append(f"  shards    {totals['shards']:>8}   ({totals['samples']} samples)")
    if random:
        lines.append(f"  RANDOM WEIGHTS: {', '.join(random)} come from random-initialised models (profile tiny); not real scores; everything else has real weights")
    worked = [r for r in reports if r.inputs]
    for r in worked:
        rate = r.inputs / r.seconds if r.seconds else 0.0
        busy = f", model busy {r.utilisation:.0%} of {r.actors} actor(s)" if r.utilisation is not None else ""
        lines.append(f"  {r.stage:<9} {r.inputs:>8} inputs in {r.seconds:7.1f} s  ({rate:.2f}/s, {r.errors} failed{f', {r.warnings} warnings' if r.warnings else ''}{busy})")
    if not worked:
        lines.append("  nothing to do: every stage was already complete")
    lines.append(f"  time      {seconds:8.1f} s")
    return "\n".join(lines), errors["failed"]
