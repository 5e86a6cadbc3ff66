"""Atomic writes: a file appears under its final name complete, or not at all."""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np


def _umask() -> int:
    """The process umask; read from /proc where possible, since setting it (the portable way) briefly gives
    files that other threads create at that moment mode 0666."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as fh:
            return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from open(): 0666 less the umask (mkstemp gives 0600)."""
    return 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort on file systems that refuse it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: Path | str, fixed_tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is fsynced and renamed onto ``dest``.

    ``dest`` gets the mode of a newly created file (:func:`file_mode`), also when the writer replaced the
    temporary file with one of its own (safetensors does, with mode 0600). On any exception the temporary
    file is removed and ``dest`` is left as it was. The temporary file has a random name, or ``fixed_tmp``
    (whatever is there is replaced, a link without being followed) for a file only one process writes, whose
    debris after a kill a later run can then remove by name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fixed_tmp is None:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    else:
        tmp = Path(fixed_tmp)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fchmod(fh.fileno(), file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(dest: Path | str, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: Path | str, text: str, fixed_tmp: Path | None = None) -> None:
    with atomic_path(dest, fixed_tmp) as tmp:
        tmp.write_text(text, encoding="utf8")


def json_safe(value):
    """NaN and infinities become null (JSON has neither); numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):         # numpy's bool is no numbers.Integral
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(dest: Path | str, payload, fixed_tmp: Path | None = None, **dumps) -> None:
    """``payload`` as indented JSON with sorted keys (values JSON cannot hold written as text), atomically
    (``fixed_tmp``: see :func:`atomic_path`)."""
    options = {"indent": 2, "sort_keys": True, "default": str, **dumps}
    write_text_atomic(dest, json.dumps(payload, **options) + "\n", fixed_tmp)
