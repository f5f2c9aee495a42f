"""Hard edges: hostile names and paths, damaged parts, usage errors, full and read-only disks.

Each failure gives one clear line and the exit code the README promises; nothing already made is lost.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import REAL, ROOT, kill_session, manifests_cli, pipeline_cli, run_cli, subprocess_env

from manifests import store

GOOD = "a good video whose long name must come out whole.mp4"
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
    shutil.copy(REAL / "carphone_pristine.mp4", src / GOOD)
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
    assert video["path"] == str(src / GOOD)
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


def _can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount(), reason="needs a private mount namespace (root): tmpfs and read-only mounts")


def _in_own_mounts(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=400)


def _errors_of(stderr_file: Path) -> list[str]:
    text = stderr_file.read_text()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@needs_mounts
def test_a_full_disk_ends_the_run_with_one_line_and_a_rerun_finishes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "a.mp4")
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    run = disk / "run"
    curate = f"{sys.executable} -m pipeline curate {src} --out {run} --stages probe,scenes,motion,clips --set filter.min_duration_s=0.2 --set filter.min_motion=0"
    script = f"""
        mount -t tmpfs -o size=16m tmpfs {disk}
        {curate} --stages probe,scenes > {logs}/1.out 2> {logs}/1.err; echo $? > {logs}/1.code
        head -c 65536 /dev/zero > {disk}/filler.small; dd if=/dev/zero of={disk}/filler bs=64k 2>/dev/null
        rm {disk}/filler.small  # room for the config and small parts, not for a clip: a worker's write fails
        {curate} > {logs}/2.out 2> {logs}/2.err; echo $? > {logs}/2.code
        {curate} > {logs}/3.out 2> {logs}/3.err; echo $? > {logs}/3.code
        {sys.executable} -c "from manifests import store; print(store.read_table('{run}', 'errors').num_rows)" > {logs}/errors.txt
        rm {disk}/filler
        {curate} > {logs}/4.out 2> {logs}/4.err; echo $? > {logs}/4.code
        {sys.executable} -c "from manifests import store; print(store.count('{run}', 'scenes'), store.count('{run}', 'clips'))" > {logs}/counts.txt
    """
    done = _in_own_mounts(script, tmp_path)
    code = {i: (logs / f"{i}.code").read_text().strip() for i in range(1, 5)}
    assert code[1] == "0", (logs / "1.err").read_text() + done.stderr
    for i in (2, 3):  # full: one line, its own code, no error rows; again: the same, not "nothing to do"
        assert code[i] == "6", (code, (logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text())
        (line,) = _errors_of(logs / f"{i}.err")
        assert "no space left" in line and str(run) in line and "run the same command again" in line, line
    assert (logs / "errors.txt").read_text().split() == ["0"]
    assert code[4] == "0", (logs / "4.out").read_text() + (logs / "4.err").read_text()
    scenes, clips = map(int, (logs / "counts.txt").read_text().split())
    assert clips == scenes > 0


@needs_mounts
def test_a_read_only_run_folder_is_one_line_even_with_nothing_to_do(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "a.mp4")
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    assert pipeline_cli("curate", src, "--out", run, *PROBE_SCENES).code == 0
    curate = f"{sys.executable} -m pipeline curate {src} --out {run} {' '.join(PROBE_SCENES)}"
    script = f"""
        mount --bind {run} {run} && mount -o remount,bind,ro {run}
        {curate} > {logs}/1.out 2> {logs}/1.err; echo $? > {logs}/1.code
        {sys.executable} -m pipeline stage scenes --run {run} > {logs}/2.out 2> {logs}/2.err; echo $? > {logs}/2.code
        {sys.executable} -m manifests compact {run} > {logs}/3.out 2> {logs}/3.err; echo $? > {logs}/3.code
    """
    done = _in_own_mounts(script, tmp_path)
    for i in (1, 2, 3):
        assert (logs / f"{i}.code").read_text().strip() == "6", (logs / f"{i}.err").read_text() + done.stderr
        (line,) = _errors_of(logs / f"{i}.err")
        assert "cannot be written" in line and str(run) in line, line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "scenes.max_clip=8"], ["unknown config key scenes.max_clip", "did you mean scenes.max_clip_s?"]),
        (["--set", "scenes.max_clip_s=0"], ["scenes.max_clip_s = 0", "greater than 0"]),
        (["--set", "workers=many"], ["workers = 'many'", "integer"]),
        (["--workers", "-1"], ["workers = -1", "greater than or equal to 1"]),
        (["--set", "scenes.detector=magic"], ["scenes.detector", "'adaptive'", "'transnetv2'"]),
        (["--set", 'scenes.params={"treshold": 3}'], ["adaptive detector has no parameter 'treshold'", "did you mean adaptive_threshold?"]),
        (["--set", "scenes.detector=content", "--set", 'scenes.params={"threshold": "high"}'], ["threshold of the content detector is a float", "'high'"]),
        (["--set", "motion.sample_fps=0"], ["motion.sample_fps = 0", "greater than 0"]),
        (["--set", "clips.preset=veryfst"], ["clips.preset = 'veryfst'", "'veryfast'"]),
        (["--set", 'identities.mix={"same_clip": 0, "other_shot": 0}'], ["identities.mix", "weights of 0 or more, not all 0"]),
        (["--set", "nonsense"], ["--set expects KEY=VALUE"]),
        (["--stages", "probe,scene"], ["unknown stage 'scene'", "did you mean scenes?"]),
        (["--config", "missing.yaml"], ["config file not found: missing.yaml"]),
    ],
)
def test_a_usage_error_is_one_line_exit_2_and_writes_nothing(tmp_path, args, words):
    run = tmp_path / "run"
    result = pipeline_cli("curate", REAL, "--out", run, *args)
    assert result.code == 2, result.out + result.err
    line = _one_line_error(result.err)
    assert line.startswith("error: ") and all(w in line for w in words), line
    assert not run.exists()


def test_config_file_mistakes_are_one_line_and_the_nearest_key(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("scenes:\n  max_clip_s: [8\n")
    result = pipeline_cli("curate", REAL, "--out", tmp_path / "run", "--config", broken)
    assert result.code == 2 and "not valid YAML (line 3" in _one_line_error(result.err), result.err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("filter:\n  min_motoin: 0.5\n")
    result = pipeline_cli("curate", REAL, "--out", tmp_path / "run", "--config", wrong)
    assert result.code == 2 and "did you mean filter.min_motion?" in _one_line_error(result.err), result.err


def test_every_command_line_turns_a_config_mistake_into_one_line(tmp_path):
    """train, the memory plan, eval and stage: the same one line and exit code 2 (train's own config
    is valid: the mistake is the override)."""
    from model.train.plan import main as plan
    from model.train.trainer import main as train

    config = ROOT / "configs" / "train_tiny.yaml"
    for main, args in ((train, ["--config", config]), (plan, [config])):
        result = run_cli(main, [*args, "--set", "max_step=2"])
        assert result.code == 2 and "did you mean max_steps?" in _one_line_error(result.err), result.err
    from model.cinema.evaluate import main as evaluate

    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"video": "a.mp4", "prompt": "x", "references": [{"image": "r.png", "kind": "cat", "label": "a"}]}\n')
    bad = tmp_path / "eval.yaml"
    bad.write_text("clpi: x\n")
    for args, words in (([samples, "--config", bad], "unknown config key clpi (did you mean clip?)"), ([samples], "samples.jsonl:1")):
        result = run_cli(evaluate, args)
        assert result.code == 2 and words in _one_line_error(result.err), result.err


def test_manifests_cli_sql_mistakes_and_full_values(hostile):
    _, run, _, _ = hostile
    result = manifests_cli("sql", run, "SELEC 1")
    assert result.code == 2 and "syntax error" in _one_line_error(result.err)
    result = manifests_cli("show", run, "videos", "--where", "no_such_column > 1")
    assert result.code == 2 and "no_such_column" in _one_line_error(result.err)
    (path,) = store.read_table(run, "videos", ["path"]).column("path").to_pylist()
    assert len(path) > 60  # the table cuts it; csv and json keep it whole
    table = manifests_cli("show", run, "videos")
    assert path not in table.out
    as_csv = manifests_cli("show", run, "videos", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert as_csv.code == 0 and [r["path"] for r in rows] == [path]
    as_json = manifests_cli("sql", run, "SELECT path, bytes FROM videos", "--format", "json")
    assert as_json.code == 0 and [json.loads(line) for line in as_json.out.splitlines()] == [{"path": path, "bytes": os.path.getsize(path)}]


def _make(*args: str) -> subprocess.CompletedProcess:
    """`make` as a user runs it (`-o .venv/.installed`: never reinstall from inside a test)."""
    return subprocess.run(["make", "-s", "-o", ".venv/.installed", *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_exit_codes_through_python_m_and_make(tmp_path):
    """The README's table: `python -m` exits with the code; make exits 2 (its own rule) after one
    line that gives the tool's code."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "a.mp4")
    (src / "empty.mp4").touch()
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(src), "--out", str(run), *PROBE_SCENES],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 3 and "--retry-errors" in done.stderr, done.stderr
    assert "\x1b[" not in done.stderr and "    probe: 2 inputs, 1 rows, 1 failed" in done.stderr, done.stderr  # a log, not a bar
    made = _make("curate", f"SRC={src}", f"OUT={run}", "STAGES=probe,scenes")
    assert made.returncode == 2 and "make curate: exit code 3 from the tool" in made.stderr, made.stdout + made.stderr
    made = _make("curate", f"SRC={tmp_path / 'nothing here'}", f"OUT={run}")
    assert made.returncode == 2 and "SRC does not exist" in made.stderr and "exit code 2 from the tool" in made.stderr
    made = _make("sample", "PROFILE=tiny", f"CONFIG={ROOT / 'configs' / 'train_tiny.yaml'}", "REFS=a.png", "PROMPT=two people",
                 f"CKPT={tmp_path / 'checkpoints' / 'step-1'}")  # fmt: skip
    assert made.returncode == 2 and "no checkpoint at" in made.stderr and "exit code 2 from the tool" in made.stderr, made.stderr


