"""MB-DCNN: the E-layer fusion network's shapes and gradients, the recipe, and a 1-epoch run end to end."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from wsm.cli import main  # noqa: E402
from wsm.config.pipeline import PipelineError  # noqa: E402
from wsm.models.segmentation import ARCHITECTURES  # noqa: E402
from wsm.train.mbdcnn import EnhancedSegmenter, create_enhanced_segmenter, load_mbdcnn_recipe  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_enhanced_network_shapes_and_gradients(arch):
    torch.manual_seed(0)
    encoder = {"segnet": "segnet_tiny", "convmixer": "convmixer_16_2"}.get(arch, "test_resnet")
    model = create_enhanced_segmenter(arch, encoder)
    assert isinstance(model, EnhancedSegmenter) and model.in_chans == 4
    levels = len(model.base.encoder.feature_info.channels())
    read = getattr(model.base.decoder, "used_features", range(levels))    # the levels the decoder reads
    assert len(model.e_layers) == len(read)
    x = torch.randn(2, 4, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.e_layers.parameters())
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 4, 48, 64))


def test_the_cam_changes_the_output():
    torch.manual_seed(0)
    model = create_enhanced_segmenter("unet", "test_resnet").eval()
    x = torch.randn(1, 4, 64, 64)
    y = x.clone()
    y[:, 3] = torch.rand(64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(y))
        torch.testing.assert_close(model(x), model(x.clone()))


def test_mask_guided_classifier_starts_from_the_rgb_mean():
    from wsm.models.classifier import create_classifier, first_conv

    torch.manual_seed(0)
    _, conv = first_conv(create_classifier("test_resnet", 4, in_chans=4))
    assert conv.in_channels == 4
    torch.testing.assert_close(conv.weight[:, 3], conv.weight[:, :3].mean(dim=1))


def test_recipe_file_device_overrides_and_flags():
    recipe, resolved = load_mbdcnn_recipe("mbdcnn")
    assert recipe.loss == "hybrid" and recipe.size == 192 and recipe.coarse.arch == "unet"
    assert set(recipe.classes) == {"melanoma", "nevus", "seborrheic_keratosis", "other"}
    cuda, _ = load_mbdcnn_recipe("mbdcnn", device="cuda")
    assert cuda.size == 384 and cuda.enhanced.arch == "deeplabv3plus"
    assert cuda.classifier.arch == "tf_efficientnet_lite2" and recipe.classifier.pretrained
    tiny, _ = load_mbdcnn_recipe("mbdcnn", overrides=("classifier.arch=test_resnet", "cam.flip_tta=false"),
                                 given={"epochs": 1, "encoder": "test_resnet", "size": 64, "pretrained": False})
    assert tiny.classifier.arch == "test_resnet" and not tiny.cam.flip_tta and tiny.size == 64
    assert not (tiny.coarse.pretrained or tiny.classifier.pretrained or tiny.enhanced.pretrained)
    assert tiny.coarse.epochs == tiny.classifier.epochs == tiny.enhanced.epochs == 1
    assert tiny.coarse.encoder == tiny.enhanced.encoder == "test_resnet"
    with pytest.raises(PipelineError, match="mbdcnn"):
        load_mbdcnn_recipe("default")
    with pytest.raises(PipelineError, match="unknown key"):
        load_mbdcnn_recipe("mbdcnn", overrides=("coarse.depth=3",))


def _mbdcnn(*args) -> int:
    return main(["-q", "train", "--pipeline", "mbdcnn", "--encoder", "test_resnet", "--no-pretrained", "--size", "64",
                 "--epochs", "1", "--batch-size", "8", "--set", "classifier.arch=test_resnet", *args])


def test_one_epoch_run_end_to_end(data, tmp_path):
    out = tmp_path / "run"
    assert _mbdcnn("--data", str(data), "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 24 and metrics["n_eval"] == 8 and metrics["n_classifier"] == 24
    assert metrics["metrics"]["n_images"] == 8 and metrics["coarse_metrics"]["n_images"] == 8
    assert set(metrics["train_losses"]) == {"coarse", "classifier", "enhanced"}
    assert all(np.isfinite(v[0]) for v in metrics["train_losses"].values())
    assert "--pipeline mbdcnn" in metrics["command"] and "--set classifier.arch=test_resnet" in metrics["command"]
    for stage in ("coarse", "classifier", "enhanced"):
        assert (out / stage / "model.safetensors").exists(), stage
    cams = sorted((out / "cams").glob("ISIC_*.png"))
    assert len(cams) == 32                              # 24 training + 8 evaluation images
    cam = np.asarray(Image.open(cams[0]))
    assert cam.shape == (64, 64) and cam.dtype == np.uint8
    assert len(list((out / "coarse_maps").glob("ISIC_*.png"))) == 32
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["classifier"]["arch"] == "test_resnet" and config["recipe"]["size"] == 64

    # a rerun resumes: it reuses every stage (nothing is trained again); with other settings it is refused
    assert _mbdcnn("--data", str(data), "--out", str(out), "--seed", "1") == 2
    stamp = (out / "cams" / cams[0].name).stat().st_mtime_ns
    assert _mbdcnn("--data", str(data), "--out", str(out)) == 0
    assert (out / "cams" / cams[0].name).stat().st_mtime_ns == stamp
    again = json.loads((out / "metrics.json").read_text())
    assert again["metrics"] == pytest.approx(metrics["metrics"])
