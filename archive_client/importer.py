"""`wsm import`: the DATA layout built from local folders, for users who already have the challenge data.

    images/  ISIC_ddddddd.(jpg|jpeg|png)                 -> DATA/images/ISIC_x.<ext>   (copied, or hard-linked)
    masks/   ISIC_ddddddd_segmentation.png (_Segmentation) -> DATA/masks/<challenge>/ISIC_x_segmentation.png
    attributes/  ISIC_ddddddd_attribute_<name>.png        -> DATA/attributes/<challenge>/ (ISIC 2018 Task 2; all
             five of an image or none, checked as archive_client.attribute_data checks the zips' files)
    labels   CSV with isic_id (or image_id) and either the archive's diagnosis_1..5 and other metadata columns,
             or the ISIC 2017 Part 3 columns melanoma, seborrheic_keratosis (0/1, empty = unknown)

Files are found by name only (other names are skipped and reported; licence files and the like silently),
checked (an image must decode; a mask must be an 8-bit single-channel PNG of its image's size holding 0/255,
or 0/1 which is written as 0/255) and written atomically; nothing that fails a check is written.
DATA/manifest.parquet, DATA/gt_manifest.parquet, DATA/attribute_manifest.parquet, DATA/metadata.csv and
DATA/attribution.txt are merged with what is there. A rerun skips files already present with the same sha256 and leaves the manifests untouched when
nothing changed.
"""
from __future__ import annotations

import csv
import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from wsm.io.atomic import atomic_path, fsync_dir, write_bytes_atomic
from wsm.io.hashing import sha256_file
from wsm.io.images import (UNDECODABLE, ImageDecodeError, check_decodes, decode_problem, displayed_size,
                           encode_label_png, image_size, official_mask)
from wsm.io.lock import exclusive_lock
from wsm.io.progress import progress as progress_bar
from wsm.io.tables import merge_rows, read_table, write_table_atomic

from .attribute_data import AttributeFiles, bring_in_attributes, merge_attribute_rows, unknown_attribute
from .challenge_data import MaskCheck, check_mask, find_image, merge_into
from .challenges import ATTRIBUTE_FILE, ATTRIBUTES
from .errors import InvalidInputError
from .ids import check_isic_id
from .isic_files import write_attribution, write_metadata_csv
from .layout import DataLayout
from .manifest import DATA_MANIFEST_CORE, GT_MANIFEST, manifest_row
from .safezip import is_benign

__all__ = ["ImportSummary", "PART3_DIAGNOSIS", "SPLITS_REFERENCE", "import_folders", "part3_diagnosis",
           "read_labels", "reference_split"]

log = logging.getLogger(__name__)

# The checked-in reference of which archive images have official masks, and in which split.
SPLITS_REFERENCE = Path(__file__).resolve().parents[1] / "manifests" / "challenge_splits.csv"

IMAGE_NAME = re.compile(r"(ISIC_[0-9]{7})\.([A-Za-z]{3,4})")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
MASK_NAME = re.compile(r"(ISIC_[0-9]{7})_[Ss]egmentation\.[Pp][Nn][Gg]")
CHALLENGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SPLIT_CHOICES = ("auto", "train", "val", "test")

DEFAULT_LICENSE = "CC-0"
DEFAULT_ATTRIBUTION = "ISIC challenge data"

# ISIC 2017 Part 3 labels -> the archive's diagnosis hierarchy (diagnosis_1, diagnosis_2, diagnosis_3).
PART3_DIAGNOSIS = {
    "melanoma": ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma, NOS"),
    "seborrheic_keratosis": ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
    "neither": ("Benign", "Benign melanocytic proliferations", "Nevus"),
}
_PART3_COLUMNS = ("melanoma", "seborrheic_keratosis")
_DIAGNOSIS_COLUMN = re.compile(r"diagnosis_[1-5]")
_ID_COLUMNS = ("isic_id", "image_id")        # ISIC 2017's ground-truth CSVs call it image_id
# Label columns that would overwrite what import measures on the file itself.
_FILE_COLUMNS = {"file", "bytes", "sha256", "width", "height", "source_url", "pixels_x", "pixels_y"}


