"""SegNet's encoder and decoder (Badrinarayanan, Kendall & Cipolla, TPAMI 2017; DeepHealth UC12's second model).

A VGG-16-BN-like encoder of five stages, each conv-BN-ReLU blocks then a 2x2 max-pooling that keeps the positions
of its maxima; a mirrored decoder that puts each value back at the position of its maximum (max-unpooling with the
encoder's indices, zeros elsewhere) and densifies the sparse map with conv-BN-ReLU blocks. No feature maps cross from
encoder to decoder, only the pooling indices. :class:`wsm.models.segmentation.SegNet` puts the two together with
wsm's head (a 3x3 convolution to the classes).

It is its own module, not a decoder on a timm ``features_only`` encoder like U-Net, LinkNet and DeepLabV3+: the
decoder needs the pooling indices, which a timm encoder does not return.

Encoders (``--encoder``; :data:`SEGNET_ENCODERS`), stage widths and conv blocks per stage (2, 2, 3, 3, 3, VGG-16's):

============  ======================  ========  ================================================================
name          widths                  params    weights
============  ======================  ========  ================================================================
segnet_vgg16  64, 128, 256, 512, 512  29.5 M    the paper's; ImageNet VGG-16-BN encoder from timm's ``vgg16_bn``
                                                (Hugging Face hub, or ``--weights FILE`` a local timm vgg16_bn file)
segnet_small  16, 32, 64, 128, 128    1.85 M    CPU size (a quarter of the width, about 1/16 of the compute); random
                                                initialisation only: no ImageNet weights have these widths
segnet_tiny   4, 8, 16, 16, 16        0.04 M    tests
============  ======================  ========  ================================================================

(params: the whole network with a 1-class head, 3 input channels.) A segnet_small training step costs about what
the default U-Net's (EfficientNet-Lite0) does on a CPU: 0.81 s against 0.76 s for 4 images of 192 px on one thread
of the shared 2-core dev machine (inference 0.23 s against 0.20 s). Asking for pretrained weights for segnet_small
or segnet_tiny raises :class:`~wsm.models.weights.PretrainedUnavailableError` (train them with
``--no-pretrained``), as does segnet_vgg16 when neither the hub nor a file can supply vgg16_bn.

Choices made here:

- The encoder's convolutions have no bias (the BatchNorm after each makes it redundant); ImageNet VGG-16-BN biases are
  folded into the BatchNorm running means (:func:`load_vgg_bn_features`), which gives the same outputs in training
  and in eval mode.
- Unpooling is :func:`max_unpool`, a scatter that equals ``nn.MaxUnpool2d`` for this non-overlapping pooling:
  ``nn.MaxUnpool2d`` has no deterministic CUDA kernel (``torch.use_deterministic_algorithms``, which wsm trains
  under, flags it), a scatter has one.
- In MB-DCNN (``wsm train --pipeline mbdcnn --arch segnet``) the class activation map joins the deepest level, the
  only one whose features the decoder reads (``SegNetDecoder.used_features``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsm.models.layers import ConvBNReLU, FeatureLevels
from wsm.models.weights import PretrainedUnavailableError, create_pretrained

__all__ = [
    "SEGNET_ENCODERS",
    "PooledFeatures",
    "SegNetDecoder",
    "SegNetEncoder",
    "SegNetSpec",
    "create_segnet_encoder",
    "load_vgg_bn_features",
    "max_unpool",
    "segnet_spec",
]


@dataclass(frozen=True)
class SegNetSpec:
    widths: tuple[int, ...]                     # channels of each encoder stage, shallowest first
    depths: tuple[int, ...] = (2, 2, 3, 3, 3)   # conv-BN-ReLU blocks per stage (VGG-16's)
    imagenet: str = ""                          # the timm VGG-BN whose ImageNet weights fit ("": none do)
    use: str = ""


SEGNET_ENCODERS: dict[str, SegNetSpec] = {
    "segnet_small": SegNetSpec((16, 32, 64, 128, 128), use="CPU size, a quarter of VGG-16's widths, from scratch"),
    "segnet_vgg16": SegNetSpec((64, 128, 256, 512, 512), imagenet="vgg16_bn",
                               use="the paper's widths, ImageNet VGG-16-BN weights from the hub or --weights FILE"),
    "segnet_tiny": SegNetSpec((4, 8, 16, 16, 16), use="tests, from scratch"),
}


def segnet_spec(name: str) -> SegNetSpec:
    """The :class:`SegNetSpec` of a SegNet encoder name; ValueError listing the valid names for any other."""
    try:
        return SEGNET_ENCODERS[name]
    except KeyError:
        valid = "; ".join(f"{n} ({s.use})" for n, s in SEGNET_ENCODERS.items())
        raise ValueError(f"unknown SegNet encoder {name!r}: SegNet builds its own VGG-like encoder, one of {valid}; "
                         "e.g. --arch segnet --encoder segnet_small --no-pretrained") from None


class PooledFeatures(list):
    """The pooled output of each encoder stage (shallowest first), carrying for each stage the indices of its
    maxima (``indices``) and its size before pooling (``sizes``), which the decoder's unpooling needs.

    A list, so that code that reads or replaces encoder levels (MB-DCNN's E-layers add to them) works on it as on
    a timm encoder's feature list; replacing an item keeps ``indices`` and ``sizes``.
    """

    def __init__(self, features: Sequence[torch.Tensor], indices: Sequence[torch.Tensor],
                 sizes: Sequence[tuple[int, int]]):
        super().__init__(features)
        self.indices = list(indices)
        self.sizes = [tuple(s) for s in sizes]


def max_unpool(x: torch.Tensor, indices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each value of ``x`` put back at the position of its maximum, zeros elsewhere: ``nn.MaxUnpool2d`` for a
    non-overlapping max-pooling, as a scatter (deterministic on CUDA; see the module doc).

    Shape: x and indices (B, C, h, w), indices flat within each (H, W) plane as ``MaxPool2d(return_indices=True)``
    gives them -> (B, C, H, W) with ``size`` = (H, W), the size before pooling.
    """
    b, c = x.shape[:2]
    flat = x.new_zeros(b, c, size[0] * size[1])
    return flat.scatter(2, indices.flatten(2), x.flatten(2)).view(b, c, *size)


class SegNetEncoder(nn.Module):
    """Stages of conv-BN-ReLU blocks, each followed by a 2x2 max-pooling that keeps its indices.

    Shape: (B, in_chans, H, W) -> :class:`PooledFeatures`, level i of shape (B, widths[i], H / 2^(i+1), W / 2^(i+1)).
    """

    def __init__(self, widths: Sequence[int], depths: Sequence[int], in_chans: int = 3):
        super().__init__()
        if len(widths) != len(depths) or min(depths) < 1:
            raise ValueError(f"one depth of at least 1 per stage width: widths {widths}, depths {depths}")
        self.widths, self.depths = tuple(widths), tuple(depths)
        stages, cin = [], in_chans
        for width, depth in zip(widths, depths):
            stages.append(nn.Sequential(*(ConvBNReLU(cin if i == 0 else width, width) for i in range(depth))))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.feature_info = FeatureLevels(widths, [2 ** (i + 1) for i in range(len(widths))])

    def forward(self, x: torch.Tensor) -> PooledFeatures:
        features, indices, sizes = [], [], []
        for stage in self.stages:
            x = stage(x)
            sizes.append(tuple(x.shape[-2:]))
            x, index = F.max_pool2d(x, 2, 2, return_indices=True)
            features.append(x)
            indices.append(index)
        return PooledFeatures(features, indices, sizes)


class SegNetDecoder(nn.Module):
    """The encoder mirrored, deepest stage first: unpool with that stage's indices, then as many conv-BN-ReLU
    blocks as the stage has, the last one narrowing to the next shallower stage's width (the shallowest keeps its
    own). Reads only the deepest level of the features (``used_features``) and the indices of all.

    Shape: :class:`PooledFeatures` of an input (B, C, H, W) -> (B, widths[0], H, W).
    """

    def __init__(self, widths: Sequence[int], depths: Sequence[int]):
        super().__init__()
        blocks = []
        for stage in reversed(range(len(widths))):
            width, out = widths[stage], widths[max(stage - 1, 0)]
            convs = [ConvBNReLU(width, width) for _ in range(depths[stage] - 1)] + [ConvBNReLU(width, out)]
            blocks.append(nn.Sequential(*convs))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = widths[0]
        # the only encoder level whose features the decoder reads (MB-DCNN fuses its CAM there)
        self.used_features = (len(widths) - 1,)

    def forward(self, features: PooledFeatures) -> torch.Tensor:
        if not isinstance(features, PooledFeatures):
            raise TypeError(f"SegNet's decoder needs its encoder's PooledFeatures (with the pooling indices), got "
                            f"{type(features).__name__}")
        x = features[-1]
        for block, indices, size in zip(self.blocks, reversed(features.indices), reversed(features.sizes)):
            x = block(max_unpool(x, indices, size))
        return x


def load_vgg_bn_features(encoder: SegNetEncoder, vgg: nn.Module) -> None:
    """Copy a VGG-BN's convolution and BatchNorm weights onto ``encoder``, in order, in place.

    ``vgg``: any module whose Conv2d and BatchNorm2d layers, in module order, are VGG's (timm's ``vgg16_bn``,
    whole or ``features_only``). VGG's convolution biases are folded into the BatchNorm running means (the encoder's
    convolutions have none): BN(Wx + b) with running mean m equals BN(Wx) with running mean m - b, in eval mode and
    (the batch mean absorbing b) in training.

    Raises: ValueError naming the layer when the counts or the shapes differ.
    """
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in vgg.modules() if isinstance(m, nn.BatchNorm2d)]
    blocks = [block for stage in encoder.stages for block in stage]
    if not (len(convs) == len(norms) == len(blocks)):
        raise ValueError(f"the VGG has {len(convs)} convolutions and {len(norms)} BatchNorms, the SegNet encoder "
                         f"{len(blocks)} conv-BN-ReLU blocks")
    with torch.no_grad():
        for i, (conv, norm, block) in enumerate(zip(convs, norms, blocks)):
            target_conv, target_norm = block[0], block[1]
            if conv.weight.shape != target_conv.weight.shape or norm.weight.shape != target_norm.weight.shape:
                raise ValueError(f"VGG convolution {i}: weight {tuple(conv.weight.shape)}, the SegNet encoder's "
                                 f"{tuple(target_conv.weight.shape)}")
            target_conv.weight.copy_(conv.weight)
            target_norm.weight.copy_(norm.weight)
            target_norm.bias.copy_(norm.bias)
            target_norm.running_var.copy_(norm.running_var)
            target_norm.running_mean.copy_(norm.running_mean - (conv.bias if conv.bias is not None else 0))
            target_norm.num_batches_tracked.copy_(norm.num_batches_tracked)


