"""`wsm download --challenge`: the official challenge zips, their lesion masks and (optionally) their images.

For each split of archive_client.challenges.CATALOG the ground-truth zip (and, with ``inputs=True``, the
inputs zip) is fetched with a resumable, verified download into ``DATA/.wsm/challenges/<year>/``; its sha256
and size go to ``DATA/.wsm/challenges/checksums.json`` (only once it reads as a whole zip) so that a rerun
verifies the zip instead of fetching it again; a zip found corrupt when extracting is removed with its checksum,
so that the next run fetches it afresh. Entries are extracted safely (archive_client.safezip) into a staging
folder beside the zip, checked, and only then moved to their final names:

    DATA/masks/<challenge>/ISIC_x_segmentation.png   always the lower-case name (2016 ships _Segmentation)
    DATA/images/ISIC_x.jpg                            an image already there is kept as it is

A mask must decode as a PNG with one 8-bit channel (lossless 'L'-compatible modes are converted) and have
the size of its image when the image is on disk; a mask that fails is left out with its reason. Rows are
merged into DATA/gt_manifest.parquet (key isic_id, challenge) and, for images, DATA/manifest.parquet
(key isic_id; rows already there are kept). With ``task="attributes"`` the ISIC 2018 Task 2 attribute masks
come instead, by the same steps (archive_client.attribute_data).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import requests
from PIL import Image

from wsm.io.atomic import atomic_path, fsync_dir, write_bytes_atomic, write_json
from wsm.io.hashing import sha256_file
from wsm.io.images import UNDECODABLE, decode_problem, image_size
from wsm.io.lock import exclusive_lock
from wsm.io.tables import merge_rows, read_table, write_table_atomic

from .challenges import DEFAULT_CHALLENGE_URL, SPLITS, ChallengeSplit, task_catalog
from .errors import CorruptArchiveError, DownloadError, InvalidIdError, InvalidInputError
from .ids import check_isic_id
from .isic_files import write_attribution, write_metadata_csv
from .layout import DataLayout
from .manifest import DATA_MANIFEST_CORE, GT_MANIFEST, manifest_row
from .safezip import ZipLimits, extract_members
from .transfer import RetryPolicy, fetch_file, make_session

__all__ = ["ChallengeSummary", "MaskCheck", "check_mask", "download_challenge", "fetch_challenge", "find_image",
           "image_size", "merge_into", "place_file", "staging_folder"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


# --------------------------------------------------------------------------------------------- masks

@dataclass(frozen=True)
class MaskCheck:
    reason: str | None            # None: the mask is accepted
    width: int = 0
    height: int = 0
    png_bytes: bytes | None = None   # an 'L' re-encoding when the file was another lossless mode, else None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)   # the accepted mask's values

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Refused(Exception):
    pass


def _as_l(im: Image.Image) -> Image.Image | None:
    """None if ``im`` is already 8-bit single channel; an 'L' copy if converting loses nothing; else _Refused."""
    if im.mode == "L":
        return None
    if im.mode == "1":
        return im.convert("L")
    if im.mode in _WIDE_MODES:
        return _wide_as_l(np.asarray(im))
    if im.mode in ("P", "PA", "LA", "RGB", "RGBA"):
        rgba = np.asarray(im.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise _Refused(f"mode {im.mode} with transparent pixels; expected an opaque 8-bit single-channel mask")
        if (rgba[..., 0] != rgba[..., 1]).any() or (rgba[..., 0] != rgba[..., 2]).any():
            raise _Refused(f"mode {im.mode} with coloured pixels; expected an 8-bit single-channel (L) mask")
        return Image.fromarray(np.ascontiguousarray(rgba[..., 0]), mode="L")
    raise _Refused(f"mode {im.mode} is not 8-bit single channel; expected L (0 background, 255 lesion)")


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")


def _wide_as_l(values: np.ndarray) -> Image.Image:
    """A 16- or 32-bit mask as 'L': 0/65535 as 0/255, values up to 255 as they are; other values are refused."""
    if np.isin(values, (0, 65535)).all():
        values = values // 257
    elif values.min() < 0 or values.max() > 255:
        raise _Refused(f"16-bit values up to {values.max()}; expected 0/1, 0/255 or 0/65535")
    return Image.fromarray(values.astype(np.uint8), mode="L")


def check_mask(path: Path, image_size: tuple[int, int] | None = None,
               formats: tuple[str, ...] = ("PNG",)) -> MaskCheck:
    """Decode a mask completely and check it is a single-channel file of one of ``formats`` (lossless: PNG, BMP,
    TIFF, GIF) of ``image_size`` (w, h) if given; an accepted mask comes with its pixels, so that nothing decodes it
    twice, and with an 8-bit PNG of them when the file is not one already."""
    try:
        with Image.open(path) as im:
            if im.format not in formats:
                return MaskCheck(f"is a {im.format} file, expected {' or '.join(formats)}")
            im.load()
            converted = _as_l(im)
            if converted is None and im.format != "PNG":
                converted = im.copy()
            width, height = im.size
            pixels = np.asarray(converted if converted is not None else im, dtype=np.uint8)
    except _Refused as why:
        return MaskCheck(f"has {why}")
    except UNDECODABLE as err:
        return MaskCheck(f"does not decode as a {' or '.join(formats)} ({decode_problem(err)})")
    if image_size is not None and (width, height) != tuple(image_size):
        return MaskCheck(f"is {width}x{height} but its image is {image_size[0]}x{image_size[1]} (as displayed, "
                         "after any EXIF rotation)", width, height)
    png = None
    if converted is not None:
        buf = io.BytesIO()
        converted.save(buf, format="PNG")
        png = buf.getvalue()
    return MaskCheck(None, width, height, png, pixels)


def find_image(layout: DataLayout, isic_id: str) -> Path | None:
    """The image of isic_id in DATA/images, whatever its extension, or None."""
    for ext in IMAGE_EXTENSIONS:
        path = layout.image_path(isic_id, ext)
        if path.is_file():
            return path
    return None


def place_file(src: Path, dest: Path) -> None:
    """Move src onto dest atomically (a copy through a temporary file when they are on different disks)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        src.unlink()
        return
    fsync_dir(dest.parent)


