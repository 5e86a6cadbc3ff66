"""`wsm import`: the DATA layout built from local folders: the challenge data, or any lesion dataset of your own.

    images/  <id>.(jpg|jpeg|png|bmp|tif|tiff)              -> DATA/images/<id>.<ext> (JPEG and PNG copied or
             hard-linked; BMP and TIFF stored as PNG)
    masks/   <id>_segmentation.png, or _Segmentation, _lesion, _contour, _mask; PNG, BMP, TIFF or GIF; 1-bit,
             8-bit 0/1 or 0/255, grey palette or 16-bit        -> DATA/masks/<challenge>/<id>_segmentation.png (0/255)
    attributes/  ISIC_ddddddd_attribute_<name>.png        -> DATA/attributes/<challenge>/ (ISIC 2018 Task 2; all
             five of an image or none, checked as archive_client.attribute_data checks the zips' files)
    labels   a CSV or .xlsx of per-image metadata (archive_client.labels); with image and mask columns it can
             name the files instead of the folders

Ids are the file names without extension (and without the mask suffix, or an image's ``_orig``, as the Waterloo
set names its photographs): ISIC_0000000, IMD002, AMM1; kept as given, refused unless they are safe file names
(archive_client.ids.check_image_id). Folders are searched recursively; PH2's own layout (IMDnnn/
IMDnnn_Dermoscopic_Image/IMDnnn.bmp, IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp) imports as it is, its colour-region
folders (IMDnnn_roi) left out. Files are checked (an image must decode and be at most 120 megapixels; a mask must
be two-valued and the size of its image) and written atomically; nothing that fails a check is written.
DATA/manifest.parquet, DATA/gt_manifest.parquet, DATA/attribute_manifest.parquet, DATA/metadata.csv and
DATA/attribution.txt are merged with what is there. A rerun skips files already present with the same content and
leaves the manifests untouched when nothing changed.
"""
from __future__ import annotations

import csv
import errno
import io
import logging
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from wsm.io.atomic import atomic_path, fsync_dir, write_bytes_atomic
from wsm.io.hashing import sha256_bytes, sha256_file
from wsm.io.images import (DEFAULT_MAX_PIXELS, UNDECODABLE, ImageDecodeError, check_decodes, decode_problem,
                           displayed_size, encode_label_png, image_size, official_mask, read_image)
from wsm.io.lock import exclusive_lock
from wsm.io.progress import progress as progress_bar
from wsm.io.tables import merge_rows, read_table, write_table_atomic

from .attribute_data import AttributeFiles, bring_in_attributes, merge_attribute_rows, unknown_attribute
from .challenge_data import MaskCheck, check_mask, find_image, merge_into
from .challenges import ATTRIBUTE_FILE, ATTRIBUTES
from .errors import InvalidInputError
from .ids import IMAGE_NAME, ISIC_ID, MASK_SUFFIXES, image_id_of, mask_id_of
from .isic_files import write_attribution, write_metadata_csv
from .vocabulary import IMAGE_TYPES
from .labels import PART3_DIAGNOSIS, Labels, part3_diagnosis, read_labels
from .layout import DataLayout
from .manifest import DATA_MANIFEST_CORE, GT_MANIFEST, manifest_row
from .safezip import is_benign

__all__ = ["ImportSummary", "PART3_DIAGNOSIS", "SPLITS_REFERENCE", "import_folders", "part3_diagnosis",
           "read_labels", "reference_split"]

log = logging.getLogger(__name__)

# The reference of which archive images have official masks, and in which split (shipped inside the package).
SPLITS_REFERENCE = Path(str(resources.files("wsm") / "manifests" / "challenge_splits.csv"))

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
STORED_AS_IS = ("JPEG", "PNG")         # other image formats are stored as PNG (lossless)
MASK_FORMATS = ("PNG", "BMP", "TIFF", "GIF")
SKIPPED_FOLDERS = re.compile(r".*_roi")  # PH2's colour-region masks (IMD002_roi/IMD002_R1_Label4.bmp)
CHALLENGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SPLIT_CHOICES = ("auto", "train", "val", "test")
ISIC_CHALLENGES = ("isic2016", "isic2017", "isic2018")

