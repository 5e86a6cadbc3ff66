"""The pure core of `wsm report`: one image's scores, the lesion-size bins, breakdowns, confidence calibration,
the aggregates and the galleries' choice. No files here (:mod:`wsm.report.driver` does them)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from wsm.metrics import METRIC_NAMES, score_label_map

# How the uncertain (255) pixels are treated: the key in metrics.json, and the suffix of the per-image columns.
TREATMENTS = {"uncertain_as_background": "bg", "uncertain_ignored": "ignore"}

_MODE = {"bg": "background", "ignore": "ignore"}           # wsm.metrics.score_label_map's names

SIZE_BINS = ("small", "medium", "large")                   # terciles of the official mask's lesion fraction

BREAKDOWNS = ("diagnosis", "image_type", "lesion_size", "source")

CALIBRATION_BINS = 5                                       # confidence quintiles

GALLERY_SIZE = 8

UNKNOWN = "unknown"



def metric_columns(suffix: str) -> list[str]:
    """Per-image column names of one treatment: ``jaccard_bg``, ... (suffix ``bg`` or ``ignore``)."""
    return [f"{m}_{suffix}" for m in METRIC_NAMES]



def score_image(truth_mask: np.ndarray, label_map: np.ndarray) -> dict[str, float]:
    """One image's official metrics in both treatments of 255, plus the uncertain and true lesion fractions.

    Args:
        truth_mask: ``uint8`` ``(H, W)`` official mask (binarised at > 128, as the official scorer does).
        label_map: ``uint8`` ``(H, W)`` ISIC_WSM map: 0 background, 1 lesion, 255 uncertain.

    Returns:
        ``accuracy_bg`` ... ``threshold_jaccard_bg`` (255 as background), ``accuracy_ignore`` ... (255 left out,
        weighted by coverage), ``uncertain_fraction``, ``coverage`` and ``truth_lesion_fraction``.

    Raises:
        ValueError: the shapes differ, or the label map has values other than 0, 1, 255.
    """
    out: dict[str, float] = {}
    for suffix, mode in _MODE.items():
        scores = score_label_map(truth_mask, label_map, uncertain=mode)
        out.update({f"{m}_{suffix}": scores[m] for m in METRIC_NAMES})
        out["uncertain_fraction"], out["coverage"] = scores["uncertain_fraction"], scores["coverage"]
    out["truth_lesion_fraction"] = float(np.count_nonzero(np.asarray(truth_mask) > 128)) / np.asarray(truth_mask).size
    return out



def size_bins(truth_lesion_fraction: Sequence[float]) -> tuple[list[str], list[float]]:
    """Terciles of the official masks' lesion fraction: a bin name per image, and the two cut points.

    ``small``: at most the 1/3 quantile; ``medium``: above it and at most the 2/3 quantile; ``large``: above that
    (numpy's linear quantiles, so equal fractions always share a bin).
    """
    values = np.asarray(truth_lesion_fraction, dtype=np.float64)
    if values.size == 0:
        return [], []
    low, high = (float(q) for q in np.quantile(values, [1 / 3, 2 / 3]))
    names = [SIZE_BINS[0] if v <= low else SIZE_BINS[1] if v <= high else SIZE_BINS[2] for v in values]
    return names, [low, high]



def image_group(diagnosis_3: object, diagnosis_1: object) -> str:
    """The diagnosis an image is grouped under: diagnosis_3, else diagnosis_1, else ``unknown``."""
    for value in (diagnosis_3, diagnosis_1):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return UNKNOWN



def _mean(values: Iterable[float]) -> float:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan



def breakdown(rows: pd.DataFrame, key: str) -> list[dict]:
    """Mean Jaccard (both treatments) and image count per value of ``rows[key]``, over all scored rows and over
    the headline rows (``rows["headline"]``); groups with the most images first, then by name.
    """
    out = []
    for value, group in rows.groupby(key, sort=False, dropna=False):
        honest = group[group["headline"]]
        out.append({
            "group": UNKNOWN if pd.isna(value) else str(value),
            "n": int(len(group)),
            "jaccard_bg": _mean(group["jaccard_bg"]),
            "jaccard_ignore": _mean(group["jaccard_ignore"]),
            "n_headline": int(len(honest)),
            "jaccard_bg_headline": _mean(honest["jaccard_bg"]),
            "jaccard_ignore_headline": _mean(honest["jaccard_ignore"]),
        })
    order = {name: i for i, name in enumerate(SIZE_BINS)} if key == "lesion_size" else None
    if order:
        return sorted(out, key=lambda r: order.get(r["group"], len(order)))
    return sorted(out, key=lambda r: (-r["n"], r["group"]))



def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties, as scipy.stats.spearmanr); NaN when undefined."""
    rx = pd.Series(x, dtype="float64").rank().to_numpy()
    ry = pd.Series(y, dtype="float64").rank().to_numpy()
    if rx.size < 2 or np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])



