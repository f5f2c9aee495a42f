"""The one video decoder and encoder of the project (PyAV).

Frames are addressed by index in presentation order and by pts, so a span found by one stage
(start_frame, start_pts) is decoded exactly by another, also for variable frame rate video.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from stages.base import BadInput
from stages.kept import jpeg, keep, kept, through_jpeg


@dataclass(frozen=True)
class Frame:
    index: int  # position in presentation order from the first frame of the video
    pts: int  # in the stream's time base
    image: np.ndarray  # HxWx3 uint8 (bgr24 or rgb24) or HxW (gray)


FRAME_THREADS = 0  # FFmpeg's decode threads per video; 0: its own choice, one per core of the machine up to 16


def use_cores(cores: int) -> None:
    """Decode and OpenCV in this process within the cores a task was given, not the machine's.

    OpenCV's own thread pool spans the machine (Ray's OMP_NUM_THREADS=1 does not reach it); with
    every core busy its threads only take turns, which cost the scene pass's optical flow 60% more
    CPU per frame. FFmpeg picks a frame thread per core, up to 16, for each video: on a 16-core node
    decoding 16 videos that is 256 threads, each holding frames (720p: about 4 MB a thread). One per
    core: with every core decoding a video, a second frame thread only adds CPU (decode alone: 14%
    more per frame with two; the scene chain on the bench corpus: 22.4 s with one, 24.8 s with two,
    median of three interleaved rounds), and the scene pass still overlaps its decode with the
    detector in its two threads. A video decoding alone at the end of a run pays for it."""
    global FRAME_THREADS
    FRAME_THREADS = cores
    cv2.setNumThreads(cores)


ANALYSIS_OPTIONS = {"skip_loop_filter": "noref"}  # the decoder's options for frames only cut and scored (`open_video`)


def open_video(path: str | Path | BinaryIO, threads: bool = True, analysis: bool = False) -> tuple[av.container.InputContainer, av.VideoStream]:
    """A file path, or a binary stream (an mp4 read from a WebDataset shard).

    `analysis`: frames that are only cut and scored, never kept as training data (the scene pass,
    the window grids). FFmpeg then skips the in-loop deblocking of frames no other frame
    references (`skip_loop_filter=noref`; H.264 and HEVC honour it, other decoders ignore it): no
    error carries to another frame, so a frame is the same however far before it a decode
    started, and a changed frame differs from the exact one by 47 dB PSNR or more at full size on
    the shipped footage (48.9 dB at 224 px; JPEG at quality 95 is about 40). Decode costs 6-10%
    less CPU; cut lists are unchanged."""
    container = av.open(path if hasattr(path, "read") else str(path))
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    if threads:
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = FRAME_THREADS
    if analysis:
        stream.codec_context.options = dict(ANALYSIS_OPTIONS)
    return container, stream


DECODED: Counter = Counter()  # frames decoded per source in this process: what "decode once" is measured by
SKIPPED: Counter = Counter()  # damaged packets the decoder refused, per source, skipped


def decode(
    container: av.container.InputContainer, stream: av.VideoStream, packets: Iterable[av.Packet | None] | None = None
) -> Iterator[av.VideoFrame]:
    """The one place frames come out of FFmpeg, counted per source: the stream's packets from where
    the container stands, or the given ones (None drains the decoder).

    A packet the decoder refuses as invalid (a damaged one) is skipped and counted, so one bad
    packet does not lose the whole video; every decode of the file skips the same packets, so
    frame indices agree between stages. Any other decode error is the file's, and final: a
    BadInput naming the file and the place.
    """
    name, decoded = container.name, 0
    packets = container.demux(stream) if packets is None else iter(packets)
    while True:
        try:
            packet = next(packets)
            frames = stream.decode(packet)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            SKIPPED[name] += 1
            continue
        except av.error.FFmpegError as error:
            place = f"after {decoded} frames of this pass" if decoded else "at the first frame of this pass"
            raise BadInput(f"{name}: cannot be decoded {place}: {error.strerror or error}") from None
        for frame in frames:
            DECODED[name] += 1
            decoded += 1
            yield frame


def _pts(frame: av.VideoFrame) -> int:
    return frame.pts if frame.pts is not None else (frame.dts or 0)


class Converter:
    """Frames to arrays of one format and size (width, height), converted and scaled in swscale.

    It keeps one scaler context: `VideoFrame.to_ndarray` makes a new one per frame, which costs
    more than converting a small frame. One per thread (a context is not shared between threads)."""

    def __init__(self, fmt: str, size: tuple[int, int] | None = None, interpolation: str = "AREA"):
        self.fmt, self.width, self.height, self.interpolation = fmt, *(size or (None, None)), interpolation
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        # swscale in this thread: its own threads (PyAV's default: one per core) cost CPU handing over a small frame
        image = self.reformatter.reformat(frame, self.width, self.height, self.fmt, interpolation=self.interpolation, threads=1).to_ndarray()
        return np.ascontiguousarray(image)  # rows can be padded; OpenCV wants them packed


def iter_frames(
    path: str | Path | BinaryIO,
    *,
    start_frame: int = 0,
    start_pts: int | None = None,
    end_frame: int | None = None,
    fmt: str = "bgr24",
    size: tuple[int, int] | None = None,
    keep=None,
) -> Iterator[Frame]:
    """Frames [start_frame, end_frame) of a video, seeking to `start_pts` when given.

    `keep(index) -> bool` selects which frames are converted to arrays; the others are decoded
    (H.264 needs them) but never converted, which is most of the cost of sparse sampling.
    """
    container, stream = open_video(path)
    convert = Converter(fmt, size)
    try:
        if start_pts is not None and start_frame > 0:
            container.seek(start_pts, stream=stream, backward=True, any_frame=False)
        index = start_frame
        started = start_pts is None or start_frame == 0
        for frame in decode(container, stream):
            if not started:
                if _pts(frame) < start_pts:
                    continue
                started = True
            if end_frame is not None and index >= end_frame:
                break
            if keep is None or keep(index):
                yield Frame(index, _pts(frame), convert(frame))
            index += 1
    finally:
        container.close()


def near_middle(path: str | Path, start_pts: int | None = None, end_pts: int | None = None, fmt: str = "rgb24") -> np.ndarray | None:
    """One frame of the span [start_pts, end_pts) (None: the file's start or end) near its middle,
    decoding as little as the file allows: the keyframe nearest the middle when one lies inside
    the span (from its packet alone), else the middle frame, decoded from the keyframe before it.
    None if none decodes. A poster: decoding from the keyframe before each window's middle cost a
    report more than a third of the run's whole decode."""
    container, stream = open_video(path, threads=False)  # frame threads would decode a frame per thread before the first
    try:
        first = stream.start_time or 0
        lo = first if start_pts is None else start_pts
        hi = end_pts if end_pts is not None else (first + stream.duration if stream.duration else None)
        middle = lo if hi is None else (lo + hi) // 2
        inside = [k for k in _keyframes_around(container, stream, middle) if lo <= k and (hi is None or k < hi)]
        target = min(inside, key=lambda k: abs(k - middle), default=middle)
        container.seek(target, stream=stream, backward=True, any_frame=False)
        if inside:  # a keyframe needs only its own packet; draining the decoder after it skips its reorder delay
            packet = next((p for p in container.demux(stream) if p.pts == target), None)
            frames = decode(container, stream, [packet, None] if packet is not None else [])
        else:
            frames = decode(container, stream)
        frame = next((f for f in frames if _pts(f) >= target), None)
        return None if frame is None else Converter(fmt)(frame)
    finally:
        container.close()


def _keyframes_around(container: av.container.InputContainer, stream: av.VideoStream, pts: int) -> list[int]:
    """The pts of the keyframes before and after `pts`, from the packets alone (demuxing decodes nothing)."""
    container.seek(pts, stream=stream, backward=True, any_frame=False)
    found = []
    for packet in container.demux(stream):
        if packet.is_keyframe and packet.pts is not None:
            found.append(packet.pts)
            if packet.pts > pts:
                break
    return found


def spread(start: int, end: int, n: int) -> list[int]:
    """n frame indices spread evenly over [start, end), centred in equal parts."""
    count = min(n, end - start)
    return sorted({start + int((i + 0.5) * (end - start) / count) for i in range(count)})


def clip_frames(run_dir: Path, item: dict, count: int) -> list[tuple[int, np.ndarray]]:
    """(index in the clip, rgb24 image) of `count` frames spread over a clip's window, what the clip's
    model stages see: the source frames upright, cropped to even sides and through JPEG, as the clips
    stage keeps them. Read from its archive when it kept them, else decoded from the source here the
    same way, bit for bit: a stage's answer never depends on which of the two it found (a kill, a
    sweep or the kept-frames budget decides that)."""
    start, end = item["start_frame"], item["end_frame"]
    picks = spread(0, end - start, count)
    frames = kept(run_dir, "clips", item["clip_id"], count)
    if frames is None or [index for index, _ in frames] != picks:
        wanted = {start + index for index in picks}
        decoded = iter_frames(item["video_path"], start_frame=start, start_pts=item["start_pts"], end_frame=end, fmt="rgb24", keep=wanted.__contains__)
        frames = [(f.index - start, through_jpeg(as_kept(f.image, item["rotation"]))) for f in decoded]
    if not frames:
        raise BadInput(f"{item['video_path']}: frames {start}..{end}: no frame decodes")
    return frames


def as_kept(image: np.ndarray, rotation: int) -> bytes:
    """An rgb24 source frame as the clips stage keeps it: upright, even sides, JPEG."""
    return jpeg(cv2.cvtColor(even(rotate_upright(image, rotation)), cv2.COLOR_RGB2BGR))


def even(image: np.ndarray) -> np.ndarray:
    """Cropped by one pixel to even sides, as H.264 in yuv420p needs and as clip files are."""
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]


