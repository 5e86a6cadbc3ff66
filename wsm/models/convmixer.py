"""ConvMixer as a segmentation encoder (Trockman & Kolter 2022, "Patches Are All You Need?", arXiv:2201.09792;
a network of the low-quality-images study).

A patch embedding (a convolution with kernel = stride = the patch size, GELU, BatchNorm), then ``depth`` blocks of
a residual depthwise convolution with a large kernel (GELU, BatchNorm) and a pointwise convolution (GELU, BatchNorm),
all at the patch grid's resolution. :class:`wsm.models.segmentation.ConvMixerSegmenter` adds a light decoder back
to the input resolution and wsm's head.

Why this module: timm has ConvMixer (``timm.list_models("convmixer*")``: convmixer_768_32, convmixer_1536_20,
convmixer_1024_20_ks9_p14), but not as an encoder the other decoders can use: its ``features_only`` levels all sit
at one stride, and its registered sizes are fixed (``create_model`` takes no other width or depth). timm's
``ConvMixer`` class is the trunk here, built with the size the name asks for (the same blocks, the same parameter
names); this module only names the sizes and presents its output as a one-level feature list.

Encoder names (``--encoder``): ``convmixer_{dim}_{depth}[_ks{kernel}][_p{patch}]``, kernel 9 and patch 8 when
left out; the patch must divide 32, so that every input of the shared contract (multiples of 32) is whole patches.
:data:`CONVMIXER_ENCODERS` lists suggested sizes (params: the whole segmenter, 1 class, 3 input channels):

===================  ===  =====  ======  =====  ========  =====================================================
name                 dim  depth  kernel  patch  params    use
===================  ===  =====  ======  =====  ========  =====================================================
convmixer_256_8      256  8      9       8      0.85 M    CPU size
convmixer_768_32_ks7 768  32     7       8      20.6 M    the paper's ConvMixer-768/32 (its patch is 7)
convmixer_1536_20    1536 20     9       8      50.6 M    the paper's ConvMixer-1536/20 (its patch is 7)
convmixer_16_2       16   2      9       8      0.03 M    tests
===================  ===  =====  ======  =====  ========  =====================================================

A convmixer_256_8 training step costs about what the default U-Net's (EfficientNet-Lite0) does on a CPU: 0.90 s
against 0.76 s for 4 images of 192 px on one thread of the shared 2-core dev machine (inference 0.16 s against 0.20 s).

No ImageNet weights: timm's ImageNet ConvMixers use patch 7 or 14, which do not tile inputs that are multiples of
32, so wsm's ConvMixers train from scratch; asking for pretrained weights raises
:class:`~wsm.models.weights.PretrainedUnavailableError` (use ``--no-pretrained``). Note that timm's name
``convmixer_768_32`` means kernel 7, patch 7; here it means kernel 9, patch 8 (``convmixer_768_32_ks7`` is the
paper's kernel).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from wsm.models.layers import FeatureLevels
from wsm.models.weights import PretrainedUnavailableError

__all__ = ["CONVMIXER_ENCODERS", "ConvMixerEncoder", "ConvMixerSpec", "convmixer_spec", "create_convmixer_encoder"]

CONVMIXER_ENCODERS: dict[str, str] = {
    "convmixer_256_8": "CPU size",
    "convmixer_768_32_ks7": "the paper's ConvMixer-768/32, patch 8 instead of 7",
    "convmixer_1536_20": "the paper's ConvMixer-1536/20, patch 8 instead of 7",
    "convmixer_16_2": "tests",
}
PATCH_SIZES = (1, 2, 4, 8, 16, 32)   # the patch sizes that tile every input of the multiple-of-32 contract
_NAME = re.compile(r"convmixer_(\d+)_(\d+)(?:_ks(\d+))?(?:_p(\d+))?")


@dataclass(frozen=True)
class ConvMixerSpec:
    dim: int               # channels throughout
    depth: int             # ConvMixer blocks
    kernel_size: int = 9   # of the depthwise convolutions
    patch_size: int = 8    # kernel and stride of the patch embedding: the features' stride


def convmixer_spec(name: str) -> ConvMixerSpec:
    """The :class:`ConvMixerSpec` a ConvMixer encoder name spells; ValueError saying how to spell one otherwise."""
    match = _NAME.fullmatch(name)
    suggested = ", ".join(f"{n} ({use})" for n, use in CONVMIXER_ENCODERS.items())
    if not match:
        raise ValueError(f"unknown ConvMixer encoder {name!r}: ConvMixer encoders are named "
                         f"convmixer_DIM_DEPTH[_ksKERNEL][_pPATCH] (kernel 9 and patch 8 by default), e.g. {suggested}")
    dim, depth, kernel, patch = (int(g) if g else None for g in match.groups())
    spec = ConvMixerSpec(dim, depth, kernel or 9, patch or 8)
    if spec.dim < 1 or spec.depth < 1 or spec.kernel_size < 1:
        raise ValueError(f"ConvMixer encoder {name!r}: dim, depth and kernel must be at least 1")
    if spec.patch_size not in PATCH_SIZES:
        raise ValueError(f"ConvMixer encoder {name!r}: patch {spec.patch_size} does not divide 32, the multiple every "
                         f"input size is; use one of {', '.join(map(str, PATCH_SIZES))} (e.g. _p8)")
    return spec


class ConvMixerEncoder(nn.Module):
    """timm's ConvMixer without its pooling and classifier, its output as a one-level feature list.

    Shape: (B, in_chans, H, W) -> [(B, dim, H / patch, W / patch)].
    """

    def __init__(self, spec: ConvMixerSpec, in_chans: int = 3):
        super().__init__()
        from wsm._compat import ensure_torchvision

        ensure_torchvision()
        from timm.models.convmixer import ConvMixer

        self.spec = spec
        self.trunk = ConvMixer(spec.dim, spec.depth, kernel_size=spec.kernel_size, patch_size=spec.patch_size,
                               in_chans=in_chans, num_classes=0, global_pool="")
        self.feature_info = FeatureLevels([spec.dim], [spec.patch_size])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.trunk.forward_features(x)]


def create_convmixer_encoder(name: str, in_chans: int = 3, pretrained: bool = False,
                             weights_file: str | os.PathLike | None = None) -> ConvMixerEncoder:
    """The ConvMixer encoder ``name`` spells, randomly initialised.

    Raises: ValueError for a name that is not a ConvMixer size; PretrainedUnavailableError when ImageNet weights
    (``pretrained`` or a ``weights_file``) are asked for: none fit (see the module doc).
    """
    spec = convmixer_spec(name)
    if pretrained or weights_file:
        raise PretrainedUnavailableError(
            f"no ImageNet weights for the ConvMixer encoder {name!r}: timm's ImageNet ConvMixers use patch 7 or 14, "
            "which do not tile inputs that are multiples of 32, so wsm's ConvMixers (patch 1 to 32) train from "
            "scratch: use --no-pretrained (pretrained = false in a recipe), without --weights; --init RUN starts "
            "from an earlier run's network")
    return ConvMixerEncoder(spec, in_chans=in_chans)