def calibration(ids: Sequence[str], confidence: Sequence[float], jaccard: Sequence[float],
                jaccard_ignore: Sequence[float] | None = None, bins: int = CALIBRATION_BINS) -> dict:
    """Does the confidence score predict the Jaccard? Spearman correlation and mean Jaccard per confidence bin.

    Images are ordered by confidence (ties by isic_id) and cut into ``bins`` groups of equal size (the first ones
    one larger when it does not divide), so ties in confidence never make a bin empty. Images without a
    confidence or Jaccard are left out. With fewer images than bins, one bin per image.

    Returns:
        ``{"n", "spearman", "bins": [{"bin", "n", "confidence_min", "confidence_max", "confidence_mean",
        "jaccard_bg", "jaccard_ignore"}, ...]}``, bin 1 the least confident.
    """
    frame = pd.DataFrame({"isic_id": list(ids), "confidence": np.asarray(confidence, dtype=np.float64),
                          "jaccard": np.asarray(jaccard, dtype=np.float64),
                          "jaccard_ignore": (np.asarray(jaccard_ignore, dtype=np.float64)
                                             if jaccard_ignore is not None else np.nan)})
    frame = frame.dropna(subset=["confidence", "jaccard"]).sort_values(["confidence", "isic_id"], ignore_index=True)
    out: dict = {"n": int(len(frame)), "spearman": spearman(frame["confidence"], frame["jaccard"]), "bins": []}
    count = min(bins, len(frame))
    for k, index in enumerate(np.array_split(np.arange(len(frame)), count) if count else []):
        part = frame.iloc[index]
        out["bins"].append({
            "bin": k + 1,
            "n": int(len(part)),
            "confidence_min": float(part["confidence"].min()),
            "confidence_max": float(part["confidence"].max()),
            "confidence_mean": float(part["confidence"].mean()),
            "jaccard_bg": float(part["jaccard"].mean()),
            "jaccard_ignore": _mean(part["jaccard_ignore"]),
        })
    return out



