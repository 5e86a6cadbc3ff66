"""Synthetic DATA folders for tests: real JPEGs, a real manifest, and optionally masks and a GT manifest.

    from datafactory import make_data
    root = make_data(tmp_path / "DATA", n_images=20, with_masks=True, seed=0)

Images are ISIC_0000000, ISIC_0000001, ... : a dark elliptical "lesion" on skin colour with a little noise,
in a few sizes between 64 and 200 px. The masks (0 / 255 PNGs, same size) are exactly the drawn ellipse.
Metadata is varied and realistic and a pure function of (index, seed). 50 images take well under a second.
"""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from archive_client.layout import DataLayout
from archive_client.manifest import DATA_MANIFEST_CORE, GT_MANIFEST, manifest_row
from wsm.io.tables import rows_to_table, write_table_atomic

SIZES = ((64, 64), (96, 72), (128, 96), (160, 120), (200, 150), (120, 160))
LICENSES = ("CC-0", "CC-BY", "CC-BY-NC")
ATTRIBUTIONS = (
    "Memorial Sloan Kettering Cancer Center",
    "Hospital Clínic de Barcelona",
    "ViDIR Group, Department of Dermatology, Medical University of Vienna",
    "Anonymous",
)
# (diagnosis_1, diagnosis_2, diagnosis_3, melanocytic)
DIAGNOSES = (
    ("Benign", "Benign melanocytic proliferations", "Nevus", True),
    ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis", False),
    ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive", True),
    ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ", True),
    ("Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma", False),
)
SITES = ("anterior torso", "posterior torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", None)
SKIN = ((224, 172, 150), (198, 134, 112), (236, 196, 170), (170, 110, 86))


def image_id(index: int) -> str:
    return f"ISIC_{index:07d}"


def split_of(index: int) -> str:
    """train / val / test in a 3:1:1 pattern."""
    return ("train", "train", "train", "val", "test")[index % 5]


def _draw(index: int, rng: random.Random) -> tuple[bytes, bytes, int, int]:
    """(jpeg bytes, mask png bytes, width, height) of one synthetic lesion image."""
    width, height = SIZES[index % len(SIZES)]
    skin = np.array(SKIN[rng.randrange(len(SKIN))], dtype=np.int16)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-8, 9, size=(height, width, 3), dtype=np.int16)
    pixels = np.clip(skin + noise, 0, 255).astype(np.uint8)
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    rx, ry = width * rng.uniform(0.12, 0.3), height * rng.uniform(0.12, 0.3)
    box = (round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    lesion = np.array((rng.randint(60, 110), rng.randint(35, 70), rng.randint(25, 55)), dtype=np.uint8)
    pixels[np.asarray(mask) > 0] = lesion
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels, "RGB").save(jpeg, format="JPEG", quality=90)
    mask.save(png, format="PNG")
    return jpeg.getvalue(), png.getvalue(), width, height


def _record(index: int, rng: random.Random, width: int, height: int) -> dict:
    """An archive image record (only what the manifest keeps) with varied metadata."""
    dermoscopic = rng.random() < 0.75
    dx1, dx2, dx3, melanocytic = DIAGNOSES[rng.randrange(len(DIAGNOSES))]
    acquisition = {"image_type": "dermoscopic" if dermoscopic else "clinical: close-up",
                   "pixels_x": width, "pixels_y": height}
    if dermoscopic:
        acquisition["dermoscopic_type"] = rng.choice(("contact polarized", "contact non-polarized",
                                                      "non-contact polarized"))
    clinical: dict = {"diagnosis_1": dx1, "diagnosis_2": dx2, "diagnosis_3": dx3, "melanocytic": melanocytic,
                      "lesion_id": f"IL_{rng.randrange(10**7):07d}", "patient_id": f"IP_{rng.randrange(10**7):07d}",
                      "diagnosis_confirm_type": "histopathology" if dx1 == "Malignant"
                      else rng.choice(("histopathology", "serial imaging showing no change",
                                       "single image expert consensus"))}
    if rng.random() < 0.9:
        clinical["age_approx"] = rng.randrange(15, 90, 5)
    if rng.random() < 0.9:
        clinical["sex"] = rng.choice(("male", "female"))
    site = rng.choice(SITES)
    if site is not None:
        clinical["anatom_site_general"] = site
    if not dermoscopic:
        clinical["clin_size_long_diam_mm"] = round(rng.uniform(2.0, 15.0), 1)
    return {
        "isic_id": image_id(index),
        "public": True,
        "copyright_license": LICENSES[rng.randrange(len(LICENSES))],
        "attribution": ATTRIBUTIONS[rng.randrange(len(ATTRIBUTIONS))],
        "metadata": {"acquisition": acquisition, "clinical": clinical},
    }


def make_data(root: Path | str, n_images: int = 20, with_masks: bool = True, seed: int = 0,
              challenge: str = "isic2018") -> Path:
    """Write a DATA folder at ``root`` with ``n_images`` images; return ``root`` as a Path.

    With masks, every image gets DATA/masks/<challenge>/ISIC_x_segmentation.png and a gt_manifest row
    (split from ``split_of``).
    """
    layout = DataLayout(Path(root))
    layout.images.mkdir(parents=True, exist_ok=True)
    rows, gt_rows = [], []
    for index in range(n_images):
        rng = random.Random(f"{seed}:{index}")
        jpeg, png, width, height = _draw(index, rng)
        record = _record(index, rng, width, height)
        path = layout.image_path(record["isic_id"], "jpg")
        path.write_bytes(jpeg)
        rows.append(manifest_row(record, file=path.relative_to(layout.root).as_posix(), nbytes=len(jpeg),
                                 sha256=hashlib.sha256(jpeg).hexdigest(), width=width, height=height,
                                 source_url=path.resolve().as_uri()))
        if with_masks:
            mask_path = layout.mask_path(record["isic_id"], challenge)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            mask_path.write_bytes(png)
            gt_rows.append({"isic_id": record["isic_id"], "challenge": challenge, "split": split_of(index),
                            "mask_file": mask_path.relative_to(layout.root).as_posix(),
                            "width": width, "height": height})
    write_table_atomic(rows_to_table(rows, DATA_MANIFEST_CORE), layout.manifest)
    if with_masks:
        write_table_atomic(rows_to_table(gt_rows, GT_MANIFEST), layout.gt_manifest)
    return layout.root
