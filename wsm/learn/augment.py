"""The DeepHealth (UC12) augmentation recipe, as pure functions over arrays (numpy + OpenCV).

Training images are first resized to the square working size (wsm.learn.datasets does that), then :func:`augment`
applies, in the recipe's order::

    mirror (p 0.5)  flip (p 0.5)  rotate U(-180, 180)  additive Poisson noise, lambda U(0, 10)
    gamma U(0.5, 1.5)  Gaussian blur, sigma U(0, 0.8)  coarse dropout (image only)

plus, off by default, a zoom and an anisotropic stretch in the same warp as the rotation (``scale``, ``stretch``):
the dev set's square centre crops show lesions large and undistorted, while whole photographs squashed to the
square working size show them smaller and stretched; and a colour jitter after the gamma (``brightness``,
``contrast``, ``saturation`` factors, a ``hue_deg`` shift), as other cameras and lights show skin.

and :func:`wsm.models.inputs.normalize` maps the result to float32 with the ISIC mean and std. Geometric steps move the mask with the
image (nearest-neighbour for the mask, bilinear for the image, zero outside the rotated frame, which reads as the
dark dermoscope vignette); photometric steps and dropout touch the image only.

:data:`WEAK_MAP_AUGMENT` is the strong variant `wsm train --weak-augment strong` applies to the images whose labels
are weak maps: the segmenter recipe with zoom, stretch, colour jitter and more blur, so that a student cannot
just copy its teacher's answer on an image it has seen the same way (the consistency idea of FixMatch-style
self-training; the maps' labels move with every geometric step). `wsm train --augment-strength strong` applies it
to every image, which regularises a network trained on few masks.

Coarse dropout, as in ECVL ``CoarseDropout``: the image is tiled with square cells of side ``drop_size`` x the
image side (drawn per call), and each cell is zeroed with probability ``p`` (drawn per call); with probability
``per_channel`` the cells are drawn independently for each channel. DeepHealth used p U(0, 0.03), size U(0, 0.05),
per_channel 0.25 to train ISIC classifiers (:data:`CLASSIFIER_AUGMENT`) and p U(0, 0.3), size U(0.02, 0.05),
per_channel 0.5 for segmentation (:data:`SEGMENTER_AUGMENT`).

Everything random is drawn from the ``numpy.random.Generator`` passed in, so the output is a function of the
generator's state and the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

__all__ = [
    "AugmentConfig",
    "CLASSIFIER_AUGMENT",
    "COLOUR_JITTER",
    "SEGMENTER_AUGMENT",
    "AUGMENT_STRENGTHS",
    "WEAK_AUGMENTS",
    "WEAK_MAP_AUGMENT",
    "augment",
]



@dataclass(frozen=True)
class AugmentConfig:
    mirror_p: float = 0.5                              # probability of a left-right mirror
    flip_p: float = 0.5                                # probability of an up-down flip
    rotate_deg: tuple[float, float] = (-180.0, 180.0)  # rotation angle range, degrees, about the centre
    poisson_lambda: tuple[float, float] = (0.0, 10.0)  # range of the Poisson noise's lambda (grey levels)
    gamma: tuple[float, float] = (0.5, 1.5)            # range of gamma: x -> 255 (x / 255) ** gamma
    blur_sigma: tuple[float, float] = (0.0, 0.8)       # range of the Gaussian blur's sigma, pixels
    dropout_p: tuple[float, float] = (0.0, 0.03)       # range of the probability that a dropout cell is zeroed
    dropout_size: tuple[float, float] = (0.0, 0.05)    # range of the dropout cell side, fraction of the image side
    dropout_per_channel: float = 0.25                  # probability that dropout cells differ per channel
    scale: tuple[float, float] = (1.0, 1.0)            # range of a zoom about the centre (< 1 shows more around)
    stretch: float = 1.0                               # at most this much wider than high, or higher than wide
    brightness: tuple[float, float] = (1.0, 1.0)       # range of a factor on every channel
    contrast: tuple[float, float] = (1.0, 1.0)         # range of a factor on the distance to the mean grey level
    saturation: tuple[float, float] = (1.0, 1.0)       # range of a factor on the distance to each pixel's grey
    hue_deg: tuple[float, float] = (0.0, 0.0)          # range of a hue rotation, degrees


CLASSIFIER_AUGMENT = AugmentConfig()
SEGMENTER_AUGMENT = AugmentConfig(dropout_p=(0.0, 0.3), dropout_size=(0.02, 0.05), dropout_per_channel=0.5)
COLOUR_JITTER = {"brightness": (0.75, 1.25), "contrast": (0.75, 1.25), "saturation": (0.6, 1.4),
                 "hue_deg": (-10.0, 10.0)}   # other cameras and lights; `[prior] augment_colour` adds it too
WEAK_MAP_AUGMENT = replace(SEGMENTER_AUGMENT, scale=(0.75, 1.25), stretch=1.25, blur_sigma=(0.0, 1.5), **COLOUR_JITTER)
WEAK_AUGMENTS = {"same": None, "strong": WEAK_MAP_AUGMENT}   # `wsm train --weak-augment`: None = the same recipe
AUGMENT_STRENGTHS = {"standard": SEGMENTER_AUGMENT, "strong": WEAK_MAP_AUGMENT}   # `wsm train --augment-strength`


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _warp(array: np.ndarray, angle: float, scale_xy: tuple[float, float], interpolation: int) -> np.ndarray:
    """Scale x and y by ``scale_xy``, then rotate by ``angle`` degrees, both about the centre; zero outside."""
    h, w = array.shape[:2]
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    matrix = cv2.getRotationMatrix2D(tuple(centre), angle, 1.0)
    if scale_xy != (1.0, 1.0):
        linear = matrix[:, :2] @ np.diag(scale_xy)
        matrix = np.hstack([linear, (centre - linear @ centre)[:, None]])
    return cv2.warpAffine(array, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _coarse_dropout(rng: np.random.Generator, image: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    p = _uniform(rng, cfg.dropout_p)
    size = _uniform(rng, cfg.dropout_size)
    per_channel = rng.random() < cfg.dropout_per_channel
    if p <= 0:
        return image
    h, w, c = image.shape
    cell_h, cell_w = max(1, int(h * size)), max(1, int(w * size))
    grid = (-(-h // cell_h), -(-w // cell_w), c if per_channel else 1)
    keep = rng.random(grid) >= p
    keep = np.repeat(np.repeat(keep, cell_h, axis=0), cell_w, axis=1)[:h, :w]
    return image * keep.astype(image.dtype)


def _colour_jitter(rng: np.random.Generator, x: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast, saturation and hue of a float (H, W, 3) RGB image in 0..255; a range that is off
    draws nothing (:func:`_uniform`), so that the other recipes' draws stay the same."""
    brightness, contrast, saturation = (_uniform(rng, r) for r in (cfg.brightness, cfg.contrast, cfg.saturation))
    hue = _uniform(rng, cfg.hue_deg)
    if (brightness, contrast, saturation, hue) == (1.0, 1.0, 1.0, 0.0):
        return x
    x = x * brightness
    grey = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
    mean = grey.mean()
    x = (x - mean) * contrast + mean
    grey = (grey - mean) * contrast + mean              # the grey of the image above
    x = grey[..., None] + (x - grey[..., None]) * saturation
    if hue:
        hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return np.clip(x, 0, 255).astype(np.float32)


