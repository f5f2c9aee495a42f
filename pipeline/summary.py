"""What a run did, in numbers: the end-of-run summary and the exit code."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from manifests import store
from pipeline.runner import StageReport


def current_errors(run: Path):
    """Error rows not superseded by a later success of the same input (after --retry-errors)."""
    from pipeline.registry import STAGES

    errors = store.read_table(run, "errors")
    keep = []
    for row in errors.to_pylist():
        cls = STAGES.get(row["stage"])
        if cls is None or row["key"] not in store.keys(run, cls.writes, cls.input_key):
            keep.append(row)
    return keep


def summarize(run: Path, reports: list[StageReport], seconds: float) -> tuple[str, int]:
    """The summary text and the number of inputs that failed (all stages, this run and before)."""
    videos = store.read_table(run, "videos")
    scenes = store.read_table(run, "scenes")
    clips = store.read_table(run, "clips")
    failed = current_errors(run)
    worked = [r for r in reports if r.inputs]
    hours = pc.sum(videos.column("duration_s")).as_py() / 3600 if videos.num_rows else 0.0
    lines = [f"run: {run}"]
    lines.append(f"  videos    {videos.num_rows:>8}   ({hours:.2f} h of footage)")
    lines.append(f"  failed    {len(failed):>8}   (see: python -m manifests show {run} errors)")
    lines.append(f"  windows   {scenes.num_rows:>8}")
    lines.append(f"  clips     {clips.num_rows:>8}")
    for r in worked:
        rate = r.inputs / r.seconds if r.seconds else 0.0
        lines.append(f"  {r.stage:<9} {r.inputs:>8} inputs in {r.seconds:7.1f} s  ({rate:.2f}/s, {r.errors} failed)")
    if not worked:
        lines.append("  nothing to do: every stage was already complete")
    lines.append(f"  time      {seconds:8.1f} s")
    return "\n".join(lines), len(failed)
