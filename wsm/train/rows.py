"""Which images a `wsm train` run trains and evaluates on, with which labels (see :mod:`wsm.train.driver`)."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from wsm.io.images import check_map_size, image_size
from wsm.folders.maps import read_maps
from wsm.selection import (SPLIT_CHOICES, DataError, read_manifest, read_truth, select_split, split_names,
                           with_truth)
from wsm.train.options import NO_EVAL

log = logging.getLogger(__name__)


# The manifest columns a run may keep weak maps by: --min-confidence, --min-predicted-jaccard.
MINIMUM_FLAGS = {"confidence": "--min-confidence", "predicted_jaccard": "--min-predicted-jaccard"}


def weak_maps(folder: Path | str, minimums: dict[str, float] | None = None) -> pd.DataFrame:
    """``isic_id``, absolute ``label_file`` and ``label_format`` (its convention, :data:`wsm.io.images.ISIC_WSM` or
    ``CHALLENGE``) of every map in a folder, listed and checked as `wsm report` lists them
    (:func:`wsm.folders.maps.read_maps`): a WSM folder's ``ok`` manifest rows, or the ISIC_x.png (or
    ISIC_x_segmentation.png) maps of a folder made elsewhere; with ``minimums`` ({manifest column: least value},
    columns of MINIMUM_FLAGS), only the maps that reach every one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"map folder {folder} does not exist; give --maps the folder `wsm generate --out` wrote, "
                        "or train on --labels official")
    maps = read_maps(folder, needed=frozenset({"isic_id", "path", "status"}))
    table = maps.rows[(maps.rows["status"] == "ok") & maps.rows["path"].notna()]
    for column, minimum in (minimums or {}).items():
        table = _at_least(table, column, minimum, maps, folder)
    out = pd.DataFrame({"isic_id": table["isic_id"].astype(str).tolist(),
                        "label_file": [str((folder / p).resolve()) for p in table["path"]],
                        "label_format": maps.convention})
    if out.empty:
        hint = "".join(f" with {column} >= {minimum}" for column, minimum in (minimums or {}).items())
        raise DataError(f"{folder} holds no label maps (ISIC_x.png){hint}")
    return out.drop_duplicates("isic_id").reset_index(drop=True)


def _at_least(table: pd.DataFrame, column: str, minimum: float, maps, folder: Path) -> pd.DataFrame:
    flag = MINIMUM_FLAGS[column]
    if not maps.fitting_known:
        raise DataError(f"{flag} needs the {column} column of {folder}/manifest.parquet (written by `wsm "
                        "generate`); this folder has none")
    if column not in table.columns or table[column].isna().all():
        raise DataError(f"{maps.manifest} has no {column} values (made by another wsm, or a bundle without a "
                        f"quality model); leave out {flag}")
    official = table["source"] == "official" if "source" in table.columns else False   # --prefer-official copies
    return table[(table[column] >= minimum) | official]


def check_map_sizes(data: Path | str, rows: pd.DataFrame) -> None:
    """Refuse, before any training, a map whose size is not its image's (from the files' headers, no decoding)."""
    for row in rows.itertuples(index=False):
        check_map_size(row.label_file, image_size(row.label_file), image_size(Path(data) / row.file))


def _check_split(name: str, what: str, allow_none: bool = False) -> None:
    choices = SPLIT_CHOICES + ((NO_EVAL,) if allow_none else ())
    if name not in choices:
        raise DataError(f"unknown {what} {name!r}; choose one of {', '.join(choices)}")


def training_rows(data: Path | str, labels: str, split_train: str = "train", wsm: Path | str | None = None,
                  min_confidence: float | None = None, min_predicted_jaccard: float | None = None) -> pd.DataFrame:
    """The training images with their labels: columns isic_id, file, label_file, label_kind (mask | labels),
    label_source (official | weak), sorted by isic_id. See the module doc for which images take part."""
    split_names(split_train)     # a wrong name fails before DATA is read
    minimums = {column: value for column, value in (("confidence", min_confidence),
                                                    ("predicted_jaccard", min_predicted_jaccard)) if value is not None}
    for column, value in minimums.items():
        if labels == "official":
            raise DataError(f"{MINIMUM_FLAGS[column]} selects weak maps; it needs --labels both or --labels weak")
        if not 0 <= value <= 1:
            raise DataError(f"{MINIMUM_FLAGS[column]} must be within 0..1 (the WSM manifest's {column}), got {value}")
    rows = with_truth(read_manifest(data), read_truth(data))
    in_split = select_split(rows, split_train)
    official = in_split[in_split["mask_file"].notna()]
    official = pd.DataFrame({"isic_id": official["isic_id"], "file": official["file"],
                             "label_file": official["mask_file"], "label_kind": "mask", "label_source": "official"})
    if labels == "official":
        out = official
    else:
        if labels == "both":
            if wsm is None:
                raise DataError("--labels both needs the weak maps: --maps WSM (the folder `wsm generate` wrote)")
            folder = Path(wsm)
        else:
            folder = Path(labels)
        maps = weak_maps(folder, minimums)
        candidates = pd.concat([in_split, select_split(rows, "unlabeled")]).drop_duplicates("isic_id")
        weak = candidates.merge(maps, on="isic_id", how="inner")
        weak = pd.DataFrame({"isic_id": weak["isic_id"], "file": weak["file"], "label_file": weak["label_file"],
                             "label_kind": "labels", "label_source": "weak", "label_format": weak["label_format"]})
        if labels == "both":
            weak = weak[~weak["isic_id"].isin(official["isic_id"])]
        check_map_sizes(data, weak)
        out = pd.concat([official, weak]) if labels == "both" else weak
    out = out.sort_values("isic_id", kind="stable").reset_index(drop=True)
    if out.empty:
        hint = ("no image of that split has an official mask" if labels == "official"
                else "no image of that split (nor any image without an official mask) has a map in the folder")
        raise DataError(f"nothing to train on with --labels {labels} --train-split {split_train}: {hint}")
    return out


def eval_rows(data: Path | str, eval_split: str, class_maps: Path | str | None = None) -> pd.DataFrame:
    """The evaluation images: isic_id, file, mask_file (official masks of ``eval_split``), or with ``class_maps``
    (multi-class) the eval split's maps in that folder as ``mask_file``."""
    _check_split(eval_split, "evaluation split", allow_none=True)
    if eval_split == NO_EVAL:
        return pd.DataFrame(columns=["isic_id", "file", "mask_file"])
    rows = select_split(with_truth(read_manifest(data), read_truth(data)), eval_split)
    if class_maps is not None:
        rows = rows.drop(columns=["mask_file"]).merge(
            weak_maps(class_maps).rename(columns={"label_file": "mask_file"}), on="isic_id", how="inner")
    rows = rows[rows["mask_file"].notna()]
    if rows.empty:
        log.warning("--eval-split %s has no official mask in %s: this run will not be evaluated (choose a split "
                    "with masks, or --eval-split none to say so)", eval_split, data)
    return rows[["isic_id", "file", "mask_file"]].sort_values("isic_id").reset_index(drop=True)


def check_no_overlap(train: pd.DataFrame, evaluation: pd.DataFrame) -> None:
    both = sorted(set(train["isic_id"]) & set(evaluation["isic_id"]))
    if both:
        raise DataError(f"{len(both)} evaluation images are also training images (e.g. {both[:3]}); choose a "
                        "--train-split that excludes the --eval-split (or --eval-split none)")