def bootstrap_interval(values: Iterable[float], level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> list[float] | None:
    """The percentile bootstrap interval of the mean of ``values`` (NaN left out), seeded so that a report is the
    same every time; None for fewer than two values. On a few images it is wide: that is the point."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size < 2:
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // finite.size)          # resamples drawn at a time: memory stays small for any n
    means = np.concatenate([finite[rng.integers(0, finite.size, (min(chunk, resamples - done), finite.size))]
                            .mean(axis=1) for done in range(0, resamples, chunk)])
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def risk_coverage(predicted: Sequence[float], actual: Sequence[float]) -> list[float]:
    """Mean risk (1 - Jaccard) of the k maps ranked best by ``predicted``, for k = 1..n (maps tied in prediction
    share their mean risk, so that no order among them counts)."""
    predicted = np.asarray(predicted, dtype=float)
    order = np.argsort(-predicted, kind="stable")
    ranked = predicted[order]
    risk = pd.Series(1 - np.asarray(actual, dtype=float)[order])
    risk = risk.groupby(ranked).transform("mean").to_numpy()    # tied predictions: no order among them
    return (np.cumsum(risk) / np.arange(1, risk.size + 1)).tolist()


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (the Mann-Whitney statistic, ties counted half);
    None when one class is empty."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = pd.Series(scores, dtype="float64").rank().to_numpy()       # average ranks: ties count half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def quality_assessment(predicted: Sequence[float], actual: Sequence[float], fail_below: float = 0.65,
                       keep: float = 0.8) -> dict | None:
    """How well predicted Jaccards rank the maps' true ones: Spearman, AUROC for flagging the maps under
    ``fail_below``, the mean Jaccard of the ``keep`` fraction predicted best (next to all maps' and a perfect
    ranking's), and the area under the risk-coverage curve (AURC) next to a perfect ranking's and a random one's
    (whose expected curve is flat at the mean risk). None without two maps that have a prediction."""
    pairs = [(p, a) for p, a in zip(predicted, actual) if np.isfinite(p) and np.isfinite(a)]
    if len(pairs) < 2:
        return None
    p, a = (np.array(v, dtype=float) for v in zip(*pairs))
    curve, oracle = risk_coverage(p, a), risk_coverage(a, a)
    kept = max(1, int(round(keep * len(a))))
    failing, flagged = a < fail_below, p < fail_below
    hits = int((failing & flagged).sum())
    return {"n": len(a), "spearman": spearman(p, a), "auroc_fail": auroc(-p, failing),
            "fail_below": fail_below, "failing": int(failing.sum()), "flagged": int(flagged.sum()),
            "flag_precision": hits / flagged.sum() if flagged.any() else None,
            "flag_recall": hits / failing.sum() if failing.any() else None,
            "keep": keep, "mean_kept": 1 - curve[kept - 1], "mean_kept_oracle": 1 - oracle[kept - 1],
            "mean_all": float(a.mean()), "aurc": float(np.mean(curve)), "aurc_oracle": float(np.mean(oracle)),
            "aurc_random": float(1 - a.mean()), "curve": curve, "curve_oracle": oracle}


def _aggregate(rows: pd.DataFrame) -> dict | None:
    """Both treatments' means over ``rows`` (NaN skipped, as the official scorer), or None when there are none."""
    if rows.empty:
        return None
    out = {}
    for name, suffix in TREATMENTS.items():
        means = {m: _mean(rows[f"{m}_{suffix}"]) for m in METRIC_NAMES}
        means["uncertain_fraction"] = _mean(rows["uncertain_fraction"])
        means["coverage"] = _mean(rows["coverage"])
        means["n_images"] = int(len(rows))
        means["jaccard_ci95"] = bootstrap_interval(rows[f"jaccard_{suffix}"])
        out[name] = means
    return out



def summarise(per_image: pd.DataFrame) -> dict:
    """Aggregates, breakdowns and calibration of the per-image table (see :func:`build_report` for its columns).

    Scored rows are those with ``status == "scored"``; the headline is the scored rows with ``headline`` true.
    """
    scored = per_image[per_image["status"] == "scored"]
    honest = scored[scored["headline"]]
    return {
        "headline": _aggregate(honest),
        "all_scored": _aggregate(scored),
        "breakdowns": {key: breakdown(scored, key) for key in BREAKDOWNS},
        "calibration": calibration(honest["isic_id"].tolist(), honest["confidence"].tolist(),
                                   honest["jaccard_bg"].tolist(), honest["jaccard_ignore"].tolist()),
        "predicted_quality": quality_assessment(honest["predicted_jaccard"].tolist(), honest["jaccard_bg"].tolist()),
    }



def gallery_ids(per_image: pd.DataFrame, size: int = GALLERY_SIZE) -> tuple[list[str], list[str], str]:
    """The ``size`` best and worst maps by Jaccard (255 as background), best first and worst first.

    Chosen from the headline rows where there are any, else from all scored rows (the third value says which:
    "headline" or "all scored"). With fewer than ``2 * size`` images the two galleries split them (the better
    half, the worse half) instead of showing the same images twice.
    """
    scored = per_image[per_image["status"] == "scored"]
    pool, label = (scored[scored["headline"]], "headline") if scored["headline"].any() else (scored, "all scored")
    best = pool.sort_values(["jaccard_bg", "isic_id"], ascending=[False, True])["isic_id"].tolist()
    worst = pool.sort_values(["jaccard_bg", "isic_id"], ascending=[True, True])["isic_id"].tolist()
    n_best, n_worst = min(size, -(-len(pool) // 2)), min(size, len(pool) // 2)
    return best[:n_best], worst[:n_worst], label
