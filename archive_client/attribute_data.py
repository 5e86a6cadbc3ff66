"""ISIC 2018 Task 2 ground truth (dermoscopic attribute masks) into DATA: `wsm download --challenge isic2018
--task attributes` and `wsm import --attributes DIR`.

The ground truth is one ISIC_x_attribute_<name>.png per image and attribute (archive_client.challenges.ATTRIBUTES;
a pixel may be in several). Zips are fetched, verified and extracted as the lesion masks' are
(archive_client.challenge_data); a file must pass check_mask (a PNG, 8-bit single channel, its image's size when
the image is on disk) and hold only 0 and 255. An image's masks come in together or not at all: all five must be
there, valid and of one size, else every one of its files is left out with the reasons, so that a missing file
never reads as an absent attribute. Files with other attribute names are left out as unexpected.

    DATA/attributes/<challenge>/ISIC_x_attribute_<name>.png
    DATA/attribute_manifest.parquet     one row per (isic_id, challenge, attribute), merged on that key

A rerun counts files already there with the same bytes as such. Read the manifest with
``wsm.io.tables.read_table(DataLayout(root).attribute_manifest, ATTRIBUTE_MANIFEST)``.
"""
from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import requests
from PIL import Image

from wsm.io.atomic import write_bytes_atomic
from wsm.io.images import UNDECODABLE, decode_problem, image_size
from wsm.io.progress import progress as progress_bar

from .challenge_data import (ChallengeSummary, MaskCheck, check_mask, fetch_challenge, find_image, merge_into,
                             place_file, staging_folder)
from .challenges import ATTRIBUTE_FILE, ATTRIBUTES, DEFAULT_CHALLENGE_URL, SPLITS, ChallengeSplit, attribute_file_name
from .layout import DataLayout
from .manifest import ATTRIBUTE_MANIFEST
from .safezip import ZipLimits, extract_members
from .transfer import RetryPolicy

__all__ = ["ATTRIBUTE_KEY", "AttributeFiles", "AttributeSummary", "AttributesIn", "bring_in_attributes",
           "check_attribute_mask", "download_attributes", "merge_attribute_rows", "unknown_attribute"]

log = logging.getLogger(__name__)

ATTRIBUTE_KEY = ("isic_id", "challenge", "attribute")   # the attribute manifest's key

# isic_id -> attribute -> (the file's name in the zip or folder, where it is on disk)
AttributeFiles = dict[str, dict[str, tuple[str, Path]]]


def unknown_attribute(name: str) -> str | None:
    """For a file named like an attribute mask whose attribute is not one of ATTRIBUTES, why it is left out."""
    match = ATTRIBUTE_FILE.fullmatch(name.rsplit("/", 1)[-1])
    if match is None or match.group(2) in ATTRIBUTES:
        return None
    return f"unknown attribute {match.group(2)!r}; the ISIC 2018 Task 2 attributes are {', '.join(ATTRIBUTES)}"


# --------------------------------------------------------------------------------------------- checks

