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
# the tiny encoder each architecture is tested with: a timm one, or one of the architecture's own kind
OWN_ENCODERS = {"segnet": "segnet_tiny", "convmixer": "convmixer_16_2"}


def tiny(arch: str) -> str:
    return OWN_ENCODERS.get(arch, ENCODER)


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request):
    return request.param


def test_unknown_architecture_and_encoder():
    with pytest.raises(ValueError) as err:
        create_segmenter("segnet9", ENCODER)
    assert all(name in str(err.value) for name in ARCHITECTURES)
    with pytest.raises(ValueError, match="not a timm model"):
        create_segmenter("unet", "no_such_encoder")
    # an encoder of another architecture's kind: the message says which architecture takes it
    with pytest.raises(ValueError, match="segnet takes segnet_small"):
        create_segmenter("unet", "segnet_small")
    # the own-encoder architectures list their names; a timm name (the CLI's default encoder) is refused
    with pytest.raises(ValueError) as err:
        create_segmenter("segnet", "tf_efficientnet_lite0")
    assert all(name in str(err.value) for name in ("segnet_small", "segnet_vgg16", "--no-pretrained"))
    with pytest.raises(ValueError, match=r"convmixer_DIM_DEPTH\[_ksKERNEL\]\[_pPATCH\]"):
        create_segmenter("convmixer", "tf_efficientnet_lite0")


def test_logits_at_input_resolution(arch):
    torch.manual_seed(0)
    model = create_segmenter(arch, tiny(arch))
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_channels_in_and_out(arch):
    model = create_segmenter(arch, tiny(arch), in_chans=4, num_classes=3)
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.randn(1, 3, 64, 64))


def test_sizes_not_divisible_say_what_to_do(arch):
    model = create_segmenter(arch, tiny(arch))
    assert model.reduction == 32
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 60, 64))
    message = str(err.value)
    assert "60x64" in message and "multiple of 32" in message and "pad" in message and "64x64" in message


def test_pad_to_multiple_then_crop(arch):
    model = create_segmenter(arch, tiny(arch))
    x = torch.randn(1, 3, 50, 70)
    padded, (h, w) = pad_to_multiple(x, model.reduction)
    assert padded.shape == (1, 3, 64, 96) and (h, w) == (50, 70)
    torch.testing.assert_close(padded[..., :h, :w], x)
    assert predict_prob(model, padded)[:, :h, :w].shape == (1, 50, 70)


def test_predict_prob(arch):
    model = create_segmenter(arch, tiny(arch)).train()
    x = torch.randn(3, 3, 64, 64)
    prob = predict_prob(model, x)
    assert prob.shape == (3, 64, 64) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert model.training  # mode restored
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x))[:, 0].numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    multi = create_segmenter(arch, tiny(arch), num_classes=3)
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


def test_works_inside_mbdcnn_enhanced_network(arch):
    """MB-DCNN's EnhancedSegmenter reads ``encoder(x)`` as a feature list described by ``encoder.feature_info`` and
    adds an E-layer at each level the decoder reads: every parameter, E-layers included, must get a gradient (DDP
    refuses parameters that get none)."""
    from wsm.train.mbdcnn import EnhancedSegmenter

    torch.manual_seed(0)
    base = create_segmenter(arch, tiny(arch))
    levels = len(base.encoder.feature_info.channels())
    model = EnhancedSegmenter(base)
    assert len(model.e_layers) == len(getattr(base.decoder, "used_features", range(levels)))
    x = torch.randn(2, 4, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    y = x.clone()
    y[:, 3] = torch.rand(64, 96)
    with torch.no_grad():      # the CAM reaches the output (training mode: fresh BatchNorm statistics in eval mode
        assert not torch.allclose(model(x), model(y))          # shrink a deep network's output towards zero)


# ------------------------------------------------------------------------------------------------ U-Net + ASPP

def test_unet_aspp_runs_aspp_with_rates_2_3_4_on_the_deepest_features():
    model = create_segmenter("unet_aspp", ENCODER)
    aspp = model.decoder.aspp
    assert aspp.rates == (2, 3, 4)
    dilated = [branch[0] for branch in aspp.branches[1:]]
    assert [conv.dilation for conv in dilated] == [(2, 2), (3, 3), (4, 4)]
    assert [conv.padding for conv in dilated] == [(2, 2), (3, 3), (4, 4)]       # same-size output
    deepest = model.encoder.feature_info.channels()[-1]
    assert aspp.branches[0][0].in_channels == deepest
    seen = {}
    aspp.register_forward_hook(lambda module, args, out: seen.update(x=args[0].shape, out=out.shape))
    model(torch.randn(1, 3, 64, 64))
    assert seen["x"] == (1, deepest, 2, 2) and seen["out"] == (1, 256, 2, 2)    # stride 32, then into U-Net
    assert model.decoder.unet.blocks[0].convs[0][0].in_channels == 256 + model.encoder.feature_info.channels()[-2]


# ------------------------------------------------------------------------------------------------ SegNet

def test_max_unpool_puts_each_value_back_at_its_argmax():
    from wsm.models.segnet import max_unpool

    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 12) + 0.1                       # positive: a zero in the result means "not a maximum"
    pooled, indices = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
    unpooled = max_unpool(pooled, indices, (8, 12))
    # the argmax of every 2x2 window, found independently of the pooling indices
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 4, 6, 4)
    one_hot = torch.nn.functional.one_hot(windows.argmax(-1), 4).reshape(2, 3, 4, 6, 2, 2)
    argmax = one_hot.permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 8, 12).bool()
    assert torch.equal(unpooled != 0, argmax)
    assert torch.equal(unpooled[argmax], x[argmax])
    torch.testing.assert_close(unpooled, torch.nn.functional.max_unpool2d(pooled, indices, 2, 2, output_size=(8, 12)))


