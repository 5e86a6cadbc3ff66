"""The official ISIC segmentation metrics, computed exactly as ``isic-challenge-scoring`` 5.6.0 does.

The reference (``isic_challenge_scoring/segmentation.py``, ``confusion.py``, ``metrics.py``, ``load_image.py``):

- both the truth and the prediction are binarised at ``> 128`` (so a 0/1 label map read as a mask is all
  background: export label maps as 0/255 first);
- per image: a binary confusion matrix, then accuracy, sensitivity, specificity, Jaccard, threshold Jaccard
  (the Jaccard if >= 0.65, else 0; ISIC 2018's ranking metric) and Dice;
- the 0/0 cases are "freebies" scored 1.0: sensitivity with no lesion in the truth, specificity with no
  background in the truth, Jaccard and Dice when truth and prediction are both empty; accuracy has no guard
  (an empty image gives NaN);
- the dataset numbers are the plain (macro) means over images, NaN skipped (pandas ``mean``).

Two steps, like segmentation_models.pytorch: :func:`confusion_counts`, then :func:`image_metrics`.
:func:`score_label_map` scores an ISIC_WSM label map (0 / 1 / 255) with the uncertain pixels either counted as
background (what the official scorer sees after export) or left out and paid for with coverage
(:data:`LEFT_OUT_DEFINITION`): abstaining never earns a score.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

import numpy as np

__all__ = [
    "LEFT_OUT_DEFINITION",
    "METRIC_NAMES",
    "THRESHOLD_JACCARD",
    "Counts",
    "aggregate",
    "binarise",
    "confusion_counts",
    "image_metrics",
    "score_label_map",
    "score_mask",
    "weighted_by_coverage",
]

THRESHOLD_JACCARD = 0.65  # ISIC 2018 Task 1: an image's Jaccard below this counts as 0
BINARY_THRESHOLD = 128  # the official scorer's binarisation: value > 128 is lesion
METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "jaccard", "dice", "threshold_jaccard")
LEFT_OUT_DEFINITION = (
    "255 left out, weighted by coverage: each metric is computed on the pixels the map labels (0 or 1) with the "
    "official rules, then multiplied by the map's coverage (the share of its pixels that are not 255); the "
    "threshold Jaccard thresholds that weighted Jaccard. A map can never score more than its coverage, and a "
    "wholly uncertain map scores 0 on every metric: leaving pixels out pays only where the map would be wrong."
)


class Counts(NamedTuple):
    """Pixel counts of one image's binary confusion matrix."""

    tp: int
    fp: int
    fn: int
    tn: int


def binarise(mask: np.ndarray) -> np.ndarray:
    """An 8-bit mask as the official scorer reads it: ``mask > 128`` (``bool``)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    return mask > BINARY_THRESHOLD


def confusion_counts(truth: np.ndarray, pred: np.ndarray) -> Counts:
    """TP, FP, FN, TN of two ``bool`` ``(H, W)`` masks of the same shape (True = lesion)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    for name, arr in (("truth", truth), ("pred", pred)):
        if arr.dtype != bool:
            raise ValueError(
                f"{name} must be a bool mask, got dtype {arr.dtype}; binarise 8-bit masks with "
                "wsm.metrics.binarise (> 128, as the official scorer), label maps with label_map == 1"
            )
    if truth.shape != pred.shape:
        raise ValueError(f"prediction has dimensions {pred.shape}; expected {truth.shape} (the truth's)")
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(~truth & pred))
    fn = int(np.count_nonzero(truth & ~pred))
    return Counts(tp=tp, fp=fp, fn=fn, tn=int(truth.size) - tp - fp - fn)


