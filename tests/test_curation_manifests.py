"""Manifest parts are atomic and deduplicated; the inspection CLI works on a real run."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow as pa
import pytest
from conftest import manifests_cli

from manifests import files, store, views
from manifests.filters import RULES, FilterConfig, predicate
from manifests.schemas import TABLES


def _error(key: str, message: str = "boom", stage: str = "probe") -> dict:
    return {"stage": stage, "key": key, "error_type": "bad_input", "message": message, "attempts": 1}


def test_writing_the_same_rows_twice_gives_one_row(tmp_path):
    rows = [_error("/a.mp4"), _error("/b.mp4")]
    first = store.write_part(tmp_path, "errors", rows)
    second = store.write_part(tmp_path, "errors", list(reversed(rows)))
    assert first != second and store.parts(tmp_path, "errors") == [first, second]  # each writer its own part
    assert store.read_table(tmp_path, "errors").num_rows == 2
    assert store.read_raw(tmp_path, "errors").num_rows == 4
    assert store.compact(tmp_path, "errors") == 2
    assert store.read_raw(tmp_path, "errors").num_rows == 2 and len(store.parts(tmp_path, "errors")) == 1


def test_last_written_row_of_a_key_wins(tmp_path):
    store.write_part(tmp_path, "errors", [_error("/a.mp4", "first try")])
    store.write_part(tmp_path, "errors", [_error("/a.mp4", "second try"), _error("/b.mp4")])
    table = store.read_table(tmp_path, "errors")
    assert table.column("key").to_pylist() == ["/a.mp4", "/b.mp4"]  # sorted by key
    assert table.column("message").to_pylist()[0] == "second try"
    assert store.read_raw(tmp_path, "errors").num_rows == 3
    store.compact(tmp_path, "errors")
    store.write_part(tmp_path, "errors", [_error("/a.mp4", "third try")])  # after compaction, still last wins
    assert store.read_table(tmp_path, "errors").column("message").to_pylist() == ["third try", "boom"]


def test_compaction_leaves_a_large_base_alone_and_merges_the_small_parts_after_it_once_there_are_many(tmp_path):
    for half in range(2):
        store.write_part(tmp_path, "errors", [_error(f"/{i}.mp4") for i in range(half, 8 * store.BASE_SHARE * store.TIER_PARTS, 2)])
    store.compact(tmp_path, "errors")
    (base,) = store.parts(tmp_path, "errors")
    for k in range(store.TIER_PARTS):  # the last write of /0.mp4 and /1.mp4 wins, beside the base and after a merge
        store.write_part(tmp_path, "errors", [_error(f"/{k % 2}.mp4", f"try {k}")])
        assert store.compact(tmp_path, "errors") == (store.TIER_PARTS if k == store.TIER_PARTS - 1 else 0)
        assert store.read_table(tmp_path, "errors", where="key IN ('/0.mp4', '/1.mp4')").column("message").to_pylist() == [
            f"try {k - (k % 2)}", f"try {k - 1 + (k % 2)}" if k else "boom"]  # fmt: skip
    assert store.parts(tmp_path, "errors")[0] == base and len(store.parts(tmp_path, "errors")) == 2
    assert store.count(tmp_path, "errors") == 8 * store.BASE_SHARE * store.TIER_PARTS
    assert store.to_merge([100, 30]) == 2 and store.to_merge([100, *[1] * 7]) == 0 and store.to_merge([100, *[1] * 8]) == 8


def test_leftover_temporary_files_are_never_read_and_are_removed(tmp_path):
    store.write_part(tmp_path, "errors", [_error("/a.mp4")])
    half = files.temporary(tmp_path, ".parquet")
    half.write_bytes(b"PAR1 half a part, then the process was killed")
    keep = tmp_path / "clips" / "v" / "c.mp4"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"\x00" * 10)
    assert store.read_table(tmp_path, "errors").num_rows == 1  # the half part is not read
    assert files.sweep_temporaries(tmp_path) == 1
    assert not half.exists() and keep.exists()
    assert store.read_table(tmp_path, "errors").num_rows == 1


def test_no_temporary_remains_after_writes(tmp_path):
    for i in range(3):
        store.write_part(tmp_path, "errors", [_error(f"/{i}.mp4")])
    assert not list((tmp_path / files.TMP).iterdir())
    assert len(store.parts(tmp_path, "errors")) == 3


def test_empty_writes_make_no_part(tmp_path):
    assert store.write_part(tmp_path, "errors", []) is None
    assert store.parts(tmp_path, "errors") == []
    assert store.read_table(tmp_path, "errors").num_rows == 0
    assert store.read_table(tmp_path, "errors").schema == TABLES["errors"].schema


def test_rows_must_fit_the_schema(tmp_path):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError)):
        store.write_part(tmp_path, "videos", [{"video_id": "x", "n_frames": "many"}])
    with pytest.raises(KeyError, match="unknown table"):
        store.write_part(tmp_path, "no_such_table", [{"a": 1}])
    assert not store.parts(tmp_path, "videos")


def test_summary_counts_rows_of_every_table(curated):
    result = manifests_cli("summary", curated.run)
    assert result.code == 0, result.err
    lines = {line.split()[0]: line.split() for line in result.out.splitlines()}
    assert set(lines) == set(TABLES)
    for name in TABLES:
        assert int(lines[name][1]) == store.read_table(curated.run, name).num_rows
        assert int(lines[name][3]) == len(store.parts(curated.run, name))
    assert int(lines["clips"][1]) == 13 and int(lines["videos"][1]) == 5


def test_show_prints_a_table(curated):
    result = manifests_cli("show", curated.run, "videos")
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split()[:3] == ["video_id", "path", "bytes"]
    assert len(rows) == 5 and any("bikes.mp4" in r for r in rows)
    where = manifests_cli("show", curated.run, "clips", "--where", "n_frames = 10")  # counter's second shot
    assert where.code == 0 and len(where.out.splitlines()) == 2
    errors = manifests_cli("show", curated.run, "errors")
    assert errors.code == 0 and errors.out.split() == ["stage", "key", "error_type", "message", "attempts"]


def test_output_piped_into_a_reader_that_stops_is_not_an_error(curated):
    """`python -m manifests show RUN scenes | head -1`: the reader goes before the output is written."""
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "manifests", "show", str(curated.run), "scenes"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before the command has imported anything: its first write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err, err


def test_sql_sees_every_table_and_candidates(curated):
    con = views.connect(curated.run)
    for name in [*TABLES, "candidates"]:
        expected = store.read_table(curated.run, name).num_rows if name in TABLES else 13
        assert con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == expected, name
        result = manifests_cli("sql", curated.run, f"SELECT count(*) AS n FROM {name}")
        assert result.code == 0 and result.out.split() == ["n", str(expected)], (name, result.out, result.err)
    joined = manifests_cli(
        "sql", curated.run, "SELECT count(*) AS n FROM candidates WHERE clip_path IS NOT NULL AND motion_score IS NOT NULL"
    )
    assert joined.out.split() == ["n", "13"]


def test_funnel_follows_the_run_thresholds(curated):
    result = manifests_cli("funnel", curated.run)
    assert result.code == 0, result.err
    steps = []
    for line in result.out.splitlines():
        match = re.fullmatch(r"(.+?)\s+(\d+) left(?:\s+(\d+) removed)?", line)
        assert match, line
        steps.append((match[1], int(match[2]), int(match[3] or 0)))
    # The run kept every window (its config.yaml has KEEP_ALL's thresholds), so nothing is removed.
    assert steps == [
        ("windows", 13, 0), ("filter: duration", 13, 0), ("filter: resolution", 13, 0), ("filter: bitrate", 13, 0),
        ("filter: frame_rate", 13, 0), ("filter: aspect", 13, 0), ("filter: motion", 13, 0), ("filter: slideshow", 13, 0),
        ("filter: camera", 13, 0), ("clips", 13, 0),
    ]  # fmt: skip
    # The same run seen with the default thresholds: short windows drop out, by their duration.
    default = views.funnel(curated.run, FilterConfig())
    assert [s for s, _, _ in default] == [s for s, _, _ in steps]
    left = dict((s, n) for s, n, _ in default)
    durations = [r["n_frames"] / v for r, v in _frames_and_fps(curated.run)]
    assert left["filter: duration"] == sum(2.0 <= d <= 60.0 for d in durations) < 13
    assert all(removed >= 0 for _, _, removed in default)


def _every_table(curated, tmp_path):
    """A copy of the curated run with rows in every table `candidates` joins, differing between windows."""
    run = tmp_path / "run"
    shutil.copytree(curated.run / "manifests", run / "manifests")
    clips = sorted(store.read_table(run, "scenes").column("clip_id").to_pylist())
    store.write_part(run, "aesthetic", [{"clip_id": c, "score": 3.0 + i % 4, "score_min": 3.0} for i, c in enumerate(clips)])
    store.write_part(run, "screen", [{"clip_id": c, "text_area": 0.2 * (i % 2), "text_content": 0.0, "sharpness": 50.0, "nsfw_score": 0.0}
                                     for i, c in enumerate(clips)])  # fmt: skip
    store.write_part(run, "captions", [{"clip_id": c, "caption": f"caption {i}", "subjects_json": "[]"} for i, c in enumerate(clips[::2])])
    store.write_part(run, "subjects", [{"subject_id": f"{c}-{k}", "clip_id": c, "kind": "human", "score": 0.9} for c in clips[:6] for k in range(2)])
    store.write_part(run, "dedup", [{"clip_id": c, "duplicate_of": clips[0] if i == 1 else None} for i, c in enumerate(clips)])
    store.write_part(run, "sample_refs", [{"clip_id": c, "n_references": i % 2} for i, c in enumerate(clips)])
    store.write_part(run, "shards", [{"shard": "s0", "clip_ids": clips[:2]}, {"shard": "s1", "clip_ids": clips[1:4]}])
    return run, clips


def test_a_connection_to_some_windows_sees_them_as_the_whole_run_does(curated, tmp_path):
    run, clips = _every_table(curated, tmp_path)
    whole = views.connect(run)
    windows = whole.sql(f"SELECT clip_id, video_id FROM scenes WHERE clip_id IN ('{clips[1]}', '{clips[4]}', '{clips[7]}')").fetchall()
    some = views.connect(run, windows)
    rules = ", ".join(f"COALESCE({predicate(rule, FilterConfig())}, FALSE) AS {rule}" for rule in RULES)
    sql = f"SELECT *, {rules} FROM candidates WHERE clip_id IN ({', '.join(repr(c) for c, _ in windows)}) ORDER BY clip_id"
    seen = some.sql(sql).to_arrow_table()
    assert seen.num_rows == 3 and seen.to_pylist() == whole.sql(sql).to_arrow_table().to_pylist()
    assert some.sql("SELECT count(*) FROM candidates").fetchall() == [(3,)] < whole.sql("SELECT count(*) FROM candidates").fetchall()
    for column in ("shard", "caption", "n_subjects", "dedup", "references", "text", "aesthetic"):  # each differs among the three
        assert len(set(seen.column(column).to_pylist())) > 1, column


def test_a_query_joins_only_the_tables_whose_columns_it_names_and_reads_the_same(curated, tmp_path):
    run, _ = _every_table(curated, tmp_path)
    whole = views.connect(run)
    for sql, joined in [
        ("SELECT count(*) AS n FROM candidates", []),
        ("SELECT count(*) AS n, avg(motion_score) AS m FROM candidates WHERE aesthetic_score > 4 AND caption IS NOT NULL", ["motion", "aesthetic", "captions"]),
        ("SELECT clip_id, shard, n_subjects FROM candidates ORDER BY clip_id", ["subjects", "shards"]),
        ("SELECT clip_id, random_weights FROM candidates ORDER BY clip_id", ["aesthetic", "captions", "subjects"]),
        ("SELECT * FROM candidates ORDER BY clip_id", list(views.JOINED)),
        ("SELECT clip_id, duration_s * 2 AS d FROM candidates ORDER BY clip_id", list(views.JOINED)),  # a product: as `*`, every table
    ]:  # fmt: skip
        assert views.reading(sql) == joined, sql
        assert views.query(run, sql).to_pylist() == whole.sql(sql).to_arrow_table().to_pylist(), sql
    narrow = views.connect(run, sql="SELECT count(*) FROM candidates").sql("SELECT * FROM candidates LIMIT 0").columns
    assert "motion_score" not in narrow and "clip_id" in narrow  # the joins it does not name are not planned at all


def test_a_remembered_funnel_is_used_only_while_its_tables_and_conditions_are_unchanged(curated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(curated.run / "manifests", run / "manifests")
    remembered = run / store.FINISHED / views.FUNNEL
    strict = FilterConfig(min_motion=1.0)

    def counted(config: FilterConfig = strict) -> list:
        remembered.unlink(missing_ok=True)
        return views.funnel(run, config)

    def planted() -> list:
        """Known wrong counts in the remembered file: whatever `funnel` returns after this, it read or did not read."""
        known = json.loads(remembered.read_text())
        remembered.write_text(json.dumps({**known, "funnel": [["windows", 999, 0]]}))
        return [("windows", 999, 0)]

    truth = counted()
    assert remembered.is_file() and views.funnel(run, strict) == truth
    wrong = planted()
    assert views.funnel(run, strict) == wrong  # nothing changed: not counted again
    motion = store.parts(run, "motion")[-1]
    changes = {
        "a part added": lambda: store.write_part(run, "motion", store.read_raw(run, "motion").slice(0, 1)),
        "a compaction": lambda: store.compact(run, "motion", whole=True),
        "another threshold": None,
        "a quarantine": lambda: store.quarantine(run, store.parts(run, "motion")[-1], "test"),
    }
    for change, make in changes.items():
        planted()
        config = strict if make else FilterConfig(min_motion=2.0)
        if make:
            make()
        seen = views.funnel(run, config)
        assert seen != wrong and seen == counted(config), change
    assert motion.exists() is False  # the compaction rewrote the part the first count read
    assert counted() != truth  # the quarantine lost motion rows: their windows now fail the motion rule


def test_funnel_prints_removals_as_positive_counts(curated, tmp_path):
    run = tmp_path / "run"  # the same manifests, seen with the default thresholds
    shutil.copytree(curated.run / "manifests", run / "manifests")
    (run / "config.yaml").write_text("config:\n  filter: {}\n")
    result = manifests_cli("funnel", run)
    assert result.code == 0, result.err
    printed = [re.fullmatch(r"(.+?)\s+(\d+) left(?:\s+(\d+) removed)?", line) for line in result.out.splitlines()]
    assert all(printed), result.out
    removed = {m[1]: int(m[3] or 0) for m in printed}
    too_short_or_long = sum(not 2.0 <= d <= 60.0 for d in (r["n_frames"] / v for r, v in _frames_and_fps(curated.run)))
    assert removed["filter: duration"] == too_short_or_long > 0
    assert [(m[1], int(m[2]), int(m[3] or 0)) for m in printed] == views.funnel(run, FilterConfig())


def _frames_and_fps(run):
    fps = {v["video_id"]: v["fps"] for v in store.read_table(run, "videos").to_pylist()}
    return [(r, fps[r["video_id"]]) for r in store.read_table(run, "scenes").to_pylist()]


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = manifests_cli("summary", tmp_path)
    assert result.code == 2 and "not a run folder" in result.err