def test_segnet_decoder_reuses_the_pooling_indices_and_reads_only_the_deepest_features():
    from wsm.models.segnet import PooledFeatures

    torch.manual_seed(0)
    model = create_segmenter("segnet", "segnet_tiny")    # training mode: BatchNorm on batch statistics
    assert model.encoder.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.decoder.used_features == (4,)
    unpool_inputs = []
    model.decoder.blocks[-1].register_forward_pre_hook(lambda module, args: unpool_inputs.append(args[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.encoder(x)
        assert isinstance(features, PooledFeatures) and len(features.indices) == 5
        assert features.sizes == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
        out = model.decoder(features)
        # the last decoder stage sees a map that is non-zero only where the first encoder stage had its maxima
        first = torch.zeros(1, 4, 64 * 64).scatter(2, features.indices[0].flatten(2), 1.0).view(1, 4, 64, 64)
        assert unpool_inputs[0].shape == (1, 4, 64, 64) and not (unpool_inputs[0] != 0)[first == 0].any()
        # only the deepest level's values cross to the decoder ...
        changed = PooledFeatures([f + 1 for f in features[:-1]] + [features[-1]], features.indices, features.sizes)
        torch.testing.assert_close(model.decoder(changed), out)
        # ... with the positions of every level's maxima
        moved = PooledFeatures(features, [i.flip(-1) for i in features.indices], features.sizes)
        assert not torch.allclose(model.decoder(moved), out)
        with pytest.raises(TypeError, match="PooledFeatures"):
            model.decoder(list(features))


def test_segnet_vgg16_takes_imagenet_vgg16_bn_weights(monkeypatch):
    """segnet_vgg16's encoder is VGG-16-BN: its weights map from timm's vgg16_bn, conv biases folded into the BN."""
    import timm

    from wsm.models import segnet
    from wsm.models.weights import WeightSource, weight_source

    torch.manual_seed(0)
    vgg = timm.create_model("vgg16_bn", pretrained=False, features_only=True, in_chans=4)
    with torch.no_grad():                                 # weights unlike a fresh initialisation, biases included
        for module in vgg.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
            elif isinstance(module, torch.nn.Conv2d):
                module.bias.normal_()
    calls = []

    def fake_create_pretrained(timm_name, weights_file=None, **kwargs):
        calls.append((timm_name, kwargs))
        return vgg, WeightSource("hub", f"timm/{timm_name}")

    monkeypatch.setattr(segnet, "create_pretrained", fake_create_pretrained)
    model = create_segmenter("segnet", "segnet_vgg16", in_chans=4, pretrained=True).eval()
    assert calls == [("vgg16_bn", {"features_only": True, "in_chans": 4})]
    assert weight_source(model)["location"] == "timm/vgg16_bn"
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        expected = [torch.nn.functional.max_pool2d(f, 2) for f in vgg.eval()(x)[:5]]
        for got, want in zip(model.encoder(x), expected):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_segnet_pretrained_requests_fail_clearly(monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(PretrainedUnavailableError, match="only segnet_vgg16 has VGG-16-BN's widths.*--no-pretrained"):
        create_segmenter("segnet", "segnet_small", pretrained=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailableError, match="'segnet_vgg16' takes its ImageNet weights from timm's "
                                                         "vgg16_bn.*--weights FILE"):
        create_segmenter("segnet", "segnet_vgg16", pretrained=True)


# ------------------------------------------------------------------------------------------------ ConvMixer

def test_convmixer_patch_size_kernel_and_depth():
    from wsm.models.convmixer import ConvMixerSpec, convmixer_spec

    assert convmixer_spec("convmixer_256_8") == ConvMixerSpec(256, 8, kernel_size=9, patch_size=8)
    assert convmixer_spec("convmixer_768_32_ks7") == ConvMixerSpec(768, 32, kernel_size=7, patch_size=8)
    model = create_segmenter("convmixer", "convmixer_16_3_ks5_p4")
    trunk = model.encoder.trunk
    patch = trunk.stem[0]
    assert patch.kernel_size == patch.stride == (4, 4) and patch.out_channels == 16
    assert len(trunk.blocks) == 3
    depthwise, pointwise = trunk.blocks[0][0].fn[0], trunk.blocks[0][1]
    assert depthwise.kernel_size == (5, 5) and depthwise.groups == 16 and pointwise.kernel_size == (1, 1)
    assert model.encoder.feature_info.reduction() == [4] and model.reduction == 32
    x = torch.randn(1, 3, 64, 96)
    (features,) = model.encoder(x)
    assert features.shape == (1, 16, 16, 24)
    assert len(model.decoder.blocks) == 2                      # x2, x2: from stride 4 to full resolution
    assert model(x).shape == (1, 1, 64, 96)
    # a residual block: the depthwise branch is added to its input
    block = trunk.blocks[0][0]
    with torch.no_grad():
        torch.testing.assert_close(block(features), block.fn(features) + features)


def test_convmixer_names_and_pretrained_requests_fail_clearly():
    with pytest.raises(ValueError, match="patch 7 does not divide 32"):
        create_segmenter("convmixer", "convmixer_768_32_ks7_p7")
    with pytest.raises(ValueError, match="convmixer_256_8"):
        create_segmenter("convmixer", "convmixer_large")
    with pytest.raises(PretrainedUnavailableError, match="train from scratch: use --no-pretrained"):
        create_segmenter("convmixer", "convmixer_16_2", pretrained=True)