def check_attribute_mask(path: Path, image_size: tuple[int, int] | None = None) -> MaskCheck:
    """check_mask, and the values must be 0 and 255 only (a 0/1 mask is taken as 0/255 and re-encoded)."""
    check = check_mask(path, image_size)
    if not check.ok or np.isin(check.pixels, (0, 255)).all():
        return check
    if np.isin(check.pixels, (0, 1)).all():
        scaled = (check.pixels * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(scaled, mode="L").save(buf, format="PNG")
        return MaskCheck(None, check.width, check.height, buf.getvalue(), scaled)
    found = np.unique(check.pixels)
    shown = ", ".join(str(v) for v in found[:8]) + (" ..." if found.size > 8 else "")
    return MaskCheck(f"has values other than 0 and 255 (found {shown}); an attribute mask is 0 (absent) and 255 "
                     "(present), or 0 and 1", check.width, check.height)


@dataclass(frozen=True)
class _Accepted:
    src: Path
    width: int
    height: int
    positive_pixels: int
    png_bytes: bytes | None       # check_mask's 'L' re-encoding, else None: the file is taken as it is


def _check_set(files: dict[str, tuple[str, Path]], size: tuple[int, int] | None) -> tuple[dict[str, _Accepted],
                                                                                         list[str]]:
    """Each of one image's files checked; (the accepted ones, what is missing or wrong)."""
    missing = [a for a in ATTRIBUTES if a not in files]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    accepted: dict[str, _Accepted] = {}
    for attribute in ATTRIBUTES:
        if attribute not in files:
            continue
        name, path = files[attribute]
        check = check_attribute_mask(path, size)
        if not check.ok:
            problems.append(f"{name}: mask {check.reason}")
            continue
        accepted[attribute] = _Accepted(path, check.width, check.height, int(np.count_nonzero(check.pixels)),
                                        check.png_bytes)
    if len({(a.width, a.height) for a in accepted.values()}) > 1:
        sizes = ", ".join(f"{attribute} {a.width}x{a.height}" for attribute, a in accepted.items())
        problems.append(f"the masks differ in size ({sizes})")
    return accepted, problems


def _image_problem(layout: DataLayout, isic_id: str, require_image: bool) -> tuple[tuple[int, int] | None,
                                                                                    str | None]:
    """(the size of isic_id's image in DATA or None, why its masks cannot be taken or None)."""
    image = find_image(layout, isic_id)
    if image is None:
        return None, (f"no image {isic_id} was imported or is in {layout.images}" if require_image else None)
    try:
        return image_size(image), None
    except UNDECODABLE as err:
        return None, f"its image {image} does not decode ({decode_problem(err)})"


# --------------------------------------------------------------------------------------------- into DATA

@dataclass
class AttributesIn:
    """What bring_in_attributes did."""
    rows: list[dict] = field(default_factory=list)     # attribute manifest rows of the accepted images
    images: int = 0                                     # images whose five masks are in DATA
    written: int = 0                                    # files
    skipped: int = 0                                    # files already there with the same bytes
    rejected: list[tuple[str, str]] = field(default_factory=list)   # (isic_id, reasons)


def bring_in_attributes(layout: DataLayout, found: AttributeFiles, challenge: str, split_of: Callable[[str], str],
                        put: Callable[[Path, Path], None], *, require_image: bool,
                        progress: bool = False) -> AttributesIn:
    """Check each image's attribute files as a set and write the accepted ones to DATA/attributes/<challenge>/.

    ``split_of(isic_id)`` gives the split, or raises ValueError (the image's files are then rejected);
    ``put(src, dest)`` writes a file taken as it is (moved from staging, or copied / linked by import);
    ``require_image``: the image must be in DATA (import), else its masks are checked against it only if it is.
    """
    done = AttributesIn()
    earlier = _ids_in_data(layout, challenge)
    for isic_id, files in progress_bar(sorted(found.items()), desc="attribute masks", unit="image",
                                       enabled=progress):
        size, why = _image_problem(layout, isic_id, require_image)
        accepted, problems = _check_set(files, size) if why is None else ({}, [why])
        try:
            split = split_of(isic_id)
        except ValueError as err:      # no split is known for it: nothing of it is written
            problems = [*problems, str(err)]
        if problems:
            kept = " DATA keeps the five it already had." if isic_id in earlier else ""
            done.rejected.append((isic_id, f"{'; '.join(problems)}; all {len(files)} of its attribute files were "
                                           f"left out (an image's five masks come in together or not at all).{kept}"))
            continue
        for attribute, mask in accepted.items():
            dest = layout.attribute_path(isic_id, challenge, attribute)
            if _write(mask, dest, put):
                done.written += 1
            else:
                done.skipped += 1
            done.rows.append({"isic_id": isic_id, "challenge": challenge, "split": split, "attribute": attribute,
                              "mask_file": dest.relative_to(layout.root).as_posix(), "width": mask.width,
                              "height": mask.height, "positive_pixels": mask.positive_pixels})
        done.images += 1
    return done


def _ids_in_data(layout: DataLayout, challenge: str) -> set[str]:
    """The images whose attribute masks of ``challenge`` DATA already holds."""
    if not layout.attribute_manifest.exists():
        return set()
    rows = pd.read_parquet(layout.attribute_manifest, columns=["isic_id", "challenge"])
    return set(rows.loc[rows["challenge"] == challenge, "isic_id"])


def _write(mask: _Accepted, dest: Path, put: Callable[[Path, Path], None]) -> bool:
    """Write one accepted mask; False when dest already holds the same bytes."""
    content = mask.png_bytes if mask.png_bytes is not None else mask.src.read_bytes()
    if dest.is_file() and dest.read_bytes() == content:
        return False
    if mask.png_bytes is not None:
        write_bytes_atomic(dest, mask.png_bytes)
    else:
        put(mask.src, dest)
    return True


def merge_attribute_rows(layout: DataLayout, rows: list[dict]) -> None:
    merge_into(layout.attribute_manifest, rows, ATTRIBUTE_MANIFEST, ATTRIBUTE_KEY)


# --------------------------------------------------------------------------------------------- download

@dataclass
class AttributeSummary(ChallengeSummary):
    """ChallengeSummary of `--task attributes`: masks_* count attribute files, masks_rejected holds one entry
    per image whose set was left out."""
    noun: ClassVar[str] = "attribute masks"
    images_accepted: int = 0                  # images whose five attribute masks are in DATA

    def lines(self) -> list[str]:
        out = super().lines()
        out.insert(1, f"{self.images_accepted} images with all five attribute masks")
        out += [f"left out {name!r}: {why}" for name in self.unexpected if (why := unknown_attribute(name))]
        return out


def _extract_attributes(layout: DataLayout, cs: ChallengeSplit, zip_path: Path, summary: AttributeSummary,
                        limits: ZipLimits, progress: bool) -> list[dict]:
    """One split's attribute masks, checked image by image, into DATA/attributes/<challenge>/; their rows."""
    staging = staging_folder(layout, cs, "attributes")

    def plan(name: str) -> Path | None:
        match = cs.mask_pattern.fullmatch(name)
        if match is None or match.group(2) not in ATTRIBUTES:
            return None                            # listed as unexpected
        return staging / attribute_file_name(match.group(1), match.group(2))

    report = extract_members(zip_path, plan, layout.root, limits=limits, progress=progress)
    summary.unexpected += report.unexpected
    found: AttributeFiles = {}
    for member in report.members:
        match = ATTRIBUTE_FILE.fullmatch(member.path.name)
        found.setdefault(match.group(1), {})[match.group(2)] = (member.name, member.path)
    done = bring_in_attributes(layout, found, cs.challenge, lambda _: cs.split, place_file, require_image=False)
    summary.masks_written += done.written
    summary.masks_skipped += done.skipped
    summary.masks_rejected += done.rejected
    summary.images_accepted += done.images
    shutil.rmtree(staging, ignore_errors=True)
    return done.rows


def download_attributes(
    data_root: Path | str,
    challenge: str = "isic2018",
    splits: Iterable[str] = SPLITS,
    inputs: bool = False,
    base_url: str = DEFAULT_CHALLENGE_URL,
    session: requests.Session | None = None,
    progress: bool = True,
    *,
    limits: ZipLimits = ZipLimits(),
    policy: RetryPolicy = RetryPolicy(),
) -> AttributeSummary:
    """Fetch, verify and extract the attribute masks of ``challenge`` (and its images with ``inputs``) into DATA.

    Raises as download_challenge does; InvalidInputError names the challenges that have attribute masks.
    """
    summary = AttributeSummary(challenge)

    def truth(layout: DataLayout, cs: ChallengeSplit, zip_path: Path) -> None:
        merge_attribute_rows(layout, _extract_attributes(layout, cs, zip_path, summary, limits, progress))

    return fetch_challenge(data_root, challenge, list(splits), "attributes", summary, truth, inputs=inputs,
                           base_url=base_url, session=session, progress=progress, limits=limits, policy=policy)
