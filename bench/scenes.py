"""`python -m bench.scenes`: the scene pass (`probe,scenes,motion`) against the PySceneDetect command line
and against decode-only, side by side on over ten minutes of real footage, and where its CPU goes per frame.

The corpus is the shipped footage (tests/data: H.264 from 176x144 to 1920x1080, MPEG-4 part 2,
variable frame rate), each file played over in one file by copying its packets (same codec, no
re-encode), one file four minutes long; a larger corpus holds that several times over (copies told
apart by their title, so each is its own video). The commands run interleaved, each with as many
files at once as the machine has CPUs (ours: the runner's default), start-up included. Two sizes
part what each command pays once (start-up; ours also its report) from what it pays per minute
of footage, which is what a user's hundred thousand files feel. Writes `bench/results/scenes.md`.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av

from bench.sections import ROOT, write_section

# (shipped file, times played over): about eleven minutes in six files, the longest four minutes
CORPUS = [("pyscenedetect/testvideo.mp4", 10), ("pyscenedetect/fades.mp4", 10), ("pyscenedetect/goldeneye-vfr-drop3.mp4", 10),
          ("pyscenedetect/counter.mp4", 20), ("real/bikes.mp4", 10), ("real/carphone_pristine.mp4", 15)]  # fmt: skip
PARTS = ["decode", "convert", "detect", "motion", "overhead"]


def looped_copy(source: Path, out: Path, times: int, title: str) -> Path:
    """`source` played `times` over in one file: its video packets copied with shifted timestamps."""
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        dst.metadata["title"] = title
        packets = [p for p in src.demux(stream) if p.dts is not None]
        first = min(p.dts for p in packets)
        span = max((p.pts if p.pts is not None else p.dts) + (p.duration or 0) for p in packets) - first
        for k in range(times):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts = (None if p.pts is None else p.pts + k * span), p.dts + k * span
                q.duration, q.is_keyframe, q.time_base, q.stream = p.duration, p.is_keyframe, p.time_base, copy
                dst.mux(q)
    return out


def corpus(folder: Path, copies: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [looped_copy(ROOT / "tests/data" / name, folder / f"{Path(name).stem}{f'-{k}' if k else ''}.mp4", times, f"copy {k}")
            for k in range(copies) for name, times in CORPUS]  # fmt: skip


def frames_and_seconds(files: list[Path]) -> tuple[int, float]:
    frames = seconds = 0
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames += stream.frames
            seconds += float(stream.duration * stream.time_base)
    return frames, seconds


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
DECODING = "import av, sys\nc = av.open(sys.argv[1]); s = c.streams.video[0]; {}\nfor _ in c.decode(s): pass"  # {}: the decoder's set-up
DECODE = DECODING.format("s.thread_type = 'AUTO'")
DECODE_ONE = DECODING.format("s.codec_context.thread_count = 1")  # one thread per file, as our tasks decode


def each_file(files: list[Path], command, at_once: int) -> float:
    """Wall seconds of `command(file)` run for every file, `at_once` at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(lambda f: subprocess.run(command(f), check=True, capture_output=True, env=ENV), files))
    return time.perf_counter() - started


def cli(files: list[Path], at_once: int, out: Path) -> float:
    scenedetect = str(Path(sys.executable).with_name("scenedetect"))
    return each_file(files, lambda f: [scenedetect, "-q", "-i", str(f), "detect-adaptive", "list-scenes", "-o", str(out)], at_once)


def cli_cuts(out: Path, video: Path) -> list[int]:
    """The first frame of each shot after the first, from the CSV `list-scenes` wrote for `video`."""
    rows = list(csv.reader((out / f"{video.stem}-Scenes.csv").read_text().splitlines()))
    header = next(i for i, r in enumerate(rows) if r and r[0] == "Scene Number")
    return [int(r[1]) - 1 for r in rows[header + 2 :] if r]  # the CSV counts frames from 1


def our_cuts(run: Path) -> dict[str, list[int]]:
    """File name -> the first frame of each shot after the first (windows also split long shots)."""
    from manifests import views

    rows = views.query(run, "SELECT v.path, min(s.start_frame) AS f FROM scenes s JOIN videos v USING (video_id) "
                            "WHERE s.shot_index > 0 GROUP BY v.path, s.shot_index ORDER BY f").to_pylist()  # fmt: skip
    cuts: dict[str, list[int]] = {}
    for row in rows:
        cuts.setdefault(Path(row["path"]).name, []).append(row["f"])
    return cuts


