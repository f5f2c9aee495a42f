"""The run report: funnel, histograms and the clip grid, checked in the page and in headless Chromium."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from xml.etree import ElementTree

import cv2
import numpy as np
import pytest
from conftest import DATA, KEEP_ALL, manifests_cli, pipeline_cli

from manifests import store, views
from manifests.filters import FilterConfig
from manifests.report import ReportConfig, duration_text, sample_groups, write_report
from manifests.store import read_table, write_part
from stages.crops import box_crop, masked_crop
from stages.subjects import write_png
from stages import video
from stages.video import iter_frames, near_middle

NO_SUBJECT = "no subject kept: 0 boxes above score 0.35"
SVG = "{http://www.w3.org/2000/svg}"


def add_references(run: Path, clip: dict) -> list[dict]:
    """A person and a face crop of the clip's first frame, written as the subjects stage writes them."""
    image = next(iter_frames(run / clip["path"], fmt="rgb24", end_frame=1)).image
    h, w = image.shape[:2]
    y, x = np.ogrid[:h, :w]
    mask = ((y - h / 2) / (h / 3)) ** 2 + ((x - w / 2) / (w / 4)) ** 2 <= 1
    rows = []
    for kind, label, box in [("human", "person", (w / 4, h / 6, 3 * w / 4, 5 * h / 6)), ("face", "face", (w / 3, h / 4, w / 2, h / 2))]:
        sid = f"{clip['clip_id']}-{kind}"
        folder = run / "refs" / clip["clip_id"]
        folder.mkdir(parents=True, exist_ok=True)
        write_png(run, folder / f"{sid}.crop.png", box_crop(image, box))
        write_png(run, folder / f"{sid}.masked.png", masked_crop(image, mask, box))
        rows.append({
            "subject_id": sid, "clip_id": clip["clip_id"], "kind": kind, "label": label, "frame_index": 0, "box": list(box),
            "mask_rle": None, "score": 0.9, "area_fraction": float(mask.mean()), "crop_path": f"refs/{clip['clip_id']}/{sid}.crop.png",
            "masked_path": f"refs/{clip['clip_id']}/{sid}.masked.png", "model": "test (random weights)", "random_weights": True,
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def report_run(curated, tmp_path_factory):
    """The shared curated run (real clips) plus aesthetic scores and references, and stricter thresholds.

    Known answers: `low` passes motion but scores 3 < 4 on aesthetics; `bare` passes every filter
    but has no reference (its subjects error says why); motion rejects the slower half.
    """
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(curated.run, run, ignore=shutil.ignore_patterns("report"))
    motion = {r["clip_id"]: r["score"] for r in read_table(run, "motion").to_pylist()}
    filters = FilterConfig(
        min_duration_s=0.2, min_short_side=0, min_bpp=0, min_frame_rate=0, min_residual_px=0,
        min_motion=float(np.median(list(motion.values()))), max_motion=1e5,
    )  # fmt: skip
    clips = sorted(read_table(run, "clips").to_pylist(), key=lambda c: c["clip_id"])
    moving = [c for c in clips if motion.get(c["clip_id"], -1) >= filters.min_motion]
    low, bare = moving[0]["clip_id"], moving[1]["clip_id"]
    windows = read_table(run, "scenes").column("clip_id").to_pylist()
    aesthetic = [3.0 if c == low else 5.0 for c in windows]
    write_part(run, "aesthetic", [
        {"clip_id": c, "score": s, "score_min": s, "n_frames": 1, "model": "test (random weights)", "random_weights": True}
        for c, s in zip(windows, aesthetic)
    ])  # fmt: skip
    write_part(run, "subjects", [row for clip in clips if clip["clip_id"] != bare for row in add_references(run, clip)])
    write_part(run, "errors", [{"stage": "subjects", "key": bare, "error_type": "bad_model_output", "message": NO_SUBJECT}])
    return run, filters, low, bare, len(moving) - 2


def cards(page: str) -> dict[str, list[str]]:
    """section id (kept / rejected) -> clip ids of its cards, in page order (as written, or as Chromium serialises)."""
    kept, rejected = re.split(r"<section id=['\"]rejected['\"]>", page)
    return {name: re.findall(r"data-clip=['\"]([^'\"]+)", part) for name, part in (("kept", kept), ("rejected", rejected))}


def test_report_shows_every_clip_in_its_group_with_the_rule_that_rejected_it(report_run):
    run, filters, low, bare, n_kept = report_run
    page = write_report(run, filters, ReportConfig(per_group=1000)).read_text()
    remembered = views.known_funnel(run, views.funnel_basis(run, views.funnel_steps(run, filters)))
    (run / store.FINISHED / views.FUNNEL).unlink()
    counted = views.funnel(run, filters)  # by its own scan
    steps = {step: (left, removed) for step, left, removed in counted}
    sampled, funnel = sample_groups(run, views.connect(run), filters, 1000)
    assert funnel == counted == remembered  # the page's funnel comes from the groups' scan, kept for `funnel`
    groups = {g.status: g for g in sampled}
    assert groups["motion"].total == steps["filter: motion"][1] > 0
    assert [r["clip_id"] for r in groups["aesthetic"].rows] == [low]
    assert [r["clip_id"] for r in groups["subjects"].rows] == [bare]
    assert groups["kept"].total == steps["subjects"][0] == n_kept > 0
    assert sum(g.total for g in groups.values()) == steps["windows"][0]

    shown = cards(page)
    assert set(shown["kept"]) == {r["clip_id"] for r in groups["kept"].rows}
    assert sorted(shown["rejected"]) == sorted(r["clip_id"] for s, g in groups.items() if s != "kept" for r in g.rows)
    assert f"motion_score &gt;= {filters.min_motion}" in page and NO_SUBJECT in page
    assert "id='random-weights'" in page and "aesthetic, subjects" in page
    for clip_id in shown["kept"]:  # each kept card shows both references with kind and label
        assert page.count(f"refs/{clip_id}/") == 2
    assert "human: person" in page and "face: face" in page

    srcs = re.findall(r"src='([^']+)'", page)
    assert all((run / "report" / src).resolve().is_file() for src in srcs)
    posters = [s for s in srcs if s.startswith("posters/")]
    assert len(posters) == steps["windows"][0]
    assert all(cv2.imread(str(run / "report" / p)).shape[1] == 256 for p in posters)
    scored = views.query(run, "SELECT count(motion_score) AS motion, count(aesthetic_score) AS aesthetic FROM candidates").to_pylist()[0]
    for plot, threshold in (("motion", "min_motion"), ("aesthetic", "min_aesthetic")):  # every scored clip in a bar
        svg = ElementTree.parse(run / "report" / "plots" / f"{plot}.svg").getroot()
        assert sum(int(e.get("data-count")) for e in svg.iter(f"{SVG}rect") if e.get("data-count")) == scored[plot] > 0
        assert threshold in {e.get("data-threshold") for e in svg.iter(f"{SVG}path")}
        assert f"{plot}_score: {scored[plot]} scored" in "".join(svg.itertext())


def test_funnel_shows_removals_as_positive_counts_and_short_footage_readably(report_run):
    run, filters, *_ = report_run
    page = write_report(run, filters, ReportConfig(per_group=1)).read_text()
    table = page.split("<table id='funnel'>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td class='n'>(\d+)</td><td class='n'>([^<]*)</td></tr>", table)
    steps = views.funnel(run, filters)
    assert rows == [(step, str(left), str(removed) if removed else "") for step, left, removed in steps]
    assert dict((s, r) for s, _, r in steps)["filter: motion"] > 0  # a removal is shown, as a positive count

    seconds = round(sum(read_table(run, "videos").column("duration_s").to_pylist()))
    assert 0 < seconds < 60  # the shared sample footage: seconds, which "0.01 h" hid
    videos = read_table(run, "videos").num_rows
    assert f"<th>videos</th><td class='n'>{videos} ({seconds} s)</td>" in page


def test_a_poster_is_the_keyframe_nearest_the_middle_inside_the_window_else_the_middle_frame():
    path = DATA / "pyscenedetect" / "testvideo.mp4"  # keyframes at frames 0, 30, 180 and 480; a frame is 1001 pts
    frames = {f.index: f.image for f in iter_frames(path, fmt="rgb24", keep={180, 250}.__contains__, end_frame=251)}
    decoded = sum(video.DECODED.values())
    assert np.array_equal(near_middle(path, 150 * 1001, 300 * 1001), frames[180])  # the keyframe before the middle (225) lies inside
    assert sum(video.DECODED.values()) - decoded == 1  # that frame alone, not the decoder's reorder delay
    assert np.array_equal(near_middle(path, 200 * 1001, 300 * 1001), frames[250])  # none inside: the middle, from frame 180


def test_duration_text_reads_like_a_person_would_say_it():
    assert [duration_text(s) for s in (0, 42.4, 462, 3599.4, 5400)] == ["0 s", "42 s", "7 min 42 s", "59 min 59 s", "1.50 h"]


def test_grid_is_a_fixed_sample_that_reruns_identically(report_run):
    run, filters, *_ = report_run
    first = write_report(run, filters, ReportConfig(per_group=2)).read_text()
    posters = {p: p.stat().st_mtime_ns for p in (run / "report" / "posters").iterdir()}
    for group in sample_groups(run, views.connect(run), filters, 1000)[0]:
        ids = sorted((r["clip_id"] for r in group.rows), key=lambda c: hashlib.md5(c.encode()).hexdigest())
        for clip_id in ids[:2]:
            assert f"data-clip='{clip_id}'" in first
        for clip_id in ids[2:]:
            assert f"data-clip='{clip_id}'" not in first
        assert f"(showing {min(2, group.total)} of {group.total})" in first
    assert write_report(run, filters, ReportConfig(per_group=2)).read_text() == first
    assert {p: p.stat().st_mtime_ns for p in (run / "report" / "posters").iterdir()} == posters  # cached


@pytest.mark.slow
def test_report_opens_in_headless_chromium(report_run):
    from manifests.browser import open_page

    run, filters, *_ = report_run
    page = write_report(run, filters)
    view = open_page(page, run / "report" / "screenshot.png")
    assert view.console == []
    assert cards(view.dom)["kept"] and cards(view.dom)["rejected"]
    assert "RANDOM WEIGHTS" in view.dom and re.search(r"<img[^>]+src=\"\.\./refs/", view.dom)
    shot = cv2.imread(str(view.screenshot))
    assert shot.shape[:2] == (2000, 1400)
    grey = cv2.cvtColor(shot, cv2.COLOR_BGR2GRAY)
    grid = grey[-600:]  # the bottom of the shot: the clip grid's posters and crops, not a blank page
    assert grey.std() > 20 and (np.abs(grid.astype(int) - 250) > 10).mean() > 0.2

    # The console check is real: a reference that cannot load is reported.
    ref = next((run / "refs").rglob("*.masked.png"))
    hidden = ref.with_name("hidden.png")
    ref.rename(hidden)
    try:
        broken = open_page(page, run / "report" / "broken.png")
    finally:
        hidden.rename(ref)
        (run / "report" / "broken.png").unlink(missing_ok=True)
    assert any("image did not load" in m and ref.name in m for m in broken.console)


def test_a_rerun_with_nothing_to_do_rewrites_the_report_only_when_a_table_changed_since(curated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(curated.run, run)  # mtimes kept: the page is newer than every table
    page = run / "report" / "index.html"
    written = page.stat().st_mtime_ns
    result = pipeline_cli("curate", curated.src, "--out", run, *KEEP_ALL)
    assert result.code == 0 and "  report " not in result.out and page.stat().st_mtime_ns == written
    motion = read_table(run, "motion")
    store.withdraw(run, "motion", "clip_id", motion.select(["clip_id"]).slice(0, 1))  # rows changed by no stage's inputs
    write_part(run, "motion", motion.slice(0, 1))
    result = pipeline_cli("curate", curated.src, "--out", run, *KEEP_ALL)
    assert result.code == 0 and "  report " in result.out and page.stat().st_mtime_ns > written


def test_report_cli_and_curate_write_the_report(curated, tmp_path, monkeypatch):
    assert "report" in curated.result.out and (curated.run / "report" / "index.html").is_file()
    page = (curated.run / "report" / "index.html").read_text()
    assert "<table id='stages'>" in page and "<td>scenes</td>" in page  # each stage's time and first result
    result = manifests_cli("report", tmp_path / "nothing")
    assert result.code == 2 and "not a run folder" in result.err

    run = tmp_path / "run"
    shutil.copytree(curated.run, run, ignore=shutil.ignore_patterns("report"))
    result = manifests_cli("report", run, "--per-group", "1")
    assert result.code == 0 and Path(result.out.strip()) == run / "report" / "index.html"
    assert "(showing 1 of " in (run / "report" / "index.html").read_text()

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.__main__.write_report", broken)  # a failing report never fails the run
    shutil.rmtree(run / "report")  # a rerun with nothing to do writes the report only when there is none
    result = pipeline_cli("curate", curated.src, "--out", run, *KEEP_ALL)
    assert result.code == 0 and "warning: no report written: OSError: disk full" in result.err
