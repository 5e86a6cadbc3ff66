"""Reading a DATA folder (see archive_client.layout) for fit, generate and report: rows and splits."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsm.errors import WsmError

from archive_client.layout import DataLayout

SPLIT_CHOICES = ("all", "labeled", "unlabeled", "train", "val", "test")


class DataError(WsmError, ValueError):
    """A DATA folder that lacks what the command needs."""


def read_manifest(data_root: Path | str) -> pd.DataFrame:
    layout = DataLayout(Path(data_root))
    if not layout.manifest.exists():
        raise DataError(f"{layout.manifest} does not exist; fill {layout.root} with `wsm download` or `wsm import`")
    return pd.read_parquet(layout.manifest).sort_values("isic_id", ignore_index=True)


def read_truth(data_root: Path | str) -> pd.DataFrame:
    """One official mask per image (where an image is in several challenges, the newest challenge's)."""
    layout = DataLayout(Path(data_root))
    columns = ["isic_id", "challenge", "split", "mask_file", "mask_width", "mask_height"]
    if not layout.gt_manifest.exists():
        return pd.DataFrame(columns=columns)
    gt = pd.read_parquet(layout.gt_manifest).rename(columns={"width": "mask_width", "height": "mask_height"})
    gt = gt.sort_values(["isic_id", "challenge"]).drop_duplicates("isic_id", keep="last")
    return gt[columns].reset_index(drop=True)


def with_truth(manifest: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows with the columns challenge, split, mask_file (NaN where there is no official mask)."""
    return manifest.merge(truth, on="isic_id", how="left")


def select_split(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split: all, labeled (has an official mask), unlabeled, or an official split."""
    if split not in SPLIT_CHOICES:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}")
    has_mask = rows["mask_file"].notna()
    keep = {"all": has_mask | ~has_mask, "labeled": has_mask, "unlabeled": ~has_mask}.get(split)
    if keep is None:
        keep = rows["split"] == split
    return rows[keep].reset_index(drop=True)


def read_id_list(path: Path | str | None) -> frozenset[str]:
    """isic_ids from a text file (one per line) or a CSV with an isic_id column."""
    if path is None:
        return frozenset()
    path = Path(path)
    text = path.read_text(encoding="utf8")
    if text.startswith("isic_id"):
        return frozenset(pd.read_csv(path)["isic_id"].astype(str))
    return frozenset(line.strip() for line in text.splitlines() if line.strip())