def _ascii_id(candidate: str) -> str:
    """check_isic_id, also refusing non-ASCII digits (re's \\d matches them)."""
    if not candidate.isascii():
        raise InvalidIdError(f"refusing isic_id {candidate!r}: expected ISIC_ followed by 7 ASCII digits")
    return check_isic_id(candidate)


# --------------------------------------------------------------------------------------------- summary

@dataclass
class ChallengeSummary:
    noun: ClassVar[str] = "masks"                              # what the ground-truth zips hold
    challenge: str
    splits: list[str] = field(default_factory=list)            # splits processed
    missing_splits: list[str] = field(default_factory=list)    # asked for, but the challenge has no such split
    zips: dict[str, str] = field(default_factory=dict)         # "<year>/<zip>" -> fetched | resumed | verified
    masks_written: int = 0
    masks_skipped: int = 0                                     # already on disk with the same bytes
    masks_rejected: list[tuple[str, str]] = field(default_factory=list)   # (isic_id or entry, reason)
    images_written: int = 0
    images_skipped: int = 0                                    # already in DATA/images (kept as they are)
    images_rejected: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)        # zip entries that are neither data nor benign

    @property
    def ok(self) -> bool:
        """False when a mask or image of the zips could not be brought in (a zip that cannot be fetched raises
        DownloadError instead; a split the challenge does not have is only reported)."""
        return not (self.masks_rejected or self.images_rejected)

    def lines(self) -> list[str]:
        """A human summary, one line per fact, for the CLI."""
        out = [f"{self.challenge} {','.join(self.splits) or '-'}: {self.noun} {self.masks_written} written, "
               f"{self.masks_skipped} already there, {len(self.masks_rejected)} rejected"]
        if self.images_written or self.images_skipped or self.images_rejected:
            out.append(f"images {self.images_written} written, {self.images_skipped} already there, "
                       f"{len(self.images_rejected)} rejected")
        out += [f"rejected {name}: {why}" for name, why in self.masks_rejected + self.images_rejected]
        if self.missing_splits:
            out.append(f"{self.challenge} has no {', '.join(self.missing_splits)} split")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected zip entries left out, e.g. {self.unexpected[0]}")
        return out


# --------------------------------------------------------------------------------------------- zips

def _challenge_state(layout: DataLayout) -> Path:
    return layout.state / "challenges"