def _damage_one_packet(source: Path, target: Path) -> int:
    """A copy of `source` whose middle video packet is noise; returns the source's frame count."""
    container = av.open(str(source))
    spans = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    container.close()
    data = bytearray(source.read_bytes())
    pos, size = spans[len(spans) // 2]
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return len(spans)


def test_a_damaged_packet_a_fifo_and_a_playlist(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir(), outside.mkdir()
    shutil.copy(REAL / "carphone_pristine.mp4", src / "good.mp4")
    n_frames = _damage_one_packet(REAL / "bikes.mp4", src / "damaged.mp4")
    shutil.copy(REAL / "bikes.mp4", outside / "secret.mp4")
    (src / "list.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n../outside/secret.mp4\n#EXT-X-ENDLIST\n")
    os.mkfifo(src / "pipe.mp4")
    run = tmp_path / "run"
    result = pipeline_cli("curate", src, "--out", run, *PROBE_SCENES, "--extensions", "mp4,m3u8")
    assert result.code == 3, result.out + result.err
    videos = {Path(v["path"]).name: v for v in store.read_table(run, "videos").to_pylist()}
    assert set(videos) == {"good.mp4", "damaged.mp4"}  # nothing from outside SRC
    scenes = store.read_table(run, "scenes").to_pylist()
    decoded = sum(s["n_frames"] for s in scenes if s["video_id"] == videos["damaged.mp4"]["video_id"])
    assert n_frames - 2 <= decoded < n_frames  # the bad packet's frame is skipped, the rest kept
    errors = {Path(e["key"]).name: e for e in store.read_table(run, "errors").to_pylist()}
    assert set(errors) == {"list.m3u8", "pipe.mp4"}
    assert "playlist" in errors["list.m3u8"]["message"] and "not a regular file" in errors["pipe.mp4"]["message"]
    assert all(e["error_type"] == "bad_input" and e["attempts"] == 1 for e in errors.values())


@pytest.mark.slow
def test_the_memory_plan_says_what_it_does_within_seconds():
    """Planning a real-size model takes minutes on a CPU: its first line comes within 10 s of the
    imports (timed beside it: on a shared machine importing torch alone can take longer)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import model.train.plan"], cwd=ROOT, env=subprocess_env(), check=True, timeout=300)
    imports = time.monotonic() - started
    proc = subprocess.Popen([sys.executable, "-m", "model.train.plan", str(ROOT / "configs" / "train_full.yaml"), "--references", "0"],
                            cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
    try:
        started = time.monotonic()
        first = proc.stdout.readline()
        seconds = time.monotonic() - started
    finally:
        kill_session(proc)
    assert first.startswith("planning zai-org/CogVideoX-5b") and seconds < imports + 10, (first, seconds, imports)


def test_report_names_the_files_that_failed_at_probe(hostile):
    _, run, _, _ = hostile
    page = (run / "report" / "index.html").read_text()
    assert "Files that failed at probe" in page and "bad\\xffname.mp4" in page and "not valid UTF-8" in page


@pytest.mark.skipif(any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")), reason="Chromium is installed")
def test_report_check_without_chromium_is_one_line(hostile):
    _, run, _, _ = hostile
    result = manifests_cli("report", run, "--check")
    assert result.code == 2 and "make test-deps" in _one_line_error(result.err)
