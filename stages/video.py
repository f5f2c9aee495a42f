"""The one video decoder and encoder of the project (PyAV).

Frames are addressed by index in presentation order and by pts, so a span found by one stage
(start_frame, start_pts) is decoded exactly by another, also for variable frame rate video.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from stages.base import BadInput


@dataclass(frozen=True)
class Frame:
    index: int  # position in presentation order from the first frame of the video
    pts: int  # in the stream's time base
    image: np.ndarray  # HxWx3 uint8 (bgr24 or rgb24) or HxW (gray)


def open_video(path: str | Path | BinaryIO, threads: bool = True) -> tuple[av.container.InputContainer, av.VideoStream]:
    """A file path, or a binary stream (an mp4 read from a WebDataset shard)."""
    container = av.open(path if hasattr(path, "read") else str(path))
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    if threads:
        stream.thread_type = "AUTO"
    return container, stream


def _pts(frame: av.VideoFrame) -> int:
    return frame.pts if frame.pts is not None else (frame.dts or 0)


def to_array(frame: av.VideoFrame, fmt: str, size: tuple[int, int] | None) -> np.ndarray:
    """Convert (and optionally scale, in swscale) one decoded frame; size is (width, height)."""
    if size is None:
        image = frame.to_ndarray(format=fmt)
    else:
        image = frame.to_ndarray(format=fmt, width=size[0], height=size[1], interpolation="AREA")
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
    try:
        if start_pts is not None and start_frame > 0:
            container.seek(start_pts, stream=stream, backward=True, any_frame=False)
        index = start_frame
        started = start_pts is None or start_frame == 0
        for frame in container.decode(stream):
            if not started:
                if _pts(frame) < start_pts:
                    continue
                started = True
            if end_frame is not None and index >= end_frame:
                break
            if keep is None or keep(index):
                yield Frame(index, _pts(frame), to_array(frame, fmt, size))
            index += 1
    finally:
        container.close()


def spread(start: int, end: int, n: int) -> list[int]:
    """n frame indices spread evenly over [start, end), centred in equal parts."""
    count = min(n, end - start)
    return sorted({start + int((i + 0.5) * (end - start) / count) for i in range(count)})


def clip_frames(run_dir: Path, clip_path: str, n_frames: int, count: int) -> list[Frame]:
    """`count` rgb24 frames spread over a clip file of `n_frames` frames, the view of the clip's model stages.

    `clip_path` is relative to `run_dir`, as the clips stage records it, and names the clip in the error.
    """
    picks = set(spread(0, n_frames, count))
    frames = list(iter_frames(run_dir / clip_path, fmt="rgb24", keep=picks.__contains__))
    if not frames:
        raise BadInput(f"{clip_path}: no frame decodes")
    return frames


def sample_frames(
    path: str | Path,
    *,
    start_pts: int,
    end_pts: int | None,
    every_s: float,
    fmt: str = "gray",
    size: tuple[int, int] | None = None,
    skip_b_frames: bool = True,
) -> list[tuple[float, np.ndarray]]:
    """(seconds from the window start, image) about every `every_s` within [start_pts, end_pts).

    For sparse sampling the decoder may skip B-frames, which nothing else references once all of
    them are skipped: about 4x less decoding on typical H.264. A window too short to keep two
    frames that way is decoded in full.
    """
    container, stream = open_video(path)
    try:
        if skip_b_frames:
            stream.codec_context.skip_frame = "BIDIR"
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)
        picked: list[tuple[float, np.ndarray]] = []
        next_t = 0.0
        last = None  # the latest frame in the window not picked
        for frame in container.decode(stream):
            pts = _pts(frame)
            if pts < start_pts:
                continue
            if end_pts is not None and pts >= end_pts:
                break
            t = float((pts - start_pts) * stream.time_base)
            if t >= next_t - 1e-6:
                picked.append((t, to_array(frame, fmt, size)))
                next_t = t + every_s
                last = None
            else:
                last = (t, frame)
        if len(picked) == 1 and last is not None:  # a window shorter than every_s: its last frame
            picked.append((last[0], to_array(last[1], fmt, size)))
    finally:
        container.close()
    if len(picked) < 2 and skip_b_frames:
        return sample_frames(path, start_pts=start_pts, end_pts=end_pts, every_s=every_s, fmt=fmt, size=size, skip_b_frames=False)
    return picked


def prefetch(items: Iterator, depth: int = 8) -> Iterator:
    """Produce items in a background thread; FFmpeg and OpenCV release the GIL, so decoding and
    converting the next frames overlaps with whatever the consumer does with this one."""
    done = object()
    buffer: queue.Queue = queue.Queue(depth)
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)
        finally:
            buffer.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            yield item
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
            h, w = image.shape[:2]
            image = image[: h - h % 2, : w - w % 2]
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