DEFAULT_LICENSE = "CC-0"
DEFAULT_ATTRIBUTION = "ISIC challenge data"


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
    labels_renamed_columns: dict[str, str] = field(default_factory=dict)   # a name wsm uses -> the one stored

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
            out.append(f"{len(skipped[None])} files skipped (not named like images or masks): "
                       f"{_examples(skipped[None])}")
        if self.labels_unmatched:
            out.append(f"{self.labels_unmatched} label rows have no imported image")
        if self.labels_ignored_columns:
            out.append(f"label columns not imported: {', '.join(self.labels_ignored_columns)}")
        if self.labels_renamed_columns:
            renamed = ", ".join(f"{a} as {b}" for a, b in self.labels_renamed_columns.items())
            out.append(f"label columns stored under another name (wsm uses theirs for its own): {renamed}")
        return out


_MASKS_HINT = "these look like masks: pass their folder with --masks DIR (it may be the same as --images)"
_IMAGES_HINT = "these look like images: pass their folder with --images DIR (it may be the same as --masks)"
_ATTRIBUTES_HINT = ("these look like attribute masks: pass their folder with --attributes DIR (it may be the same "
                    "as --images)")
_UNKNOWN_ATTRIBUTE_HINT = f"named like attribute masks, but the attributes are {', '.join(ATTRIBUTES)}"
_UNSAFE_ID_HINT = ("named like images or masks, but their ids are refused: use ASCII letters, digits, '_', '-' and "
                   "single dots, starting with a letter or digit (an id starting with ISIC_ is ISIC_ and 7 digits)")
_MISPLACED_HINTS = (_MASKS_HINT, _IMAGES_HINT, _ATTRIBUTES_HINT, _UNKNOWN_ATTRIBUTE_HINT, _UNSAFE_ID_HINT)


def _misplaced_hint(name: str) -> str | None:
    """For a skipped file named like a mask, an attribute mask or an image, where such files go; None for other
    names."""
    base = name.rsplit("/", 1)[-1]
    if mask_id_of(base):
        return _MASKS_HINT
    if ATTRIBUTE_FILE.fullmatch(base):
        return _UNKNOWN_ATTRIBUTE_HINT if unknown_attribute(base) else _ATTRIBUTES_HINT
    if image_id_of(base):
        return _IMAGES_HINT
    if IMAGE_NAME.fullmatch(base):
        return _UNSAFE_ID_HINT
    return None


def _examples(names: list[str], shown: int = 5) -> str:
    """A few names, quoted so a hostile one cannot garble the terminal."""
    return ", ".join(repr(n) for n in names[:shown]) + (" ..." if len(names) > shown else "")


# --------------------------------------------------------------------------------------------- splits

