"""`python -m bench.scale`: the run folder's costs at 100k to 10M clip windows, on synthetic runs.

`synthesize` writes every table through the project's own writer (`manifests.store.write_part`)
with realistic column sizes (subject masks as RLE JSON of a few KB) and ids in the formats the
stages write (the numbered ids it wrote before were shorter and in order, and made every join
cheaper: at 1M windows a full ask took 40% less memory), 10 windows per video, as a finished run
leaves them: every table compacted, each stage's `finished` record written. SRC holds one empty
file per video, so a rerun walks and anti-joins real paths. Each step runs as its own process and
reports its wall time and peak RSS (`/usr/bin/time`). The 10M-window run takes 37 minutes to make
on two quiet cores and 13 GB of disk (more while a table is compacted); `--keep DIR` makes it once
and measures copies of it."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.sections import ROOT, section_path, write_section
from manifests import store
from pipeline.config import load_config, write_run_config
from stages.identities import Identities
from stages.scenes import clip_id

WINDOWS_PER_VIDEO = 10
CHUNK = 100_000  # windows per written part, in pieces the generator can hold; then every table is compacted
MASKS = 20_000
LINKS = 60_000  # hard links per empty source file (ext4 allows 65,000)
SHARD = 1000  # clips per shard
SYNTHETIC = uuid.UUID("0b7f4a52-6c1e-4d8a-9f3b-5e2a7c9d1f60")  # namespace of the subjects' and identities' synthetic ids


def video_ident(i: int) -> str:
    """The id of video i, in the probe's format (`content_hash`: 32 hex digits)."""
    return hashlib.blake2b(f"v{i}".encode(), digest_size=16).hexdigest()


