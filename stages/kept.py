"""Frames one stage's decode keeps for the later stages of its chain, so that those decode nothing.

`RUN/frames/<producer>/<clip_id>.zip` holds, for each reader that takes `count` frames of the
window, its frames as JPEG named `<count>-<position>.jpg` (position: the frame's index in the clip,
or its place in the window). A reader that finds no archive decodes the same frames itself, so an
archive is only ever a shortcut: the runner removes it once no reader of the chain needs it, and
a producer keeps nothing while its folder is over `BUDGET` (readers lagging far behind).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np

from manifests.files import atomic_path

FRAMES = "frames"
JPEG_QUALITY = 95
BUDGET = 8 * 2**30  # bytes per producer: about 30,000 windows of the scene pass's frames, 3,000 clips' at 1080p


def kept_file(run_dir: Path, producer: str, clip_id: str) -> Path:
    return Path(run_dir) / FRAMES / producer / f"{clip_id}.zip"


def kept_clip_ids(run_dir: Path, producer: str) -> list[str]:
    """The windows whose frames a producer keeps now: as many as the readers are behind, not the run."""
    folder = Path(run_dir) / FRAMES / producer
    return [path.stem for path in folder.glob("*.zip")] if folder.is_dir() else []


def has_room(run_dir: Path, producer: str) -> bool:
    """Whether a producer may keep more: its folder holds what the readers have not read yet, which
    grows without bound when they lag (model stages on busy GPUs while the CPU stages run ahead)."""
    folder = Path(run_dir) / FRAMES / producer
    if not folder.is_dir():
        return True
    used = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                used += entry.stat().st_size
            except FileNotFoundError:  # swept meanwhile
                continue
            if used >= BUDGET:
                return False
    return True


def jpeg(image: np.ndarray) -> bytes:
    """A bgr24 frame as JPEG."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def through_jpeg(data: bytes) -> np.ndarray:
    """A kept JPEG back as rgb24."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def keep(run_dir: Path, producer: str, clip_id: str, frames: dict[tuple[int, int], bytes]) -> None:
    """Store JPEG frames by (count, position)."""
    if not frames:
        return
    with atomic_path(run_dir, kept_file(run_dir, producer, clip_id)) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for (count, position), data in sorted(frames.items()):
            archive.writestr(f"{count}-{position}.jpg", data)


def kept(run_dir: Path, producer: str, clip_id: str, count: int) -> list[tuple[int, np.ndarray]] | None:
    """(position, rgb24 image) of the frames kept for a reader taking `count`, in order; None if none were."""
    try:
        archive = zipfile.ZipFile(kept_file(run_dir, producer, clip_id))
    except (FileNotFoundError, zipfile.BadZipFile):  # never kept, or removed since: the reader decodes
        return None
    with archive:
        prefix = f"{count}-"
        names = {int(n[len(prefix) : -4]): n for n in archive.namelist() if n.startswith(prefix)}
        if not names:
            return None
        return [(position, through_jpeg(archive.read(names[position]))) for position in sorted(names)]