def create_segnet_encoder(name: str, in_chans: int = 3, pretrained: bool = False,
                          weights_file: str | os.PathLike | None = None) -> SegNetEncoder:
    """The SegNet encoder named ``name`` (:data:`SEGNET_ENCODERS`).

    ``pretrained`` (or a ``weights_file``): ImageNet VGG-16-BN weights through
    :func:`wsm.models.weights.create_pretrained` (the file, else the hub), for the names that have them; the source
    is kept as ``encoder.wsm_weight_source``.

    Raises: ValueError for an unknown name; PretrainedUnavailableError when weights are asked for and none fit
    or none can be had.
    """
    spec = segnet_spec(name)
    encoder = SegNetEncoder(spec.widths, spec.depths, in_chans=in_chans)
    if not (pretrained or weights_file):
        return encoder
    if not spec.imagenet:
        raise PretrainedUnavailableError(
            f"no ImageNet weights for the SegNet encoder {name!r}: only segnet_vgg16 has VGG-16-BN's widths (timm's "
            f"vgg16_bn, from the Hugging Face hub or --weights FILE); train {name} from scratch (--no-pretrained, "
            "or pretrained = false in a recipe) or use --encoder segnet_vgg16")
    try:
        vgg, source = create_pretrained(spec.imagenet, weights_file=weights_file, features_only=True,
                                        in_chans=in_chans)
    except PretrainedUnavailableError as err:
        raise PretrainedUnavailableError(f"the SegNet encoder {name!r} takes its ImageNet weights from timm's "
                                         f"{spec.imagenet}: {err}") from err
    load_vgg_bn_features(encoder, vgg)
    encoder.wsm_weight_source = source.as_dict()
    return encoder