@lru_cache(maxsize=4)
def _reference(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise InvalidInputError(f"the reference split list {path} is missing from this installation of wsm; "
                                "reinstall wsm, or give the split with --assign-split")
    table: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf8") as fh:
        for row in csv.DictReader(fh):
            table.setdefault(row["isic_id"], {})[row["challenge"]] = row["split"]
    return table


def reference_split(isic_id: str, challenge: str, reference: Path = SPLITS_REFERENCE) -> str:
    """The split of an image's mask when none is given: its split in ``challenge`` per the reference list (the
    ISIC 2017 sets and the ISIC 2018 training set); for a dataset of your own (any other challenge name) its split
    in the newest challenge that has it, else train. ValueError when ``challenge`` is an ISIC challenge the
    reference does not place the image in: no split is guessed for the archive's own challenges."""
    known = _reference(reference).get(isic_id, {})
    if challenge in known:
        return known[challenge]
    if challenge in ISIC_CHALLENGES:
        raise ValueError(f"its split in {challenge} is not in wsm's reference list; give it with --assign-split "
                         "(train, val or test), or fetch the masks with `wsm download --challenge`")
    if known:
        return known[max(known)]
    return "train"


# --------------------------------------------------------------------------------------------- files

def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of the files under folder, sorted; hidden, __MACOSX and PH2's colour-region
    folders left out."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and d != "__MACOSX" and not SKIPPED_FOLDERS.fullmatch(d))
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
            image, mask = image_id_of(path.name), mask_id_of(path.name)
            attribute = ATTRIBUTE_FILE.fullmatch(path.name)
            if image and "image" in kinds:
                _add(found.images, image, name, path, summary.images_rejected)
            elif mask and "mask" in kinds:
                _add(found.masks, mask, name, path, summary.masks_rejected)
            elif attribute and attribute.group(2) in ATTRIBUTES and "attribute" in kinds:
                _add(found.attributes.setdefault(attribute.group(1), {}), attribute.group(2), name, path,
                     summary.attributes_rejected)
            elif not is_benign(name):
                summary.unexpected.append(f"{folder.name}/{name}")
    for table, rejected in ((found.images, summary.images_rejected), (found.masks, summary.masks_rejected)):
        _drop_case_twins(table, rejected)
    return found


def _drop_case_twins(table: dict, rejected: list) -> None:
    """Of ids that differ only in case (one file on case-insensitive disks), keep the first and refuse the rest."""
    first: dict[str, str] = {}
    for key in sorted(table):
        kept = first.setdefault(key.casefold(), key)
        if kept != key:
            rejected.append((table.pop(key)[0], f"{kept} is imported, the same id in another case (one file on "
                                                 "some disks); rename one of them"))


def _listed(labels: Labels, found: _Found, summary: ImportSummary) -> None:
    """The images and masks a labels file names in its image and mask columns, where no folder gives them."""
    for image_id, (image, mask) in sorted(labels.files.items()):
        for path, table, rejected in ((image, found.images, summary.images_rejected),
                                      (mask, found.masks, summary.masks_rejected)):
            if path is not None:
                _add(table, image_id, path.name, path, rejected)


def _add(table: dict, key: str, name: str, path: Path, rejected: list) -> None:
    if key in table:
        rejected.append((name, f"another file for {key} ({table[key][0]}) is imported instead"))
    else:
        table[key] = (name, path)


# --------------------------------------------------------------------------------------------- driver

def import_folders(
    out: Path | str,
    images: Path | str | None = None,
    masks: Path | str | None = None,
    labels: Path | str | None = None,
    challenge: str = "local",
    split: str = "auto",
    link: bool = False,
    progress: bool = True,
    attributes: Path | str | None = None,
    image_type: str = "dermoscopic",
) -> ImportSummary:
    """Import local images (and masks, attribute masks and labels) into the DATA folder ``out``; see the module doc.

    ``challenge`` names the mask folders DATA/masks/<challenge> and DATA/attributes/<challenge> and their manifest
    rows (the dataset's name: isic2018, ph2, ...); ``split`` is train, val, test or auto (see :func:`reference_split`).
    Without ``images`` the labels file's image (and mask) columns name the files. Attribute masks need their image
    in DATA or imported in the same call. ``link`` hard-links files instead of copying them where the file system
    allows (DATA then shares the files with the source: editing one edits the other). Raises InvalidInputError (a
    ValueError) for bad arguments or when nothing importable is found, LockedError if another wsm writes ``out``.
    """
    if not CHALLENGE_NAME.fullmatch(challenge or ""):
        raise InvalidInputError(f"challenge name {challenge!r} becomes a folder name: use letters, digits, '.', '_' "
                                "or '-' (at most 64, starting with a letter or digit), e.g. isic2018 or local")
    if split not in SPLIT_CHOICES:
        raise InvalidInputError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}")
    if image_type not in IMAGE_TYPES:
        raise InvalidInputError(f"unknown image type {image_type!r}; choose one of {', '.join(IMAGE_TYPES)}")
    folders = {kind: None if folder is None else Path(folder)
               for kind, folder in (("image", images), ("mask", masks), ("attribute", attributes))}
    for folder, what in zip(folders.values(), ("images", "masks", "attributes")):
        if folder is not None and not folder.is_dir():
            raise InvalidInputError(f"the {what} folder {folder} does not exist or is not a folder; "
                                    f"pass an existing folder to --{what}")
    label_table = read_labels(Path(labels)) if labels is not None else Labels()
    if images is None and not label_table.files:
        raise InvalidInputError("nothing to import: pass --images DIR, or --labels with a CSV whose image column "
                                "names the image files")
    layout = DataLayout(Path(out))
    summary = ImportSummary(labels_rejected=list(label_table.rejected),
                            labels_ignored_columns=list(label_table.ignored_columns),
                            labels_renamed_columns=dict(label_table.renamed_columns))
    found = _scan(folders, summary)
    if images is None:
        _listed(label_table, found, summary)
    if not (found.images or found.masks or found.attributes):
        raise InvalidInputError(_nothing_found(folders, summary))
    bar = dict(enabled=progress)
    layout.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(layout.root):
        rows = _import_images(layout, found, label_table, link, summary, bar, image_type)
        gt_rows = _import_masks(layout, found, challenge, split, link, summary, bar)
        attribute_rows = _import_attributes(layout, found, challenge, split, link, summary, progress)
        summary.labels_unmatched = len(set(label_table.by_id) - set(found.images))
        _write_manifests(layout, rows, gt_rows)
        merge_attribute_rows(layout, attribute_rows)
    return summary


