"""Safe extraction of the challenge zips: the caller decides where each entry goes, nothing escapes.

Every entry name is checked before anything is written: an absolute path, a drive letter, a backslash, a
``..`` component, a symbolic link or other special file, or a destination outside the destination root
refuses the whole archive (UnsafeArchiveError naming the entry). Sizes are capped per entry, in total and
by compression ratio (zip-bomb guard), on the header's claim first and again on the bytes actually read.
Each file is streamed to a hidden temporary file beside its destination and renamed onto it only when it
is complete and its CRC checked (wsm.io.atomic.atomic_path), so a corrupt archive leaves nothing
partial behind. A rerun skips entries whose destination already holds a file of the same size.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from wsm.io.atomic import atomic_path
from wsm.io.progress import progress as progress_bar

from .errors import ArchiveError, CorruptArchiveError, UnsafeArchiveError

__all__ = ["ZipLimits", "ExtractedMember", "ExtractReport", "extract_members", "check_entry_name", "is_benign"]

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30

# A plan maps an entry name to where it goes (absolute, or relative to the destination root), or None to
# leave it out. A Mapping works as a plan too (names it does not hold are left out).
Plan = Callable[[str], Path | str | None] | Mapping[str, Path | str]


@dataclass(frozen=True)
class ZipLimits:
    max_entry_bytes: int = 256 * MiB      # largest uncompressed entry (challenge images are < 40 MiB)
    max_total_bytes: int = 64 * GiB       # all planned entries together (ISIC 2018 training inputs: ~10.4 GB)
    max_ratio: float = 200.0              # uncompressed / compressed above which an entry is a bomb ...
    ratio_min_bytes: int = 1 * MiB        # ... once it has produced more than this many bytes
    chunk_bytes: int = 1 * MiB            # read size while streaming


@dataclass(frozen=True)
class ExtractedMember:
    name: str          # entry name in the zip
    path: Path         # where it is on disk now
    bytes: int
    written: bool      # False: the destination already held a file of this size and was kept
    sha256: str | None = None   # hex digest of what was written (None for a kept file: it was not read)


@dataclass
class ExtractReport:
    zip_path: Path
    members: list[ExtractedMember] = field(default_factory=list)   # planned entries, in zip order
    unexpected: list[str] = field(default_factory=list)            # entries the plan left out (not benign)
    bytes_written: int = 0

    @property
    def written(self) -> list[ExtractedMember]:
        return [m for m in self.members if m.written]

    @property
    def existing(self) -> list[ExtractedMember]:
        return [m for m in self.members if not m.written]


# Entries every challenge zip carries besides the data; left out without being reported.
_BENIGN_FILES = {"attribution.txt", "license.txt", "readme.txt", ".ds_store", "thumbs.db"}
_BENIGN_SUFFIXES = ("_superpixels.png", ".csv")
_DRIVE = re.compile(r"^[A-Za-z]:")


def is_benign(name: str) -> bool:
    """Directories, macOS resource forks, licence / attribution files, superpixels and metadata CSVs."""
    if name.endswith("/"):
        return True
    parts = PurePosixPath(name).parts
    if "__MACOSX" in parts:
        return True
    base = parts[-1].lower() if parts else ""
    return base in _BENIGN_FILES or base.startswith("._") or base.endswith(_BENIGN_SUFFIXES)


def check_entry_name(info: zipfile.ZipInfo) -> None:
    """Raise UnsafeArchiveError if an entry could escape or is not a plain file or folder."""
    name = info.filename
    why = None
    if not name:
        why = "has an empty name"
    elif name.startswith("/"):
        why = "is an absolute path"
    elif _DRIVE.match(name):
        why = "starts with a drive letter"
    elif "\\" in name:
        why = "contains a backslash (a Windows path separator)"
    elif ".." in name.split("/"):
        why = "has a '..' component (it would leave the destination)"
    elif any(ord(c) < 32 for c in name):
        why = "contains a control character"
    else:
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            why = "is a symbolic link"
        elif kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            why = f"is a special file (mode {oct(mode)})"
        elif info.flag_bits & 0x1:
            why = "is encrypted"
    if why:
        raise UnsafeArchiveError(f"refusing the archive: entry {name!r} {why}; the zip is not a genuine challenge "
                                 "archive or was tampered with; delete it and download it again")


def _route(plan: Plan, name: str) -> Path | None:
    if isinstance(plan, Mapping):
        dest = plan.get(name)
    else:
        dest = plan(name)
    return None if dest is None else Path(dest)


def _inside(root: Path, dest: Path) -> Path:
    """dest made absolute (relative ones against root) and normalised; it must lie under root.

    The check is lexical: entry names are what an attacker controls, not the local file system, and a user
    may have made DATA/images a link to another disk.
    """
    root_abs = Path(os.path.abspath(root))
    dest_abs = Path(os.path.abspath(root_abs / dest))
    if dest_abs == root_abs or root_abs not in dest_abs.parents:
        raise UnsafeArchiveError(f"refusing to write {dest_abs}: it is outside the destination root {root_abs}")
    return dest_abs


def _ratio_exceeded(nbytes: int, compressed: int, limits: ZipLimits) -> bool:
    return nbytes > limits.ratio_min_bytes and nbytes > limits.max_ratio * max(compressed, 1)


def _check_claims(planned: list[tuple[zipfile.ZipInfo, Path]], limits: ZipLimits) -> None:
    total = 0
    for info, _ in planned:
        if info.file_size > limits.max_entry_bytes:
            raise UnsafeArchiveError(
                f"refusing entry {info.filename!r}: it claims {info.file_size} bytes uncompressed, more than the "
                f"per-entry cap of {limits.max_entry_bytes}; raise ZipLimits.max_entry_bytes if it is genuine")
        if _ratio_exceeded(info.file_size, info.compress_size, limits):
            raise UnsafeArchiveError(
                f"refusing entry {info.filename!r}: {info.compress_size} bytes would expand to {info.file_size} "
                f"(more than {limits.max_ratio:g}x); this looks like a zip bomb")
        total += info.file_size
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"refusing the archive: its planned entries claim {total} bytes uncompressed, more than the cap of "
            f"{limits.max_total_bytes}; raise ZipLimits.max_total_bytes if you have the space")


def _stream_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, limits: ZipLimits,
                  total_so_far: int) -> tuple[int, str]:
    """Copy one entry to dest through a temporary file, enforcing the caps on the bytes read; (size, sha256)."""
    nbytes = 0
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
        while block := src.read(limits.chunk_bytes):
            nbytes += len(block)
            if nbytes > limits.max_entry_bytes or nbytes > info.file_size:
                raise UnsafeArchiveError(
                    f"refusing entry {info.filename!r}: it expands past {min(limits.max_entry_bytes, info.file_size)} "
                    "bytes (its header or the cap); the archive is corrupt or hostile")
            if _ratio_exceeded(nbytes, info.compress_size, limits):
                raise UnsafeArchiveError(
                    f"refusing entry {info.filename!r}: {info.compress_size} compressed bytes expanded past {nbytes} "
                    f"(more than {limits.max_ratio:g}x); this looks like a zip bomb")
            if total_so_far + nbytes > limits.max_total_bytes:
                raise UnsafeArchiveError(
                    f"refusing the archive: more than {limits.max_total_bytes} bytes extracted in total")
            out.write(block)
            digest.update(block)
        if nbytes != info.file_size:
            raise CorruptArchiveError(f"entry {info.filename!r} of {zf.filename} holds {nbytes} bytes, its header "
                                      f"says {info.file_size}; the zip is corrupt")
    return nbytes, digest.hexdigest()


def _same_crc(path: Path, crc: int, chunk: int = MiB) -> bool:
    value = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            value = zlib.crc32(block, value)
    return value == crc


def extract_members(
    zip_path: Path | str,
    plan: Plan,
    root: Path | str,
    *,
    limits: ZipLimits = ZipLimits(),
    verify_existing_crc: bool = False,
    progress: bool = False,
) -> ExtractReport:
    """Extract the entries ``plan`` routes to a destination under ``root``; return what was written or kept.

    ``plan(name)`` gives a path (absolute, or relative to ``root``) or None to leave the entry out; entries
    left out that are not benign (see is_benign) are listed in ``report.unexpected``. An existing destination
    of the entry's size is kept (and its CRC compared first with ``verify_existing_crc``).

    Raises UnsafeArchiveError before anything is written if any entry is unsafe or over the caps, and
    CorruptArchiveError if the zip is corrupt (bad central directory, CRC mismatch, truncated data); a file being
    written when the corruption shows is removed, files completed before it stay.
    """
    zip_path = Path(zip_path)
    root = Path(root)
    report = ExtractReport(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:           # every entry, planned or not: a hostile name refuses the archive
                check_entry_name(info)
            planned: list[tuple[zipfile.ZipInfo, Path]] = []
            seen: dict[Path, str] = {}
            for info in infos:
                dest = None if info.is_dir() else _route(plan, info.filename)
                if dest is None:
                    if not is_benign(info.filename):
                        report.unexpected.append(info.filename)
                    continue
                dest = _inside(root, dest)
                if dest in seen:
                    raise UnsafeArchiveError(
                        f"refusing the archive: entries {seen[dest]!r} and {info.filename!r} both go to {dest}")
                seen[dest] = info.filename
                planned.append((info, dest))
            _check_claims(planned, limits)
            if report.unexpected:
                log.info("%s: %d unexpected entries left out (first: %s)", zip_path.name,
                         len(report.unexpected), report.unexpected[0])
            bar = progress_bar(planned, desc=zip_path.name, unit="file", enabled=progress)
            for info, dest in bar:
                if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == info.file_size and (
                        not verify_existing_crc or _same_crc(dest, info.CRC)):
                    report.members.append(ExtractedMember(info.filename, dest, info.file_size, written=False))
                    continue
                nbytes, sha256 = _stream_entry(zf, info, dest, limits, report.bytes_written)
                report.bytes_written += nbytes
                report.members.append(ExtractedMember(info.filename, dest, nbytes, written=True, sha256=sha256))
    except zipfile.BadZipFile as err:
        raise CorruptArchiveError(f"{zip_path} is corrupt or not a zip file ({err})") from err
    except (zlib.error, EOFError) as err:
        raise CorruptArchiveError(f"{zip_path} is corrupt ({err.__class__.__name__}: {err})") from err
    except NotImplementedError as err:
        raise ArchiveError(f"{zip_path} uses a compression method Python's zipfile cannot read ({err})") from err
    return report
