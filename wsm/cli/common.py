"""Flags and help formatting several command groups share."""
from __future__ import annotations

import argparse
import errno
import math
import os
import re
import shutil
import sys
from pathlib import Path

from archive_client.errors import printable
from wsm.errors import WsmError


class UsageError(WsmError):
    """Flags that do not go together; the CLI's one handler prints it as ``wsm: error: ...``."""


def print_summary(summary) -> int:
    """Print a command's closing lines on stderr (text from servers or files escaped); the exit code: 1 when some
    item failed (the summary's ``ok``), else 0."""
    for line in summary.lines():
        print(printable(line), file=sys.stderr)
    return 0 if getattr(summary, "ok", True) else 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except for on/off flags and options with no default worth showing (None, an
    empty list or string), and where the help already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = action.nargs == 0           # store_true / store_false / count-like switches
        if flag or action.default is None or action.default in ([], "") or "default" in text:
            return text
        return super()._get_help_string(action)


def number(kind: type = int, minimum: float = 1, *, multiple_of: int = 1, hint: str = ""):
    """An argparse ``type=``: a number of ``kind`` (int or float) of at least ``minimum`` and a multiple of
    ``multiple_of``; anything else is a one-line usage error (exit code 2) that says what to give."""
    what = "a whole number" if kind is int else "a number"
    bound = f"of at least {minimum}" + (f" that is a multiple of {multiple_of}" if multiple_of > 1 else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum or (multiple_of > 1 and value % multiple_of):
            raise argparse.ArgumentTypeError(f"{text!r}: give {what} {bound}{hint}")
        return value

    return parse


def add_workers_flag(parser, does: str, auto: str, default: int | None = None) -> None:
    """-j/--workers, one meaning in every command: N worker processes, 0 none (the main process does the work),
    auto (None) a number chosen from the cores, as ``auto`` says."""
    count = number(int, 0)

    def parse(text: str) -> int | None:
        return None if text == "auto" else count(text)

    parser.add_argument("-j", "--workers", type=parse, default=default, metavar="N|auto",
                        help=f"worker processes that {does}; 0: none, the main process does it; auto: {auto} "
                             f"(default: {'auto' if default is None else default})")


def image_type(text: str) -> str:
    """An argparse type: one of the archive's image types (isic-metadata, read only when the flag is given)."""
    from archive_client.vocabulary import IMAGE_TYPES

    if text not in IMAGE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image type of the archive; one of: "
                                         + ", ".join(IMAGE_TYPES))
    return text


def add_image_type_flag(parser, default: str | None, whose: str) -> None:
    """--image-type TYPE: the type of ``whose`` images, which chooses their recipe in `wsm generate`."""
    parser.add_argument("--image-type", type=image_type, default=default, metavar="TYPE",
                        help=f"the image type of {whose} (default: dermoscopic), which chooses their recipe in the "
                             "pipeline's [image_types]: 'clinical: close-up' for clinical photographs; any image_type "
                             "of the archive (dermoscopic, clinical: overview, TBP tile: close-up, ...)")


def add_data_and_out(parser, holds: str, out: str, out_help: str) -> None:
    """--data DATA (what the command reads from it) and --out FOLDER (what it writes), both required."""
    parser.add_argument("-d", "--data", required=True, type=Path, metavar="DATA",
                        help=f"from `wsm download` or `wsm import` ({holds})")
    parser.add_argument("-o", "--out", required=True, type=Path, metavar=out, help=out_help)


def add_set_flag(parser, what: str = "pipeline", note: str = "") -> None:
    """--set SECTION.KEY=VALUE (repeatable): override one value of the recipe."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help=f"override a {what} value, e.g. --set classifier.epochs=3 (repeatable){note}")


def os_error_line(err: OSError, out: Path | None) -> str:
    """One line for a full or read-only disk or a permission refused: which path (the command's ``--out`` when the
    error names none), the space left, and what to do."""
    path = _final_name(err.filename) if err.filename else out
    where = path or "the output folder"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left" if err.errno == errno.ENOSPC else "disk quota exceeded"
        free = f" ({_free_space(Path(path))})" if path else ""
        return (f"{full} writing {where}{free}; free some space or give --out a folder on another disk, then rerun "
                "the same command (completed work is kept)")
    if err.errno == errno.EROFS:
        return f"{where} is on a read-only file system; give --out a folder on a writable disk"
    return f"permission denied on {where}; make it readable and writable by you, or give another folder"


def _final_name(path) -> Path:
    """The file an atomic write's temporary file (``.NAME.XXXXXXXX.tmp``, wsm.io.atomic) was to become."""
    path = Path(os.fsdecode(path))
    temporary = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", path.name)
    return path.with_name(temporary[1]) if temporary else path


def _free_space(path: Path) -> str:
    """'12.3 MB free' on the file system of ``path`` (or of its nearest existing parent)."""
    for folder in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
        except OSError:
            continue
    return "free space unknown"


def check_device(device: str) -> None:
    """Refuse, before any work, a --device this machine's torch cannot use."""
    if device == "cpu":
        return
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise WsmError(f"--device {device}: give cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise WsmError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu, "
                       "or install a CUDA build of torch (docs/INSTALL.md)")
    if index and int(index) >= torch.cuda.device_count():
        raise WsmError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                       f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def note_renamed(old: str, new: str) -> None:
    """Say on stderr which spelling replaces an old one (which still works)."""
    print(f"wsm: note: {old} is now {new} (the old spelling still works, for now)", file=sys.stderr)


class _Renamed(argparse.Action):
    """An old flag spelling: sets the new flag's value and says once which spelling to use."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        note_renamed(option_string, self.new)
        setattr(namespace, self.dest, values)


def add_renamed(parser, old: str, new: str, **kwargs) -> None:
    """Keep the flag ``old`` working as ``new`` (same dest, same type), hidden from --help, with a note when used."""
    action = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=action.dest, action=_Renamed, new=new, help=argparse.SUPPRESS,
                        type=action.type, metavar=action.metavar, **kwargs)
