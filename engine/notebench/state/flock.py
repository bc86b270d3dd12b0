"""The engine's one file lock: `flock` on a lock file, exclusive, released by the kernel when its holder dies.

Named locks of the state (`state.lock(name)`) take it on SQLite; the few locks that guard files rather than
records take it directly, beside the files they guard: the prediction log's compaction (one process at a time, the
others skip) and the release layers' builds (one deploy at a time, the others wait). Standard library only, so the
serving path does not load SQLAlchemy for it.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["file_lock", "try_flock"]

POLL, MAX_POLL = 0.05, 0.5  # seconds between tries while waiting, doubling


def try_flock(path: Path) -> IO | None:
    """The open lock file at `path`, now locked by this process (closing it releases the lock); None when another
    process holds it. The file is created (and its folder) if missing and never removed: removing a lock file
    while another process waits on it would let a third take a different lock of the same name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


@contextmanager
def file_lock(path: Path, wait: float | None = None) -> Iterator[bool]:
    """Hold the lock at `path` for the block, waiting up to `wait` seconds (None: as long as it takes; 0: not at
    all). Yields whether it is held: a caller that can skip its work checks; one that must wait passes None."""
    deadline = None if wait is None else time.monotonic() + wait
    pause = POLL
    while (f := try_flock(path)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            yield False
            return
        time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
        pause = min(pause * 2, MAX_POLL)
    try:
        yield True
    finally:
        f.close()
