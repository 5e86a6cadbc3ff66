"""Classifier registry, 4-channel (mask-guided) input, CAM target layers, pretrained weights offline and from a file."""
from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from wsm.models import weights  # noqa: E402
from wsm.models.classifier import (  # noqa: E402
    CLASSIFIERS,
    DEFAULT_CPU_CLASSIFIER,
    DEFAULT_GPU_CLASSIFIER,
    PretrainedUnavailableError,
    create_classifier,
    expand_first_conv_to_4ch,
    first_conv,
    target_layer,
)

torch.set_num_threads(1)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        create_classifier("resnet9000", num_classes=4)
    assert "resnet9000" in str(err.value)
    for name in CLASSIFIERS:
        assert name in str(err.value)


def test_defaults_are_registered():
    assert DEFAULT_CPU_CLASSIFIER in CLASSIFIERS and DEFAULT_GPU_CLASSIFIER in CLASSIFIERS


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_registered_model_builds_and_has_a_4d_cam_layer(name):
    torch.manual_seed(0)
    model = create_classifier(name, num_classes=3).eval()
    layer = target_layer(model)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    assert logits.shape == (1, 3)
    assert len(seen) == 1 and len(seen[0]) == 4, f"{name}: CAM layer output {seen}"


def test_tiny_model_is_fast_on_cpu():
    model = create_classifier("test_resnet", num_classes=4)
    x = torch.randn(8, 3, 64, 64)
    model(x).sum().backward()  # warm-up
    start = time.perf_counter()
    model(x).sum().backward()
    assert time.perf_counter() - start < 1.0


def test_four_channel_input_starts_from_the_rgb_mean():
    torch.manual_seed(0)
    rgb = create_classifier("test_resnet", num_classes=4)
    torch.manual_seed(0)
    rgbm = create_classifier("test_resnet", num_classes=4, in_chans=4)
    _, conv3 = first_conv(rgb)
    name, conv4 = first_conv(rgbm)
    assert conv4.in_channels == 4 and name == "conv1.0"
    torch.testing.assert_close(conv4.weight[:, :3], conv3.weight)
    torch.testing.assert_close(conv4.weight[:, 3], conv3.weight.mean(dim=1))
    assert rgbm(torch.randn(2, 4, 64, 64)).shape == (2, 4)
    # the mask channel adds the response of the mean RGB filter
    x3 = torch.full((1, 3, 8, 8), 0.5)
    x4 = torch.cat([x3, torch.full((1, 1, 8, 8), 0.5)], dim=1)
    expected = conv3(x3) + torch.nn.functional.conv2d(x3[:, :1], conv3.weight.mean(1, keepdim=True),
                                                      stride=conv3.stride, padding=conv3.padding)
    torch.testing.assert_close(conv4(x4), expected)


def test_expand_refuses_a_model_that_is_not_rgb():
    model = create_classifier("test_resnet", num_classes=2, in_chans=4)
    with pytest.raises(ValueError, match="expected 3"):
        expand_first_conv_to_4ch(model)
    with pytest.raises(ValueError, match="in_chans"):
        create_classifier("test_resnet", num_classes=2, in_chans=2)


def test_pretrained_offline_fails_fast_with_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError) as err:
        create_classifier("test_resnet", num_classes=4, pretrained=True)
    assert time.perf_counter() - start < 5
    assert "--weights FILE" in str(err.value) and "hub is reachable" in str(err.value)


def test_pretrained_with_unreachable_hub_goes_offline_for_the_call(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "_hub_reachable", lambda timeout=3.0: False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError):
        create_classifier("test_resnet", num_classes=4, pretrained=True)
    assert time.perf_counter() - start < 5
    assert constants.HF_HUB_OFFLINE is False  # restored


def test_weights_file_loads_the_backbone(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=1000)  # an "ImageNet" checkpoint
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_classifier("test_resnet", num_classes=4, weights_file=path)
    torch.testing.assert_close(first_conv(model)[1].weight, first_conv(source)[1].weight)
    assert model.get_classifier().out_features == 4
    with pytest.raises(FileNotFoundError):
        create_classifier("test_resnet", num_classes=4, weights_file=tmp_path / "missing.safetensors")


def test_package_exports_load_lazily():
    import wsm.models as models

    assert models.create_classifier is create_classifier
    assert "cam_maps" in dir(models) and callable(models.cam_maps)
    with pytest.raises(AttributeError):
        models.no_such_name  # noqa: B018
