"""What a rerun of `wsm generate` keeps of the maps already in WSM: those made from the images this run reads, that
are still intact. Anything else is made again, or, when the folder holds maps of other images, the run is refused.

Each manifest row records the size in bytes of the image its map was made from (``image_bytes``) and what the map
holds (width, height, lesion and uncertain fractions); a rerun compares both with what is on disk now.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.compute as pc

from wsm.folders.wsm_folder import REWRITE_WSM_MANIFEST, WSM_MANIFEST, WsmFolder
from wsm.generate.workers import map_stats
from wsm.io.images import UNDECODABLE, decode_problem, png_is_complete, read_label_map
from wsm.io.tables import read_table
from wsm.selection import DataError

log = logging.getLogger(__name__)

_RECORDED = ["isic_id", "path", "status", "width", "height", "lesion_fraction", "uncertain_fraction", "image_bytes"]


def file_bytes(path: str) -> int | None:
    """The size of an image file in bytes; None when it cannot be read (its image fails later, with a reason)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def recorded_maps(manifest: Path) -> list[dict]:
    """The ``ok`` rows of a manifest (or none when it does not exist yet), with what they record of each map and
    its image (a manifest written before ``image_bytes`` was recorded has it null)."""
    if not manifest.exists():
        return []
    table = read_table(manifest, WSM_MANIFEST, remedy=REWRITE_WSM_MANIFEST)
    table = table.select([c for c in _RECORDED if c in table.column_names])
    rows = table.filter(pc.equal(table["status"], "ok")).to_pylist()
    return [{c: row.get(c) for c in _RECORDED} for row in rows]


def check_same_images(folder: WsmFolder, recorded: list[dict], image_bytes: dict[str, int | None],
                      files: dict[str, str]) -> None:
    """Refuse to add maps to a folder whose maps of the same ids were made from other images (another DATA or
    image folder): a recorded image size in bytes that differs from the file this run reads."""
    other = [r for r in recorded if r["isic_id"] in image_bytes and r["image_bytes"] is not None
             and image_bytes[r["isic_id"]] is not None and r["image_bytes"] != image_bytes[r["isic_id"]]]
    if other:
        isic_id, recorded_bytes = other[0]["isic_id"], other[0]["image_bytes"]
        raise DataError(
            f"{folder.root} holds maps of other images: the map of {isic_id} was made from a {recorded_bytes}-byte "
            f"image but {files[isic_id]} has {image_bytes[isic_id]} bytes ({len(other)} such maps); the folder was "
            f"made from another DATA or image folder: write to a new --out, or delete {folder.root} to start again")


def map_problem(folder: WsmFolder, row: dict) -> str | None:
    """Why the map of a manifest row cannot be kept (None: it decodes, holds only 0, 1 and 255, and has the size
    and fractions its row records)."""
    try:
        path = folder.inside(row["path"])
        label_map = read_label_map(path)
        if not png_is_complete(path):
            return "the file is cut short (no closing IEND chunk)"
    except FileNotFoundError:
        return "missing"
    except (DataError, *UNDECODABLE) as err:
        return decode_problem(err)
    found = map_stats(label_map)
    if any(found[key] != row[key] for key in found):
        return "not the map its manifest row describes (size or fractions differ)"
    return None


def intact_maps(folder: WsmFolder, recorded: list[dict], ids: set[str]) -> set[str]:
    """The ids among ``ids`` whose recorded map is intact (:func:`map_problem`); the others are made again, with a
    warning that says how many and why."""
    kept, redo = set(), {}
    for row in recorded:
        if row["isic_id"] in ids:
            problem = map_problem(folder, row)
            if problem is None:
                kept.add(row["isic_id"])
            elif problem != "missing":
                redo[row["isic_id"]] = problem
    if redo:
        first = min(redo)
        log.warning("%d maps in %s are damaged and will be made again (e.g. %s: %s)", len(redo), folder.root, first,
                    redo[first])
    return kept
