"""Box prompting: the lesion's bounding box, found on the prior's map, handed to a box-prompted segmenter
(LiteMedSAM, :mod:`wsm.models.medsam`), whose mask replaces or mixes with the prior's map.

Pure functions over arrays at the working size. A good box is most of the work: the prior finds where the lesion
is even where its outline is poor (clinical photographs), and the segmenter draws the outline inside the box;
in further rounds it is prompted with the box of its own map (:func:`own_box`), which fits the lesion better.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the working image, x1/y1 exclusive


@dataclass(frozen=True)
class BoxPromptConfig:
    enabled: bool = False    # prompt the box segmenter with the box of the prior's lesion
    margin: float = 0.02     # the box grows by this x the working side on each side (5 px at 256)
    weight: float = 1.0      # of the segmenter's map in the mix with the prior's (1: the segmenter's alone)
    rounds: int = 1          # prompts per image: after the first, the box of the segmenter's own map (> 0.5)

    def __post_init__(self):
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"margin = {self.margin}: give a fraction of the working side in [0, 0.5)")
        if not 1 <= self.rounds <= 5:
            raise ValueError(f"rounds = {self.rounds}: give 1 (the prior's box only) to 5")
        if not 0 <= self.weight <= 1:
            raise ValueError(f"weight = {self.weight}: give a weight in [0, 1] (1: the box segmenter's "
                             "map alone; 0: the prior's)")


def lesion_box(prob: np.ndarray, valid_mask: np.ndarray, threshold: float, margin: float) -> Box | None:
    """The bounding box of the largest connected region of ``prob > threshold`` inside the valid pixels, grown by
    ``margin`` x the image side on each side and clipped to the image; None when no pixel passes."""
    mask = (prob > threshold) & valid_mask
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(mask, labels, index=range(1, count + 1))))
    rows, cols = ndimage.find_objects(labels)[largest - 1]
    height, width = prob.shape
    pad = margin * max(height, width)
    return (max(0.0, cols.start - pad), max(0.0, rows.start - pad),
            min(float(width), cols.stop + pad), min(float(height), rows.stop + pad))


def mix(prior: np.ndarray, boxed: np.ndarray, weight: float) -> np.ndarray:
    """The prior's map and the box segmenter's, mixed: ``weight`` of the segmenter's."""
    return ((1.0 - weight) * prior + weight * boxed).astype(np.float32)


def own_box(prob: np.ndarray, valid_mask: np.ndarray, config: BoxPromptConfig) -> Box | None:
    """The box of a further round: that of the segmenter's own map (> 0.5), grown by the same margin."""
    return lesion_box(prob, valid_mask, 0.5, config.margin)