class FrameGrid:
    """The first frame of each 1/fps-second bin of the video's timeline, converted to `fmt` at `size`.

    Defined on the whole video, not on a window, so the scene pass (which sees every frame once)
    and a decode of one window pick the same frames: a window's frames are the grid frames inside
    it. Motion scores its grid (gray); the stages that score source windows pick from theirs
    (`window_frames`). `pack` stores a converted frame (as JPEG, say) and `budget` bounds what is kept.
    """

    def __init__(
        self, fps: float, size: tuple[int, int], start_pts: int, time_base: Fraction, fmt: str = "gray", pack=None, budget: int | None = None
    ):  # fmt: skip
        self.fps, self.size, self.start_pts, self.convert = fps, size, start_pts, Converter(fmt, size)
        self.tick = float(time_base)  # seconds per pts unit; Fraction arithmetic per frame cost the scene pass 2%
        self.pack, self.budget, self.kept_bytes, self.full = pack, budget, 0, False
        self.last_bin: int | None = None
        self.samples: list[tuple[int, float, object]] = []  # (pts, seconds from the video start, image or packed)

    def seconds(self, pts: int) -> float:
        return (pts - self.start_pts) * self.tick

    def is_grid(self, pts: int) -> bool:
        """Whether this frame starts a new bin; call once per frame, in presentation order."""
        index = int(self.seconds(pts) * self.fps + 1e-6)
        new = index != self.last_bin
        self.last_bin = index
        return new

    def add(self, frame: av.VideoFrame) -> None:
        pts = _pts(frame)
        if self.is_grid(pts) and not self.full:
            image = self.convert(frame)
            kept = self.pack(image) if self.pack else image
            self.kept_bytes += len(kept) if self.pack else image.nbytes
            self.full = self.budget is not None and self.kept_bytes > self.budget
            self.samples.append((pts, self.seconds(pts), kept))

    def covers(self, end_pts: int | None) -> bool:
        """Whether every grid frame before `end_pts` (None: the end of the video) was kept."""
        return not self.full or (end_pts is not None and bool(self.samples) and end_pts <= self.samples[-1][0])

    def window(self, start_pts: int, end_pts: int | None) -> list[tuple[float, object]]:
        return [(t, image) for pts, t, image in self.samples if pts >= start_pts and (end_pts is None or pts < end_pts)]


