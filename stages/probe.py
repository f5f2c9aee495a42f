"""probe: find the videos under SRC, hash their content and read their metadata with PyAV."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import av

from stages.base import BadInput, Row, Stage, StageConfig
from stages.video import decode, open_video

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
HASH_BLOCK = 1 << 20  # bytes read at each of the sampled places of a large file
# Files that name other files (HLS and DASH playlists, concat lists): FFmpeg would decode those,
# wherever they lie, so a playlist under SRC could curate videos from outside it.
PLAYLIST_STARTS = (b"#EXTM3U", b"ffconcat")
PLAYLIST_FORMATS = {"hls", "dash", "concat"}


class ProbeConfig(StageConfig):
    min_frames: int = 2  # fewer frames cannot make a clip
    extensions: list[str] = list(VIDEO_SUFFIXES)  # files with other extensions are listed as skipped


def walk(src: Path, extensions: list[str], chunk: int) -> Iterator[list[Row]]:
    """Files under src in chunks (following links, each real folder once), each with its `kind`:
    `video`, `not_video` (skipped by extension) or `bad_input`, and a message for the last two.
    Nothing is stat'ed here: a rerun would stat every file of SRC again (10 s at a million files)
    to learn what it knows; `sized` stats the files not probed yet."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"SRC does not exist: {src}")
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: list[Row] = []
    for row in _entries(src, suffixes):
        found.append({"bytes": None} | _printable(row))
        if len(found) == chunk:
            yield found
            found = []
    if found:
        yield found


def _printable(row: Row) -> Row:
    """A path that is not UTF-8 (`bad\\xffname.mp4`, kept by Python as surrogates) cannot be a
    manifest string: its row names it with the bad bytes escaped and says why it is skipped."""
    try:
        row["path"].encode("utf-8")
        return row
    except UnicodeEncodeError:
        shown = row["path"].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return {"path": shown, "kind": "bad_input", "message": f"{shown}: file name is not valid UTF-8; rename it to curate it"}


def _entries(src: Path, suffixes: set[str]) -> Iterator[Row]:
    if src.is_file():
        yield {"path": str(src.absolute()), "kind": "video", "message": None}
        return
    seen_dirs: set[str] = set()
    for folder, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            yield {"path": folder, "kind": "bad_input", "message": f"symlink loop: {folder} leads back to {real}; skipped"}
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in suffixes:
                message = f"{path}: not a video file by its extension; skipped (widen with --extensions)"
                yield {"path": str(path.absolute()), "kind": "not_video", "message": message}
                continue
            yield {"path": str(path.absolute()), "kind": "video", "message": None}


def sized(rows: list[Row]) -> list[Row]:
    """The videos among walked rows with their `bytes`; one that cannot be stat'ed or is not a
    regular file (opening a FIFO would wait forever for a writer) becomes a `bad_input` row."""
    out = []
    for row in rows:
        if row["kind"] == "video":
            path = Path(row["path"])
            try:
                info = path.stat()
            except OSError as exc:
                row = {**row, "kind": "bad_input", "message": f"cannot read {path}: {exc.strerror}"}
            else:
                if stat.S_ISREG(info.st_mode):
                    row = {**row, "bytes": info.st_size}
                else:
                    row = {**row, "kind": "bad_input", "message": f"{path}: not a regular file (a FIFO, socket or device); skipped"}
        out.append(row)
    return out


