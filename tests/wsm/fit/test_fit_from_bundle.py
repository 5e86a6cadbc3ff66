"""`wsm fit --from-bundle`: a fitted bundle's networks, unchanged, recalibrated to a user's own masks (tiny models)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsm.cli import main

TINY = ["classifier.arch=test_resnet", "classifier.size=64", "classifier.epochs=1", "classifier.batch_size=8",
        "classifier.pretrained=false", "classifier.enabled=true", "prior.encoder=test_resnet", "prior.size=64",
        "prior.epochs=1", "prior.min_steps=0", "prior.batch_size=8", "prior.pretrained=false",
        "preprocess.working_size=96", "calibration.max_images=8", "crf.bilateral_sxy=4.0"]


def _sets(values) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, Path]:
    """A DATA folder (16 images: train, val and test masks, diagnoses) and the bundle fitted on it."""
    from datafactory import make_data

    root = tmp_path_factory.mktemp("source")
    data = make_data(root / "DATA", n_images=16, with_masks=True, seed=0)
    assert main(["-q", "fit", "--data", str(data), "--out", str(root / "BUNDLE"), *_sets(TINY)]) == 0
    return {"data": data, "bundle": root / "BUNDLE"}


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    """A user's own dataset imported with `wsm import`: 12 images (ids mine000...) whose masks are drawn tighter
    (the lesion eroded by 2 pixels), all in the train split."""
    import cv2

    from archive_client.importer import import_folders
    from datafactory import make_data

    root = tmp_path_factory.mktemp("user")
    drawn = make_data(root / "drawn", n_images=12, with_masks=True, seed=1)
    for kind in ("images", "masks"):
        (root / kind).mkdir()
    for index, mask in enumerate(sorted((drawn / "masks").rglob("*_segmentation.png"))):
        image = next((drawn / "images").rglob(mask.name.replace("_segmentation.png", ".*")))
        shutil.copy(image, root / "images" / f"mine{index:03d}{image.suffix}")
        tighter = cv2.erode(np.asarray(Image.open(mask)), np.ones((5, 5), np.uint8))
        Image.fromarray(tighter).save(root / "masks" / f"mine{index:03d}_mask.png")
    summary = import_folders(root / "DATA", root / "images", root / "masks", challenge="mine", progress=False)
    assert summary.ok and summary.masks_written == 12
    return root / "DATA"


def _provenance(bundle: Path) -> dict:
    return json.loads((bundle / "provenance.json").read_text())


def test_from_bundle_keeps_the_networks_and_calibrates_on_the_users_masks_only(source, user_data, tmp_path, capsys):
    out = tmp_path / "MINE"
    assert main(["fit", "--data", str(user_data), "--from-bundle", str(source["bundle"]), "--out", str(out)]) == 0
    assert f"the networks of {source['bundle']}, unchanged (no training)" in capsys.readouterr().err
    for name in ("classifier.safetensors", "prior.safetensors"):
        assert (out / name).read_bytes() == (source["bundle"] / name).read_bytes(), name
    assert not (out / "work").exists()                       # nothing trained

    before, after = _provenance(source["bundle"]), _provenance(out)
    mine = set(pd.read_parquet(user_data / "manifest.parquet")["isic_id"])
    calibrated = json.loads((out / "calibration.json").read_text())["isic_ids"]
    assert calibrated and set(calibrated) <= mine and after["calibration_mask_ids"] == calibrated
    assert after["source_bundle"]["path"] == str(source["bundle"].resolve())
    assert after["source_bundle"]["fit_mask_ids"] == before["fit_mask_ids"]
    assert set(after["source_bundle"]["networks"]) == {"classifier.safetensors", "prior.safetensors"}
    held_out = set(after["evaluation_ids"])                  # fit.eval_fraction still keeps some for the report
    assert held_out and held_out <= mine
    assert set(after["fit_mask_ids"]) == set(before["fit_mask_ids"]) | (mine - held_out)
    assert after["classes"] == before["classes"]

    # the maps of masks that calibrated the bundle never reach report's headline
    assert main(["-q", "generate", "--data", str(user_data), "--bundle", str(out), "--out", str(tmp_path / "WSM"),
                 "-j", "1"]) == 0
    assert main(["-q", "report", "--maps", str(tmp_path / "WSM"), "--data", str(user_data),
                 "--out", str(tmp_path / "REPORT")]) == 0
    counts = json.loads((tmp_path / "REPORT" / "metrics.json").read_text())["counts"]
    assert counts["headline"] == len(held_out) and counts["excluded_mask_used_in_fit"] == len(mine - held_out)


def test_from_bundle_with_exclude_calibrates_on_the_rest_only(source, user_data, tmp_path):
    mine = sorted(pd.read_parquet(user_data / "manifest.parquet")["isic_id"])
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("\n".join(mine[4:]) + "\n")
    out = tmp_path / "FOUR"
    assert main(["-q", "fit", "--data", str(user_data), "--from-bundle", str(source["bundle"]), "--out", str(out),
                 "--exclude", str(exclude), "--set", "calibration.offsets_px=[-1, 0]"]) == 0
    provenance = _provenance(out)
    assert provenance["calibration_mask_ids"] == mine[:4] and provenance["evaluation_ids"] == []
    assert not set(provenance["fit_mask_ids"]) & set(mine[4:])
    from wsm.folders.bundle import load_bundle

    assert load_bundle(out).recipe.calibration.offsets_px == (-1, 0)


def _fails(capsys, *args) -> str:
    assert main(["-q", "fit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_from_bundle_refuses_what_it_cannot_use(source, user_data, tmp_path, capsys):
    from wsm.errors import UserError
    from wsm.fit.source_bundle import SourceBundleError

    assert issubclass(SourceBundleError, UserError)
    data, bundle, out = str(user_data), str(source["bundle"]), str(tmp_path / "NEW")
    assert "not a fitted wsm bundle" in _fails(capsys, "--data", data, "--from-bundle", str(tmp_path / "nothing"),
                                               "--out", out)
    (tmp_path / "empty").mkdir()
    assert "give a folder written by `wsm fit`" in _fails(capsys, "--data", data, "--from-bundle",
                                                           str(tmp_path / "empty"), "--out", out)
    assert "another one" in _fails(capsys, "--data", data, "--from-bundle", bundle, "--out", bundle)
    assert "networks are the source bundle's" in _fails(capsys, "--data", data, "--from-bundle", bundle, "--out", out,
                                                          "--set", "prior.epochs=3")
    assert "leave out --pipeline" in _fails(capsys, "--data", data, "--from-bundle", bundle, "--out", out,
                                            "--pipeline", "classic")
    # every fitting-split mask of the source's own DATA fed the source: nothing is left to calibrate to
    err = _fails(capsys, "--data", str(source["data"]), "--from-bundle", bundle, "--out", out)
    assert "nothing to calibrate to" in err and "wsm import" in err
    assert not (tmp_path / "NEW").exists()


FINE_TUNE = ["fine_tune.epochs=1", "fine_tune.min_steps=0", "fine_tune.batch_size=4"]


def test_fine_tune_trains_the_prior_on_the_users_masks_and_calibrates_on_them(source, user_data, tmp_path, capsys):
    from wsm.io.hashing import sha256_file

    out = tmp_path / "TUNED"
    args = ["fit", "--data", str(user_data), "--from-bundle", str(source["bundle"]), "--fine-tune", "--out", str(out),
            *_sets(FINE_TUNE)]
    assert main(args) == 0
    assert "fine-tuned on" in capsys.readouterr().err
    assert (out / "classifier.safetensors").read_bytes() == (source["bundle"] / "classifier.safetensors").read_bytes()
    assert (out / "prior.safetensors").read_bytes() != (source["bundle"] / "prior.safetensors").read_bytes()

    provenance = _provenance(out)
    mine = set(pd.read_parquet(user_data / "manifest.parquet")["isic_id"])
    held_out = set(provenance["evaluation_ids"])
    tuned = mine - held_out
    assert held_out and held_out <= mine
    started = provenance["initial_weights"]["prior"]
    assert started["fine_tuned_from"]["sha256"] == sha256_file(source["bundle"] / "prior.safetensors")
    assert started["masks"] == len(tuned) and len(provenance["prior_losses"]) == 1
    assert set(provenance["calibration_mask_ids"]) == tuned
    assert set(provenance["fit_mask_ids"]) == set(_provenance(source["bundle"])["fit_mask_ids"]) | tuned

    # the maps of the masks it learnt from never reach report's headline
    assert main(["-q", "generate", "--data", str(user_data), "--bundle", str(out), "--out", str(tmp_path / "WSM"),
                 "-j", "1"]) == 0
    manifest = pd.read_parquet(tmp_path / "WSM" / "manifest.parquet").set_index("isic_id")
    assert set(manifest.index[manifest["mask_used_in_fit"]]) >= tuned
    assert not manifest.loc[sorted(held_out), "mask_used_in_fit"].any()

    # the same command again resumes from the finished checkpoint: the same prior, nothing retrained
    prior = (out / "prior.safetensors").read_bytes()
    assert main(["-q", *args]) == 0
    assert (out / "prior.safetensors").read_bytes() == prior


def test_fine_tune_never_learns_from_excluded_masks(source, user_data, tmp_path):
    mine = sorted(pd.read_parquet(user_data / "manifest.parquet")["isic_id"])
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("\n".join(mine[6:]) + "\n")
    out = tmp_path / "SIX"
    assert main(["-q", "fit", "--data", str(user_data), "--from-bundle", str(source["bundle"]), "--fine-tune",
                 "--exclude", str(exclude), "--out", str(out), *_sets(FINE_TUNE)]) == 0
    provenance = _provenance(out)
    assert provenance["initial_weights"]["prior"]["masks"] == 6
    assert provenance["calibration_mask_ids"] == mine[:6]
    assert not set(provenance["fit_mask_ids"]) & set(mine[6:])


def test_fine_tune_needs_a_source_bundle(user_data, tmp_path, capsys):
    err = _fails(capsys, "--data", str(user_data), "--fine-tune", "--out", str(tmp_path / "NEW"))
    assert "--from-bundle BUNDLE" in err
    assert not (tmp_path / "NEW").exists()
