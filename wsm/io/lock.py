"""One writer per folder: an advisory lock in the folder's hidden ``.wsm/`` state."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from wsm.errors import LockedError

STATE = ".wsm"   # journals, partial files and locks inside DATA and WSM folders (safe to delete when idle)


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str = "lock") -> Iterator[None]:
    """Hold an exclusive advisory lock on folder/.wsm/<name>; raise LockedError if another process has it.

    The kernel drops the lock when the process dies, so a killed run never leaves a stale lock.
    """
    state = Path(folder) / STATE
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{folder} is being written by another wsm process; wait for it to finish or stop it"
            ) from None
        yield
    finally:
        os.close(fd)
