"""The same footage and config give the same tables: run after run, after a re-threshold, after kill -9.

The whole chain (tiny profile) on Megamind.avi: four shots of two people, the third 1.92 s long,
so `filter.min_duration_s` decides whether its window reaches the identities.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REAL, ROOT, kill_session, pipeline_cli, subprocess_env
from learned_fixtures import tiny_args, tiny_models  # noqa: F401  (fixture)

from manifests import store
from manifests.schemas import TABLES
from pipeline import finished
from pipeline.config import load_config
from pipeline.runner import run_chain
from stages.identities import Identities

MEGAMIND = REAL.parent / "opencv" / "Megamind.avi"
SHORT_SHOTS = ["--set", "filter.min_duration_s=0.5"]  # the setting: the 1.92 s shot is kept
LOOSE = ["--set", "filter.min_motion=0"]
TO_IDENTITIES = ["--stages", "probe,scenes,motion,clips,caption,subjects,identities"]  # what identities and sample_refs depend on


def rows(run: Path, table: str) -> list[dict]:
    """The table as readers see it, by key; clips' byte counts left out (x264 files differ run to run, their frames do not)."""
    spec = TABLES[table]
    out = sorted(store.read_table(run, table).to_pylist(), key=lambda r: tuple(r[k] for k in spec.key))
    return [{k: v for k, v in r.items() if not (table == "clips" and k == "bytes")} for r in out]


def curate(src: Path, run: Path, models: Path, *settings: str) -> None:
    result = pipeline_cli("curate", src, "--out", run, *tiny_args(models), *LOOSE, *settings)
    assert result.code in (0, 3), result.out + result.err  # 3: the tiny captioner's answers may not parse (error rows)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("megamind")
    shutil.copy(MEGAMIND, folder)
    return folder


@pytest.fixture(scope="module")
def fresh(src, tiny_models, tmp_path_factory) -> Path:  # noqa: F811
    """Every stage, with the setting."""
    run = tmp_path_factory.mktemp("fresh") / "run"
    curate(src, run, tiny_models, *SHORT_SHOTS)
    assert len(rows(run, "sample_refs")) == 4  # every shot is a sample
    return run


@pytest.fixture(scope="module")
def fresh_identities(src, tiny_models, tmp_path_factory) -> Path:  # noqa: F811
    """The stages up to identities, with the setting."""
    run = tmp_path_factory.mktemp("fresh-identities") / "run"
    curate(src, run, tiny_models, *TO_IDENTITIES, *SHORT_SHOTS)
    assert len(rows(run, "sample_refs")) == 4
    return run


@pytest.fixture(scope="module")
def fresh_strict(src, tiny_models, tmp_path_factory) -> Path:  # noqa: F811
    """The stages up to identities, without the setting."""
    run = tmp_path_factory.mktemp("fresh-strict") / "run"
    curate(src, run, tiny_models, *TO_IDENTITIES)  # min_duration_s 2: the 1.92 s shot is not a sample
    assert len(rows(run, "sample_refs")) == 3
    return run


def rerun_of(run: Path, at: Path) -> Path:
    shutil.copytree(run, at, ignore=shutil.ignore_patterns(".lock"))
    return at


@pytest.mark.slow
def test_two_fresh_runs_give_equal_tables(fresh, src, tiny_models, tmp_path):  # noqa: F811
    again = tmp_path / "run"
    curate(src, again, tiny_models, *SHORT_SHOTS)
    for table in TABLES:
        if table != "stage_runs":  # a log of the commands that ran, with their times
            assert rows(again, table) == rows(fresh, table), table


@pytest.mark.slow
def test_a_rerun_with_a_setting_gives_the_identities_of_a_fresh_run_with_it(fresh_strict, fresh_identities, src, tiny_models, tmp_path):  # noqa: F811
    run = rerun_of(fresh_strict, tmp_path / "run")
    curate(src, run, tiny_models, *TO_IDENTITIES, *SHORT_SHOTS)
    for table in ("identities", "sample_refs"):
        assert rows(run, table) == rows(fresh_identities, table), table