def _read_checksums(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s (%s); the zips will be verified against fresh downloads", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _record_checksum(path: Path, key: str, url: str, nbytes: int, sha256: str) -> None:
    _update_checksums(path, key, {"bytes": nbytes, "sha256": sha256, "url": url})


def _update_checksums(path: Path, key: str, entry: dict | None) -> None:
    """Set (or with None, remove) one entry of checksums.json."""
    sums = _read_checksums(path)
    if entry is None:
        sums.pop(key, None)
    else:
        sums[key] = entry
    write_json(path, sums)


def ensure_zip(layout: DataLayout, session: requests.Session, url: str, year: str, name: str,
               policy: RetryPolicy = RetryPolicy()) -> tuple[Path, str]:
    """The zip at DATA/.wsm/challenges/<year>/<name>, verified against checksums.json or fetched; (path, how).

    Only a file that reads as a whole zip (its central directory is there) has its checksum recorded, so a
    download cut short can never pin a size that every later download would be refused against."""
    state = _challenge_state(layout)
    sums_path = state / "checksums.json"
    key = f"{year}/{name}"
    dest = state / year / name
    record = _read_checksums(sums_path).get(key)
    if dest.is_file():
        size = dest.stat().st_size
        digest = sha256_file(dest)
        if record is None and zipfile.is_zipfile(dest):
            _record_checksum(sums_path, key, url, size, digest)
            return dest, "verified"
        if record is not None and size == record.get("bytes") and digest == record.get("sha256"):
            return dest, "verified"
        log.warning("%s is not a whole zip or does not match checksums.json (size %d, sha256 %s; recorded %s, %s); "
                    "fetching it again", dest, size, digest, record and record.get("bytes"),
                    record and record.get("sha256"))
        dest.unlink()
    log.info("fetching %s", url)
    try:
        result = fetch_file(session, url, dest, expected_size=record.get("bytes") if record else None,
                            partial=layout.partial_path(dest), policy=policy)
    except DownloadError as err:
        if record is None:
            raise
        raise DownloadError(
            f"{err}. {sums_path} has held {key!r} at {record.get('bytes')} bytes since it was first fetched; if the "
            f"challenge data were updated upstream, or that first download was cut short, delete the {key!r} entry "
            "of that file and rerun") from err
    if not zipfile.is_zipfile(dest):
        dest.unlink()
        raise DownloadError(f"{url}: the {result.bytes} bytes served are not a whole zip (cut short?); nothing was "
                            "kept or recorded, rerun to fetch it again")
    if record is not None and result.sha256 != record.get("sha256"):
        dest.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: sha256 {result.sha256} differs from the {record.get('sha256')} recorded in {sums_path} when "
            f"it was first fetched; the file changed on the server or was corrupted on the way. Rerun to retry; "
            f"if the challenge data were updated upstream, delete the {key!r} entry of {sums_path}")
    if record is None:
        _record_checksum(sums_path, key, url, result.bytes, result.sha256)
    return dest, ("resumed" if result.resumed else "fetched")


@contextlib.contextmanager
def _dropped_if_corrupt(layout: DataLayout, zip_path: Path, key: str) -> Iterator[None]:
    """Remove a zip found corrupt while extracting, with its recorded checksum, so that a rerun fetches it
    afresh rather than verify the same damaged bytes again."""
    try:
        yield
    except CorruptArchiveError as err:
        zip_path.unlink(missing_ok=True)
        _update_checksums(_challenge_state(layout) / "checksums.json", key, None)
        raise CorruptArchiveError(err.problem, "wsm removed it and its recorded checksum: rerun to download it "
                                  "again") from err


# --------------------------------------------------------------------------------------------- one split

def staging_folder(layout: DataLayout, cs: ChallengeSplit, what: str) -> Path:
    """Where one split's entries of one kind (images, masks, attributes) are extracted before being checked."""
    return _challenge_state(layout) / cs.year / f"staging-{cs.split}-{what}"


