"""Building blocks shared by the segmentation networks (wsm.models.segmentation, .segnet, .convmixer)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ConvBNReLU", "FeatureLevels"]


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (no bias: the BatchNorm after it makes one redundant), BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeatureLevels:
    """The channels and the reduction (stride) of each level of an encoder's feature list, shallowest first.

    The part of timm's ``FeatureInfo`` that the decoders and MB-DCNN's ``EnhancedSegmenter`` read, for the
    encoders that are not timm ``features_only`` models (SegNet's, ConvMixer's).
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int]):
        if len(channels) != len(reductions):
            raise ValueError(f"{len(channels)} channel counts for {len(reductions)} reductions")
        self._channels = [int(c) for c in channels]
        self._reductions = [int(r) for r in reductions]

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)

    def __repr__(self) -> str:
        return f"FeatureLevels(channels={self._channels}, reductions={self._reductions})"
