"""A predicted quality for every map: signals that disagree when a map is wrong, and a small linear model over
them that `wsm fit` learns on its calibration masks (never on the images it is scored on).

The signals come from what making a map computes anyway, at the working size, plus one independent second
opinion, the colour threshold (wsm.stages.classic), which fails in other ways than a network does:

    agree_threshold   Jaccard of the refined mask with the colour threshold's mask
    agree_refine      Jaccard of the fused probability (> 0.5) with the refined mask: what CRF and morphology changed
    margin            mean |2p - 1| over the valid pixels: how sure the evidence is
    certain           fraction of valid pixels decided (not 255)
    uncertain_ratio   uncertain pixels / (lesion + uncertain pixels): how wide the band round the lesion is
    area              fraction of valid pixels in the refined mask
    border            fraction of the valid region's outline that the mask touches (the frame, the vignette)
    components        log(1 + connected components of the fused probability > 0.5)
    soft_edge         pixels of probability 0.2-0.8 against those and the mask's: how blurred the lesion's edge is
    contrast          CIELAB distance between the mask's mean colour and a ring of skin round it: a mask that took
                      skin or a body contour for the lesion stands out little from its surroundings
    compactness       4 pi area / perimeter^2: lesions are blobs, wrong masks are often ragged or stringy
    agree_scale       for a cascaded crop (wsm.stages.cascade), Jaccard of the refined mask with the whole image's
                      prior map of the crop (> 0.5): two views of the lesion at two scales; 1 for an image segmented
                      whole (one view)
    cascaded          1 for a cascaded crop, 0 for an image segmented whole

The model (QualityConfig) is ridge regression on standardised signals, written into the bundle's pipeline.toml as
the [quality] table, so a bundle carries it like its thresholds; its prediction is clipped to [0, 1].

A framing check (FramingConfig, the pipeline's [framing] section, per image type) overrules the model where a map
cannot be right for how the photograph was taken: a clinical close-up frames its lesion in skin, so a map that marks
most of the photograph, or runs along one of its sides, has taken the skin, a body contour or a banner for the
lesion. Such a map is predicted 0 (and so flagged). The model cannot learn this from dermoscopic calibration masks,
where a large lesion that fills the crop is common and usually an easy map.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from wsm.stages.classic import ClassicConfig, lesion_prob_classic

MIN_IMAGES = 20          # calibration masks below which fit calls the model a rough guide
SIGNALS = ("agree_threshold", "agree_refine", "margin", "certain", "uncertain_ratio", "area", "border",
           "components", "soft_edge", "contrast", "compactness", "agree_scale", "cascaded")
FAIL_BELOW = 0.65        # a map predicted below this Jaccard is flagged (ISIC 2018's threshold Jaccard cut)
RIDGE = 0.1              # penalty on the standardised coefficients (relative to the mean squared signal)


@dataclass(frozen=True)
class QualityConfig:
    signals: tuple[str, ...] = ()          # empty: no model (a recipe not calibrated on masks)
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    n_images: int = 0                      # calibration images the model was learnt on

    def __post_init__(self) -> None:
        unknown = sorted(set(self.signals) - set(SIGNALS))
        if unknown:
            raise ValueError(f"signals {unknown} are not quality signals ({', '.join(SIGNALS)})")
        if not len(self.signals) == len(self.mean) == len(self.scale) == len(self.coef):
            raise ValueError("signals, mean, scale and coef must have one value per signal")
        if any(s <= 0 for s in self.scale):
            raise ValueError("every scale must be positive")

    @property
    def enabled(self) -> bool:
        return bool(self.signals)


@dataclass(frozen=True)
class FramingConfig:
    max_area: float = 1.0          # a map marking more than this fraction of the valid pixels fails the check
    max_edge_contact: float = 1.0  # ... or lying along more than this fraction of one side of the image
    edge_band: float = 0.03        # how near a side counts as on it, x that side's perpendicular length

    def __post_init__(self):
        for name in ("max_area", "max_edge_contact"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)}: give a fraction in (0, 1] (1: no check)")
        if not 0 < self.edge_band < 0.5:
            raise ValueError(f"edge_band = {self.edge_band}: give a fraction of the side in (0, 0.5)")


def edge_contact(mask: np.ndarray, band: float) -> float:
    """The largest fraction of one side of the image along which the mask comes within ``band`` x the image's
    other dimension of that side."""
    height, width = mask.shape
    rows, cols = max(1, round(band * height)), max(1, round(band * width))
    return float(max(mask[:rows].any(axis=0).mean(), mask[-rows:].any(axis=0).mean(),
                     mask[:, :cols].any(axis=1).mean(), mask[:, -cols:].any(axis=1).mean()))


def framing_failure(mask: np.ndarray, valid: np.ndarray, cfg: FramingConfig) -> str | None:
    """Why the map fails the framing check, or None when it passes."""
    mask = mask.astype(bool) & valid.astype(bool)
    area = float(mask.sum() / max(1, int(valid.sum())))
    if area > cfg.max_area:
        return f"the map marks {area:.0%} of the image (at most {cfg.max_area:.0%} for this image type)"
    contact = edge_contact(mask, cfg.edge_band) if cfg.max_edge_contact < 1 else 0.0
    if contact > cfg.max_edge_contact:
        return (f"the map lies along {contact:.0%} of a side of the image (at most {cfg.max_edge_contact:.0%} for "
                "this image type)")
    return None


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two masks; 0 when both are empty (every image shows a lesion: finding none is no agreement)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _outline(valid: np.ndarray) -> np.ndarray:
    """The valid region's edge pixels (the image frame, or the vignette's rim)."""
    region = valid.astype(np.uint8)
    padded = cv2.copyMakeBorder(region, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return (region - cv2.erode(padded, np.ones((3, 3), np.uint8))[1:-1, 1:-1]).astype(bool)


def quality_signals(image: np.ndarray, valid: np.ndarray, prob: np.ndarray, mask: np.ndarray,
                    label_map: np.ndarray, classic: ClassicConfig = ClassicConfig(),
                    whole_view: np.ndarray | None = None) -> dict[str, float]:
    """The signals of one map (see the module doc), from the image and what labelling it computed (with a crop's
    view in the whole image's prior map, for a cascaded crop)."""
    valid = valid.astype(bool)
    n_valid = max(1, int(valid.sum()))
    mask = mask.astype(bool) & valid
    raw = (prob > 0.5) & valid
    second = lesion_prob_classic(image, valid, classic) > 0.5
    lesion, uncertain = int((label_map == 1).sum()), int((label_map == 255).sum())
    outline = _outline(valid)
    soft = ((prob > 0.2) & (prob < 0.8) & valid).sum()
    return {
        "agree_threshold": _jaccard(mask, second),
        "agree_refine": _jaccard(raw, mask),
        "margin": float(np.abs(2 * prob[valid] - 1).mean()) if valid.any() else 0.0,
        "certain": 1 - uncertain / n_valid,
        "uncertain_ratio": uncertain / max(1, lesion + uncertain),
        "area": float(mask.sum() / n_valid),
        "border": float(mask[outline].mean()) if outline.any() else 0.0,
        "components": math.log1p(cv2.connectedComponents(raw.astype(np.uint8))[0] - 1),
        "soft_edge": float(soft / max(1, soft + mask.sum())),
        "contrast": _contrast(image, mask, valid),
        "compactness": _compactness(mask),
        "agree_scale": 1.0 if whole_view is None else _jaccard(mask, (whole_view > 0.5) & valid),
        "cascaded": float(whole_view is not None),
    }


def _contrast(image: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> float:
    """How far the mask's colour is from the skin round it: the CIELAB distance between the mean inside and the
    mean of a ring outside (a tenth of the image wide), over 100; 0 when either is empty. A mask that took a patch
    of skin or a body contour for the lesion differs little from its ring."""
    if not mask.any():
        return 0.0
    width = max(3, round(0.1 * max(mask.shape)))
    ring = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))) > 0
    ring &= valid & ~mask
    if not ring.any():
        return 0.0
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    return float(np.linalg.norm(lab[mask].mean(axis=0) - lab[ring].mean(axis=0)) / 100)