# --------------------------------------------------------------------------------------------- summary

@dataclass
class ImportSummary:
    images_written: int = 0
    images_linked: int = 0                  # of images_written, how many are hard links to the source
    images_skipped: int = 0                 # already in DATA with the same sha256
    images_rejected: list[tuple[str, str]] = field(default_factory=list)   # (file, reason)
    masks_written: int = 0
    masks_skipped: int = 0
    masks_rejected: list[tuple[str, str]] = field(default_factory=list)
    attributes_written: int = 0             # attribute mask files
    attributes_skipped: int = 0
    attribute_images: int = 0               # images whose five attribute masks are in DATA
    attributes_rejected: list[tuple[str, str]] = field(default_factory=list)   # (isic_id or file, reasons)
    unexpected: list[str] = field(default_factory=list)      # skipped: not image or mask names, or a mask
                                                             # name in the images folder (and vice versa)
    splits: dict[str, int] = field(default_factory=dict)     # split -> masks imported
    labels_rejected: list[tuple[str, str]] = field(default_factory=list)   # (row, reason)
    labels_unmatched: int = 0               # label rows whose image was not imported
    labels_ignored_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when an image, mask, attribute mask or label row that was given could not be imported."""
        return not (self.images_rejected or self.masks_rejected or self.attributes_rejected or self.labels_rejected)

    def lines(self) -> list[str]:
        """A human summary for the CLI; file names are quoted so a hostile one cannot garble the terminal."""
        out = [f"images {self.images_written} written ({self.images_linked} hard links), "
               f"{self.images_skipped} already there, {len(self.images_rejected)} rejected",
               f"masks {self.masks_written} written, {self.masks_skipped} already there, "
               f"{len(self.masks_rejected)} rejected; splits {dict(sorted(self.splits.items()))}"]
        if self.attributes_written or self.attributes_skipped or self.attributes_rejected:
            out.append(f"attribute masks {self.attributes_written} written, {self.attributes_skipped} already there; "
                       f"{self.attribute_images} images with all five, {len(self.attributes_rejected)} rejected")
        out += [f"rejected {name!r}: {why}"
                for name, why in self.images_rejected + self.masks_rejected + self.attributes_rejected]
        out += [f"label row {row}: {why}" for row, why in self.labels_rejected]
        skipped: dict[str | None, list[str]] = {}
        for name in self.unexpected:
            skipped.setdefault(_misplaced_hint(name), []).append(name)
        for hint in _MISPLACED_HINTS:
            if hint in skipped:
                out.append(f"{len(skipped[hint])} files skipped ({_examples(skipped[hint])}): {hint}")
        if None in skipped:
            out.append(f"{len(skipped[None])} files skipped (not ISIC_ddddddd images or masks): "
                       f"{_examples(skipped[None])}")
        if self.labels_unmatched:
            out.append(f"{self.labels_unmatched} label rows have no imported image")
        if self.labels_ignored_columns:
            out.append(f"label columns not imported: {', '.join(self.labels_ignored_columns)}")
        return out


_MASKS_HINT = "these look like masks: pass their folder with --masks DIR (it may be the same as --images)"
_IMAGES_HINT = "these look like images: pass their folder with --images DIR (it may be the same as --masks)"
_ATTRIBUTES_HINT = ("these look like attribute masks: pass their folder with --attributes DIR (it may be the same "
                    "as --images)")
_UNKNOWN_ATTRIBUTE_HINT = f"named like attribute masks, but the attributes are {', '.join(ATTRIBUTES)}"
_MISPLACED_HINTS = (_MASKS_HINT, _IMAGES_HINT, _ATTRIBUTES_HINT, _UNKNOWN_ATTRIBUTE_HINT)


def _misplaced_hint(name: str) -> str | None:
    """For a skipped file named like a mask, an attribute mask or an image, where such files go; None for other
    names."""
    base = name.rsplit("/", 1)[-1]
    if MASK_NAME.fullmatch(base):
        return _MASKS_HINT
    if ATTRIBUTE_FILE.fullmatch(base):
        return _UNKNOWN_ATTRIBUTE_HINT if unknown_attribute(base) else _ATTRIBUTES_HINT
    image = IMAGE_NAME.fullmatch(base)
    if image and image.group(2).lower() in IMAGE_EXTENSIONS:
        return _IMAGES_HINT
    return None


def _examples(names: list[str], shown: int = 5) -> str:
    """A few names, quoted so a hostile one cannot garble the terminal."""
    return ", ".join(repr(n) for n in names[:shown]) + (" ..." if len(names) > shown else "")


# --------------------------------------------------------------------------------------------- labels

def _flag(value: str | None, column: str) -> int | None:
    """0 / 1 from '0', '1', '0.0', '1.0'; None when empty; ValueError otherwise."""
    text = (value or "").strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise ValueError(f"{column}={value!r}, expected 0, 1 or empty")
    return int(number)


def part3_diagnosis(melanoma: int | None, seborrheic_keratosis: int | None) -> tuple[str, str, str] | None:
    """diagnosis_1..3 for ISIC 2017 Part 3 labels; None when unknown; ValueError when both are 1."""
    if melanoma == 1 and seborrheic_keratosis == 1:
        raise ValueError("melanoma and seborrheic_keratosis are both 1; the 2017 classes are exclusive")
    if melanoma == 1:
        return PART3_DIAGNOSIS["melanoma"]
    if seborrheic_keratosis == 1:
        return PART3_DIAGNOSIS["seborrheic_keratosis"]
    if melanoma == 0 and seborrheic_keratosis == 0:
        return PART3_DIAGNOSIS["neither"]
    return None


@dataclass
class Labels:
    by_id: dict[str, dict[str, str]] = field(default_factory=dict)   # isic_id -> metadata fields
    rejected: list[tuple[str, str]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)


def read_labels(path: Path) -> Labels:
    """Per-image metadata from a labels CSV (see the module doc); bad rows are listed, not fatal; a file that is
    not a UTF-8 CSV with an id column raises InvalidInputError."""
    if not path.is_file():
        raise InvalidInputError(f"the labels file {path} does not exist or is not a file; pass a CSV to --labels")
    try:
        return _parse_labels(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InvalidInputError(f"the labels file {path} is not a UTF-8 CSV ({err}); save it as CSV, UTF-8") from err


def _parse_labels(path: Path) -> Labels:
    labels = Labels()
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c for c in (reader.fieldnames or [])]
        id_column = next((c for c in _ID_COLUMNS if c in columns), None)
        if id_column is None:
            raise InvalidInputError(f"{path}: no isic_id (or image_id) column; its columns are {columns}; "
                                    "name the image id column isic_id")
        archive_style = any(_DIAGNOSIS_COLUMN.fullmatch(c) for c in columns)
        part3 = not archive_style and all(c in columns for c in _PART3_COLUMNS)
        others = [c for c in columns if c not in _ID_COLUMNS and c is not None]
        if part3:
            keep = [c for c in others if c in ("image_type", "copyright_license", "attribution")]
        else:
            keep = [c for c in others if c not in _FILE_COLUMNS]
        labels.ignored_columns = [c for c in others if c not in keep and not (part3 and c in _PART3_COLUMNS)]
        for line, row in enumerate(reader, start=2):
            where = f"{path.name}:{line}"
            try:
                isic_id = check_isic_id((row.get(id_column) or "").strip())
                if not isic_id.isascii():
                    raise ValueError(f"refusing isic_id {isic_id!r}: non-ASCII digits")
                fields = {c: row[c].strip() for c in keep if isinstance(row.get(c), str) and row[c].strip()}
                if part3:
                    diagnosis = part3_diagnosis(*(_flag(row.get(c), c) for c in _PART3_COLUMNS))
                    if diagnosis:
                        fields.update(zip(("diagnosis_1", "diagnosis_2", "diagnosis_3"), diagnosis))
            except ValueError as err:
                labels.rejected.append((where, str(err)))
                continue
            if isic_id in labels.by_id:
                labels.rejected.append((where, f"second row for {isic_id}; the first one is used"))
                continue
            labels.by_id[isic_id] = fields
    return labels


# --------------------------------------------------------------------------------------------- splits

@lru_cache(maxsize=4)
def _reference(path: Path) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    if not path.exists():
        log.warning("no reference split file at %s; split 'auto' gives 'train' to every image", path)
        return table
    with open(path, newline="", encoding="utf8") as fh:
        for row in csv.DictReader(fh):
            table.setdefault(row["isic_id"], {})[row["challenge"]] = row["split"]
    return table


def reference_split(isic_id: str, challenge: str, reference: Path = SPLITS_REFERENCE) -> str:
    """The split of isic_id in ``challenge`` per the reference file; else its split in the most recent challenge
    that has it; else "train"."""
    known = _reference(reference).get(isic_id, {})
    if challenge in known:
        return known[challenge]
    if known:
        return known[max(known)]
    return "train"


# --------------------------------------------------------------------------------------------- files

def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of the files under folder, sorted; hidden and __MACOSX folders left out."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(files):
            path = Path(current) / name
            yield path.relative_to(folder).as_posix(), path


_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


def _link_atomic(src: Path, dest: Path) -> bool:
    """Hard-link src onto dest atomically; False (nothing done) when the file system will not link them."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        os.link(os.path.realpath(src), tmp)   # link() on Linux would link a symlink itself, not its target
    except OSError as err:
        if err.errno in _NO_LINK:
            return False
        raise
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return True