def window_samples(
    path: str | Path, *, start_pts: int, end_pts: int | None, fps: float, size: tuple[int, int], fmt: str = "gray", at_least: int = 2
) -> list[tuple[float, np.ndarray]]:  # fmt: skip
    """The grid frames of one window. A window holding fewer than `at_least`: its first and last
    frames (motion needs two), or its first (`at_least=1`)."""
    container, stream = open_video(path, analysis=True)
    try:
        grid = FrameGrid(fps, size, stream.start_time or 0, stream.time_base, fmt)
        # Seek before the window, so the frame before it decides whether its first frame starts a bin.
        container.seek(max(start_pts - 1, stream.start_time or 0), stream=stream, backward=True, any_frame=False)
        first = last = None
        for frame in decode(container, stream):
            pts = _pts(frame)
            if end_pts is not None and pts >= end_pts:
                break
            if pts < start_pts:
                grid.is_grid(pts)
                continue
            grid.add(frame)
            first = first or (grid.seconds(pts), frame)
            last = (grid.seconds(pts), frame)
    finally:
        container.close()
    picked = grid.window(start_pts, end_pts)
    if len(picked) < at_least and first is not None:
        ends = [first, last] if at_least > 1 else [first]
        if at_least == 1 or last[0] > first[0]:
            picked = [(t, grid.convert(f)) for t, f in ends]
    return picked


