"""Class activation maps of a classifier as lesion maps (the localise stage), with pytorch-grad-cam.

Which class's map is the lesion map: by default each image's **top-scoring class**. The classifier's classes are all
lesion diagnoses (``other`` means "another diagnosis", still a lesion), so the evidence for the class the network
picked is the evidence for where the lesion is, and no class needs special-casing. Pass ``target_classes`` (one
class index per image) to take another class's map, e.g. a known diagnosis.

Flip test-time augmentation: the map is the mean of the maps of the image and of its horizontal, vertical and
horizontal+vertical flips, each flipped back. The four flips form a group, so the result is exactly flip-equivariant
(a mirror-symmetric image gets a mirror-symmetric map). The target class is chosen on the unflipped image and used
for all four views; the views run as one batch of 4B images.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from wsm._compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import (  # noqa: E402
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from torch import nn  # noqa: E402

from .classifier import target_layer as default_target_layer  # noqa: E402
from .segmentation import FLIP_VIEWS  # noqa: E402

__all__ = ["CAM_METHODS", "cam_maps", "create_cam"]

# name -> pytorch-grad-cam class. Gradient-free: eigencam (first principal component of the activations, ignores the
# target class) and scorecam (one forward pass per activation channel: slow, for small studies).
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
}


def create_cam(name: str, model: nn.Module, target_layer: nn.Module) -> BaseCAM:
    """A pytorch-grad-cam object of method ``name`` on ``target_layer`` of ``model``.

    It registers hooks on the layer: release them by using it as a context manager (``with create_cam(...) as c:``)
    or through :func:`cam_maps`, which does.
    """
    try:
        cls = CAM_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; valid ones: {', '.join(sorted(CAM_METHODS))}") from None
    return cls(model=model, target_layers=[target_layer])


@contextlib.contextmanager
def _released(cam: BaseCAM) -> Iterator[BaseCAM]:
    """Release the CAM's hooks on the way out, without swallowing errors.

    (BaseCAM.__exit__ returns True for an IndexError, which would hide it; it is called here as if the block had
    succeeded, so it only releases, and any exception propagates.)
    """
    try:
        yield cam
    finally:
        cam.__exit__(None, None, None)


def _check_classes(target_classes: Sequence[int], batch: int, model: nn.Module) -> list[int]:
    classes = [int(c) for c in target_classes]
    if len(classes) != batch:
        raise ValueError(f"target_classes has {len(classes)} entries for {batch} images; give one class per image")
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"target_classes {classes} out of range for a model with {num_classes} classes")
    return classes


def cam_maps(model: nn.Module, images: torch.Tensor, method: str = "gradcam++",
             target_classes: Sequence[int] | None = None, flip_tta: bool = True,
             target_layer: nn.Module | None = None) -> np.ndarray:
    """Lesion maps of a batch: the class activation map of each image's target class.

    Args:
        model: a classifier (see wsm.models.classifier); it is put in eval mode for the call and given back in the
            mode and ``requires_grad`` flags it had, with its parameter gradients cleared.
        images: normalised images, on the model's device or not.
        method: a key of :data:`CAM_METHODS`.
        target_classes: one class index per image; None takes each image's top-scoring class.
        flip_tta: average with the maps of the flipped images, flipped back (see the module docstring).
        target_layer: the layer to explain; default :func:`wsm.models.classifier.target_layer`.

    Shape:
        images (B, C, H, W) -> (B, H, W) float32 in [0, 1]. Each view's map is min-max scaled by pytorch-grad-cam
        (max 1, or all 0 when flat); the flip TTA result is their mean, not rescaled, so its max is below 1 where
        the views disagree (and a map that only the flips made flat stays flat instead of amplifying noise).

    Runs with gradients enabled and autocast disabled, whatever the caller's context (inference mode included).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    layer = default_target_layer(model) if target_layer is None else target_layer
    device = next(model.parameters()).device
    batch, _, height, width = images.shape
    views = FLIP_VIEWS if flip_tta else FLIP_VIEWS[:1]
    was_training = model.training
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    layer_params = {id(p) for p in layer.parameters()}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
        try:
            model.eval()
            # clone: an inference-mode tensor from the caller cannot be saved for backward
            x = images.to(device=device, dtype=torch.float32).clone()
            if target_classes is None:
                with torch.no_grad():
                    classes = model(x).argmax(dim=1).tolist()
            else:
                classes = _check_classes(target_classes, batch, model)
            stacked = torch.cat([x.flip(dims) if dims else x for dims in views])
            # Gradients are needed at the target layer only: with only its own parameters requiring them, the
            # backward pass stops there instead of running through the whole network (about 2x faster overall).
            for p, _ in requires_grad:
                p.requires_grad_(id(p) in layer_params)
            if not layer_params:
                stacked.requires_grad_(True)  # a parameter-free target layer: take gradients from the input
            targets = [ClassifierOutputTarget(c) for c in classes * len(views)]
            with _released(create_cam(method, model, layer)) as cam:
                maps = np.asarray(cam(input_tensor=stacked, targets=targets), dtype=np.float32)
        finally:
            for p, flag in requires_grad:
                p.requires_grad_(flag)
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    maps = maps.reshape(len(views), batch, height, width)
    # a view's dims minus one undo its flip on a (B, H, W) stack of maps
    unflipped = [np.flip(m, axis=tuple(d - 1 for d in dims)) if dims else m for m, dims in zip(maps, views)]
    return np.clip(np.mean(unflipped, axis=0), 0.0, 1.0).astype(np.float32)