def _place(src: Path, dest: Path, link: bool) -> bool:
    """Copy (or hard-link) src onto dest atomically; True if it is a link."""
    if link and _link_atomic(src, dest):
        return True
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@dataclass
class _Found:
    images: dict[str, tuple[str, Path]] = field(default_factory=dict)   # isic_id -> (name, path)
    masks: dict[str, tuple[str, Path]] = field(default_factory=dict)
    attributes: AttributeFiles = field(default_factory=dict)


def _scan(folders: dict[str, Path | None], summary: ImportSummary) -> _Found:
    """Images, masks and attribute masks by name, each from its own folder ({"image": images, "mask": masks,
    "attribute": attributes}; one folder may serve several); anything else that is not benign is reported, once."""
    found = _Found()
    kinds_of: dict[str, tuple[Path, set[str]]] = {}
    for kind, folder in folders.items():
        if folder is not None:
            kinds_of.setdefault(os.path.abspath(folder), (folder, set()))[1].add(kind)
    for folder, kinds in kinds_of.values():
        for name, path in _walk(folder):
            image = IMAGE_NAME.fullmatch(path.name)
            mask = MASK_NAME.fullmatch(path.name)
            attribute = ATTRIBUTE_FILE.fullmatch(path.name)
            if image and image.group(2).lower() in IMAGE_EXTENSIONS and "image" in kinds:
                _add(found.images, image.group(1), name, path, summary.images_rejected)
            elif mask and "mask" in kinds:
                _add(found.masks, mask.group(1), name, path, summary.masks_rejected)
            elif attribute and attribute.group(2) in ATTRIBUTES and "attribute" in kinds:
                _add(found.attributes.setdefault(attribute.group(1), {}), attribute.group(2), name, path,
                     summary.attributes_rejected)
            elif not is_benign(name):
                summary.unexpected.append(f"{folder.name}/{name}")
    return found


