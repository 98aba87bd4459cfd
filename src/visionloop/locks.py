"""File locks that keep concurrent jobs (threads, processes, Prefect tasks) from losing each other's data.

An ``flock`` belongs to one open file: two opens of the same lock file conflict even inside one
process, so the same lock serialises threads and processes alike. The kernel drops it when the
holder exits or is killed, so a crashed job never leaves a stale lock behind (the lock file itself
stays, empty and harmless).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_POLL_S = 0.05  # how often a waiting lock retries: short next to the jobs it serialises


def try_lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` (created if missing) as an open descriptor, or None if another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(fd: int) -> None:
    """Let go of a lock taken by ``try_lock``."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def is_held(path: Path) -> bool:
    """Whether some job holds the lock on ``path`` right now."""
    fd = try_lock(path)
    if fd is None:
        return True
    release(fd)
    return False


@contextmanager
def exclusive(path: Path, *, wait_s: float | None, what: str) -> Iterator[None]:
    """Hold the lock on ``path`` for the block, waiting up to ``wait_s`` seconds (None: as long as it takes).

    ``what`` names the guarded thing in the ``TimeoutError`` a job that gave up raises.
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while (fd := try_lock(path)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{what} held by another job for over {wait_s:.0f} s (lock {path})")
        time.sleep(_POLL_S)
    try:
        yield
    finally:
        release(fd)
