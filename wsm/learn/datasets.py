"""Training data from a DATA folder: image-level class labels from the archive metadata, and image/mask pairs.

Labels come from a pipeline-file table that maps diagnosis metadata to classes::

    [classifier.classes]
    melanoma = ["diagnosis_3:Melanoma*"]
    nevus = ["diagnosis_3:Nevus*"]
    seborrheic_keratosis = ["diagnosis_3:Seborrheic keratosis*"]
    other = "*"

Classes are numbered in table order. Each pattern is ``field:glob`` (fnmatch glob, case-insensitive, on the
field's text) or a bare ``glob`` (matched against diagnosis_1..5); a bare ``*`` makes that class the fallback. A row
takes the class of the first rule that matches, in table order; a labelled row that no rule matches takes the fallback
class, or is left out when the table has none. Rows with no diagnosis at all (diagnosis_1..5 all empty) are unlabelled
and left out of classifier training.

Datasets read images lazily, one item at a time (only file names and labels are held), resize them to a square
working size (aspect ratio not kept, as in DeepHealth's recipe), optionally augment them (wsm.learn.augment) and
normalise them with the ISIC mean and std. Item ``i`` of epoch ``e`` is a pure function of (seed, e, i): the random
generator of its augmentation is seeded with exactly that, so workers, resumption and reruns see the same data.
"""
from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from wsm.io.images import (ISIC_WSM, image_size, read_class_map, read_image, read_lesion_map, read_mask,
                           read_official_mask)
from wsm.stages.preprocess import PreprocessConfig
from wsm.models.inputs import image_tensor, preprocessed_file, resize_square
from wsm.learn.augment import CLASSIFIER_AUGMENT, SEGMENTER_AUGMENT, AugmentConfig, augment

__all__ = [
    "DIAGNOSIS_FIELDS",
    "ISIC_CLASS_TABLE",
    "ClassMapping",
    "ClassRule",
    "ClassifierDataset",
    "LabelMapDataset",
    "SegmentationDataset",
    "segmentation_rows",
]

DIAGNOSIS_FIELDS = ("diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5")

# The ISIC 2017 task 3 classes over the archive's diagnosis taxonomy (diagnosis_3 is the specific diagnosis).
ISIC_CLASS_TABLE: dict[str, str | list[str]] = {
    "melanoma": ["diagnosis_3:Melanoma*"],
    "nevus": ["diagnosis_3:Nevus*"],
    "seborrheic_keratosis": ["diagnosis_3:Seborrheic keratosis*"],
    "other": "*",
}

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def _text(value) -> str | None:
    """A metadata value as text, or None when missing (None, NaN, pd.NA, empty)."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # array-like values are not missing
        pass
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class ClassRule:
    class_name: str
    field: str | None  # None: any of diagnosis_1..5
    pattern: str       # fnmatch glob, matched case-insensitively

    def matches(self, row: Mapping) -> bool:
        fields = DIAGNOSIS_FIELDS if self.field is None else (self.field,)
        pattern = self.pattern.lower()
        for field in fields:
            text = _text(row.get(field))
            if text is not None and fnmatch.fnmatchcase(text.lower(), pattern):
                return True
        return False


@dataclass(frozen=True)
class ClassMapping:
    classes: tuple[str, ...]     # class names; index = class id
    rules: tuple[ClassRule, ...]  # tried in order, first match wins
    fallback: str | None          # class of labelled rows no rule matches (the class given "*"), or None

    @classmethod
    def from_table(cls, table: Mapping[str, str | Sequence[str]]) -> ClassMapping:
        """From a pipeline-file table ``{class: pattern or [patterns]}`` (see the module docstring)."""
        if not table:
            raise ValueError("the class table is empty; give at least one class, e.g. other = '*'")
        rules: list[ClassRule] = []
        fallback = None
        for name, patterns in table.items():
            if isinstance(patterns, str):
                patterns = [patterns]
            if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns) or not patterns:
                raise ValueError(f"class {name!r}: expected a pattern or a list of patterns, got {patterns!r}")
            for pattern in patterns:
                if pattern.strip() == "*":
                    if fallback is not None:
                        raise ValueError(f"both {fallback!r} and {name!r} are given '*'; only one class can be "
                                         "the fallback")
                    fallback = name
                    continue
                m = _FIELD_PREFIX.match(pattern)
                field, glob = (m.group(1), m.group(2)) if m else (None, pattern)
                rules.append(ClassRule(name, field, glob.strip()))
        return cls(tuple(table), tuple(rules), fallback)

    def to_table(self) -> dict[str, list[str]]:
        """The table this mapping was built from (to write next to a trained model)."""
        table: dict[str, list[str]] = {name: [] for name in self.classes}
        for rule in self.rules:
            table[rule.class_name].append(rule.pattern if rule.field is None else f"{rule.field}:{rule.pattern}")
        if self.fallback is not None:
            table[self.fallback].append("*")
        return table

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every metadata column the mapping reads."""
        extra = [r.field for r in self.rules if r.field is not None and r.field not in DIAGNOSIS_FIELDS]
        return DIAGNOSIS_FIELDS + tuple(dict.fromkeys(extra))

    def label(self, row: Mapping) -> int | None:
        """Class index of a manifest row, or None when the row is unlabelled (or matches nothing, no fallback)."""
        if all(_text(row.get(f)) is None for f in DIAGNOSIS_FIELDS):
            return None
        for rule in self.rules:
            if rule.matches(row):
                return self.classes.index(rule.class_name)
        return None if self.fallback is None else self.classes.index(self.fallback)