def _add(table: dict, key: str, name: str, path: Path, rejected: list) -> None:
    if key in table:
        rejected.append((name, f"another file for {key} ({table[key][0]}) is imported instead"))
    else:
        table[key] = (name, path)


# --------------------------------------------------------------------------------------------- driver

def import_folders(
    out: Path | str,
    images: Path | str,
    masks: Path | str | None = None,
    labels: Path | str | None = None,
    challenge: str = "local",
    split: str = "auto",
    link: bool = False,
    progress: bool = True,
    attributes: Path | str | None = None,
) -> ImportSummary:
    """Import local images (and masks, attribute masks and labels) into the DATA folder ``out``; see the module doc.

    ``challenge`` names the mask folders DATA/masks/<challenge> and DATA/attributes/<challenge> and their manifest
    rows; ``split`` is train, val, test or auto (the reference file manifests/challenge_splits.csv, else train).
    Attribute masks need their image in DATA or imported in the same call. ``link`` hard-links
    files instead of copying them where the file system allows (DATA then shares the files with the source:
    editing one edits the other). Raises InvalidInputError (a ValueError) for bad arguments, LockedError if
    another wsm writes ``out``.
    """
    if not CHALLENGE_NAME.fullmatch(challenge or ""):
        raise InvalidInputError(f"challenge name {challenge!r} becomes a folder name: use letters, digits, '.', '_' "
                                "or '-' (at most 64, starting with a letter or digit), e.g. isic2018 or local")
    if split not in SPLIT_CHOICES:
        raise InvalidInputError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}")
    folders = {kind: None if folder is None else Path(folder)
               for kind, folder in (("image", images), ("mask", masks), ("attribute", attributes))}
    for folder, what in zip(folders.values(), ("images", "masks", "attributes")):
        if folder is not None and not folder.is_dir():
            raise InvalidInputError(f"the {what} folder {folder} does not exist or is not a folder; "
                                    f"pass an existing folder to --{what}")
    label_table = read_labels(Path(labels)) if labels is not None else Labels()
    layout = DataLayout(Path(out))
    summary = ImportSummary(labels_rejected=list(label_table.rejected),
                            labels_ignored_columns=list(label_table.ignored_columns))
    found = _scan(folders, summary)
    bar = dict(enabled=progress)
    layout.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(layout.root):
        rows = _import_images(layout, found, label_table, link, summary, bar)
        gt_rows = _import_masks(layout, found, challenge, split, link, summary, bar)
        attribute_rows = _import_attributes(layout, found, challenge, split, link, summary, progress)
        summary.labels_unmatched = len(set(label_table.by_id) - {r["isic_id"] for r in rows})
        _write_manifests(layout, rows, gt_rows)
        merge_attribute_rows(layout, attribute_rows)
    return summary


