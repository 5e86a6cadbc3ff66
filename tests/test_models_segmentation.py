"""Segmentation networks: one shared contract for every registered architecture, on 64 px CPU tensors."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from wsm.models.classifier import PretrainedUnavailableError  # noqa: E402
from wsm.models.segmentation import (  # noqa: E402
    ARCHITECTURES,
    create_segmenter,
    pad_to_multiple,
    predict_prob,
)

torch.set_num_threads(1)
ENCODER = "test_resnet"


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    return request.param


def test_unknown_architecture_and_encoder():
    with pytest.raises(ValueError) as err:
        create_segmenter("segnet9", ENCODER)
    assert all(name in str(err.value) for name in ARCHITECTURES)
    with pytest.raises(ValueError, match="not a timm model"):
        create_segmenter("unet", "no_such_encoder")


def test_logits_at_input_resolution(arch):
    torch.manual_seed(0)
    model = create_segmenter(arch, ENCODER)
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_channels_in_and_out(arch):
    model = create_segmenter(arch, ENCODER, in_chans=4, num_classes=3)
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.randn(1, 3, 64, 64))


def test_sizes_not_divisible_say_what_to_do(arch):
    model = create_segmenter(arch, ENCODER)
    assert model.reduction == 32
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 60, 64))
    message = str(err.value)
    assert "60x64" in message and "multiple of 32" in message and "pad" in message and "64x64" in message


def test_pad_to_multiple_then_crop(arch):
    model = create_segmenter(arch, ENCODER)
    x = torch.randn(1, 3, 50, 70)
    padded, (h, w) = pad_to_multiple(x, model.reduction)
    assert padded.shape == (1, 3, 64, 96) and (h, w) == (50, 70)
    torch.testing.assert_close(padded[..., :h, :w], x)
    assert predict_prob(model, padded)[:, :h, :w].shape == (1, 50, 70)


def test_predict_prob(arch):
    model = create_segmenter(arch, ENCODER).train()
    x = torch.randn(3, 3, 64, 64)
    prob = predict_prob(model, x)
    assert prob.shape == (3, 64, 64) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert model.training  # mode restored
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x))[:, 0].numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    multi = create_segmenter(arch, ENCODER, num_classes=3)
    probs = predict_prob(multi, x)
    assert probs.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_flip_tta_is_the_mean_over_flips_and_flip_equivariant():
    model = create_segmenter("unet", ENCODER)
    x = torch.randn(2, 3, 64, 64)
    tta = predict_prob(model, x, flip_tta=True)
    views = [predict_prob(model, x.flip(d)) for d in ((3,), (2,), (2, 3))]
    expected = (predict_prob(model, x) + views[0][:, :, ::-1] + views[1][:, ::-1] + views[2][:, ::-1, ::-1]) / 4
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    # a mirrored image gets the mirrored map, exactly (up to float summation order)
    np.testing.assert_allclose(predict_prob(model, x.flip(3), flip_tta=True), tta[:, :, ::-1], atol=1e-6)
    assert not np.allclose(tta, predict_prob(model, x))
    multi = predict_prob(create_segmenter("unet", ENCODER, num_classes=3), x, flip_tta=True)
    assert multi.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(multi.sum(axis=1), 1.0, atol=1e-5)


def test_pretrained_encoder_offline_fails_clearly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailableError, match="--weights FILE"):
        create_segmenter("unet", ENCODER, pretrained=True)