def image_metrics(counts: Counts) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, Jaccard, Dice and threshold Jaccard of one image, official rules."""
    tp, fp, fn, tn = (int(v) for v in counts)
    total = tp + fp + fn + tn
    jaccard = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return {
        "accuracy": (tp + tn) / total if total else math.nan,
        "sensitivity": 1.0 if tp + fn == 0 else tp / (tp + fn),
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "jaccard": jaccard,
        "dice": 1.0 if tp + fp + fn == 0 else (2 * tp) / ((2 * tp) + fp + fn),
        "threshold_jaccard": jaccard if jaccard >= THRESHOLD_JACCARD else 0.0,
    }


def score_mask(truth_mask: np.ndarray, pred_mask: np.ndarray) -> dict[str, float]:
    """Official metrics of two 8-bit masks (e.g. 0/255 PNGs), both binarised at > 128."""
    return image_metrics(confusion_counts(binarise(truth_mask), binarise(pred_mask)))


def score_label_map(
    truth_mask: np.ndarray,
    label_map: np.ndarray,
    uncertain: Literal["background", "ignore"] = "background",
) -> dict[str, float]:
    """Official metrics of an ISIC_WSM label map against an 8-bit truth mask.

    Args:
        truth_mask: ``uint8`` ``(H, W)``, binarised at > 128.
        label_map: ``uint8`` ``(H, W)``, values 0 (background), 1 (lesion), 255 (uncertain) only.
        uncertain: ``"background"``: 255 counts as background, which is what the official scorer sees in the
            0/255 export; ``"ignore"``: 255 pixels are left out of the counts and every metric is weighted by
            coverage (:data:`LEFT_OUT_DEFINITION`), so a wholly uncertain map scores 0, not the official 0/0
            freebie of 1.

    Returns:
        the six metrics plus ``uncertain_fraction`` (the share of 255 pixels) and ``coverage`` (1 minus it), in
        both modes.
    """
    truth = binarise(truth_mask)
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or label_map.dtype != np.uint8:
        raise ValueError(f"label_map must be a 2-D uint8 array, got shape {label_map.shape} dtype {label_map.dtype}")
    if label_map.shape != truth.shape:
        raise ValueError(f"label map has dimensions {label_map.shape}; expected {truth.shape} (the truth's)")
    bad = np.setdiff1d(np.unique(label_map), [0, 1, 255])
    if bad.size:
        raise ValueError(
            f"label_map values must be 0, 1 or 255, found {bad[:10].tolist()}; "
            "score a 0/255 mask with score_mask instead"
        )
    uncertain_px = label_map == 255
    pred = label_map == 1
    if uncertain == "background":
        out = image_metrics(confusion_counts(truth, pred))
    elif uncertain == "ignore":
        keep = ~uncertain_px
        out = weighted_by_coverage(image_metrics(confusion_counts(truth[keep], pred[keep])),
                                   float(np.count_nonzero(keep)) / label_map.size)
    else:
        raise ValueError(f"uncertain must be 'background' or 'ignore', got {uncertain!r}")
    out["uncertain_fraction"] = float(np.count_nonzero(uncertain_px)) / label_map.size
    out["coverage"] = 1.0 - out["uncertain_fraction"]
    return out


def weighted_by_coverage(metrics: Mapping[str, float], coverage: float) -> dict[str, float]:
    """The metrics of the labelled pixels times ``coverage`` (see :data:`LEFT_OUT_DEFINITION`); all 0 at 0."""
    if coverage <= 0:
        return {m: 0.0 for m in METRIC_NAMES}
    out = {m: metrics[m] * coverage for m in METRIC_NAMES}
    out["threshold_jaccard"] = out["jaccard"] if out["jaccard"] >= THRESHOLD_JACCARD else 0.0
    return out


def aggregate(per_image: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """Mean of every numeric key over images (NaN skipped, as pandas does), plus ``n_images``.

    Keys that are not numbers in every row (e.g. ``isic_id``) are left out; a numeric key missing from some rows
    is an error, since its mean would silently cover fewer images.
    """
    rows = list(per_image)
    if not rows:
        raise ValueError("aggregate needs at least one per-image row, got none")
    keys = [k for k in rows[0] if _is_number(rows[0][k])]
    out: dict[str, float] = {}
    for key in keys:
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ValueError(f"metric {key!r} is missing from {len(missing)} rows (first: row {missing[0]})")
        if not all(_is_number(r[key]) for r in rows):
            continue
        values = np.array([float(r[key]) for r in rows], dtype=np.float64)
        finite = values[~np.isnan(values)]
        out[key] = float(finite.mean()) if finite.size else math.nan
    out["n_images"] = len(rows)
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