def _import_images(layout, found: _Found, labels: Labels, link: bool, summary: ImportSummary, bar) -> list[dict]:
    rows = []
    for isic_id, (name, src) in progress_bar(sorted(found.images.items()), desc="images", unit="file", **bar):
        ext = src.suffix[1:].lower()
        dest = layout.image_path(isic_id, ext)
        try:
            with Image.open(src) as im:
                width, height = displayed_size(im)
                kind = im.format
                check_decodes(im)
        except UNDECODABLE as err:
            summary.images_rejected.append((name, f"does not decode as an image ({decode_problem(err)})"))
            continue
        if kind not in ("JPEG", "PNG"):
            summary.images_rejected.append((name, f"is a {kind} file, expected JPEG or PNG"))
            continue
        other = find_image(layout, isic_id)
        if other is not None and other != dest:
            summary.images_rejected.append((name, f"DATA already has {other.name} for {isic_id}; remove it to "
                                                  "import this file instead"))
            continue
        sha256 = sha256_file(src)
        if dest.is_file() and (_same_file(src, dest) or sha256_file(dest) == sha256):
            summary.images_skipped += 1
        else:
            summary.images_linked += _place(src, dest, link)
            summary.images_written += 1
        fields = dict(labels.by_id.get(isic_id, {}))
        license_ = fields.pop("copyright_license", None) or DEFAULT_LICENSE
        attribution = fields.pop("attribution", None) or DEFAULT_ATTRIBUTION
        image_type = fields.pop("image_type", None) or "dermoscopic"
        record = {"isic_id": isic_id, "copyright_license": license_, "attribution": attribution,
                  "metadata": {"acquisition": {"image_type": image_type, "pixels_x": width, "pixels_y": height},
                               "clinical": fields}}
        rows.append(manifest_row(record, file=dest.relative_to(layout.root).as_posix(), nbytes=dest.stat().st_size,
                                 sha256=sha256, width=width, height=height,
                                 source_url=Path(os.path.abspath(src)).as_uri()))
    return rows


