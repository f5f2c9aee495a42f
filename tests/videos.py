"""Small synthetic videos for tests, written with PyAV from numpy frames."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 25,
    *,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    codec: str = "libx264",
) -> Path:
    """Encode RGB uint8 frames (HxWx3, even sizes) as H.264 in MP4.

    `pts` (in `time_base`, default 1/90000) gives each frame its own presentation time, for
    variable frame rate; `rotation` (degrees counter-clockwise) sets the display matrix.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "12"}
        if pts is not None:
            stream.codec_context.time_base = time_base or Fraction(1, 90000)
            stream.time_base = time_base or Fraction(1, 90000)
        first = True
        for i, image in enumerate(frames):
            if first:
                stream.height, stream.width = image.shape[:2]
                if rotation is not None:
                    stream.set_display_rotation(rotation)
                first = False
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image, dtype=np.uint8), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An MP4 that holds one AAC audio stream and no video."""
    path = Path(path)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        size = 1024
        for offset in range(0, len(samples), size):
            chunk = samples[offset : offset + size]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = offset
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random background with enough texture for optical flow."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    big = np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))
    return np.ascontiguousarray(big[:height, :width])


def moving_square(n: int, height: int = 96, width: int = 128, step: int = 3, size: int = 24) -> list[np.ndarray]:
    """A textured square moving `step` pixels right per frame over a flat grey background."""
    square = textured(size, size, seed=1)
    frames = []
    for i in range(n):
        image = np.full((height, width, 3), 96, dtype=np.uint8)
        x = (8 + i * step) % (width - size)
        y = (height - size) // 2
        image[y : y + size, x : x + size] = square
        frames.append(image)
    return frames


def panning(n: int, height: int = 96, width: int = 128, step: int = 1, seed: int = 3) -> list[np.ndarray]:
    """A camera pan over a textured picture: every pixel moves `step` pixels left per frame."""
    scene = cv2.GaussianBlur(textured(height, width + n * step + 8, seed=seed), (0, 0), 2.0)
    return [np.ascontiguousarray(scene[:, i * step : i * step + width]) for i in range(n)]


def static_frames(n: int, height: int = 96, width: int = 128) -> list[np.ndarray]:
    """The same textured picture n times: a frozen video."""
    image = textured(height, width, seed=2)
    return [image.copy() for _ in range(n)]


def marked_frames(n: int, height: int = 96, width: int = 64) -> list[np.ndarray]:
    """Upright test frames: a white block in the top-left corner and the frame number as grey level."""
    frames = []
    for i in range(n):
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :, 2] = (40 + 6 * i) % 256
        image[: height // 4, : width // 4] = 255
        frames.append(image)
    return frames


def decode_rgb(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video as RGB arrays, in presentation order."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
