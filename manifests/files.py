"""The run folder's file discipline: atomic writes, one place for temporaries, one owner at a time.

Every file of a run (manifest parts, clips, reference crops, shards, config) is written under
`RUN/tmp/` and renamed into place after an fsync, so a killed run never leaves half a file where
a reader looks. Temporaries live in that one folder, so the start-up sweep removes one folder and
never walks the millions of clip files. A run has one owner at a time: `RunLock` holds an
exclusive `flock` on `RUN/.lock`, which the kernel releases when its process dies, so a stale
lock cannot outlive its holder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP = "tmp"


def temporary(run: Path, suffix: str = "") -> Path:
    folder = Path(run) / TMP
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex}{suffix}"


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(run: Path, final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and renamed to `final`."""
    tmp = temporary(run, Path(final).suffix)
    try:
        yield tmp
        fsync(tmp)
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(run: Path, final: Path, data: bytes) -> None:
    with atomic_path(run, final) as tmp:
        tmp.write_bytes(data)


def sweep_temporaries(run: Path) -> int:
    """Remove what killed runs left half-written; only the lock holder may call this."""
    folder = Path(run) / TMP
    if not folder.is_dir():
        return 0
    count = sum(1 for _ in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    return count


class RunInUse(RuntimeError):
    """Another process holds the run folder."""


class RunLock:
    """Exclusive ownership of a run folder for one process (curate, stage, compact)."""

    def __init__(self, run: Path):
        self.path = Path(run) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(f"{self.path.parent} is in use by another process ({holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