def _import_masks(layout, found: _Found, challenge: str, split: str, link: bool, summary: ImportSummary,
                  bar) -> list[dict]:
    rows = []
    for isic_id, (name, src) in progress_bar(sorted(found.masks.items()), desc="masks", unit="file", **bar):
        image = find_image(layout, isic_id)
        if image is None:
            summary.masks_rejected.append((name, f"no image {isic_id} was imported or is in {layout.images}"))
            continue
        try:
            size = image_size(image)
        except UNDECODABLE as err:
            summary.masks_rejected.append((name, f"its image {image} does not decode ({decode_problem(err)})"))
            continue
        check = check_mask(src, size)
        if not check.ok:
            summary.masks_rejected.append((name, f"mask {check.reason}"))
            continue
        try:
            png = _official_png(src, check)
        except ImageDecodeError as err:
            summary.masks_rejected.append((name, f"{err.reason}. {err.fix}"))
            continue
        dest = layout.mask_path(isic_id, challenge)
        if png is not None:
            if dest.is_file() and dest.read_bytes() == png:
                summary.masks_skipped += 1
            else:
                write_bytes_atomic(dest, png)
                summary.masks_written += 1
        elif dest.is_file() and (_same_file(src, dest) or sha256_file(dest) == sha256_file(src)):
            summary.masks_skipped += 1
        else:
            _place(src, dest, link)
            summary.masks_written += 1
        chosen = _split_of(isic_id, challenge, split)
        summary.splits[chosen] = summary.splits.get(chosen, 0) + 1
        rows.append({"isic_id": isic_id, "challenge": challenge, "split": chosen,
                     "mask_file": dest.relative_to(layout.root).as_posix(),
                     "width": check.width, "height": check.height})
    return rows


def _split_of(isic_id: str, challenge: str, split: str) -> str:
    return reference_split(isic_id, challenge) if split == "auto" else split


def _import_attributes(layout, found: _Found, challenge: str, split: str, link: bool, summary: ImportSummary,
                       progress: bool) -> list[dict]:
    done = bring_in_attributes(layout, found.attributes, challenge, lambda i: _split_of(i, challenge, split),
                               lambda src, dest: _place(src, dest, link), require_image=True, progress=progress)
    summary.attributes_written += done.written
    summary.attributes_skipped += done.skipped
    summary.attribute_images += done.images
    summary.attributes_rejected += done.rejected
    return done.rows


def _official_png(src: Path, check: MaskCheck) -> bytes | None:
    """The PNG to write for an accepted mask: check_mask's re-encoding, or None to copy ``src``; a 0/1 mask is
    re-encoded as 0/255. Raises ImageDecodeError when the values are not an official mask's."""
    pixels = official_mask(check.pixels, src)
    return check.png_bytes if np.array_equal(pixels, check.pixels) else encode_label_png(pixels)


def _write_manifests(layout: DataLayout, rows: list[dict], gt_rows: list[dict]) -> None:
    old = read_table(layout.manifest, DATA_MANIFEST_CORE)
    merged = merge_rows(old, rows, DATA_MANIFEST_CORE, ("isic_id",)) if rows else old
    changed = bool(rows) and not merged.equals(old)
    if changed:
        write_table_atomic(merged, layout.manifest)
    if merged.num_rows and (changed or not layout.metadata_csv.exists()):
        write_metadata_csv(layout.metadata_csv, merged)
    if merged.num_rows and (changed or not layout.attribution.exists()):
        write_attribution(layout.attribution, merged)
    merge_into(layout.gt_manifest, gt_rows, GT_MANIFEST, ("isic_id", "challenge"))
