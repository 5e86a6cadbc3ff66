"""Stages 4-5, fuse / refine / decide: from lesion probability maps to an ISIC_WSM label map.

    prob = fuse({"cam": cam, "prior": prior}, weights)          # float32 (H, W) in [0, 1]
    refined = refine(image, prob, valid_mask, RefineConfig())     # dense CRF + morphology -> Refined(prob, mask)
    label_map = decide(prob, refined.mask, valid_mask, DecisionConfig())   # uint8 (H, W) in {0, 1, 255}
    label_map = to_original_size(label_map, original_size)

``decide`` takes the fused probability from before the CRF on purpose: the CRF makes almost every pixel confident,
so the disagreement between the raw evidence and the refined mask is what marks the uncertain pixels.

Shapes: ``rgb`` ``uint8`` ``(H, W, 3)``; ``prob`` ``float32`` ``(H, W)`` in [0, 1]; masks ``bool`` ``(H, W)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage

from wsm.stages.preprocess import check_mask, check_prob, check_rgb

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_LESION",
    "LABEL_UNCERTAIN",
    "CrfConfig",
    "DecisionConfig",
    "FusionConfig",
    "MorphologyConfig",
    "RefineConfig",
    "Refined",
    "clean_mask",
    "confidence",
    "decide",
    "dense_crf",
    "fuse",
    "offset_mask",
    "refine",
    "to_original_size",
]

# ISIC_WSM label values (Bonechi 2023).
LABEL_BACKGROUND = 0
LABEL_LESION = 1
LABEL_UNCERTAIN = 255


def _disc(radius: int) -> np.ndarray:
    radius = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


# --------------------------------------------------------------------------------------------------------- fuse


@dataclass(frozen=True)
class FusionConfig:
    # weight per map name (e.g. "cam", "prior", "classic"); empty = equal weights for whatever maps are given
    weights: Mapping[str, float] = field(default_factory=dict)


def fuse(maps: Mapping[str, np.ndarray], weights: Mapping[str, float] | FusionConfig | None = None) -> np.ndarray:
    """Weighted mean of the probability maps that are present, weights renormalised over them.

    Args:
        maps: name -> ``(H, W)`` float map in [0, 1]; all the same shape; at least one.
        weights: name -> weight >= 0 (or a :class:`FusionConfig`). Names of absent maps are ignored (a recipe may
            name a prior that only exists when official masks do); a present map with no weight is an error, so a
            typo cannot silently drop a map. ``None`` or empty: equal weights.

    Returns:
        ``float32`` ``(H, W)`` in [0, 1].
    """
    if isinstance(weights, FusionConfig):
        weights = weights.weights
    if not maps:
        raise ValueError("fuse needs at least one probability map, got none")
    names = sorted(maps)
    if weights:
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(
                f"no fusion weight for map(s) {missing}; weights are given for {sorted(weights)}. "
                "Add them to the fusion weights (0 to ignore a map)."
            )
        w = np.array([float(weights[n]) for n in names], dtype=np.float64)
    else:
        w = np.ones(len(names))
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"fusion weights must be finite and >= 0, got {dict(zip(names, w.tolist()))}")
    if w.sum() <= 0:
        raise ValueError(f"the fusion weights of the maps present ({names}) sum to 0; give one a positive weight")
    first = check_prob(maps[names[0]], f"maps[{names[0]!r}]")
    out = np.zeros(first.shape, dtype=np.float64)
    for name, weight in zip(names, w / w.sum()):
        if weight > 0:
            out += weight * check_prob(maps[name], f"maps[{name!r}]", first.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- dense CRF


@dataclass(frozen=True)
class CrfConfig:
    iterations: int = 5  # mean-field iterations
    gaussian_sxy: float = 3.0  # smoothness kernel width in pixels (removes isolated pixels)
    gaussian_compat: float = 3.0  # smoothness kernel weight
    bilateral_sxy: float = 20.0  # appearance kernel spatial width in pixels (at the 512 working size)
    bilateral_srgb: float = 10.0  # appearance kernel colour width in 0..255 RGB units
    bilateral_compat: float = 5.0  # appearance kernel weight
    # (bilateral defaults: the best of a 27-point grid on 30 ISIC 2018 images with blurred-ellipse "CAMs" made
    # from their masks, +0.8 Jaccard points over no CRF; the pydensecrf README's 80/13/10 lost 7 points there)
    unary_clip: float = 1e-4  # clip probabilities to [clip, 1 - clip] before -log (keeps unaries finite)
    size: int = 0  # longer side the CRF runs at (widths above are scaled with it), its marginal resized back;
    #                0 or more than the image's: the image's own size. Its cost grows with the pixel count.

    def __post_init__(self) -> None:
        if self.size < 0 or 0 < self.size < 16:
            raise ValueError(f"size = {self.size}: give 0 (the image's own size) or at least 16 pixels")


def dense_crf(rgb: np.ndarray, prob: np.ndarray, cfg: CrfConfig = CrfConfig()) -> np.ndarray:
    """Fully connected CRF (Krähenbühl & Koltun 2011) over two labels, background and lesion.

    Unaries are ``-log`` of ``(1 - prob, prob)``; pairwise terms are a Gaussian smoothness kernel and a bilateral
    appearance kernel on the RGB image, so the lesion probability snaps to colour edges. Uses the ``pydensecrf``
    API (installed from the ``pydensecrf2`` distribution). With ``cfg.size`` below the image's longer side, it
    runs on the image and probability shrunk to that size (area averaging) with the kernel widths scaled alike,
    and its marginal is resized back (bilinear). Returns the lesion marginal, ``float32`` ``(H, W)``.
    """
    rgb = check_rgb(rgb)
    prob = check_prob(prob, "prob", rgb.shape[:2])
    h, w = prob.shape
    scale = cfg.size / max(h, w)
    if not 0 < scale < 1:
        return _dense_crf(rgb, prob, cfg)
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    cfg = replace(cfg, gaussian_sxy=cfg.gaussian_sxy * scale, bilateral_sxy=cfg.bilateral_sxy * scale)
    q = _dense_crf(cv2.resize(rgb, small, interpolation=cv2.INTER_AREA),
                   cv2.resize(prob, small, interpolation=cv2.INTER_AREA), cfg)
    return np.clip(cv2.resize(q, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def _dense_crf(rgb: np.ndarray, prob: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w = prob.shape
    softmax = np.stack([1.0 - prob, prob]).astype(np.float32)
    softmax = np.clip(softmax, cfg.unary_clip, 1.0 - cfg.unary_clip)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(softmax, clip=cfg.unary_clip)))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy,
        srgb=cfg.bilateral_srgb,
        rgbim=np.require(rgb, np.uint8, ['C', 'W']),  # its memoryview refuses read-only buffers
        compat=cfg.bilateral_compat,
    )
    q = np.asarray(crf.inference(int(cfg.iterations)), dtype=np.float32).reshape(2, h, w)
    return np.clip(q[1], 0.0, 1.0)


# --------------------------------------------------------------------------------------------------- morphology


@dataclass(frozen=True)
class MorphologyConfig:
    smooth_radius: float = 0.01  # open/close disc radius, x the shorter side (0.01 = 5 px at 512)
    min_area: float = 0.002  # components smaller than this fraction of the image are specks
    keep_components: int = 1  # how many lesion components to keep, best score first
    centre_sigma: float = 0.35  # component score = area x exp(-d^2 / 2 sigma^2), d = mean pixel distance from centre
    vignette_band: float = 0.03  # width (x the shorter side) of the band along the invalid region (the frame)
    vignette_contact: float = 0.5  # components with more than this share of their pixels in that band are dropped


def clean_mask(mask: np.ndarray, valid_mask: np.ndarray, cfg: MorphologyConfig = MorphologyConfig()) -> np.ndarray:
    """Make a binary lesion mask look like a lesion: ``bool`` ``(H, W)``.

    Steps: restrict to valid pixels; open then close with a disc of ``smooth_radius`` (removes specks and hair
    lines, closes gaps); drop components that hug the frame (more than ``vignette_contact`` of their pixels
    within ``vignette_band`` of invalid pixels: the dark blurred rim of a dermoscope frame; a real lesion that
    merely touches the frame keeps most of its pixels away from it); fill holes; drop components smaller than
    ``min_area``; keep the ``keep_components`` best by ``area x exp(-d^2 / 2 centre_sigma^2)``, where ``d`` is
    the mean distance of the component's pixels from the image centre over the half-diagonal (mean pixel distance,
    not centroid distance: a ring along the border has its centroid in the middle). Large central blobs win.
    """
    mask = np.asarray(mask)
    valid_mask = check_mask(valid_mask, mask.shape, "valid_mask")
    mask = check_mask(mask, valid_mask.shape, "mask") & valid_mask
    h, w = mask.shape
    short = min(h, w)
    radius = int(round(cfg.smooth_radius * short))
    m = mask.astype(np.uint8)
    if radius > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disc(radius))
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disc(radius), borderType=cv2.BORDER_REPLICATE)
    # frame huggers are judged before filling holes: a closed rim along a circular frame would otherwise be
    # filled into a disc covering the whole field of view
    if not valid_mask.all():
        n, labels = cv2.connectedComponents(m, connectivity=8)
        if n > 1:
            areas = np.bincount(labels.ravel(), minlength=n)[1:].astype(np.float64)
            band = cv2.dilate((~valid_mask).astype(np.uint8), _disc(max(1, int(round(cfg.vignette_band * short)))))
            near = np.bincount(labels.ravel(), weights=band.ravel().astype(np.float64), minlength=n)[1:] / areas
            huggers = np.nonzero(near > cfg.vignette_contact)[0] + 1
            m[np.isin(labels, huggers)] = 0
    filled = ndimage.binary_fill_holes(m.astype(bool)) & valid_mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(filled.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros((h, w), dtype=bool)

    ids = np.arange(1, n)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot((xx - (w - 1) / 2) / (w / 2), (yy - (h - 1) / 2) / (h / 2)) / np.sqrt(2.0)
    mean_dist = np.bincount(labels.ravel(), weights=dist.ravel(), minlength=n)[1:] / areas
    keep = areas >= cfg.min_area * h * w
    score = np.where(keep, areas * np.exp(-(mean_dist**2) / (2 * cfg.centre_sigma**2)), -1.0)
    order = np.argsort(-score, kind="stable")[: max(0, cfg.keep_components)]
    chosen = ids[order[score[order] > 0]]
    if len(chosen) == 0:
        return np.zeros((h, w), dtype=bool)
    return np.isin(labels, chosen)


# ------------------------------------------------------------------------------------------------------- refine


@dataclass(frozen=True)
class RefineConfig:
    crf: CrfConfig | None = field(default_factory=CrfConfig)  # None skips the CRF (threshold the fused prob)
    mask_threshold: float = 0.5  # the (CRF) probability above which a pixel enters the mask
    morphology: MorphologyConfig = field(default_factory=MorphologyConfig)  # clean-up of that mask
    offset_px: int = 0  # then move its boundary out (> 0) or in (< 0) by this many pixels at the working size:
    #                     calibrated to masks drawn looser or tighter than those the prior learnt from


def offset_mask(mask: np.ndarray, valid_mask: np.ndarray, offset_px: int) -> np.ndarray:
    """The lesion mask with its boundary moved by ``offset_px`` pixels: dilated by a disc when positive, eroded when
    negative, unchanged at 0; never onto invalid pixels. The image border is no boundary: a lesion cut by the
    frame keeps its edge there. ``bool`` ``(H, W)``."""
    valid_mask = check_mask(valid_mask, np.shape(mask), "valid_mask")
    mask = check_mask(mask, valid_mask.shape, "mask")
    if offset_px == 0 or not mask.any():
        return mask & valid_mask
    move = cv2.dilate if offset_px > 0 else cv2.erode     # default borders: neither acts from the image border
    return move(mask.astype(np.uint8), _disc(abs(offset_px))).astype(bool) & valid_mask


class Refined(NamedTuple):
    prob: np.ndarray  # float32 (H, W): the CRF marginal (the input prob when the CRF is off)
    mask: np.ndarray  # bool (H, W): the cleaned lesion mask


def refine(rgb: np.ndarray, prob: np.ndarray, valid_mask: np.ndarray, cfg: RefineConfig = RefineConfig()) -> Refined:
    """Dense CRF on the image, threshold, :func:`clean_mask`, :func:`offset_mask`. Invalid pixels are set to 0
    before the CRF."""
    rgb = check_rgb(rgb)
    prob = check_prob(prob, "prob", rgb.shape[:2])
    valid_mask = check_mask(valid_mask, prob.shape, "valid_mask")
    prob = np.where(valid_mask, prob, 0.0).astype(np.float32)
    crf_prob = dense_crf(rgb, prob, cfg.crf) if cfg.crf is not None else prob
    mask = clean_mask(crf_prob > cfg.mask_threshold, valid_mask, cfg.morphology)
    return Refined(prob=crf_prob, mask=offset_mask(mask, valid_mask, cfg.offset_px))


# ------------------------------------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class DecisionConfig:
    lesion_threshold: float = 0.6  # inside the refined mask, prob >= this is certain lesion (1)
    background_threshold: float = 0.4  # outside it, prob <= this is certain background (0)
    band_px: int = 3  # width in pixels of the uncertain band along the refined boundary (0: none)
    band_side: str = "both"  # "outside": the band lies outside the refined mask; "both": band_px on each side

    def __post_init__(self) -> None:
        if self.band_side not in ("both", "outside"):
            raise ValueError(f"band_side must be 'both' or 'outside', got {self.band_side!r}")


def decide(
    prob: np.ndarray, refined_mask: np.ndarray, valid_mask: np.ndarray, cfg: DecisionConfig = DecisionConfig()
) -> np.ndarray:
    """ISIC_WSM label map: ``uint8`` ``(H, W)`` with values only 0 (background), 1 (lesion), 255 (uncertain).

    Valid pixels:
    - 1 where the refined mask says lesion and ``prob >= lesion_threshold``;
    - 0 where the refined mask says background and ``prob <= background_threshold``;
    - 255 otherwise: the two disagree, or prob lies between the thresholds; and within ``band_px`` of the
      refined boundary, where the evidence is least certain (the image border is not a boundary): on both sides,
      or with ``band_side = "outside"`` only outside the mask, so that the lesion pixels (1) are the whole refined
      mask and a reader who counts 255 as background gets that mask.

    Invalid pixels (the dermoscope frame) show no skin, so no lesion can be seen there and the official masks call
    them background: they are 0 when ``prob <= background_threshold``, and 255 when the evidence says otherwise
    (a frame found where a dark lesion touches the border). Never 1.

    ``prob`` is the fused probability from before the CRF (see the module docstring).
    """
    prob = check_prob(prob, "prob")
    refined_mask = check_mask(refined_mask, prob.shape, "refined_mask")
    valid_mask = check_mask(valid_mask, prob.shape, "valid_mask")
    if not 0.0 <= cfg.background_threshold <= cfg.lesion_threshold <= 1.0:
        raise ValueError(
            "need 0 <= background_threshold <= lesion_threshold <= 1, got "
            f"{cfg.background_threshold} and {cfg.lesion_threshold}"
        )
    label_map = np.full(prob.shape, LABEL_UNCERTAIN, dtype=np.uint8)
    label_map[refined_mask & (prob >= cfg.lesion_threshold)] = LABEL_LESION
    label_map[~refined_mask & (prob <= cfg.background_threshold)] = LABEL_BACKGROUND
    if cfg.band_px > 0 and refined_mask.any() and not refined_mask.all():
        m = refined_mask.astype(np.uint8)
        disc = _disc(cfg.band_px)
        # default borders: erosion does not erode from the image border, dilation does not grow from it
        inner = refined_mask if cfg.band_side == "outside" else cv2.erode(m, disc).astype(bool)
        band = cv2.dilate(m, disc).astype(bool) & ~inner
        label_map[band] = LABEL_UNCERTAIN
    invalid = ~valid_mask
    label_map[invalid] = np.where(prob[invalid] <= cfg.background_threshold, LABEL_BACKGROUND, LABEL_UNCERTAIN)
    return label_map


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or label_map.dtype != np.uint8:
        raise ValueError(f"label_map must be a 2-D uint8 array, got shape {label_map.shape} dtype {label_map.dtype}")
    bad = np.setdiff1d(np.unique(label_map), [LABEL_BACKGROUND, LABEL_LESION, LABEL_UNCERTAIN])
    if bad.size:
        raise ValueError(
            f"label_map values must be 0 (background), 1 (lesion) or 255 (uncertain), found {bad[:10].tolist()}; "
            "a 0/255 challenge mask is not a label map"
        )
    return label_map


def confidence(prob: np.ndarray, label_map: np.ndarray) -> float:
    """One number in [0, 1] for how sure a label map is: ``mean margin x certain fraction``.

    The margin of a certain pixel is how far prob lies from 0.5 on the side of its label, scaled to [0, 1]
    (``2p - 1`` for lesion, ``1 - 2p`` for background, 0 if prob contradicts the label); its mean over the certain
    (0 or 1) pixels is multiplied by the fraction of pixels that are certain. All-uncertain maps score 0; a map
    with every pixel certain and prob exactly 0 or 1 scores 1.
    """
    label_map = _check_label_map(label_map)
    prob = check_prob(prob, "prob", label_map.shape)
    lesion = label_map == LABEL_LESION
    background = label_map == LABEL_BACKGROUND
    n_certain = int(lesion.sum() + background.sum())
    if n_certain == 0:
        return 0.0
    margin = np.where(lesion, 2.0 * prob - 1.0, 1.0 - 2.0 * prob.astype(np.float64))
    margin = np.clip(margin, 0.0, 1.0)
    mean_margin = float(margin[lesion | background].mean())
    return float(np.clip(mean_margin * n_certain / label_map.size, 0.0, 1.0))


def to_original_size(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample a label map to ``size`` = ``(width, height)`` by nearest neighbour (values stay in {0, 1, 255}).

    Uses OpenCV's ``INTER_NEAREST_EXACT`` (pixel-centre aligned like Pillow's NEAREST; plain ``INTER_NEAREST``
    shifts by half a pixel).
    """
    label_map = _check_label_map(label_map)
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be (width, height) with both >= 1, got {size}")
    if label_map.shape == (height, width):
        return label_map.copy()
    return np.ascontiguousarray(cv2.resize(label_map, (width, height), interpolation=cv2.INTER_NEAREST_EXACT))


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probability map resampled bilinearly to ``shape`` = ``(height, width)``, float32 in [0, 1] (the one way
    wsm resizes maps of probabilities: networks' outputs to the working size or to an image's size)."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != tuple(shape):
        prob = cv2.resize(prob, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
    return np.clip(prob, 0.0, 1.0)