def same_cuts(files: list[Path], cli_out: Path, run: Path) -> str:
    """Per file: identical cut lists, or the number of cuts each and how far apart paired cuts are."""
    ours_by_file, said = our_cuts(run), []
    for f in files:
        theirs, ours = cli_cuts(cli_out, f), ours_by_file.get(f.name, [])
        if theirs == ours:
            said.append(f"{f.name} identical")
        elif len(theirs) == len(ours):
            said.append(f"{f.name} {len(ours)} cuts each, at most {max(abs(a - b) for a, b in zip(theirs, ours))} frames apart")
        else:
            said.append(f"{f.name} CLI {len(theirs)} cuts, ours {len(ours)}")
    return "; ".join(said)


def decode_only(files: list[Path], at_once: int, code: str = DECODE) -> float:
    return each_file(files, lambda f: [sys.executable, "-c", code, str(f)], at_once)


def decode_as_the_pass() -> str:
    """DECODE with the scene pass's decoder options, imported here, not at the top, so that
    `split_in`'s process imports the stages of the tree it measures."""
    from stages.video import ANALYSIS_OPTIONS

    return DECODING.format(f"s.thread_type = 'AUTO'; s.codec_context.options = {ANALYSIS_OPTIONS!r}")


def ours(folder: Path, run: Path, env: dict[str, str] = ENV) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "curate", str(folder), "--out", str(run), "--stages", "probe,scenes,motion"],
                   check=True, cwd=ROOT, capture_output=True, env=env)  # fmt: skip
    return time.perf_counter() - started


