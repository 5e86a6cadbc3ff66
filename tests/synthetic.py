"""Synthetic dermoscopy images and small helpers shared by the stage tests."""
from pathlib import Path

import cv2
import numpy as np

ISIC2018 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2018-task1-512"
SKIN = (222, 178, 156)
LESION = (96, 60, 44)


def synthetic_dermoscopy(h=128, w=128, lesion_r=0.22, frame_r=0.48, seed=0):
    """Skin with a dark disc in the middle and a black circular dermoscope frame; returns (rgb, disc, frame)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2)
    disc = d <= lesion_r * min(h, w)
    frame = d > frame_r * min(h, w) if frame_r else np.zeros((h, w), bool)
    img = np.empty((h, w, 3), np.float32)
    img[:] = SKIN
    img[disc] = LESION
    img[frame] = (4, 3, 3)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), disc, frame


def jaccard(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