def _records(rows, columns: Iterable[str]) -> list[dict]:
    """Rows (a DataFrame, a pyarrow Table or mappings) as dicts holding only ``columns``."""
    columns = list(dict.fromkeys(columns))
    if hasattr(rows, "to_pandas") and not isinstance(rows, pd.DataFrame):  # pyarrow.Table
        rows = rows.to_pandas()
    if isinstance(rows, pd.DataFrame):
        present = [c for c in columns if c in rows.columns]
        return rows[present].to_dict("records")
    return [{c: r.get(c) for c in columns} for r in rows]


class LazyImages(Dataset):
    """Shared parts: the DATA root, the working size, the seed and the epoch.

    Progressive resizing: epochs before ``early_epochs`` read their items at ``early_size``, later ones at ``size``
    (``self.size`` is the current epoch's side). ``pixels``: images go through this preprocessing (at its working
    size, then resized) as ``wsm generate`` will show them to the network, when it alters pixels (colour constancy,
    hair removal); None: the file's pixels, resized."""

    def __init__(self, data_root: str | os.PathLike, size: int, augment: bool, seed: int,
                 early_size: int = 0, early_epochs: int = 0, pixels: PreprocessConfig | None = None):
        if size <= 0 or early_size < 0:
            raise ValueError(f"sizes must be positive numbers of pixels, got {size} (and early {early_size})")
        self.data_root = Path(data_root)
        self.final_size = int(size)
        self.early_size = int(early_size) or self.final_size
        self.early_epochs = int(early_epochs)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.pixels = pixels
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the input size and the augmentation draws of ``epoch`` (the training loop calls this before each
        epoch)."""
        self.epoch = int(epoch)
        self.size = self.early_size if self.epoch < self.early_epochs else self.final_size

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _read_image(self, file: str) -> np.ndarray:
        # min_side lets a large JPEG decode at 1/2..1/8 scale when it will be shrunk to the working size anyway
        if self.pixels is None:
            return resize_square(read_image(self.data_root / file, min_side=self.size), self.size)
        return resize_square(preprocessed_file(self.data_root / file, self.pixels).image, self.size)


class ClassifierDataset(LazyImages):
    """Images with class labels from the manifest metadata.

    Args:
        data_root: the DATA folder; ``rows[i]["file"]`` is relative to it.
        rows: manifest rows (DataFrame, pyarrow Table or mappings) with ``file`` and the mapping's fields;
            unlabelled rows are dropped (see the module docstring); ``isic_id`` is kept when present.
        size: square working size in pixels.
        mapping: the diagnosis -> class mapping.
        augment: apply the DeepHealth recipe (``augment_cfg``).
        seed: with the epoch and the index, determines the augmentation.
        pixels: the preprocessing the images go through (see LazyImages).

    Items: ``(image (3, size, size) float32 normalised, label int64 scalar)``.
    """

    def __init__(self, data_root: str | os.PathLike, rows, size: int, mapping: ClassMapping, augment: bool = False,
                 seed: int = 0, augment_cfg: AugmentConfig = CLASSIFIER_AUGMENT,
                 pixels: PreprocessConfig | None = None):
        super().__init__(data_root, size, augment, seed, pixels=pixels)
        self.mapping = mapping
        self.augment_cfg = augment_cfg
        files, labels, ids = [], [], []
        for row in _records(rows, ("file", "isic_id", *mapping.fields)):
            label = mapping.label(row)
            if label is None:
                continue
            if _text(row.get("file")) is None:
                raise ValueError(f"row {row.get('isic_id')!r} has no 'file' (image path relative to DATA)")
            files.append(str(row["file"]))
            labels.append(label)
            ids.append(_text(row.get("isic_id")))
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.isic_ids = ids

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> np.ndarray:
        """Number of items per class, shape (num_classes,)."""
        return np.bincount(self.labels, minlength=self.mapping.num_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._read_image(self.files[index])
        if self.augment:
            image, _ = augment(self._rng(index), image, cfg=self.augment_cfg)
        return image_tensor(image), torch.tensor(self.labels[index], dtype=torch.int64)


class SegmentationDataset(LazyImages):
    """Images with their lesion masks (the official masks, for the segmentation prior).

    Args:
        data_root: the DATA folder; ``file`` and ``mask_file`` are relative to it.
        rows: rows with ``file`` and ``mask_file`` (see :func:`segmentation_rows`).
        size, augment, seed: as for :class:`ClassifierDataset`; geometric augmentation moves the mask with the image.
        early_size, early_epochs: the first ``early_epochs`` epochs read items at ``early_size`` (see LazyImages).
        pixels: the preprocessing the images go through (see LazyImages).

    Items: ``(image (3, size, size) float32 normalised, mask (1, size, size) float32 in {0, 1})``; a mask pixel is
    lesion when its stored value is > 128, as the official scorer binarises.
    """

    def __init__(self, data_root: str | os.PathLike, rows, size: int, augment: bool = False, seed: int = 0,
                 augment_cfg: AugmentConfig = SEGMENTER_AUGMENT, early_size: int = 0, early_epochs: int = 0,
                 pixels: PreprocessConfig | None = None):
        super().__init__(data_root, size, augment, seed, early_size, early_epochs, pixels)
        self.augment_cfg = augment_cfg
        records = _records(rows, ("file", "mask_file", "isic_id"))
        for row in records:
            if _text(row.get("file")) is None or _text(row.get("mask_file")) is None:
                raise ValueError(f"row {row.get('isic_id')!r} needs both 'file' and 'mask_file' (relative to DATA); "
                                 "join the gt manifest with the image manifest (wsm.learn.datasets.segmentation_rows)")
        self.files = [str(r["file"]) for r in records]
        self.mask_files = [str(r["mask_file"]) for r in records]
        self.isic_ids = [_text(r.get("isic_id")) for r in records]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._read_image(self.files[index])
        mask = resize_square(read_official_mask(self.data_root / self.mask_files[index]), self.size, nearest=True)
        mask = (mask > 128).astype(np.uint8)
        if self.augment:
            image, mask = augment(self._rng(index), image, mask, cfg=self.augment_cfg)
        return image_tensor(image), torch.from_numpy(mask.astype(np.float32))[None]


class LabelMapDataset(LazyImages):
    """Images with label maps of any source, uncertain pixels kept as an ignore value (for ``wsm train``).

    Args:
        data_root: the DATA folder; ``file``, ``label_file`` and ``guide_file`` are relative to it, or absolute.
        rows: rows with ``file``, ``label_file`` and ``label_kind``, and ``guide_file`` when ``guides`` is set:

            - ``label_kind`` ``"mask"``: an official mask (0/255), lesion where > 128 (as the official scorer);
            - ``label_kind`` ``"labels"``: an ISIC_WSM label map (0 background, 1 lesion, 255 uncertain), or a
              challenge-style 0/255 mask where the row's ``label_format`` is ``"challenge"``, read as `wsm report`
              reads them (:func:`wsm.io.images.read_lesion_map`); or a class-index map (0..K-1, 255 ignored) for
              ``num_classes`` K > 1, values as stored. A map of another size than its image is refused.
        size, augment, seed: as for :class:`SegmentationDataset`; the label map (and the guide map) move with
            the image, nearest-neighbour; pixels rotated in from outside the frame are background (0).
        num_classes: 1 (binary lesion map) or K > 1.
        guides: append each row's ``guide_file`` (an 8-bit map, e.g. a class activation map, 0..255 -> 0..1)
            to the image as a 4th input channel (MB-DCNN's enhanced network).
        ignore_index: the value kept for uncertain / unlabelled pixels (255).
        augment_cfg: the augmentation of official masks' images; ``weak_augment_cfg`` (default: the same) that of
            label maps' images (``label_kind`` ``"labels"``), e.g. the stronger :data:`WEAK_MAP_AUGMENT`.

    Items: ``(input (3 or 4, size, size) float32, target)``; target ``(1, size, size)`` float32 with values 0, 1
    and ``ignore_index`` for one class, ``(size, size)`` int64 class indices (and ``ignore_index``) for K > 1.
    """

    def __init__(self, data_root: str | os.PathLike, rows, size: int, augment: bool = False, seed: int = 0,
                 num_classes: int = 1, guides: bool = False, ignore_index: int = 255,
                 augment_cfg: AugmentConfig = SEGMENTER_AUGMENT, weak_augment_cfg: AugmentConfig | None = None):
        super().__init__(data_root, size, augment, seed)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.augment_cfg = augment_cfg
        self.weak_augment_cfg = weak_augment_cfg or augment_cfg
        self.num_classes, self.guides, self.ignore_index = int(num_classes), bool(guides), int(ignore_index)
        needed = ("file", "label_file", "label_kind") + (("guide_file",) if guides else ())
        records = _records(rows, (*needed, "isic_id", "label_format"))
        for row in records:
            missing = [c for c in needed if _text(row.get(c)) is None]
            if missing:
                raise ValueError(f"row {row.get('isic_id')!r} lacks {missing}; LabelMapDataset needs {list(needed)}")
            if row["label_kind"] not in ("mask", "labels"):
                raise ValueError(f"row {row.get('isic_id')!r}: label_kind must be 'mask' or 'labels', "
                                 f"got {row['label_kind']!r}")
        self.files = [str(r["file"]) for r in records]
        self.label_files = [str(r["label_file"]) for r in records]
        self.label_kinds = [str(r["label_kind"]) for r in records]
        self.label_formats = [_text(r.get("label_format")) or ISIC_WSM for r in records]
        self.guide_files = [str(r["guide_file"]) for r in records] if guides else None
        self.isic_ids = [_text(r.get("isic_id")) for r in records]

    def __len__(self) -> int:
        return len(self.files)

    def read_label(self, index: int) -> np.ndarray:
        """The label map of item ``index`` at the working size, un-augmented: uint8 (size, size), values 0, 1
        (or class indices) and ``ignore_index``."""
        path = self.data_root / self.label_files[index]
        if self.label_kinds[index] == "mask":
            return (resize_square(read_official_mask(path), self.size, nearest=True) > 128).astype(np.uint8)
        size = image_size(self.data_root / self.files[index])
        if self.num_classes == 1:
            raw = read_lesion_map(path, self.label_formats[index], size)
            if self.ignore_index != 255:
                raw[raw == 255] = self.ignore_index
        else:
            raw = read_class_map(path, size)
        return resize_square(raw, self.size, nearest=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._read_image(self.files[index])
        label = self.read_label(index)
        guide = None
        if self.guides:
            guide = resize_square(read_mask(self.data_root / self.guide_files[index]), self.size)
        if self.augment:
            # one geometric draw for both maps: pack them into one uint16 map (label high byte, guide low byte)
            packed = label.astype(np.uint16) << 8
            if guide is not None:
                packed |= guide.astype(np.uint16)
            cfg = self.weak_augment_cfg if self.label_kinds[index] == "labels" else self.augment_cfg
            image, packed = augment(self._rng(index), image, packed, cfg=cfg)
            label = (packed >> 8).astype(np.uint8)
            guide = (packed & 0xFF).astype(np.uint8) if guide is not None else None
        x = image_tensor(image, guide)
        if self.num_classes == 1:
            return x, torch.from_numpy(label.astype(np.float32))[None]
        return x, torch.from_numpy(label.astype(np.int64))

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels per class over every item's un-augmented label map at the working size (ignored pixels left
        out), shape (max(num_classes, 2),): the input to ``wsm.learn.loop.class_weights``. Reads every map once."""
        k = max(self.num_classes, 2)
        counts = np.zeros(k, dtype=np.int64)
        for i in range(len(self)):
            label = self.read_label(i)
            values = label[label != self.ignore_index]
            if values.size and int(values.max()) >= k:
                raise ValueError(f"{self.label_files[i]} holds class {int(values.max())}; num_classes is {k}")
            counts += np.bincount(values.ravel(), minlength=k)[:k]
        return counts


def segmentation_rows(manifest: pd.DataFrame, gt: pd.DataFrame, splits: Sequence[str] | None = None,
                      challenges: Sequence[str] | None = None) -> pd.DataFrame:
    """The gt manifest rows (optionally only some splits / challenges) with their image ``file`` joined in.

    One row per (isic_id, challenge): an image with masks from several challenges appears once per challenge;
    pass ``challenges`` to choose. Masks whose image is not in the manifest are left out.
    """
    if splits is not None:
        gt = gt[gt["split"].isin(list(splits))]
    if challenges is not None:
        gt = gt[gt["challenge"].isin(list(challenges))]
    joined = gt[["isic_id", "challenge", "split", "mask_file"]].merge(manifest[["isic_id", "file"]], on="isic_id",
                                                                        how="inner")
    return joined.sort_values(["isic_id", "challenge"], kind="stable").reset_index(drop=True)
