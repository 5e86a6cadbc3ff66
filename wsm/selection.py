"""Reading a DATA folder (see archive_client.layout) for fit, generate and report: rows and splits."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from archive_client.layout import DataLayout
from wsm.errors import WsmError
from wsm.io.tables import read_frame

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("all", "labeled", "unlabeled", "train", "val", "test")


class DataError(WsmError, ValueError):
    """A DATA folder that lacks what the command needs."""


REWRITE_GT_MANIFEST = ("move it aside and rerun the `wsm download --challenge` or `wsm import --masks` command that "
                       "wrote it")
REWRITE_ATTRIBUTE_MANIFEST = ("move it aside and rerun the `wsm download --challenge isic2018 --task attributes` or "
                              "`wsm import --attributes` command that wrote it")


def read_manifest(data_root: Path | str) -> pd.DataFrame:
    layout = DataLayout(Path(data_root))
    if not layout.manifest.exists():
        raise DataError(f"{layout.manifest} does not exist; fill {layout.root} with `wsm download` or `wsm import`")
    rows = read_frame(layout.manifest)
    if not {"isic_id", "file"} <= set(rows.columns):
        raise DataError(_not_data(layout, rows.columns))
    _check_inside(rows["file"], layout.manifest, "move it aside and rerun the `wsm download` or `wsm import` command "
                  "that wrote it")
    return rows.sort_values("isic_id", ignore_index=True)


def _check_inside(paths: pd.Series, manifest: Path, remedy: str) -> None:
    """Every path a DATA manifest names is relative and stays inside DATA (a manifest written elsewhere or edited
    could name any file of the machine: none is read, scored or trained on)."""
    for path in paths.dropna():
        parts = Path(str(path)).parts
        if not parts or Path(str(path)).is_absolute() or ".." in parts or "\\" in str(path):
            raise DataError(f"{manifest} names {str(path)[:200]!r}, which is not a path inside DATA; {remedy}")


def _not_data(layout: DataLayout, columns) -> str:
    """Why a manifest.parquet without DATA's columns is no DATA manifest (a WSM folder's, most likely)."""
    if "path" in columns and "status" in columns:
        return (f"{layout.root} is a folder of maps written by `wsm generate`, not DATA: give -d/--data the folder "
                "`wsm download` or `wsm import` wrote (the one the maps were made from)")
    return (f"{layout.manifest} has no isic_id and file columns: it is not a DATA manifest; give -d/--data the "
            "folder `wsm download` or `wsm import` wrote")


def read_truth(data_root: Path | str) -> pd.DataFrame:
    """One official mask per image (where an image is in several challenges, the newest challenge's)."""
    layout = DataLayout(Path(data_root))
    columns = ["isic_id", "challenge", "split", "mask_file", "mask_width", "mask_height"]
    if not layout.gt_manifest.exists():
        return pd.DataFrame(columns=columns)
    gt = read_frame(layout.gt_manifest, remedy=REWRITE_GT_MANIFEST)
    _check_inside(gt.get("mask_file", pd.Series(dtype=object)), layout.gt_manifest, REWRITE_GT_MANIFEST)
    gt = gt.rename(columns={"width": "mask_width", "height": "mask_height"})
    gt = gt.sort_values(["isic_id", "challenge"]).drop_duplicates("isic_id", keep="last")
    return gt[columns].reset_index(drop=True)


def read_attribute_manifest(data_root: Path | str) -> pd.DataFrame:
    """DATA/attribute_manifest.parquet (see archive_client.attribute_data); it must exist."""
    return read_frame(DataLayout(Path(data_root)).attribute_manifest, remedy=REWRITE_ATTRIBUTE_MANIFEST)


def with_truth(manifest: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows with the columns challenge, split, mask_file (NaN where there is no official mask)."""
    return manifest.merge(truth, on="isic_id", how="left")


def split_names(split: str) -> list[str]:
    """The splits that ``split`` names: one of SPLIT_CHOICES, or several joined by commas (``train,val``)."""
    names = split.split(",")
    unknown = [name for name in names if name not in SPLIT_CHOICES]
    if unknown:
        raise DataError(f"unknown split {unknown[0]!r} in {split!r}; choose one of {', '.join(SPLIT_CHOICES)}, or "
                        "several joined by commas (train,val)")
    return names


def select_split(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split: all, labeled (has an official mask), unlabeled, or an official split; or of several
    joined by commas (``train,val``)."""
    has_mask = rows["mask_file"].notna()
    by_mask = {"all": has_mask | ~has_mask, "labeled": has_mask, "unlabeled": ~has_mask}
    keep = pd.Series(False, index=rows.index)
    for name in split_names(split):
        keep |= by_mask[name] if name in by_mask else rows["split"] == name
    return rows[keep].reset_index(drop=True)


ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")   # isic_ids, and image names of --images folders


def read_id_list(path: Path | str | None) -> frozenset[str]:
    """isic_ids from a text file (one per line) or a CSV with an isic_id column."""
    if path is None:
        return frozenset()
    path = Path(path)
    text = path.read_text(encoding="utf8")
    if text.startswith("isic_id"):
        ids = [str(i).strip() for i in pd.read_csv(path, dtype=str, keep_default_na=False)["isic_id"]]
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for number, value in enumerate(ids, 1):
        if not ID_PATTERN.fullmatch(value):
            raise DataError(f"{path}: entry {number} {value[:60]!r} is not an image id; give one id per line "
                            "(e.g. ISIC_0000000), or a CSV whose first column header is isic_id")
    return frozenset(ids)


def warn_unknown_ids(flag: str, wanted: frozenset[str], present, where: Path | str) -> None:
    """Log the ids of an ids file that are not among ``present`` (a typo, or another DATA)."""
    unknown = sorted(set(wanted) - set(present))
    if unknown:
        log.warning("%s: %d of its %d ids are not in %s (e.g. %s); check the file", flag, len(unknown), len(wanted),
                    where, ", ".join(unknown[:3]))