def content_hash(path: Path, size: int) -> str:
    """Identifies the content without reading all of a large file: its size and 1 MiB at 16 evenly
    spaced places (the whole file when it is smaller than that). Equal files give equal ids; a
    re-encode or an edit changes the size or the sampled bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 16 * HASH_BLOCK:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        else:
            for i in range(16):
                f.seek(i * (size - HASH_BLOCK) // 15)
                h.update(f.read(HASH_BLOCK))
    return h.hexdigest()


def _duration(container: av.container.InputContainer, stream: av.VideoStream, rate) -> float:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:  # microseconds (matroska / webm keep it here)
        return container.duration / 1e6
    if stream.frames:
        return stream.frames / float(rate)
    raise BadInput(f"{container.name}: duration unknown")


class Probe(Stage):
    name = "probe"
    reads = "sources"
    writes = "videos"
    input_key = "path"
    first = "i.bytes DESC NULLS LAST"
    batch_size = 4
    Config = ProbeConfig

    def process(self, item: Row) -> list[Row]:
        path = Path(item["path"])
        size = path.stat().st_size
        if size == 0:
            raise BadInput(f"{path}: file is empty (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(PLAYLIST_STARTS) or b"<MPD" in head:
            raise BadInput(f"{path}: a playlist, which names other files (maybe outside SRC); not curated: put the videos themselves under SRC")
        try:
            container, stream = open_video(path, threads=False)
        except av.error.FFmpegError as exc:
            raise BadInput(f"{path}: not a readable video ({exc.strerror or exc}); truncated or not a video file") from None
        except ValueError:
            raise BadInput(f"{path}: has no video stream (audio only or not a video)") from None
        with container:
            if set(container.format.name.split(",")) & PLAYLIST_FORMATS:
                raise BadInput(f"{path}: a playlist ({container.format.name}), which names other files; not curated")
            rows = self._metadata(path, size, container, stream)
        return rows

    def _metadata(self, path: Path, size: int, container, stream) -> list[Row]:
        try:
            first = next(decode(container, stream))
        except (StopIteration, av.error.FFmpegError) as exc:
            raise BadInput(f"{path}: no frame can be decoded ({exc or 'empty stream'})") from None
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise BadInput(f"{path}: frame rate unknown")
        duration = _duration(container, stream, rate)
        # The container's count, else an estimate from duration and rate: counting packets would
        # read the whole file. The scene pass counts the frames that really decode.
        n_frames = stream.frames or round(duration * float(rate))
        if n_frames < self.config.min_frames:
            raise BadInput(f"{path}: video has {n_frames} frame(s); at least {self.config.min_frames} are needed")
        self._check_end_reads(path, container, stream, duration, rate)
        base = stream.base_rate or rate
        return [
            {
                "video_id": content_hash(path, size),
                "path": str(path),
                "bytes": size,
                "duration_s": duration,
                "fps": float(rate),
                "n_frames": int(n_frames),
                "width": stream.width,
                "height": stream.height,
                "codec": stream.codec_context.name,
                "pix_fmt": stream.codec_context.pix_fmt,
                "rotation": int(round(first.rotation or 0)) % 360,
                "vfr": abs(float(base) - float(rate)) > 0.01 * float(base),
                "has_audio": bool(container.streams.audio),
            }
        ]

    @staticmethod
    def _check_end_reads(path: Path, container, stream, duration: float, rate) -> None:
        """A file cut short still opens; reading its packets up to its last second shows it.

        Seeking lands on the keyframe before the target, which can be the first frame of a file
        cut in half, so the packets must reach the target. Packets, not frames: decoding from that
        keyframe cost the probe most of its time (a whole group of pictures of a 720p file, 0.4 s),
        and the scene pass decodes every frame anyway (a packet that does not decode is skipped
        and counted there, `stages.video.decode`).
        """
        target = max(0.0, duration - max(1.0, 2.0 / float(rate)))
        start = stream.start_time or 0
        container.seek(int(target / stream.time_base) + start, stream=stream)
        reached = None
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    reached = float((packet.pts - start) * stream.time_base)
                    if reached >= target - 1e-3:
                        return
        except av.error.FFmpegError:
            pass
        last = f"its last packet is at {reached:.1f} s" if reached is not None else "nothing can be read there"
        raise BadInput(f"{path}: truncated: {last} of its announced {duration:.1f} s") from None