@pytest.mark.slow
def test_a_stricter_rerun_withdraws_what_a_fresh_run_with_it_never_writes(fresh_strict, fresh_identities, src, tiny_models, tmp_path):  # noqa: F811
    run = rerun_of(fresh_identities, tmp_path / "run")
    curate(src, run, tiny_models, *TO_IDENTITIES, "--set", "filter.min_duration_s=2")  # the 1.92 s shot is no longer an input
    for table in ("identities", "sample_refs"):
        assert rows(run, table) == rows(fresh_strict, table), table


@pytest.mark.slow
def test_identities_plans_again_only_when_new_parts_touch_its_inputs(fresh_identities, tmp_path, monkeypatch):
    run = rerun_of(fresh_identities, tmp_path / "run")
    assert finished.load(run, "identities"), "the fresh run recorded having nothing left to do"
    plans = []
    real = Identities.plan
    monkeypatch.setattr(Identities, "plan", lambda self, items: plans.append(1) or real(self, items))
    config = load_config(run / "config.yaml")
    window = store.read_table(run, "scenes").to_pylist()[0]
    store.write_part(run, "scenes", [{**window, "scene_index": 99, "clip_id": "a-window-without-a-clip"}])
    assert {r.stage: r.inputs for r in run_chain([Identities], config, run)} == {"identities": 0}
    assert plans == [], "a new window that is no input of identities made it cluster the run again"
    store.write_part(run, "subjects", store.read_table(run, "subjects").slice(0, 1))  # a clip's subject written again
    assert {r.stage: r.inputs for r in run_chain([Identities], config, run)} == {"identities": 0}  # the same answer
    assert plans == [1], "a new part naming one of its inputs must make it plan"


@pytest.mark.slow
def test_kill_9_in_the_middle_then_rerun_gives_the_tables_of_a_fresh_run(fresh_identities, src, tiny_models, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline", "curate", str(src), "--out", str(run), *tiny_args(tiny_models), *LOOSE, *TO_IDENTITIES, *SHORT_SHOTS]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None and not store.parts(run, "subjects"):
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        kill_session(proc)
    assert len(rows(run, "sample_refs")) < 4  # killed before the identities
    curate(src, run, tiny_models, *TO_IDENTITIES, *SHORT_SHOTS)
    for table in ("videos", "scenes", "motion", "clips"):
        assert rows(run, table) == rows(fresh_identities, table), table
    # identities and sample_refs: what a fresh identities stage computes from the subjects this run holds
    again = tmp_path / "again"
    shutil.copytree(run, again, ignore=shutil.ignore_patterns("identities", "sample_refs", ".lock"))
    result = pipeline_cli("stage", "identities", "--run", again)
    assert result.code == 0, result.out + result.err
    for table in ("identities", "sample_refs"):
        assert rows(run, table) == rows(again, table), table
    for table in ("captions", "subjects", "identities", "sample_refs", "errors"):  # the kept frames or their decode: the same pixels
        assert rows(run, table) == rows(fresh_identities, table), table


@pytest.mark.slow
def test_the_chain_finds_two_people_each_in_two_shots(fresh):
    """Real faces through the whole chain: the woman (shots 1 and 3) is one identity, the man (shots 2 and 4) another."""
    from manifests import views

    faces = views.query(
        fresh,
        "SELECT w.start_frame, i.identity_id FROM subjects s JOIN identities i ON i.subject_id = s.subject_id "
        "JOIN scenes w ON w.clip_id = s.clip_id WHERE s.kind = 'face' ORDER BY w.start_frame",
    ).to_pylist()
    identity = {f["start_frame"]: f["identity_id"] for f in faces}
    assert len(faces) == 4 and sorted(identity) == [0, 98, 154, 200], faces  # one face per shot
    assert identity[0] == identity[154] != identity[98] == identity[200], faces