def _nothing_found(folders: dict[str, Path | None], summary: ImportSummary) -> str:
    searched = ", ".join(f"{kind}s in {folder}" for kind, folder in folders.items() if folder is not None)
    seen = f"; it holds {_examples(summary.unexpected)}" if summary.unexpected else "; it holds no files"
    return (f"no image or mask found ({searched}){seen}. Images are <id>.jpg/.jpeg/.png/.bmp/.tif, masks "
            f"<id>_{{{','.join(MASK_SUFFIXES)}}}.png/.bmp/.tif/.gif; or pass --labels with a CSV whose image and "
            "mask columns name the files")


def _import_images(layout, found: _Found, labels: Labels, link: bool, summary: ImportSummary, bar,
                   image_type: str) -> list[dict]:
    """The manifest rows of the images brought in; an image already in DATA with the same content and no labels
    given for it keeps the row it has (a rerun without --labels does not wipe its diagnoses)."""
    rows = []
    known = _known_images(layout)
    folded = {other.casefold(): other for other in known}     # to find an id in another case at once
    for image_id, (name, src) in progress_bar(sorted(found.images.items()), desc="images", unit="file", **bar):
        try:
            with warnings.catch_warnings():      # wsm's own pixel cap (below) decides, not Pillow's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(src)
            with im:
                width, height = displayed_size(im)
                kind = im.format
                problem = _image_problem(kind, width, height)     # from the header, before a costly decode
                if problem is None:
                    check_decodes(im)
            dest = layout.image_path(image_id, src.suffix[1:].lower() if kind in STORED_AS_IS else "png")
            other = find_image(layout, image_id)
            if problem is None and other is not None and other != dest:
                problem = f"DATA already has {other.name} for {image_id}; remove it to import this file instead"
            sha256, png = _incoming(src, kind) if problem is None else (None, None)
            problem = problem or _clash(image_id, src, sha256, known, folded)
        except UNDECODABLE as err:
            summary.images_rejected.append((name, f"does not decode as an image ({decode_problem(err)})"))
            continue
        if problem:
            summary.images_rejected.append((name, problem))
            continue
        _bring_in_image(src, dest, sha256, png, link, summary)
        if image_id in labels.by_id or known.get(image_id, (None,))[0] != sha256:
            rows.append(_image_row(layout, image_id, src, dest, sha256, width, height, labels.by_id.get(image_id, {}),
                                   image_type))
    return rows


def _known_images(layout: DataLayout) -> dict[str, tuple[str, str]]:
    """The images DATA holds: id -> (sha256, source_url)."""
    table = read_table(layout.manifest, DATA_MANIFEST_CORE, ["isic_id", "sha256", "source_url"]).to_pydict()
    return {i: (h, u) for i, h, u in zip(table["isic_id"], table["sha256"], table["source_url"])}


