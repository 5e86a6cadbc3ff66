"""Progress bars on stderr that read well in a terminal and in a log file.

In a terminal a bar redraws in place (tqdm). Under a pipe, in a Slurm log or a file, those carriage-return
redraws would fill the log: there each bar writes a plain line at most every ``LOG_INTERVAL_S`` seconds, and a
last one when it closes (so a training phase leaves one line per epoch).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _LogBar(tqdm):
    """A tqdm bar that writes whole lines: at most one every LOG_INTERVAL_S seconds, and one when it closes."""

    def __init__(self, *args, **kwargs):
        self._last_line = time.monotonic()      # no line for the empty start
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg == "" or time.monotonic() - self._last_line < LOG_INTERVAL_S:
            return True
        self._write_line()
        return True

    def close(self):
        if not self.disable and (self.n or self.total):
            self._write_line()
        self.disable = True       # nothing more from tqdm's own close
        super().close()

    def _write_line(self) -> None:
        self._last_line = time.monotonic()
        self.fp.write(self.__str__().strip() + "\n")
        self.fp.flush()


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable | None = None, *, desc: str, unit: str = "it", enabled: bool = True,
             **kwargs) -> tqdm:
    """A tqdm bar on stderr (``enabled=False``: silent), as lines every LOG_INTERVAL_S seconds off a terminal."""
    if is_terminal():
        return tqdm(iterable, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, **kwargs)
    kwargs.pop("position", None)     # stacked bars make no sense as lines
    kwargs.pop("leave", None)        # every bar leaves its last line in a log
    return _LogBar(iterable, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, ascii=True, ncols=100,
                   **kwargs)


def announce(line: str) -> None:
    """One line about the work ahead (a phase, an estimate) on stderr, where the progress bars go."""
    print(line, file=sys.stderr, flush=True)
