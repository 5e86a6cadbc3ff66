"""From a file or pixels to a network's input, the one road fit, generate, train and its evaluation all take:
decode and preprocess (:func:`preprocessed_file`), resize to a square (:func:`resize_square`), normalise with the
ISIC mean and std (:func:`normalize`) into a tensor (:func:`image_tensor`, :func:`to_batch`).

Generate goes in two steps (worker processes preprocess the file, the networks take a batch of working images:
:func:`preprocessed_file`, then :func:`to_batch`); :func:`network_input` is the same two steps for one file, so that
train's evaluation shows a network exactly the tensor generate would with the default recipe's CPU profile (with
the CUDA profile, generate preprocesses at 512 px, train's evaluation at 256 px for networks up to 256 px)."""
from __future__ import annotations

import cv2
import numpy as np

from wsm.stages.preprocess import Preprocessed

ISIC_MEAN = (0.6681, 0.5301, 0.5247)  # RGB, of images scaled to [0, 1]
ISIC_STD = (0.1337, 0.1480, 0.1595)


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32, (x / 255 - ISIC_MEAN) / ISIC_STD."""
    x = image.astype(np.float32) / 255.0
    return (x - np.asarray(ISIC_MEAN, np.float32)) / np.asarray(ISIC_STD, np.float32)


def denormalize(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize`: (H, W, 3) float -> (H, W, 3) uint8 RGB (rounded, clipped)."""
    x = np.asarray(image, np.float32) * np.asarray(ISIC_STD, np.float32) + np.asarray(ISIC_MEAN, np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def resize_square(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize to (size, size): area averaging when shrinking, bilinear when enlarging, nearest for masks."""
    h, w = array.shape[:2]
    if (h, w) == (size, size):
        return array
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interpolation)


def image_tensor(image: np.ndarray, guide: np.ndarray | None = None):
    """(H, W, 3) uint8 -> normalised (3, H, W) float32 tensor; with ``guide``, an (H, W) 8-bit map (a coarse mask, a
    class activation map) as a 4th channel scaled 0..255 -> 0..1. Every network input in wsm is made here."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(normalize(image).transpose(2, 0, 1)))
    if guide is None:
        return x
    return torch.cat([x, torch.from_numpy(guide.astype(np.float32) / 255.0)[None]])


def input_tensor(image: np.ndarray, size: int, guide: np.ndarray | None = None):
    """A working image (and an optional 8-bit guide map) -> the network's normalised (3 or 4, size, size) input:
    both resized square to ``size`` (:func:`resize_square`), then :func:`image_tensor`."""
    return image_tensor(resize_square(image, size), None if guide is None else resize_square(guide, size))


def to_batch(images: list[np.ndarray], size: int, device: str):
    """(S, S, 3) uint8 images -> a normalised (N, 3, size, size) float tensor on ``device``."""
    import torch

    return torch.stack([input_tensor(img, size) for img in images]).to(device)


def network_input(path, cfg, size: int, guide: np.ndarray | None = None, max_pixels: int | None = None):
    """An image file -> a network's (3 or 4, size, size) input, as generate makes it: the file decoded and
    preprocessed by ``cfg`` at its working size (:func:`preprocessed_file`), then resized to the network's ``size``
    and normalised (:func:`input_tensor`, what :func:`to_batch` does to each image), with ``guide`` (an 8-bit map)
    as a 4th channel when given."""
    return input_tensor(preprocessed_file(path, cfg, max_pixels).image, size, guide)


def preprocessed_file(path, cfg, max_pixels: int | None = None) -> Preprocessed:
    """An image file decoded and preprocessed as the networks see it, in generate and in training alike
    (``original_size`` is the decoded size: see wsm.mapping.prepare)."""
    from wsm.io.images import DEFAULT_MAX_PIXELS, read_image
    from wsm.stages.preprocess import preprocess

    # min_side lets a large JPEG decode at 1/2..1/8 scale
    return preprocess(read_image(path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, min_side=cfg.working_size), cfg)


def truth_at(path, size: int) -> np.ndarray:
    """An official 0/255 mask file as bool at the (size, size) working size (nearest neighbour)."""
    from wsm.io.images import read_mask

    return mask_at(read_mask(path), size)


def mask_at(mask: np.ndarray, size: int) -> np.ndarray:
    """An 8-bit mask (> 128 is lesion) as bool at the (size, size) working size (nearest neighbour)."""
    return resize_square(mask, size, nearest=True) > 128
