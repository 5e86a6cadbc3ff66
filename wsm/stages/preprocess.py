"""Stage 1, preprocess: working size, the dermoscope frame (vignette), optional hair removal and colour constancy.

Pure functions over arrays; decoding and orientation are done before, by :mod:`wsm.io.images`.

Shapes: ``rgb`` is ``uint8`` ``(H, W, 3)``; masks are ``bool`` ``(H, W)``; sizes are ``(width, height)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "PreprocessConfig",
    "Preprocessed",
    "changes_pixels",
    "preprocess",
    "remove_hair",
    "shades_of_grey",
    "to_working_size",
    "vignette_mask",
]


@dataclass(frozen=True)
class PreprocessConfig:
    working_size: int = 512  # side of the square image every later stage sees (the classifier's input size)
    vignette: bool = True  # find the dark dermoscope frame and mark it invalid
    vignette_threshold: int = 45  # a pixel is frame-dark when its brightest channel (after a median blur) is below this
    vignette_min_radius: float = 0.25  # the frame's inner circle must have a radius >= this x the shorter side
    vignette_max_centre_offset: float = 0.2  # ... and a centre within this x the shorter side of the image centre
    vignette_max_residual: float = 0.06  # ... and fit the frame's inner edge to within this x its radius (median)
    vignette_margin: float = 0.015  # widen the frame inwards by this x the shorter side (its blurred edge)
    hair_removal: bool = False  # DullRazor-style hair removal (black-hat + inpainting); for hairy images
    hair_kernel: float = 0.03  # black-hat structuring element size, x the shorter side (wider than a hair)
    hair_threshold: int = 12  # black-hat response (grey levels) above which a pixel is hair
    hair_inpaint_radius: int = 5  # cv2.inpaint neighbourhood radius in pixels
    colour_constancy: bool = False  # shades-of-grey white balance, estimated on the valid (non-frame) pixels
    colour_constancy_p: int = 6  # Minkowski norm of shades of grey (1 = grey world, large = max-RGB)


def changes_pixels(cfg: PreprocessConfig) -> bool:
    """Whether preprocessing alters the image's pixels (hair removal, colour constancy), beyond resizing: the
    networks must then learn on images preprocessed the same way as those they will see."""
    return cfg.hair_removal or cfg.colour_constancy


class Preprocessed(NamedTuple):
    image: np.ndarray  # uint8 (S, S, 3): the working image
    valid_mask: np.ndarray  # bool (S, S): True where the pixel shows skin (not the dermoscope frame)
    original_size: tuple[int, int]  # (width, height) of the input, to map label maps back
    detail: np.ndarray | None = None  # uint8 (h, w, 3): the input kept larger, to crop from (wsm.stages.cascade)
    placement: tuple[int, int, int, int] | None = None  # a crop's x0, y0, x1, y1 in the input's pixels
    whole_view: np.ndarray | None = None  # float32 (S, S): a crop's region in the whole image's prior map


def check_rgb(rgb: np.ndarray, name: str = "rgb") -> np.ndarray:
    """Return ``rgb`` if it is a ``uint8`` ``(H, W, 3)`` array, else raise a ValueError saying what it got."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"shape {getattr(rgb, 'shape', None)} dtype {getattr(rgb, 'dtype', type(rgb).__name__)}"
        raise ValueError(
            f"{name} must be a uint8 array of shape (H, W, 3) in RGB order, got {got}; "
            "decode files with wsm.io.images.read_image"
        )
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels, got shape {rgb.shape}")
    return rgb


def check_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    """Return ``mask`` as bool if it is 2-D with ``shape``, else raise a ValueError saying what it got."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the image's H, W), got {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"{name} must be a bool array, got dtype {mask.dtype}; use e.g. prob > 0.5 or mask > 128")
    return mask


def check_prob(prob: np.ndarray, name: str = "prob", shape: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``prob`` as float32 if it is a finite 2-D map within [0, 1] (a 1e-4 float slack is clipped)."""
    prob = np.asarray(prob)
    if prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"{name} must be a 2-D float array (H, W), got shape {prob.shape} dtype {prob.dtype}")
    if shape is not None and prob.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the image's H, W), got {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(prob.min()), float(prob.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} must lie within [0, 1], got values in [{lo:.4g}, {hi:.4g}]; apply a sigmoid/softmax")
    return np.clip(prob, 0.0, 1.0).astype(np.float32, copy=False)


