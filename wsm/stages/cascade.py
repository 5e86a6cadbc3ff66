"""The cascade for whole frames: find the lesion on the whole image, crop round it from a larger copy of the image,
segment the crop at the working size, and put the crop's map back into the frame.

A small lesion in a whole dermoscopic frame (or an off-centre one) covers few of the working size's pixels; the
networks learnt lesions that fill much of a crop. In a crop grown round the lesion's box the lesion is seen at
the scale of the training crops and at more pixels, and the map comes back at that resolution. Outside the crop
the map is background: the crop holds the lesion the whole image showed, with room to spare.

Pure functions over arrays; regions are fractions of the image's sides, so one region names the same part of
the working image, of the larger copy and of the original file:

    region = crop_region(prior_prob, valid_mask, CascadeConfig(enabled=True))   # or None: no cascade
    crop_pre = crop(pre, region, preprocess_config)      # a Preprocessed of the crop with its placement (or None)
    label_map = to_frame(label_map_of_crop, crop_pre)    # the frame's label map at the original size
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from wsm.stages.box_prompt import lesion_box
from wsm.stages.preprocess import Preprocessed, PreprocessConfig, preprocess
from wsm.stages.refine import LABEL_BACKGROUND, to_original_size

Region = tuple[float, float, float, float]   # x0, y0, x1, y1 as fractions of the image's width and height
EPS = 1e-6                                   # a fraction x a side that misses a whole pixel by rounding error hits it
MIN_CROP_PX = 16                             # a crop narrower than this in the detail copy is not made


@dataclass(frozen=True)
class CascadeConfig:
    enabled: bool = False
    threshold: float = 0.5     # the lesion is where the prior's probability is above this (fixed, not the
                               # calibrated mask threshold: fit's quality model and generate must crop alike)
    max_area: float = 0.35     # a lesion whose box covers less than this fraction of the image is segmented again
    grow: float = 1.5          # the crop's sides, x the lesion box's (about its centre, clipped to the image)
    detail_side: int = 1024    # the image is kept at up to this shorter side to crop from

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold = {self.threshold}: give a probability in (0, 1)")
        if not 0 < self.max_area <= 1:
            raise ValueError(f"max_area = {self.max_area}: give a fraction of the image in (0, 1]")
        if not 1 <= self.grow <= 10:
            raise ValueError(f"grow = {self.grow}: give a factor in [1, 10] (the crop's sides x the lesion box's)")
        if not 64 <= self.detail_side <= 8192:
            raise ValueError(f"detail_side = {self.detail_side}: give a side in pixels in [64, 8192]")

    @property
    def detail_side_if_enabled(self) -> int:
        """The side of the detail copy an image needs (0: none)."""
        return self.detail_side if self.enabled else 0


def crop_region(prob: np.ndarray, valid_mask: np.ndarray, cfg: CascadeConfig) -> Region | None:
    """The crop round the largest lesion region of ``prob > cfg.threshold``: its box grown ``cfg.grow`` times about
    its centre and clipped to the image, as fractions of the sides. None when there is no lesion or its box covers
    ``cfg.max_area`` of the image or more (the whole image already shows it at a scale the networks know)."""
    box = lesion_box(prob, valid_mask, cfg.threshold, 0.0)
    if box is None:
        return None
    height, width = prob.shape
    x0, y0, x1, y1 = box
    if (x1 - x0) * (y1 - y0) >= cfg.max_area * width * height:
        return None
    half_w, half_h = cfg.grow * (x1 - x0) / 2, cfg.grow * (y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (max(0.0, (cx - half_w) / width), max(0.0, (cy - half_h) / height),
            min(1.0, (cx + half_w) / width), min(1.0, (cy + half_h) / height))


def pixel_box(region: Region, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The region in whole pixels of an image of ``size`` = (width, height), at least one pixel each way."""
    width, height = size
    x0 = min(width - 1, math.floor(region[0] * width + EPS))
    y0 = min(height - 1, math.floor(region[1] * height + EPS))
    x1 = max(x0 + 1, min(width, math.ceil(region[2] * width - EPS)))
    return x0, y0, x1, max(y0 + 1, min(height, math.ceil(region[3] * height - EPS)))


