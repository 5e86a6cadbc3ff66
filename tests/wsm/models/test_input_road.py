"""Train's evaluation shows a network exactly the tensor `wsm generate` would: the same file, through the same
preprocessing and resizes, gives the same input, bit for bit.

Generate's side is taken from generate's own code: the file prepared as its workers prepare it
(:func:`wsm.mapping.prepare` with the recipe's preprocessing) and handed to :meth:`wsm.mapping.MapModels.evidence`,
whose prior records the batch it is given. Train's side is :func:`wsm.train.evaluate.batched_predictions` with a
``predict`` that returns its batch."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from synthetic import synthetic_dermoscopy  # noqa: E402

from wsm.config.pipeline import load_pipeline  # noqa: E402
from wsm.config.recipe import build_recipe  # noqa: E402
from wsm.io.images import image_size  # noqa: E402
from wsm.mapping import MapModels, prepare  # noqa: E402
from wsm.models.inputs import resize_square  # noqa: E402
from wsm.train.evaluate import batched_predictions, evaluation_preprocess  # noqa: E402

# a network's size, and the profile of the default recipe whose generate would run it
SIZES = [(192, "cpu"), (384, "cuda")]


class _RecordingPrior(torch.nn.Module):
    """A 1-class segmenter that keeps the batches it is given and predicts background."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.zeros((x.shape[0], 1, *x.shape[2:])) + self.weight


def _generate_input(path, size: int, profile: str) -> torch.Tensor:
    """The tensor generate gives a ``size`` px prior for the file, with the default recipe of ``profile``."""
    recipe = build_recipe(load_pipeline("default", profile, [f"prior.size={size}"]))
    prior = _RecordingPrior()
    MapModels(recipe, prior=prior).evidence([prepare(path, recipe.preprocess).image])
    (batch,) = prior.seen
    return batch[0]


def _evaluation_inputs(data, files: list[str], size: int, guide_files=None) -> list[torch.Tensor]:
    """The tensors train's evaluation gives a ``size`` px network for ``files`` (relative to ``data``)."""
    return list(batched_predictions(lambda batch: batch, data, files, size, batch_size=2, guide_files=guide_files))


def _assert_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    diff = float((got - want).abs().max())
    assert torch.equal(got, want), f"{what}: train's evaluation input differs from generate's by up to {diff:.4g}"


@pytest.mark.parametrize("size, profile", SIZES)
def test_synthetic_image_same_input_as_generate(tmp_path, size, profile):
    """A small 3:2 photograph (enlarged to the working size) and a large JPEG (decoded at a reduced scale)."""
    small, _, _ = synthetic_dermoscopy(h=120, w=180, seed=1)
    large, _, _ = synthetic_dermoscopy(h=1400, w=2100, seed=2)
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(large).save(tmp_path / "large.jpg", quality=90)
    files = ["small.png", "large.jpg"]
    for file, got in zip(files, _evaluation_inputs(tmp_path, files, size)):
        _assert_same(got, _generate_input(tmp_path / file, size, profile), f"{file} at {size} px")


def test_guide_channel_is_the_guide_map_resized(tmp_path):
    """A guide map rides as a 4th channel, 0..255 -> 0..1, resized square to the network's size; the image
    channels are generate's."""
    rgb, disc, _ = synthetic_dermoscopy(h=100, w=150, seed=3)
    guide = np.where(disc, 255, 0).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "image.png")
    Image.fromarray(guide).save(tmp_path / "guide.png")
    (got,) = _evaluation_inputs(tmp_path, ["image.png"], 64, guide_files=["guide.png"])
    assert got.shape == (4, 64, 64)
    _assert_same(got[:3], _generate_input(tmp_path / "image.png", 64, "cpu"), "image channels")
    _assert_same(got[3], torch.from_numpy(resize_square(guide, 64).astype(np.float32) / 255.0), "guide channel")


def test_evaluation_preprocess_change_no_colour():
    """The pixels the networks learnt from: no colour constancy, no hair removal; a working size that holds
    the network."""
    for size in (64, 192, 256, 384, 512, 640):
        cfg = evaluation_preprocess(size)
        assert not cfg.colour_constancy and not cfg.hair_removal
        assert cfg.working_size >= size
    assert evaluation_preprocess(192).working_size == build_recipe(load_pipeline("default", "cpu")).preprocess.working_size
    assert evaluation_preprocess(384).working_size == build_recipe(load_pipeline("default", "cuda")).preprocess.working_size


def _first(folder, rows: int = 2) -> list[str]:
    pairs = folder / "pairs.csv"
    if not pairs.exists():
        pytest.skip(f"needs {folder} (real images; only on the project's machines)")
    return pd.read_csv(pairs)["image"].head(rows).tolist()


@pytest.mark.parametrize("size, profile", SIZES)
@pytest.mark.parametrize("dataset, kind", [("isic2018-task1-512", "512 px crop"),
                                           ("ph2-half", "PH2 whole frame"),
                                           ("clinical-dermis", "clinical photograph")])
def test_real_images_same_input_as_generate(shared_data, dataset, kind, size, profile):
    folder = shared_data / dataset
    files = _first(folder)
    for file, got in zip(files, _evaluation_inputs(folder, files, size)):
        what = f"{kind} {file} ({'x'.join(map(str, image_size(folder / file)))}) at {size} px"
        _assert_same(got, _generate_input(folder / file, size, profile), what)