def _clash(image_id: str, src: Path, sha256: str, known: dict[str, tuple[str, str]],
           folded: dict[str, str]) -> str | None:
    """Why an image may not come in under its id: DATA holds another image under a dataset's own id (from another
    file: two datasets that both call an image 1), or the same id in another case (one file on macOS and Windows
    disks; ``folded``: DATA's ids by their case-folded form). A changed file from the same place, or an archive
    image (its ISIC id names one image), replaces the old one."""
    twin = folded.get(image_id.casefold(), image_id)
    if twin != image_id:
        return f"DATA already holds {twin}, the same id in another case (one file on some disks); rename one of them"
    held, source = known.get(image_id, (None, None))
    if held is not None and held != sha256 and source != _uri(src) and not ISIC_ID.fullmatch(image_id):
        return (f"DATA already holds another image {image_id} (from {source}); two datasets whose ids repeat go into "
                "DATA folders of their own, or rename the files of one")
    return None


def _uri(path: Path) -> str:
    return Path(os.path.abspath(path)).as_uri()


def _incoming(src: Path, kind: str) -> tuple[str, bytes | None]:
    """The sha256 the image will have in DATA, and its PNG encoding when it is converted (BMP, TIFF)."""
    if kind in STORED_AS_IS:
        return sha256_file(src), None
    png = _png_bytes(read_image(src))
    return sha256_bytes(png), png


def _image_problem(kind: str | None, width: int, height: int) -> str | None:
    if kind not in IMAGE_FORMATS:
        return f"is a {kind} file, expected {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]}"
    if width * height > DEFAULT_MAX_PIXELS:
        return (f"is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the "
                f"{DEFAULT_MAX_PIXELS / 1e6:.0f} wsm decodes; downscale it first")
    return None


def _bring_in_image(src: Path, dest: Path, sha256: str, png: bytes | None, link: bool, summary: ImportSummary) -> None:
    """Copy, link or write the converted ``png`` of src onto dest, unless dest has that content already."""
    if dest.is_file() and (_same_file(src, dest) or sha256_file(dest) == sha256):
        summary.images_skipped += 1
    elif png is not None:
        write_bytes_atomic(dest, png)
        summary.images_written += 1
    else:
        summary.images_linked += _place(src, dest, link)
        summary.images_written += 1


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _image_row(layout, image_id: str, src: Path, dest: Path, sha256: str, width: int, height: int,
               labels: dict[str, str], image_type: str) -> dict:
    fields = dict(labels)
    license_ = fields.pop("copyright_license", None) or DEFAULT_LICENSE
    attribution = fields.pop("attribution", None) or DEFAULT_ATTRIBUTION
    image_type = fields.pop("image_type", None) or image_type
    record = {"isic_id": image_id, "copyright_license": license_, "attribution": attribution,
              "metadata": {"acquisition": {"image_type": image_type, "pixels_x": width, "pixels_y": height},
                           "clinical": fields}}
    return manifest_row(record, file=dest.relative_to(layout.root).as_posix(), nbytes=dest.stat().st_size,
                        sha256=sha256, width=width, height=height, source_url=_uri(src))


def _import_masks(layout, found: _Found, challenge: str, split: str, link: bool, summary: ImportSummary,
                  bar) -> list[dict]:
    rows = []
    for isic_id, (name, src) in progress_bar(sorted(found.masks.items()), desc="masks", unit="file", **bar):
        image = find_image(layout, isic_id)
        if image is None:
            summary.masks_rejected.append((name, f"no image {isic_id} was imported or is in {layout.images}"))
            continue
        try:
            chosen = _split_of(isic_id, challenge, split)
        except ValueError as err:
            summary.masks_rejected.append((name, str(err)))
            continue
        try:
            size = image_size(image)
        except UNDECODABLE as err:
            summary.masks_rejected.append((name, f"its image {image} does not decode ({decode_problem(err)})"))
            continue
        check = check_mask(src, size, formats=MASK_FORMATS)
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