def _compactness(mask: np.ndarray) -> float:
    """4 pi area / perimeter^2 of the mask's outlines (1 for a disc, small for ragged or stringy shapes)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    return float(min(1.0, 4 * math.pi * mask.sum() / perimeter ** 2)) if perimeter else 0.0


def predicted_jaccard(cfg: QualityConfig, signals: Mapping[str, float]) -> float | None:
    """The model's Jaccard for one map's signals, in [0, 1]; 0 for a map that found no lesion (the model never
    saw one: calibration images all show a lesion); None without a model."""
    if not cfg.enabled:
        return None
    if signals["area"] == 0:
        return 0.0
    z = [(signals[name] - m) / s for name, m, s in zip(cfg.signals, cfg.mean, cfg.scale)]
    return float(np.clip(cfg.intercept + float(np.dot(cfg.coef, z)), 0.0, 1.0))


def fit_quality(signals: Sequence[Mapping[str, float]], jaccards: Sequence[float], ridge: float = RIDGE,
                n_images: int | None = None) -> QualityConfig:
    """Ridge regression of the maps' true Jaccard on their standardised signals (closed form); ``n_images``: the
    images the maps are of, when some image gave more than one (one map each by default)."""
    x = np.array([[s[name] for name in SIGNALS] for s in signals], dtype=float)
    y = np.asarray(jaccards, dtype=float)
    if len(y) == 0:
        return QualityConfig()
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-4] = 1.0                      # a (near) constant signal carries nothing: its coefficient stays 0
    z = (x - mean) / scale
    gram = z.T @ z / len(y) + ridge * np.eye(len(SIGNALS))
    coef = np.linalg.solve(gram, z.T @ (y - y.mean()) / len(y))
    return QualityConfig(SIGNALS, tuple(mean.round(6).tolist()), tuple(scale.round(6).tolist()),
                         tuple(coef.round(6).tolist()), round(float(y.mean()), 6),
                         len(y) if n_images is None else n_images)


def as_table(cfg: QualityConfig) -> dict:
    """The [quality] table of a bundle's pipeline.toml."""
    return {"signals": list(cfg.signals), "mean": list(cfg.mean), "scale": list(cfg.scale), "coef": list(cfg.coef),
            "intercept": cfg.intercept, "n_images": cfg.n_images}