def _extract_images(layout: DataLayout, cs: ChallengeSplit, zip_path: Path, url: str,
                    summary: ChallengeSummary, limits: ZipLimits, progress: bool) -> list[dict]:
    """Images of one split into DATA/images (existing ones kept); manifest rows for ids that have none yet."""
    staging = staging_folder(layout, cs, "images")
    kept: dict[str, Path] = {}      # entry name -> image already in DATA/images
    bad: list[tuple[str, str]] = []

    def plan(name: str) -> Path | None:
        m = cs.image_pattern.fullmatch(name)
        if not m:
            return None
        try:
            isic_id = _ascii_id(m.group(1))
        except InvalidIdError as err:
            bad.append((name, str(err)))
            return None
        existing = find_image(layout, isic_id)
        if existing is not None:
            kept[name] = existing
            return None
        return staging / f"{isic_id}.{m.group(2).lower()}"

    report = extract_members(zip_path, plan, layout.root, limits=limits, progress=progress)
    refused = {name for name, _ in bad}
    summary.unexpected += [n for n in report.unexpected if n not in kept and n not in refused]
    summary.images_rejected += bad
    have_row = set(read_table(layout.manifest, DATA_MANIFEST_CORE, ["isic_id"])["isic_id"].to_pylist())
    rows = []

    def row(isic_id: str, path: Path, nbytes: int, sha256: str, size: tuple[int, int]) -> dict:
        record = {"isic_id": isic_id, "copyright_license": "CC-0", "attribution": f"ISIC {cs.year} challenge",
                  "metadata": {"acquisition": {"image_type": "dermoscopic", "pixels_x": size[0],
                                               "pixels_y": size[1]}, "clinical": {}}}
        return manifest_row(record, file=path.relative_to(layout.root).as_posix(), nbytes=nbytes, sha256=sha256,
                            width=size[0], height=size[1], source_url=url)

    for member in report.members:
        isic_id, ext = member.path.name.split(".")
        try:
            size = image_size(member.path)
        except UNDECODABLE as err:
            summary.images_rejected.append((isic_id, f"does not decode as an image ({decode_problem(err)})"))
            member.path.unlink()
            continue
        final = layout.image_path(isic_id, ext)
        sha256 = member.sha256 or sha256_file(member.path)
        place_file(member.path, final)
        summary.images_written += 1
        rows.append(row(isic_id, final, member.bytes, sha256, size))
    for name, existing in kept.items():
        summary.images_skipped += 1
        isic_id = existing.stem
        if isic_id in have_row:
            continue
        # on disk, but from a run that stopped before writing its manifest (or put there by hand)
        try:
            size = image_size(existing)
        except UNDECODABLE as err:
            summary.images_rejected.append((isic_id, f"{existing} is already there but does not decode "
                                                      f"({decode_problem(err)})"))
            continue
        rows.append(row(isic_id, existing, existing.stat().st_size, sha256_file(existing), size))
    shutil.rmtree(staging, ignore_errors=True)
    return rows


def _extract_masks(layout: DataLayout, cs: ChallengeSplit, zip_path: Path, summary: ChallengeSummary,
                   limits: ZipLimits, progress: bool) -> list[dict]:
    """Masks of one split, checked, into DATA/masks/<challenge>/; their gt manifest rows."""
    staging = staging_folder(layout, cs, "masks")
    bad: list[tuple[str, str]] = []

    def plan(name: str) -> Path | None:
        m = cs.mask_pattern.fullmatch(name)
        if not m:
            return None
        try:
            return staging / f"{_ascii_id(m.group(1))}_segmentation.png"
        except InvalidIdError as err:
            bad.append((name, str(err)))
            return None

    report = extract_members(zip_path, plan, layout.root, limits=limits, progress=progress)
    refused = {name for name, _ in bad}
    summary.unexpected += [n for n in report.unexpected if n not in refused]
    summary.masks_rejected += bad
    rows = []
    for member in report.members:
        isic_id = member.path.name[: -len("_segmentation.png")]
        image = find_image(layout, isic_id)
        try:
            check = check_mask(member.path, image_size(image) if image is not None else None)
        except UNDECODABLE as err:
            check = MaskCheck(f"cannot be checked: its image {image} does not decode ({decode_problem(err)})")
        if not check.ok:
            summary.masks_rejected.append((isic_id, f"{member.name}: mask {check.reason}"))
            member.path.unlink()
            continue
        final = layout.mask_path(isic_id, cs.challenge)
        content = check.png_bytes if check.png_bytes is not None else member.path.read_bytes()
        if final.is_file() and final.read_bytes() == content:
            summary.masks_skipped += 1
            member.path.unlink()
        elif check.png_bytes is not None:
            write_bytes_atomic(final, check.png_bytes)
            member.path.unlink()
            summary.masks_written += 1
        else:
            place_file(member.path, final)
            summary.masks_written += 1
        rows.append({"isic_id": isic_id, "challenge": cs.challenge, "split": cs.split,
                     "mask_file": final.relative_to(layout.root).as_posix(),
                     "width": check.width, "height": check.height})
    shutil.rmtree(staging, ignore_errors=True)
    return rows


def merge_into(path: Path, rows: list[dict], core, key: tuple[str, ...]) -> None:
    """Merge rows into the manifest at ``path`` (by ``key``); the file is rewritten only when it changes."""
    if not rows:
        return
    old = read_table(path, core)
    merged = merge_rows(old, rows, core, key)
    if not merged.equals(old):
        write_table_atomic(merged, path)


# --------------------------------------------------------------------------------------------- driver

# Extracts one split's ground-truth zip into DATA and merges its rows: (layout, split, zip path) -> None.
TruthStep = Callable[[DataLayout, ChallengeSplit, Path], None]


