"""`wsm train --arch NAME` end to end for the seed systems' architectures (U-Net+ASPP, SegNet, ConvMixer), on tiny
DATA folders with tiny encoders: binary, multi-class and multi-label (attribute) runs, the saved network, and the
one-line errors for an encoder of the wrong kind and for ImageNet weights that do not exist."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from wsm.cli import main  # noqa: E402
from wsm.models.segmentation import ARCHITECTURES, predict_prob  # noqa: E402
from wsm.train import load_model  # noqa: E402

torch.set_num_threads(1)

TINY = ["--no-pretrained", "--size", "64", "--batch-size", "8", "--lr", "0.01", "--epochs", "1"]
# each architecture with a tiny encoder of the kind it takes
SEED_ARCHITECTURES = {"unet_aspp": "test_resnet", "segnet": "segnet_tiny", "convmixer": "convmixer_16_2"}


def _train(*args) -> int:
    return main(["-q", "train", *TINY, *args])


@pytest.mark.parametrize("arch", sorted(SEED_ARCHITECTURES))
def test_binary_run(data, tmp_path, arch):
    out = tmp_path / arch
    encoder = SEED_ARCHITECTURES[arch]
    assert _train("--data", str(data), "--out", str(out), "--arch", arch, "--encoder", encoder) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 24 and metrics["n_eval"] == 8 and np.isfinite(metrics["train_losses"][0])
    assert f"--arch {arch} --encoder {encoder}" in metrics["command"]
    m = metrics["metrics"]
    assert m["n_images"] == 8 and 0 <= m["threshold_jaccard"] <= m["jaccard"] <= 1
    model, config = load_model(out)                          # rebuilt from config.json, weights loaded
    assert isinstance(model, ARCHITECTURES[arch]) and config["options"]["encoder"] == encoder
    assert predict_prob(model, torch.randn(2, 3, 64, 64)).shape == (2, 64, 64)


def test_multiclass_run(data, class_maps, tmp_path):
    out = tmp_path / "segnet3"
    assert _train("--data", str(data), "--out", str(out), "--labels", str(class_maps), "--num-classes", "3",
                  "--arch", "segnet", "--encoder", "segnet_tiny") == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["n_images"] == 8 and {"jaccard_0", "jaccard_1", "jaccard_2", "mean_jaccard"} <= set(m)
    model, _ = load_model(out)
    assert predict_prob(model, torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_wrong_encoder_kind_and_missing_weights_are_one_line_errors(data, tmp_path, capsys):
    # --arch segnet with a timm encoder: the valid SegNet encoders are named
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "a"), "--arch", "segnet",
                 "--encoder", "tf_efficientnet_lite0", "--no-pretrained", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "unknown SegNet encoder 'tf_efficientnet_lite0'" in err and "segnet_small" in err
    assert len(err.strip().splitlines()) == 1
    # ImageNet weights asked for where none exist: say so, and what to do
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "b"), "--arch", "convmixer",
                 "--encoder", "convmixer_16_2", "--size", "64", "--pretrained"]) == 2
    err = capsys.readouterr().err
    assert "no ImageNet weights for the ConvMixer encoder 'convmixer_16_2'" in err and "--no-pretrained" in err


def test_each_architecture_starts_with_an_encoder_it_can_build(data, tmp_path, capsys):
    """--arch segnet alone runs (segnet_small, from random weights, said so); a ConvMixer named without
    --pretrained starts from random weights too."""
    for arch, extra in (("segnet", []), ("convmixer", ["--encoder", "convmixer_16_2"])):
        out = tmp_path / arch
        assert main(["train", "--data", str(data), "--out", str(out), "--arch", arch, *extra, "--size", "64",
                     "--epochs", "1", "--eval-split", "none"]) == 0
        err = capsys.readouterr().err
        encoder = extra[-1] if extra else "segnet_small"
        assert f"{encoder} has no ImageNet weights; it starts from random weights" in err
        options = json.loads((out / "config.json").read_text())["options"]
        assert (options["encoder"], options["pretrained"]) == (encoder, False)


@pytest.mark.slow
def test_mbdcnn_with_segnet(data, tmp_path):
    """MB-DCNN's coarse and enhanced networks as SegNets: the E-layer joins the only level SegNet's decoder reads."""
    out = tmp_path / "mbdcnn"
    assert _train("--data", str(data), "--out", str(out), "--pipeline", "mbdcnn", "--arch", "segnet", "--encoder",
                  "segnet_tiny", "--set", "classifier.arch=test_resnet") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["n_images"] == 8 and set(metrics["train_losses"]) == {"coarse", "classifier", "enhanced"}
    config = json.loads((out / "config.json").read_text())["recipe"]
    assert config["coarse"]["arch"] == config["enhanced"]["arch"] == "segnet"


@pytest.fixture(scope="module")
def attribute_data(tmp_path_factory):
    from attribute_factory import make_attribute_data

    return make_attribute_data(tmp_path_factory.mktemp("attributes") / "DATA", n_images=12)


@pytest.mark.parametrize("arch", sorted(SEED_ARCHITECTURES))
def test_multi_label_attribute_run(attribute_data, tmp_path, arch):
    """One sigmoid per dermoscopic attribute (ISIC 2018 Task 2), plus the lesion: `--task attributes`."""
    out = tmp_path / arch
    assert _train("--task", "attributes", "--with-lesion", "--data", str(attribute_data), "--out", str(out),
                  "--arch", arch, "--encoder", SEED_ARCHITECTURES[arch]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 8 and metrics["n_eval"] == 2 and np.isfinite(metrics["train_losses"][0])
    assert len(list((out / "predictions").glob("*_attribute_*.png"))) == 2 * 5
    model, config = load_model(out)      # rebuilt with one output channel per attribute and the lesion
    assert config["channels"] == ["globules", "milia_like_cyst", "negative_network", "pigment_network", "streaks",
                                  "lesion"]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 6, 64, 64)
