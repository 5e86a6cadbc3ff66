"""Make torchvision importable on a CPU-only torch (see docs/INSTALL.md).

torchvision 0.28.0 from PyPI is built for CUDA. On the CPU torch 2.13.0 its C++ operators fail to load and
`import torchvision` raises ``RuntimeError: operator torchvision::nms does not exist``. timm and
pytorch-grad-cam import torchvision, so they fail too. When (and only when) that exact error happens, we
define the ``torchvision::nms`` / ``torchvision::qnms`` schemas with a plain torch CPU kernel, drop the
half-imported modules and import again. A machine with a matching torch / torchvision needs nothing.

Call :func:`ensure_torchvision` before anything imports torchvision, timm or pytorch_grad_cam.
"""
from __future__ import annotations

import sys

_KNOWN_FAILURE = "operator torchvision::nms does not exist"
_fixed = False
_library = None  # keeps the operator registrations alive


def _nms_cpu(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression in plain torch (what torchvision's C++ kernel computes)."""
    import torch

    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _register_cpu_ops() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", _nms_cpu, "CPU")
    _library.impl("qnms", _nms_cpu, "CPU")


def ensure_torchvision() -> None:
    """Import torchvision, applying the CPU fix only if the known import failure happens."""
    global _fixed
    if _fixed:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if _KNOWN_FAILURE not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _register_cpu_ops()
        import torchvision  # noqa: F401
    _fixed = True