def augment(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray | None = None,
            cfg: AugmentConfig = CLASSIFIER_AUGMENT) -> tuple[np.ndarray, np.ndarray | None]:
    """One random draw of the recipe.

    Shape:
        image (H, W, 3) uint8 RGB, mask (H, W) any integer dtype or None -> the same shapes and dtypes.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    img = image
    msk = mask
    if rng.random() < cfg.mirror_p:
        img, msk = img[:, ::-1], None if msk is None else msk[:, ::-1]
    if rng.random() < cfg.flip_p:
        img, msk = img[::-1], None if msk is None else msk[::-1]
    img = np.ascontiguousarray(img)
    msk = None if msk is None else np.ascontiguousarray(msk)
    angle = _uniform(rng, cfg.rotate_deg)
    zoom = _uniform(rng, cfg.scale)
    # log-uniform, so that wider and higher are equally likely; no draw when off (earlier draws stay the same)
    stretch = float(np.exp(rng.uniform(-np.log(cfg.stretch), np.log(cfg.stretch)))) if cfg.stretch > 1 else 1.0
    if angle or zoom != 1.0 or stretch != 1.0:
        scale_xy = (zoom * np.sqrt(stretch), zoom / np.sqrt(stretch))
        img = _warp(img, angle, scale_xy, cv2.INTER_LINEAR)
        if msk is not None:
            msk = _warp(msk, angle, scale_xy, cv2.INTER_NEAREST)

    x = img.astype(np.float32)
    lam = _uniform(rng, cfg.poisson_lambda)
    if lam > 0:
        x += rng.poisson(lam, size=x.shape).astype(np.float32)
    x = np.clip(x, 0, 255)
    gamma = _uniform(rng, cfg.gamma)
    x = 255.0 * (x / 255.0) ** gamma
    x = _colour_jitter(rng, x, cfg)
    sigma = _uniform(rng, cfg.blur_sigma)
    if sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    img = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    img = _coarse_dropout(rng, img, cfg)
    return img, msk
