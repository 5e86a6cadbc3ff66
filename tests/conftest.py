"""Shared fixtures: the embedded sample, ../shared/data, a DATA folder served by the archive emulator."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