def window_clip_id(i: int) -> str:
    """The id of window i (the stage's own `clip_id`: a uuid5 of its video and frames). Real ids,
    not numbered ones: a key's length and its order in the parts change what every join costs."""
    first = (i % WINDOWS_PER_VIDEO) * 90
    return clip_id(video_ident(i // WINDOWS_PER_VIDEO), first, first + 90)


def _uuids(prefix: str, n: int, start: int = 0) -> pa.Array:
    return pa.array([str(uuid.uuid5(SYNTHETIC, f"{prefix}{i}")) for i in range(start, start + n)], pa.string())


def _masks(rng: np.random.Generator, n: int) -> list[str]:
    """Subject masks as RLE JSON of a few KB: a pool of MASKS distinct ones, far more than a
    Parquet page holds, so they compress and scan as distinct masks would."""
    pool = [json.dumps({"size": [480, 854], "counts": rng.integers(1, 2000, size=rng.integers(150, 400)).tolist()}) for _ in range(MASKS)]
    return [pool[i] for i in rng.integers(0, MASKS, n)]


def synthesize(run: Path, src: Path, n_windows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_videos = n_windows // WINDOWS_PER_VIDEO
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):  # links to a few empty files: a million files in seconds
        base = src / f"v{i - i % LINKS:09d}.mp4"
        base.touch() if i % LINKS == 0 else os.link(base, src / f"v{i:09d}.mp4")
    config = load_config(None, [f"src={src}", f"tiny_models={ROOT / 'tiny-models'}"], "tiny")
    write_run_config(run, config)
    for start in range(0, n_videos, CHUNK):
        n = min(CHUNK, n_videos - start)
        store.write_part(run, "videos", pa.table({
            "video_id": pa.array([video_ident(i) for i in range(start, start + n)]), "path": pa.array([str(src / f"v{i:09d}.mp4") for i in range(start, start + n)]),
            "bytes": pa.array(rng.integers(10**6, 10**9, n)), "duration_s": pa.array(np.full(n, 30.0)), "fps": pa.array(np.full(n, 30.0)),
            "n_frames": pa.array(np.full(n, 900)), "width": pa.array(np.full(n, 1280, np.int32)), "height": pa.array(np.full(n, 720, np.int32)),
            "codec": pa.array(["h264"] * n), "pix_fmt": pa.array(["yuv420p"] * n), "rotation": pa.array(np.zeros(n, np.int32)),
            "vfr": pa.array(np.zeros(n, bool)), "has_audio": pa.array(np.ones(n, bool)),
        }))  # fmt: skip
    for start in range(0, n_windows, CHUNK):
        n = min(CHUNK, n_windows - start)
        index = np.arange(start, start + n)
        clip_ids = pa.array([window_clip_id(i) for i in index])
        window_videos = pa.array([video_ident(i // WINDOWS_PER_VIDEO) for i in index])
        store.write_part(run, "scenes", pa.table({
            "video_id": window_videos, "scene_index": pa.array((index % WINDOWS_PER_VIDEO).astype(np.int32)),
            "clip_id": clip_ids, "shot_index": pa.array((index % WINDOWS_PER_VIDEO).astype(np.int32)),
            "start_frame": pa.array((index % WINDOWS_PER_VIDEO) * 90), "end_frame": pa.array((index % WINDOWS_PER_VIDEO) * 90 + 90),
            "start_pts": pa.array((index % WINDOWS_PER_VIDEO) * 90 * 512), "end_pts": pa.array((index % WINDOWS_PER_VIDEO) * 90 * 512 + 90 * 512),
            "start_s": pa.array((index % WINDOWS_PER_VIDEO) * 3.0), "end_s": pa.array((index % WINDOWS_PER_VIDEO) * 3.0 + 3.0),
            "n_frames": pa.array(np.full(n, 90)), "detector": pa.array(["adaptive"] * n), "params": pa.array(['{"detector": "adaptive", "max_clip_s": 10.0}'] * n),
        }))  # fmt: skip
        kept_mask = index % 2 == 0  # half the windows pass the filters; the others fail the motion rule
        store.write_part(run, "motion", pa.table({
            "clip_id": clip_ids, "score": pa.array(np.where(kept_mask, rng.uniform(1.0, 30.0, n), 0.1)), "flow_mean_px": pa.array(rng.random(n)),
            "static_share": pa.array(rng.random(n)), "camera_motion": pa.array(["pan_tilt"] * n), "pan_px": pa.array(rng.random(n)),
            "zoom_px": pa.array(rng.random(n)), "residual_px": pa.array(rng.uniform(0.5, 5.0, n)),
            "n_pairs": pa.array(np.full(n, 5, np.int32)), "method": pa.array(["dis"] * n),
        }))  # fmt: skip
        store.write_part(run, "aesthetic", pa.table({
            "clip_id": clip_ids, "score": pa.array(rng.uniform(4.5, 7.0, n)), "score_min": pa.array(rng.uniform(4.0, 4.5, n)),
            "n_frames": pa.array(np.full(n, 4, np.int32)), "model": pa.array(["timm/vit_large_patch14_clip_224.openai"] * n),
            "random_weights": pa.array(np.zeros(n, bool)),
        }))  # fmt: skip
        kept = clip_ids.filter(pa.array(kept_mask))
        kept_videos = window_videos.filter(pa.array(kept_mask))
        k = len(kept)
        store.write_part(run, "clips", pa.table({
            "clip_id": kept, "video_id": kept_videos, "path": pa.array([f"clips/v/{c}.mp4" for c in kept.to_pylist()]),
            "start_frame": pa.array(np.zeros(k, np.int64)), "end_frame": pa.array(np.full(k, 90)), "n_frames": pa.array(np.full(k, 90)),
            "fps": pa.array(np.full(k, 30.0)), "width": pa.array(np.full(k, 1280, np.int32)), "height": pa.array(np.full(k, 720, np.int32)),
            "bytes": pa.array(rng.integers(10**5, 10**7, k)),
        }))  # fmt: skip
        store.write_part(run, "captions", pa.table({
            "clip_id": kept, "caption": pa.array(["A person in a red jacket walks a dog along a busy street at dusk. " * 3] * k),
            "subjects_json": pa.array(['[{"kind": "human", "label": "person"}, {"kind": "object", "label": "dog"}]'] * k),
            "subjects_source": pa.array(["model"] * k), "model": pa.array(["Qwen/Qwen2.5-VL-3B-Instruct"] * k),
            "prompt_version": pa.array(["caption_v1"] * k), "random_weights": pa.array(np.zeros(k, bool)),
        }))  # fmt: skip
        subject_clips = np.repeat(np.array(kept.to_pylist(), object), 3)
        s = len(subject_clips)
        store.write_part(run, "subjects", pa.table({
            "subject_id": _uuids(f"s{start}-", s), "clip_id": pa.array(subject_clips.tolist(), pa.string()),
            "kind": pa.array(["human", "face", "object"] * k), "label": pa.array(["person", "face", "dog"] * k),
            "frame_index": pa.array(np.full(s, 45)), "box": pa.array([[10.0, 20.0, 200.0, 400.0]] * s, pa.list_(pa.float32(), 4)),
            "mask_rle": pa.array(_masks(rng, s)), "score": pa.array(rng.random(s)), "area_fraction": pa.array(rng.random(s)),
            "crop_path": pa.array(["refs/c/s.crop.png"] * s), "masked_path": pa.array(["refs/c/s.masked.png"] * s),
            "model": pa.array(["IDEA-Research/grounding-dino-tiny + ybelkada/segment-anything"] * s), "random_weights": pa.array(np.zeros(s, bool)),
        }))  # fmt: skip
        _later_tables(run, kept, kept_videos, subject_clips, start, Identities(config.identities, run))
    store.compact_all(run)  # as each stage leaves its table when it ends
    # the run's failures, compacted as a run's end leaves them (a rerun then rewrites nothing, and its report stays current)
    store.write_part(run, "errors", [{"stage": "motion", "key": f"clip{i:012d}x", "error_type": "bad_input", "message": "too short", "attempts": 1}
                                     for i in range(20)])  # fmt: skip
    write_records(run)


def write_records(run: Path) -> None:
    """Each stage's `finished` record, computed by the runner's own functions as it writes them when
    a stage ends with nothing pending (the digest of its ask, the parts deciding its inputs, its
    output's parts and count): the run is a finished run, and reruns ask what a finished run's do."""
    from pipeline import finished
    from pipeline.registry import STAGES
    from pipeline.runner import deciding, pending_query

    config = load_config(run / "config.yaml")
    for name in config.stages:
        cls = STAGES[name]
        if cls.reads == "sources":  # the probe keeps no record: every run walks SRC
            continue
        decides = deciding(cls, config, config.stages, run)
        done = store.query(run, f'SELECT count(DISTINCT "{cls.input_key}") AS n FROM {cls.writes}').column("n")[0].as_py()
        record = finished.Record(digest=finished.digest(run, pending_query(cls, run, decides, False), getattr(config, name)),
                                 parts=store.snapshot(run, finished.input_tables(cls, decides)),
                                 output=store.snapshot(run, [cls.writes])[cls.writes], done=done)  # fmt: skip
        finished.save(run, name, record)


def _later_tables(run: Path, kept: pa.Array, kept_videos: pa.Array, subject_clips: np.ndarray, start: int, identities: Identities) -> None:
    """screen, dedup, identities, sample_refs and shards of the clips: every stage of the chain is done.
    Each sample_refs row has the digest the identities stage computes for its clip (its subjects
    link to nothing: no embeddings), so a rerun finds them done, as it would a run's own rows."""
    k, s = len(kept), len(subject_clips)
    digests = {item["clip_id"]: item["inputs_digest"] for item, _ in identities.planned(pa.table({"clip_id": kept}))}
    store.write_part(run, "screen", pa.table({
        "clip_id": kept, "text_area": pa.array(np.full(k, 0.01)), "text_area_max": pa.array(np.full(k, 0.02)),
        "text_content": pa.array(np.full(k, 0.01)), "sharpness": pa.array(np.full(k, 200.0)),
        "nsfw_score": pa.array(np.full(k, 0.02)), "n_frames": pa.array(np.full(k, 4, np.int32)),
        "text_model": pa.array(["rapidocr"] * k), "nsfw_model": pa.array(["nudenet"] * k), "random_weights": pa.array(np.zeros(k, bool)),
    }))  # fmt: skip
    store.write_part(run, "dedup", pa.table({
        "clip_id": kept, "duplicate_of": pa.nulls(k, pa.string()), "similarity": pa.array(np.full(k, 0.5)),
        "group_size": pa.array(np.ones(k, np.int32)), "model": pa.array(["timm/vit_large_patch14_clip_224.openai"] * k),
    }))  # fmt: skip
    store.write_part(run, "identities", pa.table({
        "subject_id": _uuids(f"s{start}-", s), "clip_id": pa.array(subject_clips.tolist(), pa.string()), "video_id": pa.array(np.repeat(np.array(kept_videos.to_pylist(), object), 3).tolist()),
        "kind": pa.array(["human", "face", "object"] * k), "identity_id": _uuids(f"id{start}-", s), "via": pa.array(["face"] * s),
        "identity_size": pa.array(np.ones(s, np.int32)), "identity_videos": pa.array(np.ones(s, np.int32)),
    }))  # fmt: skip
    store.write_part(run, "sample_refs", pa.table({
        "clip_id": kept, "policy": pa.array(["same_clip"] * k), "n_references": pa.array(np.full(k, 2, np.int32)),
        "references_json": pa.array(['[{"clip_id": "c", "frame": 1}, {"clip_id": "c", "frame": 40}]'] * k), "dropped_json": pa.array(["[]"] * k),
        "inputs_digest": pa.array([digests[c] for c in kept.to_pylist()]),
    }))  # fmt: skip
    groups = [kept.slice(i, SHARD) for i in range(0, k, SHARD)]
    store.write_part(run, "shards", pa.table({
        "shard": pa.array([f"train-{start // SHARD + i:06d}" for i in range(len(groups))]), "split": pa.array(["train"] * len(groups)),
        "path": pa.array([f"shards/train-{start // SHARD + i:06d}.tar" for i in range(len(groups))]),
        "n_samples": pa.array([len(g) for g in groups], pa.int32()), "bytes": pa.array([len(g) * 10**6 for g in groups]),
        "clip_ids": pa.array([g.to_pylist() for g in groups], pa.list_(pa.string())),
    }))  # fmt: skip


STEP_LIMIT_S = 600  # a step still running then is stopped and its cell says so


def timed(command: list[str], until: Path | None = None) -> tuple:
    """Wall seconds and peak RSS (GB) of one command in its own process; with `until`, also the
    seconds until a new part appeared in that table folder. A command that fails gives its last
    line of output in place of those seconds (the measurement goes on with the next step)."""
    before = set(until.glob("part-*.parquet")) if until else set()
    appeared = None
    with tempfile.NamedTemporaryFile("r") as out, tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", out.name, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}, start_new_session=True)  # fmt: skip
        while proc.poll() is None:
            if until and appeared is None and set(until.glob("part-*.parquet")) - before:
                appeared = time.perf_counter() - started
            if time.perf_counter() - started > STEP_LIMIT_S:
                os.killpg(proc.pid, signal.SIGINT)  # the command's group: /usr/bin/time ignores it and still reports the peak
                proc.wait()
                return (time.perf_counter() - started, int(out.read().split()[-1]) / 1e6, f"stopped after {STEP_LIMIT_S} s")
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        rss = int(out.read().split()[-1]) / 1e6
        if proc.returncode not in (0, 3):
            log.seek(0)
            lines = [line for line in log.read().splitlines() if line.strip()]
            print(f"{command} failed:\n" + "\n".join(lines[-30:]), flush=True)
            appeared = f"fails: {lines[-1][:120] if lines else f'exit code {proc.returncode}'}"
            return (seconds, rss, appeared)
    return (seconds, rss) if until is None else (seconds, rss, appeared)


PENDING = (
    "import sys; from pathlib import Path; from manifests import views; from pipeline.config import load_config; "
    "from pipeline.runner import pending_sql; from stages.subjects import Subjects; import pyarrow as pa; "
    "run = Path(sys.argv[1]); config = load_config(run / 'config.yaml'); con = views.connect(run); "
    "con.register('_inflight', pa.table({'key': pa.array([], pa.string())})); "
    "n = sum(b.num_rows for b in con.sql(pending_sql(Subjects, config, ['subjects'], run, False)).to_arrow_reader(4096)); print(n)"
)

FUNNEL_COUNTED = (
    "import sys, runpy; from pathlib import Path; from manifests import store, views; "
    "(Path(sys.argv[1]) / store.FINISHED / views.FUNNEL).unlink(missing_ok=True); "
    "sys.argv = ['manifests', 'funnel', sys.argv[1]]; runpy.run_module('manifests', run_name='__main__')"
)

NEW_VIDEO = "tests/data/pyscenedetect/counter.mp4"
KEPT = 1000  # windows whose frames wait for their readers when the sweep runs: a backlog, not the run
SWEEP = (  # half the kept windows fail the motion rule, the others have their screen row: none will be read
    "import sys; from pathlib import Path; from pipeline.config import load_config; from pipeline.registry import STAGES; "
    "from pipeline.runner import sweep_kept_frames; from stages.kept import kept_file; from bench.scale import window_clip_id; "
    "run, n, kept = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); config = load_config(run / 'config.yaml'); "
    "paths = [kept_file(run, 'scenes', window_clip_id(i * (n // kept) + i % 2)) for i in range(kept)]; "
    "paths[0].parent.mkdir(parents=True, exist_ok=True); [p.touch() for p in paths]; chain = ['scenes', 'motion', 'aesthetic', 'screen']; "
    "removed = sweep_kept_frames(run, [STAGES[c] for c in chain], config, chain); assert removed == kept, removed"
)


def synthesized(n_windows: int, folder: Path, kept: Path | None) -> tuple[Path, Path, float]:
    """(run, SRC, seconds to make it) of a synthetic run in `folder`. With `kept`, the run is made
    once in `kept/<n>` and measured on a copy of hard links (parts are immutable, every write of a
    run replaces a file atomically, and the lock file is not linked), so one 10M-window run serves
    several measurements; SRC is the kept one (the run's paths name it)."""
    if kept is None:
        started = time.perf_counter()
        synthesize(folder / "run", folder / "src", n_windows)
        return folder / "run", folder / "src", time.perf_counter() - started
    home = kept / str(n_windows)
    made = home / "made_s"
    if not made.exists():
        shutil.rmtree(home, ignore_errors=True)
        started = time.perf_counter()
        synthesize(home / "run", home / "src", n_windows)
        made.write_text(f"{time.perf_counter() - started:.1f}\n")
    subprocess.run(["cp", "-al", str(home / "run"), str(folder / "run")], check=True)
    (folder / "run" / ".lock").unlink(missing_ok=True)
    (home / "src" / "new.mp4").unlink(missing_ok=True)  # the new video of an earlier measurement
    return folder / "run", home / "src", float(made.read_text())


def measure(n_windows: int, folder: Path, kept: Path | None = None) -> dict:
    run, src, made = synthesized(n_windows, folder, kept)
    py = sys.executable
    curate = [py, "-m", "pipeline", "curate", str(src), "--out", str(run)]
    # The report first: a finished run has one, so the no-op rerun does not write it.
    steps = {
        "report": [py, "-m", "manifests", "report", str(run)],
        "pending inputs of `subjects` (its full ask)": [py, "-c", PENDING, str(run)],
        f"sweep of kept frames ({KEPT:,} windows kept)": [py, "-c", SWEEP, str(run), str(n_windows), str(KEPT)],
        "no-op rerun of the full chain (`curate`)": curate,
        "`summary`": [py, "-m", "manifests", "summary", str(run)],
        "`funnel` (remembered: the report counted it)": [py, "-m", "manifests", "funnel", str(run)],
        "`funnel` counted (its remembered count removed)": [py, "-c", FUNNEL_COUNTED, str(run)],
        "filtered `sql` over `candidates`": [py, "-m", "manifests", "sql", str(run), "SELECT count(*), avg(motion_score) FROM candidates WHERE aesthetic_score > 5 AND caption IS NOT NULL"],
    }  # fmt: skip
    result = {"windows": n_windows, "parts": sum(len(store.parts(run, t)) for t in store.TABLES), "made_s": made,
              "bytes": sum(p.stat().st_size for p in (run / "manifests").rglob("*.parquet"))}  # fmt: skip
    for name, command in steps.items():
        result[name] = timed(command)
        print(name, result[name], flush=True)
    shutil.copy(ROOT / NEW_VIDEO, src / "new.mp4")
    seconds, rss, scenes_s = timed(curate, until=store.table_dir(run, "scenes"))
    result["one new video: its scenes row"] = (scenes_s, rss) if not isinstance(scenes_s, str) else (seconds, rss, scenes_s)
    result["one new video: the whole `curate` (report included)"] = (seconds, rss, *([scenes_s] if isinstance(scenes_s, str) else []))
    # A threshold that every stage after `motion` reads: their records no longer hold, each asks in full
    result["rerun after a threshold change (`--set filter.min_motion=0.6`: full asks after `motion`)"] = timed([*curate, "--set", "filter.min_motion=0.6"])
    return result


def short_videos(folder: Path, count: int, frames: int = 24) -> list[Path]:
    """`count` distinct real files of `frames` frames each, cut from the shipped footage at spread
    offsets (overlapping, but each starts elsewhere, so each is its own content)."""
    from fractions import Fraction

    from bench.curation import FOLDER_VIDEOS, video_row
    from stages.video import encode_mp4, iter_frames

    folder.mkdir(parents=True, exist_ok=True)
    rows = [video_row(ROOT / v) for v in FOLDER_VIDEOS]
    total = sum(r["n_frames"] for r in rows)
    made = []
    for source, row in zip(FOLDER_VIDEOS, rows):
        share = max(1, round(count * row["n_frames"] / total))
        starts = sorted({round(i * (row["n_frames"] - frames) / max(1, share - 1)) for i in range(share)})
        for start in starts:
            out = folder / f"{Path(source).stem}-{start:05d}.mp4"
            picked = (f.image for f in iter_frames(ROOT / source, fmt="rgb24", end_frame=start + frames, keep=lambda i, s=start: i >= s))
            encode_mp4(out, picked, Fraction(row["fps"]).limit_denominator(1001))
            made.append(out)
    return made


def real_run(n_files: int, folder: Path) -> dict:
    """The real pipeline (probe..clips) on n short real files cut from the shipped footage."""
    corpus = short_videos(folder / "src", n_files)
    run = folder / "run"
    command = [sys.executable, "-m", "pipeline", "curate", str(folder / "src"), "--out", str(run), "--profile", "tiny",
               "--stages", "probe,scenes,motion,clips", "--set", "filter.min_duration_s=0.2"]  # fmt: skip
    first, rss = timed(command)
    again, _ = timed(command)
    parts = {t: len(store.parts(run, t)) for t in ("videos", "scenes", "motion", "clips", "errors")}
    return {"files": len(corpus), "seconds": first, "rss": rss, "rerun": again, "parts": parts,
            "clips": store.count(run, "clips"), "windows": store.count(run, "scenes")}  # fmt: skip


def real_section(r: dict) -> str:
    parts = ", ".join(f"{t} {n}" for t, n in r["parts"].items())
    return (
        f"\nThe real pipeline on {r['files']} short real files cut from the shipped footage (`make curate PROFILE=tiny "
        f"STAGES=probe,scenes,motion,clips`, `filter.min_duration_s=0.2`): {r['seconds']:.0f} s wall, driver peak RSS "
        f"{r['rss']:.2f} GB, {r['windows']} windows, {r['clips']} clips; parts per table at the end: {parts}; "
        f"a no-op rerun: {r['rerun']:.1f} s.\n"
    )


def section(results: list[dict]) -> str:
    names = [k for k in results[0] if isinstance(results[0][k], tuple)]
    lines = [
        "## Run folder at scale (issues 10, 22)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; synthetic runs from "
        "`bench/scale.py` (10 windows per video, ids as the stages make them (32 hex digits a video, uuid5 a window, subject and "
        "identity), half of the windows clips with captions, screen, dedup, sample_refs and 3 subjects (masks as RLE JSON) and "
        "identities each, in shards of 1,000; every table compacted, as a finished run leaves it), "
        "each step in its own process: wall seconds / peak RSS in GB. Other jobs on the machine add noise. Each stage's "
        "`finished` record is written by the runner's own functions, as a run that ends with nothing pending has them. The "
        "new video (`tests/data/pyscenedetect/counter.mp4`) goes through the whole chain with the tiny profile; its scenes "
        "row is timed from the command's start to its part. A step that fails says why in its cell.",
        "",
        "| step | " + " | ".join(f"{r['windows']:,} windows" for r in results) + " | growth: seconds per million windows (two largest runs) |",
        "|---|" + "---|" * (len(results) + 1),
    ]
    for name in names:
        cells = [f"{r[name][0]:.1f} s / {r[name][1]:.2f} GB" + (f" ({r[name][2]})" if len(r[name]) > 2 else "") for r in results]
        small, large = results[-2] if len(results) > 1 else {"windows": 0, name: (0.0, 0.0)}, results[-1]
        growth = (large[name][0] - small[name][0]) / (large["windows"] - small["windows"]) * 1e6
        growth = 0.0 if abs(growth) < 0.05 else growth  # not "-0.0"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {growth:.1f} |")
    lines.append("| parts on disk / size | " + " | ".join(f"{r['parts']} / {r['bytes'] / 1e6:.0f} MB" for r in results) + " | |")
    lines.append("")
    lines.append("Goals at 10M windows (issue 22): the no-op rerun of the full chain under 60 s, one new video's scenes row "
                 "under 60 s, `summary`, `funnel` and a filtered `sql` under 10 s, the report under 120 s, every step's peak RSS "
                 "under 3 GB and flat in the run's size.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--windows", default="100000,1000000,10000000", help="comma-separated sizes")
    p.add_argument("--out", type=Path, default=section_path("scale"))
    p.add_argument("--real-files", type=int, default=500, help="files in the real-pipeline run (0: skip it)")
    p.add_argument("--keep", type=Path, help="keep the synthetic runs here and reuse them (measured on copies)")
    args = p.parse_args()
    results = []
    for n in (int(x) for x in args.windows.split(",")):
        folder = Path(tempfile.mkdtemp(prefix=f"scale-{n}-"))
        try:
            results.append(measure(n, folder, args.keep))
            print(results[-1], flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    text = section(results)
    if args.real_files:
        folder = Path(tempfile.mkdtemp(prefix="scale-real-"))
        try:
            text += real_section(real_run(args.real_files, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(text)
    print(f"wrote {write_section('scale', text, args.out)}")


if __name__ == "__main__":
    main()
