"""``[prior] members``: several priors trained with consecutive seeds and averaged, through fit, generate,
--from-bundle and --fine-tune (tiny models on a made-up DATA folder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wsm.cli import main

TINY = ["classifier.enabled=false", "prior.encoder=test_resnet", "prior.size=64", "prior.epochs=1",
        "prior.min_steps=0", "prior.batch_size=8", "prior.pretrained=false", "preprocess.working_size=96",
        "calibration.max_images=6", "crf.bilateral_sxy=4.0"]
TWO = [*TINY, "prior.members=2"]


def _sets(values) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def _provenance(bundle: Path) -> dict:
    return json.loads((bundle / "provenance.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from datafactory import make_data

    return make_data(tmp_path_factory.mktemp("members") / "DATA", n_images=16, with_masks=True, seed=0)


@pytest.fixture(scope="module")
def two(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "BUNDLE"
    assert main(["-q", "fit", "--data", str(data), "--out", str(out), *_sets(TWO)]) == 0
    return out


def test_mean_of_members_is_the_logit_of_the_mean_probability():
    from wsm.models.segmentation import averaged, members_of, predict_prob

    torch.manual_seed(0)
    first, second = torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Conv2d(3, 1, 3, padding=1)
    images = torch.randn(2, 3, 8, 8)
    both = averaged([first, second])
    assert averaged([first]) is first and members_of(first) == [first] and members_of(both) == [first, second]
    expected = (predict_prob(first, images) + predict_prob(second, images)) / 2
    np.testing.assert_allclose(predict_prob(both, images), expected, atol=1e-6)
    np.testing.assert_allclose(predict_prob(both, images, flip_tta=True),
                               (predict_prob(first, images, True) + predict_prob(second, images, True)) / 2,
                               atol=1e-6)


def test_members_must_be_a_small_positive_count():
    from wsm.config.pipeline import PipelineError, load_pipeline
    from wsm.config.recipe import build_recipe

    assert build_recipe(load_pipeline("default", "cpu", ("prior.members=3",))).prior.members == 3
    for bad in (0, 9):
        with pytest.raises(PipelineError, match="members"):
            build_recipe(load_pipeline("default", "cpu", (f"prior.members={bad}",)))


def test_two_members_train_with_their_own_seeds_and_generate_averages_them(data, two, tmp_path):
    from wsm.folders.bundle import load_bundle
    from wsm.models.segmentation import MeanOfMembers, predict_prob

    first, second = (two / "prior.safetensors").read_bytes(), (two / "prior-2.safetensors").read_bytes()
    assert first != second
    provenance = _provenance(two)
    assert len(provenance["prior_losses"]) == len(provenance["prior-2_losses"]) == 1
    assert set(provenance["initial_weights"]) >= {"prior", "prior-2"}
    bundle = load_bundle(two)
    assert set(bundle.model_hashes()) == {"prior.safetensors", "prior-2.safetensors"}
    prior = bundle.load_models().prior
    assert isinstance(prior, MeanOfMembers) and len(prior.members) == 2

    # member 1 is the prior a one-member fit trains: same seed, same images, same checkpoint folder
    one = tmp_path / "ONE"
    assert main(["-q", "fit", "--data", str(data), "--out", str(one), *_sets(TINY)]) == 0
    assert (one / "prior.safetensors").read_bytes() == first
    assert {p.name for p in (one / "work").iterdir()} < {p.name for p in (two / "work").iterdir()}
    single = load_bundle(one).load_models().prior
    images = torch.rand(2, 3, 64, 64)
    assert not np.allclose(predict_prob(prior, images), predict_prob(single, images))

    assert main(["-q", "generate", "--data", str(data), "--bundle", str(two), "--out", str(tmp_path / "WSM"),
                 "-j", "1"]) == 0
    manifest = pd.read_parquet(tmp_path / "WSM" / "manifest.parquet")
    assert set(manifest["status"]) == {"ok"} and len(manifest) == 16


def test_a_refit_with_one_member_leaves_no_second_prior_in_use(data, two, tmp_path):
    import shutil

    from wsm.folders.bundle import load_bundle

    out = tmp_path / "BUNDLE"
    shutil.copytree(two, out)
    assert main(["-q", "fit", "--data", str(data), "--out", str(out), *_sets(TINY)]) == 0
    assert not (out / "prior-2.safetensors").exists()
    assert set(load_bundle(out).model_hashes()) == {"prior.safetensors"}


def test_a_bundle_missing_a_member_is_refused(two, tmp_path):
    import shutil

    from wsm.folders.bundle import BundleError, load_bundle

    broken = tmp_path / "BROKEN"
    shutil.copytree(two, broken, ignore=shutil.ignore_patterns("work", "prior-2.safetensors"))
    with pytest.raises(BundleError, match="prior-2.safetensors"):
        load_bundle(broken).load_models()


def test_from_bundle_keeps_every_member_and_fine_tune_trains_each(data, two, tmp_path):
    import shutil

    from archive_client.importer import import_folders
    from wsm.io.hashing import sha256_file

    for kind in ("images", "masks"):                # a user's own 10 images and masks, ids of their own
        (tmp_path / kind).mkdir()
    for index, mask in enumerate(sorted((data / "masks").rglob("*_segmentation.png"))[:10]):
        image = next((data / "images").rglob(mask.name.replace("_segmentation.png", ".*")))
        shutil.copy(image, tmp_path / "images" / f"mine{index:03d}{image.suffix}")
        shutil.copy(mask, tmp_path / "masks" / f"mine{index:03d}_mask.png")
    mine = tmp_path / "MINE"
    assert import_folders(mine, tmp_path / "images", tmp_path / "masks", challenge="mine", progress=False).ok
    kept, tuned = tmp_path / "KEPT", tmp_path / "TUNED"
    assert main(["-q", "fit", "--data", str(mine), "--from-bundle", str(two), "--out", str(kept)]) == 0
    for name in ("prior.safetensors", "prior-2.safetensors"):
        assert (kept / name).read_bytes() == (two / name).read_bytes()
    assert set(_provenance(kept)["source_bundle"]["networks"]) == {"prior.safetensors", "prior-2.safetensors"}
    assert "prior-2_losses" in _provenance(kept)

    assert main(["-q", "fit", "--data", str(mine), "--from-bundle", str(two), "--fine-tune", "--out", str(tuned),
                 "--set", "fine_tune.epochs=1", "--set", "fine_tune.min_steps=0", "--set",
                 "fine_tune.batch_size=4"]) == 0
    started = _provenance(tuned)["initial_weights"]
    for member, name in (("prior", "prior.safetensors"), ("prior-2", "prior-2.safetensors")):
        assert (tuned / name).read_bytes() != (two / name).read_bytes()
        assert started[member]["fine_tuned_from"]["sha256"] == sha256_file(two / name)


def test_prior_run_refuses_several_members(data, tmp_path, capsys):
    run = tmp_path / "RUN"
    assert main(["-q", "train", "-d", str(data), "-o", str(run), "--encoder", "test_resnet", "--no-pretrained",
                 "--size", "64", "--batch-size", "8", "--epochs", "1"]) == 0
    assert main(["fit", "--data", str(data), "--prior-run", str(run), "--out", str(tmp_path / "B"),
                 *_sets([*TINY, "prior.members=2"])]) != 0
    err = capsys.readouterr().err
    assert "--prior-run" in err and "members" in err
    assert not (tmp_path / "B" / "provenance.json").exists()
