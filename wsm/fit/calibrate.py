"""Calibration: choose fusion weight, dense CRF or not, mask threshold, boundary offset and decision margin by
agreement with official masks.

Only masks of the fitting split that the segmentation prior did not train on are used (a prior scores too
well on its own training masks), and never the images `generate` is later scored on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from wsm.config.recipe import DEFAULT_TYPE, Recipe
from wsm.metrics import confusion_counts, image_metrics
from wsm.stages.preprocess import Preprocessed
from wsm.stages.quality import QualityConfig, fit_quality
from wsm.stages.refine import clean_mask, decide, dense_crf, fuse, offset_mask, refine

MARGINS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)   # decision thresholds: mask threshold -/+ a margin
CERTAIN_ACCURACY = 0.95                       # certain pixels of each side must be at least this accurate
MAX_LESION_LOSS = 0.01                        # the lesion threshold may turn at most this share of the true
                                              # lesion pixels inside the refined mask uncertain


@dataclass(frozen=True)
class Sample:
    pre: Preprocessed
    maps: dict            # evidence maps at the working size
    truth: np.ndarray     # bool (S, S): the official mask at the working size
    isic_id: str = ""     # whose mask it is (what calibration and the quality model learnt from)
    recipe_key: str = DEFAULT_TYPE   # which recipe of wsm.config.recipe.recipes_by_type made its maps (its image type)
    missed: float = 0.0   # lesion outside a cascade's crop, in working pixels (wsm.stages.cascade.missed_lesion)


class GridPoint(NamedTuple):
    """One candidate of the grid search and its mean Jaccard on the calibration masks."""
    prior_weight: float | None
    crf: bool
    mask_threshold: float
    offset_px: int
    jaccard: float


@dataclass(frozen=True)
class Calibration:
    prior_weight: float | None       # None: no prior in this recipe
    crf: bool                        # whether the dense CRF refines the fused map
    mask_threshold: float
    offset_px: int                   # the refined mask's boundary moved out (> 0) or in (< 0), working-size pixels
    lesion_threshold: float
    background_threshold: float
    jaccard: float                   # mean Jaccard of the refined masks on the calibration images
    certain_accuracy: float
    certain_fraction: float
    n_images: int
    grid: list                       # a GridPoint for every candidate

    def apply(self, resolved: dict) -> dict:
        """The resolved pipeline with the calibrated values written in."""
        out = {**resolved}
        if self.prior_weight is not None:
            out["fusion"] = {"weights": {"cam": round(1 - self.prior_weight, 4), "prior": self.prior_weight}}
        out["crf"] = {**resolved.get("crf", {}), "enabled": self.crf}
        out["refine"] = {**resolved.get("refine", {}), "mask_threshold": self.mask_threshold,
                         "offset_px": self.offset_px}
        out["decision"] = {**resolved.get("decision", {}), "lesion_threshold": self.lesion_threshold,
                           "background_threshold": self.background_threshold}
        return out


def _jaccard(truth: np.ndarray, pred: np.ndarray, missed: float = 0.0) -> float:
    """Jaccard of two masks; ``missed`` lesion pixels beyond them count as false negatives."""
    counts = confusion_counts(truth, pred)
    if not missed:
        return image_metrics(counts)["jaccard"]
    return counts.tp / (counts.tp + counts.fp + counts.fn + missed)


def _fused(sample: Sample, prior_weight: float | None) -> np.ndarray:
    if prior_weight is None or "prior" not in sample.maps:
        return fuse({"cam": sample.maps["cam"]}, {"cam": 1.0}) if "cam" in sample.maps else \
            fuse(sample.maps, {k: 1.0 for k in sample.maps})
    return fuse(sample.maps, {"cam": 1 - prior_weight, "prior": prior_weight})


def calibrate(samples: list[Sample], recipe: Recipe, progress=None) -> Calibration:
    """Grid search over (prior weight, CRF on or off, mask threshold, boundary offset) on the refined masks, then
    the decision margin. Ties go to no CRF (cheaper), then to the threshold nearest 0.5, then to the smallest
    offset."""
    if not samples:
        raise ValueError("calibration needs at least one image with an official mask")
    has_prior = recipe.uses_prior and all("prior" in s.maps for s in samples)
    has_cam = all("cam" in s.maps for s in samples)
    weights = (tuple(recipe.calibration.prior_weights) if has_cam else (1.0,)) if has_prior else (None,)
    crf_choices = tuple(recipe.calibration.crf_choices) if recipe.refine.crf else (False,)
    thresholds, offsets = tuple(recipe.calibration.mask_thresholds), tuple(recipe.calibration.offsets_px)
    scores = {(w, c, t, k): [] for w in weights for c in crf_choices for t in thresholds for k in offsets}
    for sample in samples:
        valid = sample.pre.valid_mask
        for w in weights:
            prob = np.where(valid, _fused(sample, w), 0.0).astype(np.float32)
            for c in crf_choices:
                marginal = dense_crf(sample.pre.image, prob, recipe.refine.crf) if c else prob
                for t in thresholds:
                    mask = clean_mask(marginal > t, valid, recipe.refine.morphology)
                    for k in offsets:
                        scores[(w, c, t, k)].append(_jaccard(sample.truth, offset_mask(mask, valid, k)))
        if progress is not None:
            progress.update(1)
    grid = [GridPoint(*key, float(np.mean(v))) for key, v in scores.items()]
    return _with_margin(samples, recipe, _best(grid, recipe.calibration), grid)


def _best(grid: list[GridPoint], calibration) -> GridPoint:
    """The best candidate: the CRF (the costliest stage) only when it beats the best candidate without it by more
    than ``crf_min_gain``, a moved boundary only when it beats the best unmoved one by more than
    ``offset_min_gain``; ties go to the threshold nearest 0.5, then to the smallest offset."""
    unmoved = _best_by_crf([g for g in grid if g.offset_px == 0], calibration.crf_min_gain)
    moved = _best_by_crf(grid, calibration.crf_min_gain)
    if unmoved is None or moved.jaccard > unmoved.jaccard + calibration.offset_min_gain:
        return moved
    return unmoved


def _best_by_crf(grid: list[GridPoint], crf_min_gain: float) -> GridPoint | None:
    def best_of(rows):
        return max(rows, key=lambda g: (g.jaccard, -abs(g.mask_threshold - 0.5), -abs(g.offset_px)), default=None)

    with_crf, without = best_of([g for g in grid if g.crf]), best_of([g for g in grid if not g.crf])
    if without is None or (with_crf is not None and with_crf.jaccard > without.jaccard + crf_min_gain):
        return with_crf
    return without


def _pick(candidates, accuracy_of, prefer) -> tuple[float, float]:
    """The first candidate (loosest first) whose accuracy reaches CERTAIN_ACCURACY, else the most accurate."""
    scored = [(c, accuracy_of(c)) for c in candidates]
    for c, acc in scored:
        if acc >= CERTAIN_ACCURACY:
            return c, acc
    return max(scored, key=lambda item: (item[1], prefer(item[0])))


def _affordable(candidates: list[float], loss_of) -> list[float]:
    """The lesion thresholds (loosest first) that turn at most MAX_LESION_LOSS of the true lesion pixels inside the
    refined mask uncertain: certainty is not bought with lesion that a reader of the 1s would miss (on the mean
    Jaccard, gains in precision on a few calibration masks can hide that loss). The loosest when every one loses
    more."""
    return [c for c in candidates if loss_of(c) <= MAX_LESION_LOSS] or candidates[:1]


def _with_margin(samples, recipe, best: GridPoint, grid) -> Calibration:
    """Decision thresholds, lesion and background side each on its own: the loosest whose certain pixels reach
    CERTAIN_ACCURACY on the calibration masks (inside the refined mask for lesion, outside it for background); the
    lesion threshold among those that lose little of the lesion (:func:`_affordable`)."""
    t = best.mask_threshold
    refine_cfg = replace(recipe.refine, mask_threshold=t, offset_px=best.offset_px,
                         crf=recipe.refine.crf if best.crf else None)
    refined = []          # per image: fused prob, refined mask, truth, valid pixels
    for s in samples:
        prob = _fused(s, best.prior_weight)
        refined.append((prob, refine(s.pre.image, prob, s.pre.valid_mask, refine_cfg).mask, s.truth,
                        s.pre.valid_mask))
    prob, mask, truth = (np.concatenate([r[i][r[3]] for r in refined]) for i in range(3))

    def lesion_accuracy(lt):
        chosen = mask & (prob >= lt)
        return float(truth[chosen].mean()) if chosen.any() else 0.0

    def background_accuracy(bt):
        chosen = ~mask & (prob <= bt)
        return float((~truth[chosen]).mean()) if chosen.any() else 0.0

    def lesion_loss(lt):
        inside = mask & truth
        return float((inside & (prob < lt)).sum() / inside.sum()) if inside.any() else 0.0

    lesion = _affordable([min(1.0, t + m) for m in (0.0, *MARGINS)], lesion_loss)
    lt, _ = _pick(lesion, lesion_accuracy, prefer=lambda c: -c)
    bt, _ = _pick([max(0.0, t - m) for m in (0.0, *MARGINS)], background_accuracy, prefer=lambda c: c)
    cfg = replace(recipe.decision, lesion_threshold=lt, background_threshold=bt)
    right = certain = total = 0
    for prob, mask, truth, valid in refined:
        label = decide(prob, mask, valid, cfg)
        known = label != 255
        right += int(((label == 1) == truth)[known].sum())
        certain += int(known.sum())
        total += label.size
    return Calibration(prior_weight=best.prior_weight, crf=best.crf, mask_threshold=t, offset_px=best.offset_px,
                       lesion_threshold=lt, background_threshold=bt, jaccard=best.jaccard,
                       certain_accuracy=right / certain if certain else 0.0, certain_fraction=certain / total,
                       n_images=len(samples), grid=grid)


def learn_quality(samples: list[Sample], recipes: dict[str, Recipe]) -> QualityConfig:
    """The quality model (wsm.stages.quality) learnt on the calibration samples as the calibrated recipes label
    them (``recipes``: wsm.config.recipe.recipes_by_type, each sample by its own type's): each map's signals against
    its true Jaccard (255 as background) at the working size, lesion left outside a cascade's crop counted as
    missed. An image may come twice (whole and as its cascade's crop)."""
    from wsm.mapping import label_image

    signals, jaccards = [], []
    for sample in samples:
        labelled = label_image(sample.pre, sample.maps, recipes[sample.recipe_key], with_signals=True)
        signals.append(labelled.signals)
        jaccards.append(_jaccard(sample.truth, labelled.label_map == 1, sample.missed))
    return fit_quality(signals, jaccards, n_images=len({sample.isic_id for sample in samples}))