def detail_image(rgb: np.ndarray, side: int) -> np.ndarray:
    """The image shrunk (area averaging) so that its shorter side is at most ``side``; as it is when smaller."""
    height, width = rgb.shape[:2]
    scale = side / min(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def crop(pre: Preprocessed, region: Region, cfg: PreprocessConfig) -> Preprocessed | None:
    """The region of ``pre.detail`` preprocessed like a whole image, with the whole image's valid mask (a
    dermoscope's frame is found on the whole image, not on a part of it) and its placement in the original image;
    None when the region is under MIN_CROP_PX detail pixels either way (a speck, not a lesion to look at closer).
    The crop, its valid mask and its placement are all cut at the detail copy's whole pixels."""
    if pre.detail is None:
        raise ValueError("crop needs the image's detail copy (wsm.mapping.prepare with detail_side)")
    height, width = pre.detail.shape[:2]
    x0, y0, x1, y1 = pixel_box(region, (width, height))
    if min(x1 - x0, y1 - y0) < MIN_CROP_PX:
        return None
    cropped = preprocess(np.ascontiguousarray(pre.detail[y0:y1, x0:x1]), replace(cfg, vignette=False))
    valid = cv2.resize(pre.valid_mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    valid = cv2.resize(valid[y0:y1, x0:x1], cropped.valid_mask.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
    snapped = (x0 / width, y0 / height, x1 / width, y1 / height)
    return cropped._replace(valid_mask=valid > 0, original_size=pre.original_size,
                            placement=pixel_box(snapped, pre.original_size))


def view_of_crop(prob: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """The part of a whole image's map (at its working size) that the crop ``pre`` shows, resampled to the crop's
    working size (bilinear, pixel centres matched; the whole map for an image that is not a crop)."""
    if pre.placement is None:
        return prob
    width, height = pre.original_size
    x0, y0, x1, y1 = pre.placement
    out_h, out_w = pre.valid_mask.shape
    sx, sy = (x1 - x0) * prob.shape[1] / (width * out_w), (y1 - y0) * prob.shape[0] / (height * out_h)
    tx, ty = x0 * prob.shape[1] / width + 0.5 * sx - 0.5, y0 * prob.shape[0] / height + 0.5 * sy - 0.5
    warp = np.array([[sx, 0, tx], [0, sy, ty]], dtype=np.float64)
    return cv2.warpAffine(prob.astype(np.float32), warp, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _mask_box(pre: Preprocessed, mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of a crop's placement in a mask of the whole image, which may be stored at another
    size than the image (the placement is scaled)."""
    width, height = pre.original_size
    x0, y0, x1, y1 = pre.placement
    return (slice(y0 * mask.shape[0] // height, -(-y1 * mask.shape[0] // height)),
            slice(x0 * mask.shape[1] // width, -(-x1 * mask.shape[1] // width)))


def mask_in(pre: Preprocessed, mask: np.ndarray) -> np.ndarray:
    """The part of a whole-image mask that the crop ``pre`` shows (the whole mask for an image that is not a crop;
    lesion outside the crop: :func:`missed_lesion`)."""
    return mask if pre.placement is None else mask[_mask_box(pre, mask)]


def missed_lesion(pre: Preprocessed, mask: np.ndarray, size: int) -> float:
    """The lesion of a whole-image mask that lies outside the crop ``pre`` shows, in pixels of the crop at the
    ``size`` working size: the map marks it background, so a score of the map counts it as missed (0 for an image
    that is not a crop)."""
    if pre.placement is None:
        return 0.0
    rows, cols = _mask_box(pre, mask)
    lesion = mask > 128
    outside = int(lesion.sum()) - int(lesion[rows, cols].sum())
    crop_pixels = (rows.stop - rows.start) * (cols.stop - cols.start)
    return outside * size * size / max(1, crop_pixels)


def to_frame(label_map: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """A label map at the working size back at the original image's size; a crop's goes to its placement, with
    background round it."""
    if pre.placement is None:
        return to_original_size(label_map, pre.original_size)
    x0, y0, x1, y1 = pre.placement
    width, height = pre.original_size
    frame = np.full((height, width), LABEL_BACKGROUND, dtype=np.uint8)
    frame[y0:y1, x0:x1] = to_original_size(label_map, (x1 - x0, y1 - y0))
    return frame