def _disc(radius: int) -> np.ndarray:
    radius = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def to_working_size(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to a ``size`` x ``size`` square (area averaging when shrinking, bicubic when enlarging).

    The aspect ratio is not kept, on purpose: the classifier, the CAM and the segmentation prior all want a square
    input, and every map made at the working size goes back through ``wsm.stages.refine.to_original_size``, which
    undoes the stretch exactly. Letterboxing instead would spend working pixels on padding that every stage would
    then have to mask. Keep ``(width, height)`` of the input (``Preprocessed.original_size``) to map back.
    """
    rgb = check_rgb(rgb)
    size = int(size)
    if size < 2:
        raise ValueError(f"size must be at least 2 pixels, got {size}")
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb.copy()
    interp = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, (size, size), interpolation=interp))


def _border_strips(dark: np.ndarray, slack: int, fill: float = 0.98) -> np.ndarray:
    """Whole rows/columns at the image edges that are (almost) all dark: letterbox bars, always frame.

    A bar may start up to ``slack`` pixels in from the edge (resized or re-cropped images often carry a line of
    bright pixels on the outermost row); the slack pixels go with the bar.
    """
    out = np.zeros_like(dark)
    h, w = dark.shape
    for profile, length, axis in ((dark.mean(axis=1), h, 0), (dark.mean(axis=0), w, 1)):
        for forward in (True, False):
            seq = profile if forward else profile[::-1]
            start = next((i for i in range(min(slack + 1, length)) if seq[i] >= fill), None)
            if start is None:
                continue
            end = start
            while end < length // 3 and seq[end] >= fill:
                end += 1
            sl = slice(0, end) if forward else slice(length - end, length)
            if axis == 0:
                out[sl, :] = True
            else:
                out[:, sl] = True
    return out


def _fit_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (Kasa) circle through ``(N, 2)`` x, y points: returns (cx, cy, r)."""
    x, y = points[:, 0], points[:, 1]
    a = np.column_stack([x, y, np.ones_like(x)])
    b = x * x + y * y
    (c0, c1, c2), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = c0 / 2.0, c1 / 2.0
    return float(cx), float(cy), float(np.sqrt(max(c2 + cx * cx + cy * cy, 0.0)))


def vignette_mask(rgb: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """The dark dermoscope frame: ``bool`` ``(H, W)``, True on frame pixels (to exclude from every stage).

    Heuristic, in order:

    1. A pixel is dark when its brightest channel, after a small median blur, is below ``vignette_threshold``:
       the frame is black in every channel, while even very dark lesions keep some red.
    2. Candidates are dark regions connected to the image border (within 1% of the shorter side of it); whole
       dark rows/columns at the edges (letterbox bars) are frame outright.
    3. Plausibility: a dermoscope frame is the outside of a circle roughly centred on the image (in cropped images,
       only its corners are left, as separate pieces). A circle is fitted to the inner edge of all candidates
       (edge pixels not on the image border), trimmed twice to ignore a lesion touching the frame. It is accepted
       when its radius is at least ``vignette_min_radius`` x the shorter side, its centre is within
       ``vignette_max_centre_offset`` x the shorter side of the image centre, and the median edge residual is at
       most ``vignette_max_residual`` x the radius. A dark lesion touching one border has an inner edge that is
       nowhere near such a circle, so it is left alone.
    4. The frame is the candidate pixels outside that circle, plus the pixels there darker than twice the threshold
       (thin parts the blur erased), widened by ``vignette_margin`` (the frame's blurred edge is darker than
       skin and would otherwise read as lesion).

    When in doubt there is no frame: a missed frame costs uncertain pixels later, a false one deletes lesion.
    """
    rgb = check_rgb(rgb)
    h, w = rgb.shape[:2]
    short = min(h, w)
    k = max(3, (short // 100) | 1)
    brightest = cv2.medianBlur(np.ascontiguousarray(rgb.max(axis=2)), k)
    dark = brightest < cfg.vignette_threshold
    if not dark.any():
        return np.zeros((h, w), dtype=bool)

    slack = max(1, int(round(0.01 * short)))  # "touching the border" allows this many pixels of gap
    strips = _border_strips(dark, slack)
    labels, _ = ndimage.label(dark)
    band = np.ones((h, w), dtype=bool)
    band[slack:-slack, slack:-slack] = False
    border_labels = np.unique(labels[band])
    border_labels = border_labels[border_labels > 0]
    candidate = np.isin(labels, border_labels) & ~strips
    frame = strips.copy()
    margin = max(2, int(round(cfg.vignette_margin * short))) if cfg.vignette_margin > 0 else 0

    if candidate.sum() >= 0.002 * h * w:
        # inner edge: candidate pixels with a non-candidate 4-neighbour, not on the image (or strip) border
        eroded = cv2.erode(candidate.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        edge = candidate & ~eroded.astype(bool)
        inner = edge & ~band
        inner &= ~cv2.dilate(strips.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ys, xs = np.nonzero(inner)
        if len(xs) >= 20:
            pts = np.column_stack([xs, ys]).astype(np.float64)
            cx, cy, r = _fit_circle(pts)
            for _ in range(2):  # trim: refit on the 70% of edge points closest to the circle
                resid = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
                keep = resid <= np.quantile(resid, 0.7)
                if keep.sum() < 20:
                    break
                cx, cy, r = _fit_circle(pts[keep])
            resid = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
            plausible = (
                r >= cfg.vignette_min_radius * short
                and np.hypot(cx - (w - 1) / 2, cy - (h - 1) / 2) <= cfg.vignette_max_centre_offset * short
                and np.median(resid) <= cfg.vignette_max_residual * r
            )
            if plausible:
                yy, xx = np.mgrid[0:h, 0:w]
                outside = np.hypot(xx - cx, yy - cy) >= r
                # outside the circle the darkness test is relaxed (no blur, twice the threshold): where the circle
                # nearly touches the border the frame is a few pixels thin and the median blur erases it
                frame |= outside & (candidate | (rgb.max(axis=2) < 2 * cfg.vignette_threshold))
    if margin > 0 and frame.any():
        frame = cv2.dilate(frame.astype(np.uint8), _disc(margin)).astype(bool)
    return frame


def remove_hair(rgb: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """DullRazor (Lee et al. 1997) in its common OpenCV form: dark thin hairs found by a morphological black-hat
    (closing minus image) on the grey image, then painted over from their surroundings (Telea inpainting).

    The structuring element (``hair_kernel`` x the shorter side) is wider than a hair and narrower than a lesion,
    so lesions survive; returns a new ``uint8`` ``(H, W, 3)`` image.
    """
    rgb = check_rgb(rgb)
    short = min(rgb.shape[:2])
    ksize = max(3, int(round(cfg.hair_kernel * short)) | 1)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ksize, ksize))
    blackhat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel)
    hair = (blackhat > cfg.hair_threshold).astype(np.uint8)
    if not hair.any():
        return rgb.copy()
    hair = cv2.dilate(hair, np.ones((3, 3), np.uint8))
    return np.ascontiguousarray(cv2.inpaint(rgb, hair, cfg.hair_inpaint_radius, cv2.INPAINT_TELEA))


def shades_of_grey(rgb: np.ndarray, p: int = 6, mask: np.ndarray | None = None) -> np.ndarray:
    """Shades-of-grey colour constancy (Finlayson & Trezzi 2004; Barata et al. 2015 for dermoscopy).

    The illuminant of channel c is the Minkowski p-mean ``(mean I_c^p)^(1/p)`` over the pixels in ``mask``
    (all pixels when None; pass the valid mask so the black frame does not bias it). Each channel is scaled so
    that the illuminant becomes neutral grey with the same norm: ``I_c * 1 / (sqrt(3) e_c)`` with ``|e| = 1``.
    Returns a new ``uint8`` ``(H, W, 3)`` image.
    """
    rgb = np.ascontiguousarray(check_rgb(rgb))
    if p < 1:
        raise ValueError(f"p must be >= 1 (1 = grey world), got {p}")
    within = None if mask is None else check_mask(mask, rgb.shape[:2], "mask").astype(np.uint8)
    # uint8 channels take 256 values: the p-means come from histograms and the gains from lookup tables
    # (the same numbers as computing on every pixel, several times faster)
    counts = np.stack([cv2.calcHist([rgb], [c], within, [256], [0, 256]).reshape(-1) for c in range(3)])  # (3, 256)
    if counts[0].sum() == 0:
        return rgb.copy()
    levels = np.arange(256) / 255.0
    illum = np.power(counts @ np.power(levels, p) / counts[0].sum(), 1.0 / p)
    norm = float(np.linalg.norm(illum))
    if norm <= 1e-8 or np.any(illum <= 1e-8):
        return rgb.copy()
    gain = 1.0 / (illum / norm * np.sqrt(3.0))
    tables = np.round(np.clip(levels[:, None] * gain * 255.0, 0, 255)).astype(np.uint8)   # (256, 3)
    return cv2.LUT(rgb, tables.reshape(256, 1, 3))


def _frame_at_working_size(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The frame found on the image as photographed (aspect kept, longer side = working size), then stretched to
    the square working size: a circular frame in a 4:3 photograph is an ellipse in the square image."""
    h, w = rgb.shape[:2]
    size = cfg.working_size
    if h == w:
        return vignette_mask(to_working_size(rgb, size), cfg)
    scale = size / max(h, w)
    photo_size = (max(2, round(w * scale)), max(2, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    frame = vignette_mask(np.ascontiguousarray(cv2.resize(rgb, photo_size, interpolation=interp)), cfg)
    return cv2.resize(frame.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)


def preprocess(rgb: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> Preprocessed:
    """Working-size image, its valid (non-frame) mask and the original size.

    Order: resize; find the frame on the raw colours (its threshold is defined on them) and at the photograph's
    aspect ratio (the frame is a circle there); remove hair; then colour constancy estimated on the valid pixels.
    Frame pixels keep their values; ``valid_mask`` says which pixels later stages may trust.
    """
    rgb = check_rgb(rgb)
    original_size = (int(rgb.shape[1]), int(rgb.shape[0]))
    image = to_working_size(rgb, cfg.working_size)
    valid = ~_frame_at_working_size(rgb, cfg) if cfg.vignette else np.ones(image.shape[:2], dtype=bool)
    if cfg.hair_removal:
        image = remove_hair(image, cfg)
    if cfg.colour_constancy:
        image = shades_of_grey(image, cfg.colour_constancy_p, mask=valid if valid.any() else None)
    return Preprocessed(image=image, valid_mask=valid, original_size=original_size)
