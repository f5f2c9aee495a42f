"""Hard edges: hostile names and paths, damaged parts, usage errors, full and read-only disks.

Each failure gives one clear line and the exit code the README promises; nothing already made is lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL, ROOT, manifests_cli, pipeline_cli, subprocess_env

from manifests import store

PROBE_SCENES = ["--stages", "probe,scenes", "--set", "filter.min_duration_s=0.2"]


def _one_line_error(text: str) -> str:
    """The error output, which must be one line and no traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text and len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A file whose name is not UTF-8 beside a good one, curated into a run folder whose path
    holds a quote and glob brackets."""
    base = tmp_path_factory.mktemp("hostile")
    src = base / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "good.mp4")
    with open(os.fsencode(src) + b"/bad\xffname.mp4", "wb") as f:
        f.write((REAL / "bikes.mp4").read_bytes())
    run = base / "it's [1]" / "run"
    first = pipeline_cli("curate", src, "--out", run, *PROBE_SCENES)
    again = pipeline_cli("curate", src, "--out", run, *PROBE_SCENES)
    return src, run, first, again


def test_a_name_that_is_not_utf8_gets_a_row_and_the_run_goes_on(hostile):
    src, run, first, again = hostile
    assert first.code == 3, first.out + first.err
    (video,) = store.read_table(run, "videos").to_pylist()
    assert video["path"] == str(src / "good.mp4")
    assert store.read_table(run, "scenes").num_rows > 0
    (error,) = store.read_table(run, "errors").to_pylist()
    assert error["error_type"] == "bad_input" and "UTF-8" in error["message"] and "bad" in error["message"]
    assert again.code == 3 and "nothing to do" in again.out, again.out + again.err  # the same row, not a second


def test_run_folder_path_with_quote_and_brackets(hostile):
    _, run, first, _ = hostile
    assert "'" in str(run) and "[1]" in str(run)
    assert store.count(run, "scenes") > 0
    shown = manifests_cli("sql", run, "SELECT count(*) AS n FROM videos")
    assert shown.code == 0 and shown.out.split() == ["n", "1"], shown.out + shown.err
    assert manifests_cli("compact", run).code == 0
    assert store.count(run, "scenes") > 0


def _overwrite_middle(part: Path, n: int = 64) -> None:
    data = bytearray(part.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n] = bytes((b ^ 0xFF) for b in data[middle : middle + n])
    part.write_bytes(bytes(data))


def test_a_part_damaged_in_the_middle_is_quarantined_and_recomputed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "a.mp4")
    run = tmp_path / "run"
    assert pipeline_cli("curate", src, "--out", run, *PROBE_SCENES).code == 0
    scenes_before = store.read_table(run, "scenes").to_pylist()
    for table in ("videos", "scenes"):
        (part,) = store.parts(run, table)
        _overwrite_middle(part)
    again = pipeline_cli("curate", src, "--out", run, *PROBE_SCENES)
    assert again.code == 0, again.out + again.err
    assert sorted(p.name for p in (run / "quarantine").iterdir()) == ["scenes", "videos"]
    assert store.read_table(run, "scenes").to_pylist() == scenes_before
