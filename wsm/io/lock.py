"""One writer per folder: an advisory lock in the folder's hidden ``.wsm/`` state."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """exclusive_lock on a command's output folder for the whole command. A folder it had to create is removed
    again (while still locked) when the command fails before writing anything there: a wrong flag leaves nothing
    behind."""
    folder = Path(folder)
    created = not folder.exists()
    with exclusive_lock(folder):
        try:
            yield
        except BaseException:
            if created:
                _remove_unused(folder)
            raise


def locks_output(where: str, *, torchrun: bool = False) -> Callable:
    """Decorator: each call holds :func:`output_lock` on the folder ``where`` names, a parameter of the function or
    an attribute of one ("out", "opts.out"). With ``torchrun``, only the process of RANK 0 (the one that writes)
    takes it."""
    parameter, _, attribute = where.partition(".")

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            if torchrun and int(os.environ.get("RANK", "0")) != 0:
                return function(*args, **kwargs)
            folder = signature.bind(*args, **kwargs).arguments[parameter]
            with output_lock(getattr(folder, attribute) if attribute else folder):
                return function(*args, **kwargs)
        return locked
    return decorate


def _remove_unused(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but its lock."""
    state = folder / STATE
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [STATE] and [p.name for p in state.iterdir()] == ["lock"]:
            (state / "lock").unlink()
            state.rmdir()
            folder.rmdir()