WINDOW_FPS = 4.0  # the grid that the stages scoring source windows (aesthetic, screen) pick frames from


def centred(frames: list[tuple[float, object]], start_s: float, end_s: float, count: int) -> list[object]:
    """The grid frames nearest the centres of `count` equal parts of [start_s, end_s), each once."""
    centres = [start_s + (j + 0.5) * (end_s - start_s) / count for j in range(count)]
    picks = {min(range(len(frames)), key=lambda i: abs(frames[i][0] - centre)) for centre in centres} if frames else set()
    return [frames[k][1] for k in sorted(picks)]


def keep_window_frames(run_dir: Path, windows: list[dict], grid: FrameGrid, counts: set[int]) -> None:
    """Keep the grid frames (JPEG, as the scene pass packed them) that each window stage will pick: `centred` for every stage's count."""
    for window in windows:
        if grid.covers(window["end_pts"]):
            frames = grid.window(window["start_pts"], window["end_pts"])
            picked = {(count, j): data for count in counts for j, data in enumerate(centred(frames, window["start_s"], window["end_s"], count))}
            keep(run_dir, "scenes", window["clip_id"], picked)


def window_frames(run_dir: Path, item: dict, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Up to `count` upright rgb24 frames of a clip window (a `candidates` row): the grid frames
    nearest the centres of `count` equal parts of it, at `size` (width, height, as stored), what the
    window's model stages see. Kept by the scene pass's decode when both ran; else decoded from the source."""
    frames = kept(run_dir, "scenes", item["clip_id"], count)
    if frames is not None:
        images = [image if image.shape[1::-1] == size else cv2.resize(image, size, interpolation=cv2.INTER_AREA) for _, image in frames]
    else:
        grid = window_samples(
            item["video_path"], start_pts=item["start_pts"], end_pts=item["end_pts"], fps=WINDOW_FPS, size=size, fmt="rgb24", at_least=1
        )  # fmt: skip
        images = centred(grid, item["start_s"], item["end_s"], count)
    if not images:
        raise BadInput(f"{item['video_path']}: frames {item['start_frame']}..{item['end_frame']} do not decode")
    return [rotate_upright(image, item["rotation"] or 0) for image in images]


def prefetch(items: Iterator, chunk: int = 8, depth: int = 1) -> Iterator:
    """Produce items in a background thread; FFmpeg and OpenCV release the GIL, so decoding and
    converting the next frames overlaps with whatever the consumer does with this one. Items are
    handed over `chunk` at a time: each hand-over takes the GIL and a lock on both sides, which one
    frame at a time cost about 5% of the scene pass. At most (depth + 2) * chunk items are held."""
    done = object()
    buffer: queue.Queue = queue.Queue(depth)
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        batch: list = []
        try:
            for item in items:
                if stop.is_set():
                    return
                batch.append(item)
                if len(batch) == chunk:
                    buffer.put(batch)
                    batch = []
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)
        finally:
            buffer.put(batch)
            buffer.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (batch := buffer.get()) is not done:
            yield from batch
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.01)
    if failure:
        raise failure[0]


def rotate_upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (degrees counter-clockwise) so the picture stands upright."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def encode_mp4(
    path: Path,
    frames: Iterator[np.ndarray],
    fps: Fraction,
    crf: int = 18,
    preset: str = "veryfast",
) -> int:
    """Write RGB frames as H.264 (yuv420p, even size by cropping one pixel) and return the count."""
    container = av.open(str(path), mode="w", format="mp4")
    stream = None
    count = 0
    try:
        for image in frames:
            image = even(image)
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height = image.shape[1], image.shape[0]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return count