def ours_on_running_ray(folder: Path, run: Path, cpus: int) -> float:
    """`ours` joining a Ray started before it (`RAY_ADDRESS`), as a command on a cluster does: what
    of our start-up is Ray's own. That Ray's start and stop are not timed; it runs only meanwhile."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )  # fmt: skip
    try:
        said = []
        for line in head.stdout:
            said.append(line)
            if "Ray runtime started" in line:
                break
        else:
            raise RuntimeError("ray start --head failed:\n" + "".join(said[-20:]))
        ip = next((m.group(1) for line in said if (m := re.search(r"Local node IP: (\S+)", line))), None)
        if ip is None:
            raise RuntimeError("ray start --head named no node IP:\n" + "".join(said[-20:]))
        return ours(folder, run, {**ENV, "RAY_ADDRESS": f"{ip}:{port}"})
    finally:
        head.terminate()  # `--block`: it stops the processes it started
        head.wait()


def cost_split(files: list[Path]) -> dict[str, float]:
    """CPU seconds of the scene pass with motion on `files`, split by part (its stages imported here, so
    `split_in` can measure another tree's). decode: a decode-only pass (same threading, the pass's
    decoder options; `exact`: without them); convert, detect, motion: CPU of the threads running
    them; overhead: the rest of the pass's process CPU (Python around the frames, threads handing
    frames on, windows, rows)."""
    from stages import scenes, video
    from stages.motion import MotionConfig
    from stages.probe import Probe, ProbeConfig

    spent = dict.fromkeys(PARTS, 0.0)
    exact = 0.0  # decode-only CPU without the pass's decoder options
    analysis = {"analysis": True} if "analysis" in inspect.signature(video.open_video).parameters else {}

    def decode_cpu(path: Path, **options) -> float:
        started = time.process_time()
        container, stream = video.open_video(path, **options)
        with container:
            for _ in container.decode(stream):
                pass
        return time.process_time() - started

    if hasattr(video, "use_cores"):  # as a scene task of one CPU runs (the code before it decoded with FFmpeg's own threads)
        video.use_cores(1)

    def timed(part, fn):
        def wrapper(*args, **kwargs):
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.thread_time() - started

        return wrapper

    if hasattr(video, "Converter"):  # every swscale conversion goes through it
        video.Converter.__call__ = timed("convert", video.Converter.__call__)
    else:  # the code before it (c256b03): the detector's frame and the grids' frames
        scenes.PySceneDetect.image = timed("convert", scenes.PySceneDetect.image)
        video.FrameGrid.add = timed("convert", video.FrameGrid.add)
    scenes.PySceneDetect.push = timed("detect", scenes.PySceneDetect.push)
    scenes.motion_row = timed("motion", scenes.motion_row)
    total = 0.0
    with tempfile.TemporaryDirectory() as run:
        for path in files:
            spent["decode"] += decode_cpu(path, **analysis)
            exact += decode_cpu(path) if analysis else 0.0
            (row,) = Probe(ProbeConfig(), Path(run)).process({"path": str(path)})
            started = time.process_time()
            scenes.Scenes(scenes.ScenesConfig(), Path(run), {"motion": MotionConfig()}).process(row)
            total += time.process_time() - started
    spent["overhead"] = total - sum(spent.values())
    return {**spent, "exact": exact if analysis else spent["decode"]}  # code without the options decodes exactly


def split_in(tree: Path, files: list[Path]) -> dict[str, float]:
    """`cost_split` with the stages of another tree (`git archive COMMIT | tar -x -C DIR`): before and after in one run."""
    code = (f"import json, pathlib, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.scenes import cost_split; "
            f"sys.path.insert(0, {str(tree)!r}); print(json.dumps(cost_split([pathlib.Path(f) for f in {[str(f) for f in files]!r}])))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tree, env=ENV)
    return json.loads(done.stdout.splitlines()[-1])


def split_rows(splits: dict[str, dict[str, float]], frames: int) -> list[str]:
    lines = ["| code | " + " | ".join(PARTS) + " | total | total / decode | total / exact decode |", "|---|" + "---|" * (len(PARTS) + 3)]
    for name, spent in splits.items():
        total = sum(spent[p] for p in PARTS)
        cells = " | ".join(f"{1e6 * spent[p] / frames:.0f}" for p in PARTS)
        lines.append(f"| {name} | {cells} | {1e6 * total / frames:.0f} | {total / spent['decode']:.2f} | {total / spent['exact']:.2f} |")
    return lines


COMMANDS = {
    "decode": "decode only (PyAV, every frame, FFmpeg threads)",
    "decode1": "decode only, one FFmpeg thread per file (as our scene tasks decode)",
    "analysis": "decode only, FFmpeg threads, the scene pass's decoder options (`skip_loop_filter=noref`)",
    "cli": "`scenedetect -i FILE detect-adaptive list-scenes`",
    "ours": "`pipeline curate --stages probe,scenes,motion` on the folder (summary and report included)",
    "ours_ray": "the same on a Ray started before it (`ray start --head`, `RAY_ADDRESS`), as on a cluster",
}


@dataclass
class Size:
    files: list[Path]
    frames: int
    minutes: float
    times: dict[str, list[float]]  # command -> wall seconds of each round

    def best(self, name: str) -> float:
        return min(self.times[name])

    def ratios(self, a: str, b: str) -> str:
        """a / b: best of rounds, and the median of the per-round ratios."""
        return f"{self.best(a) / self.best(b):.2f} ({statistics.median(x / y for x, y in zip(self.times[a], self.times[b])):.2f})"


def measure(folder: Path, copies: int, repeats: int, at_once: int) -> Size:
    """The commands on a corpus of `copies` times CORPUS, interleaved, `repeats` rounds."""
    files = corpus(folder / "corpus", copies)
    frames, seconds = frames_and_seconds(files)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for k in range(repeats):
        times["decode"].append(decode_only(files, at_once))
        times["decode1"].append(decode_only(files, at_once, DECODE_ONE))
        times["analysis"].append(decode_only(files, at_once, decode_as_the_pass()))
        times["cli"].append(cli(files, at_once, folder / f"cli{k}"))
        times["ours"].append(ours(folder / "corpus", folder / f"run{k}"))
        times["ours_ray"].append(ours_on_running_ray(folder / "corpus", folder / f"ray{k}", at_once))
        print(copies, {name: t[-1] for name, t in times.items()}, flush=True)
    return Size(files, frames, seconds / 60, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the commands, interleaved")
    parser.add_argument("--copies", default="1,3", help="corpus sizes, in copies of CORPUS")
    parser.add_argument("--before", type=Path, help="the code before, unpacked (git archive COMMIT | tar -x -C DIR): its cost split too")
    args = parser.parse_args()
    at_once = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {c: measure(Path(tmp) / f"x{c}", c, args.repeats, at_once) for c in sorted(int(c) for c in args.copies.split(","))}
        small, large = sizes[min(sizes)], sizes[max(sizes)]
        first = Path(tmp) / f"x{min(sizes)}"
        cuts = same_cuts(small.files[: len(CORPUS)], first / "cli0", first / "run0")
        splits = {**({"before": split_in(args.before, small.files)} if args.before else {}), "now": cost_split(small.files)}
    load = os.getloadavg()
    header = " | ".join(f"{len(z.files)} files, {z.minutes:.1f} min: each round (best)" for z in sizes.values())
    per_minute = {name: (large.best(name) - small.best(name)) / (large.minutes - small.minutes) for name in COMMANDS} if len(sizes) > 1 else {}
    lines = [
        "## Scene pass against the PySceneDetect command line and decode-only (issue 22)",
        "",
        f"Machine: {platform.machine()}, {at_once} CPUs, Python {platform.python_version()}, PyAV {av.__version__}; "
        f"load average {load[0]:.1f} / {load[2]:.1f} (1 / 15 min) at the end (the bench's own load). Wall times are "
        f"noisy on a shared machine; the ratios are taken between runs interleaved in one session. Corpus: "
        f"`bench/scenes.py` CORPUS, the shipped footage played over by copying packets ({small.frames} frames in "
        f"{len(CORPUS)} files), and that {max(sizes)} times over. Each command {at_once} files at a time, start-up "
        f"included; {args.repeats} interleaved rounds. Seconds:",
        "",
        f"| command, {at_once} files at a time | {header} |" + (" seconds per extra minute of footage |" if per_minute else ""),
        "|---|" + "---|" * (len(sizes) + bool(per_minute)),
        *(f"| {label} | " + " | ".join(", ".join(f"{t:.1f}" for t in z.times[name]) + f" ({z.best(name):.1f})" for z in sizes.values())
          + (f" | {per_minute[name]:.2f} |" if per_minute else " |") for name, label in COMMANDS.items()),  # fmt: skip
        "",
        "Ours against the CLI and decode-only, best of rounds (median of the per-round ratios); goals: ours / CLI 0.9 "
        "or less, ours / decode-only 1.4 or less:",
        "",
        "| corpus | ours / CLI | ours / decode-only | ours / one-thread decode | ours / decode-only with the pass's options "
        "| on a running Ray: ours / CLI | on a running Ray: ours / decode-only |",
        "|---|---|---|---|---|---|---|",
        *(f"| {z.minutes:.1f} min in {len(z.files)} files | **{z.ratios('ours', 'cli')}** | **{z.ratios('ours', 'decode')}** | "
          f"{z.ratios('ours', 'decode1')} | {z.ratios('ours', 'analysis')} | {z.ratios('ours_ray', 'cli')} | {z.ratios('ours_ray', 'decode')} |"
          for z in sizes.values()),  # fmt: skip
        *([f"| per extra minute of footage | **{per_minute['ours'] / per_minute['cli']:.2f}** | **{per_minute['ours'] / per_minute['decode']:.2f}** "
           f"| {per_minute['ours'] / per_minute['decode1']:.2f} | {per_minute['ours'] / per_minute['analysis']:.2f} "
           f"| {per_minute['ours_ray'] / per_minute['cli']:.2f} | {per_minute['ours_ray'] / per_minute['decode']:.2f} |"] if per_minute else []),  # fmt: skip
        "",
        f"Cuts (the first frame of each shot after the first), the CLI's against ours, on the {small.minutes:.1f}-minute corpus: "
        f"{cuts}. The CLI numbers frames from its timecodes at the container's average rate, which the gaps between the "
        "copies lower (testvideo played over: 29.895 fps against 29.97), so its numbers drift from the decoded frames' "
        "over a file; on counter it applies other defaults than its Python API. Our cuts reproduce PySceneDetect's golden "
        "files (its Python API, `tests/test_curation_scenes.py`).",
        "",
        f"CPU per frame of the scene stage's pass with motion on the {small.minutes:.1f}-minute corpus (microseconds; one "
        "file after another in one process; decode from a decode-only pass with the pass's decoder options, the other "
        "parts from the CPU time of the threads that run them; exact decode: a decode-only pass without those options):",
        "",
        *split_rows(splits, small.frames),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(f"wrote {write_section('scenes', text)}")


if __name__ == "__main__":
    main()
