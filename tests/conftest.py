"""Shared fixtures: the embedded sample, ../shared/data, a DATA folder served by the archive emulator."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from paths import SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real ISIC images with masks); skipped where it is absent, as on a user's machine."""
    if not (SHARED_DATA / "isic2018-task1-512" / "pairs.csv").exists():
        pytest.skip(f"needs the real ISIC dev data at {SHARED_DATA} (only on the project's machines)")
    return SHARED_DATA


@pytest.fixture()
def served_data(tmp_path):
    """A synthetic DATA folder (30 images with masks) to serve with the emulator."""
    from datafactory import make_data

    root = tmp_path / "served"
    make_data(root, n_images=30, with_masks=True, seed=0)
    return root


@pytest.fixture()
def emulator(served_data):
    from archive_client.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(served_data, config=EmulatorConfig(seed=0)) as server:
        yield server


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic DATA folder: 40 images, 24 train, 8 val, 8 test (datafactory's 3:1:1 pattern), masks for all,
    diagnoses in the metadata (modules that need another DATA define their own ``data``)."""
    from datafactory import make_data

    return make_data(tmp_path_factory.mktemp("data") / "DATA", n_images=40, with_masks=True, seed=0)


@pytest.fixture(scope="module")
def class_maps(data, tmp_path_factory):
    """Synthetic 3-class maps of ``data``: 0 background, 1 left half of the lesion, 2 right half, 255 on its edge."""
    import cv2
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("classes")
    for mask_path in sorted((data / "masks" / "isic2018").glob("*.png")):
        mask = np.asarray(Image.open(mask_path)) > 128
        xs = np.nonzero(mask.any(axis=0))[0]
        middle = (xs.min() + xs.max()) // 2
        label = np.zeros(mask.shape, np.uint8)
        label[mask] = 1
        label[:, middle:][mask[:, middle:]] = 2
        band = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        label[band] = 255
        Image.fromarray(label).save(folder / mask_path.name.replace("_segmentation", ""))
    return folder


@pytest.fixture(scope="module")
def classic_maps(tmp_path_factory) -> dict[str, Path]:
    """DATA (10 images with masks), a BUNDLE of the no-learning classic pipeline, and the WSM folder it made."""
    from datafactory import make_data
    from wsm.fit import FitOptions, fit
    from wsm.generate import GenerateOptions, generate

    root = tmp_path_factory.mktemp("classic")
    data = make_data(root / "DATA", n_images=10, with_masks=True, seed=0)
    fit(FitOptions(data=data, out=root / "BUNDLE", pipeline="classic", progress=False))
    generate(GenerateOptions(out=root / "WSM", bundle=root / "BUNDLE", data=data, workers=1, progress=False))
    return {"data": data, "bundle": root / "BUNDLE", "wsm": root / "WSM"}
