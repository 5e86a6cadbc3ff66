"""Dermoscopic-attribute masks made from real images, for tests of the ISIC 2018 Task 2 path.

No real Task 2 ground truth ships with wsm, so tests derive the five attribute masks from the embedded sample's real
images and real lesion masks: thresholded structures inside the lesion, each a plausible stand-in for its attribute
(they are not dermatologists' annotations):

    pigment_network    dark lines: black top-hat (disk 5) above its 80th percentile in the lesion
    globules           small dark blobs: black top-hat (disk 3) components of 4..120 px
    milia_like_cyst    small bright spots: white top-hat (disk 3) components of 4..120 px
    negative_network   bright lines: white top-hat (disk 5) above its 90th percentile (every third image only)
    streaks            the darker half of the lesion's border ring (every other image only)

As in the real data, several images have some attributes empty. ``write_attribute_folder`` writes the files as the
challenge's ground-truth zip holds them: ``ISIC_x_attribute_<name>.png``, 8-bit, 0 / 255, the image's size.

    from attribute_factory import write_attribute_folder
    ids = write_attribute_folder(tmp_path / "attributes", n_images=12)

``make_attribute_data`` builds a whole DATA folder (images, lesion masks, attribute masks, in train / val / test)
through `wsm import`, e.g. to serve with the archive emulator:

    from attribute_factory import make_attribute_data
    data = make_attribute_data(tmp_path / "DATA", n_images=12)
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import black_tophat, disk, white_tophat

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "wsm" / "sample"
ATTRIBUTE_NAMES = ("globules", "milia_like_cyst", "negative_network", "pigment_network", "streaks")


def _spots(response: np.ndarray, lesion: np.ndarray, lo: int = 4, hi: int = 120) -> np.ndarray:
    """Components of the strongest responses inside the lesion whose area is lo..hi pixels."""
    inside = response[lesion]
    if inside.size == 0:
        return np.zeros_like(lesion)
    strong = (response > max(np.percentile(inside, 97), 1)) & lesion
    labels, n = ndimage.label(strong)
    if n == 0:
        return strong
    areas = ndimage.sum(strong, labels, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, bool)
    keep[1:] = (areas >= lo) & (areas <= hi)
    return keep[labels]


def attribute_masks(rgb: np.ndarray, lesion: np.ndarray, index: int = 0) -> dict[str, np.ndarray]:
    """The five attribute masks (uint8, 0 / 255) of one image from its pixels and lesion mask (bool)."""
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    lesion = lesion.astype(bool)
    dark_wide, bright_wide = black_tophat(grey, disk(5)), white_tophat(grey, disk(5))
    dark_small, bright_small = black_tophat(grey, disk(3)), white_tophat(grey, disk(3))
    empty = np.zeros_like(lesion)

    def above(response: np.ndarray, q: float) -> np.ndarray:
        inside = response[lesion]
        return (response > np.percentile(inside, q)) & lesion if inside.size else empty

    ring = lesion & ~ndimage.binary_erosion(lesion, iterations=max(2, min(lesion.shape) // 40))
    masks = {
        "globules": _spots(dark_small, lesion),
        "milia_like_cyst": _spots(bright_small, lesion),
        "negative_network": above(bright_wide, 90) if index % 3 == 0 else empty,
        "pigment_network": above(dark_wide, 80),
        "streaks": (ring & (grey < np.median(grey[ring]))) if index % 2 == 0 and ring.any() else empty,
    }
    return {name: (mask.astype(np.uint8) * 255) for name, mask in masks.items()}


def sample_ids(n_images: int) -> list[str]:
    """The first n embedded sample images that have a lesion mask."""
    ids = sorted(p.name[: -len("_segmentation.png")] for p in (SAMPLE / "masks").glob("ISIC_*_segmentation.png"))
    if n_images > len(ids):
        raise ValueError(f"the embedded sample has {len(ids)} images with masks, asked for {n_images}")
    return ids[:n_images]


def write_attribute_folder(dest: Path, n_images: int = 12) -> list[str]:
    """ISIC_x_attribute_<name>.png for the first n sample images into dest; their ids."""
    dest.mkdir(parents=True, exist_ok=True)
    ids = sample_ids(n_images)
    for index, isic_id in enumerate(ids):
        rgb = np.asarray(Image.open(SAMPLE / "images" / f"{isic_id}.jpg").convert("RGB"))
        lesion = np.asarray(Image.open(SAMPLE / "masks" / f"{isic_id}_segmentation.png")) > 127
        for name, mask in attribute_masks(rgb, lesion, index).items():
            Image.fromarray(mask, mode="L").save(dest / f"{isic_id}_attribute_{name}.png")
    return ids


def make_attribute_data(root: Path | str, n_images: int = 12, challenge: str = "isic2018") -> Path:
    """A DATA folder at ``root`` holding the first n sample images, their lesion masks and their five attribute
    masks (write_attribute_folder), all filed under ``challenge``, in train / val / test by datafactory's 3:1:1
    pattern over the images' order, with the sample's diagnoses; built with `wsm import`. Returns ``root``."""
    from datafactory import split_of

    from archive_client.importer import import_folders

    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        attributes = Path(tmp) / "attributes"
        ids = write_attribute_folder(attributes, n_images)
        for index, isic_id in enumerate(ids):
            folder = Path(tmp) / split_of(index)        # images, lesion masks and attribute masks together
            folder.mkdir(exist_ok=True)
            shutil.copy(SAMPLE / "images" / f"{isic_id}.jpg", folder)
            shutil.copy(SAMPLE / "masks" / f"{isic_id}_segmentation.png", folder)
            for name in ATTRIBUTE_NAMES:
                shutil.copy(attributes / f"{isic_id}_attribute_{name}.png", folder)
        for split in sorted({split_of(index) for index in range(len(ids))}):
            folder = Path(tmp) / split
            summary = import_folders(root, images=folder, masks=folder, attributes=folder,
                                     labels=SAMPLE / "labels.csv", challenge=challenge, split=split, progress=False)
            if not summary.ok:
                raise RuntimeError("\n".join(summary.lines()))
    return root
