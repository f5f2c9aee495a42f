"""What a run did, in numbers: the end-of-run summary and the exit code."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from manifests import store
from pipeline.runner import StageReport


def split_errors(run: Path) -> tuple[list[dict], list[dict]]:
    """(failures, warnings): an error row whose input has output rows is a warning, not a failure.

    That is an input that later succeeded (after --retry-errors), or one a stage recorded a
    problem for and still carried on (a caption whose subject list did not parse).
    """
    from pipeline.registry import STAGES

    errors = store.read_table(run, "errors")
    done = {name: store.keys(run, cls.writes, cls.input_key) for name, cls in STAGES.items()}
    failures, warnings = [], []
    for row in errors.to_pylist():
        (warnings if row["key"] in done.get(row["stage"], ()) else failures).append(row)
    return failures, warnings


def current_errors(run: Path):
    """Error rows not superseded by a success of the same input."""
    return split_errors(run)[0]


def random_weight_tables(run: Path) -> list[str]:
    """The tables with rows made by random-initialised models (the tiny profile)."""
    tables = []
    for table in ("aesthetic", "captions", "subjects"):
        data = store.read_table(run, table)
        if data.num_rows and pc.any(data.column("random_weights")).as_py():
            tables.append(table)
    return tables


def summarize(run: Path, reports: list[StageReport], seconds: float) -> tuple[str, int]:
    """The summary text and the number of inputs that failed (all stages, this run and before)."""
    videos = store.read_table(run, "videos")
    scenes = store.read_table(run, "scenes")
    clips = store.read_table(run, "clips")
    failed, warned = split_errors(run)
    shards = store.read_table(run, "shards")
    samples = pc.sum(shards.column("n_samples")).as_py() if shards.num_rows else 0
    worked = [r for r in reports if r.inputs]
    hours = pc.sum(videos.column("duration_s")).as_py() / 3600 if videos.num_rows else 0.0
    lines = [f"run: {run}"]
    lines.append(f"  videos    {videos.num_rows:>8}   ({hours:.2f} h of footage)")
    lines.append(f"  failed    {len(failed):>8}   (see: python -m manifests show {run} errors)")
    lines.append(f"  windows   {scenes.num_rows:>8}")
    if warned:
        lines.append(f"  warnings  {len(warned):>8}   (handled, e.g. bad model output; same table)")
    lines.append(f"  clips     {clips.num_rows:>8}")
    for table in ("aesthetic", "captions", "subjects"):
        if store.parts(run, table):
            lines.append(f"  {table:<9} {store.read_table(run, table).num_rows:>8}")
    if shards.num_rows:
        lines.append(f"  shards    {shards.num_rows:>8}   ({samples} samples)")
    random = random_weight_tables(run)
    if random:
        lines.append(f"  RANDOM WEIGHTS: {', '.join(random)} come from random-initialised models (profile tiny); not real scores")
    for r in worked:
        rate = r.inputs / r.seconds if r.seconds else 0.0
        lines.append(f"  {r.stage:<9} {r.inputs:>8} inputs in {r.seconds:7.1f} s  ({rate:.2f}/s, {r.errors} error rows)")
    if not worked:
        lines.append("  nothing to do: every stage was already complete")
    lines.append(f"  time      {seconds:8.1f} s")
    return "\n".join(lines), len(failed)