def download_challenge(
    data_root: Path | str,
    challenge: str,
    splits: tuple[str, ...] | list[str] = SPLITS,
    inputs: bool = False,
    base_url: str = DEFAULT_CHALLENGE_URL,
    session: requests.Session | None = None,
    progress: bool = True,
    *,
    task: str = "lesion",
    limits: ZipLimits = ZipLimits(),
    policy: RetryPolicy = RetryPolicy(),
) -> ChallengeSummary:
    """Fetch, verify and extract the official masks (and images with ``inputs``) of ``challenge`` into DATA.

    ``task`` "lesion" gives the lesion masks; "attributes" the ISIC 2018 Task 2 attribute masks
    (archive_client.attribute_data.download_attributes, whose summary is an AttributeSummary). Splits the
    challenge does not have (2016 has no val) are listed in ``summary.missing_splits``. Raises
    InvalidInputError (a ValueError) for an unknown task, challenge or split name, DownloadError when a zip
    cannot be fetched or verified, UnsafeArchiveError / ArchiveError for a hostile or corrupt zip, LockedError
    if another wsm writes DATA.
    """
    if task == "attributes":
        from .attribute_data import download_attributes   # it builds on this module

        return download_attributes(data_root, challenge, splits, inputs, base_url, session, progress,
                                   limits=limits, policy=policy)
    summary = ChallengeSummary(challenge)

    def truth(layout: DataLayout, cs: ChallengeSplit, zip_path: Path) -> None:
        rows = _extract_masks(layout, cs, zip_path, summary, limits, progress)
        merge_into(layout.gt_manifest, rows, GT_MANIFEST, ("isic_id", "challenge"))

    return fetch_challenge(data_root, challenge, splits, task, summary, truth, inputs=inputs, base_url=base_url,
                           session=session, progress=progress, limits=limits, policy=policy)


def _wanted_splits(challenge: str, splits, task: str) -> tuple[list[ChallengeSplit], list[str]]:
    """The published splits asked for, and the names asked for that the challenge does not have."""
    try:
        published = task_catalog(challenge, task)
    except ValueError as err:
        raise InvalidInputError(str(err)) from None
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise InvalidInputError(f"unknown split(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SPLITS)}")
    asked = list(dict.fromkeys(splits))
    return [published[s] for s in asked if s in published], [s for s in asked if s not in published]


def fetch_challenge(data_root: Path | str, challenge: str, splits, task: str, summary: ChallengeSummary,
                    truth: TruthStep, *, inputs: bool, base_url: str, session: requests.Session | None,
                    progress: bool, limits: ZipLimits, policy: RetryPolicy) -> ChallengeSummary:
    """The driver both tasks share: per split, the inputs zip (with ``inputs``) into DATA/images, then the
    ground-truth zip through ``truth``; all under DATA's lock."""
    wanted, summary.missing_splits = _wanted_splits(challenge, splits, task)
    layout = DataLayout(Path(data_root).absolute())   # zip entries are routed to paths under this root
    session = session or make_session(workers=2, policy=policy)
    layout.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(layout.root):
        for cs in wanted:
            if inputs:
                url = cs.url(base_url, "inputs")
                with _fetched(layout, session, url, cs.year, cs.inputs_zip, summary, policy) as zip_path:
                    rows = _extract_images(layout, cs, zip_path, url, summary, limits, progress)
                merge_into(layout.manifest, rows, DATA_MANIFEST_CORE, ("isic_id",))
            with _fetched(layout, session, cs.url(base_url, "truth"), cs.year, cs.truth_zip, summary,
                          policy) as zip_path:
                truth(layout, cs, zip_path)
            summary.splits.append(cs.split)
            log.info("%s %s: %d %s written, %d already there, %d rejected", challenge, cs.split,
                     summary.masks_written, summary.noun, summary.masks_skipped, len(summary.masks_rejected))
        if inputs and layout.manifest.exists():   # the images are now part of DATA: describe them like isic-cli
            manifest = read_table(layout.manifest, DATA_MANIFEST_CORE)
            write_metadata_csv(layout.metadata_csv, manifest)
            write_attribution(layout.attribution, manifest)
    return summary


@contextlib.contextmanager
def _fetched(layout: DataLayout, session: requests.Session, url: str, year: str, name: str,
             summary: ChallengeSummary, policy: RetryPolicy) -> Iterator[Path]:
    """The zip, fetched or verified (how goes to ``summary.zips``), removed if found corrupt while in use."""
    zip_path, how = ensure_zip(layout, session, url, year, name, policy)
    summary.zips[key := f"{year}/{name}"] = how
    with _dropped_if_corrupt(layout, zip_path, key):
        yield zip_path
