"""Make torchvision importable on a CPU-only torch (see docs/INSTALL.md).

torchvision 0.28.0 from PyPI is built for CUDA. On the CPU torch 2.13.0 its C++ operators fail to load and
`import torchvision` raises ``RuntimeError: operator torchvision::nms does not exist``. timm and
pytorch-grad-cam import torchvision, so they fail too. When (and only when) that exact error happens, we
define the ``torchvision::nms`` / ``torchvision::qnms`` schemas with a plain torch CPU kernel, drop the
half-imported modules and import again. A machine with a matching torch / torchvision needs nothing.

Call :func:`ensure_torchvision` before anything imports torchvision, timm or pytorch_grad_cam. In a virtual
environment of your own, :func:`install_import_hook` applies the same fix to every ``import torchvision`` (and so
to a notebook's ``import timm``): ``python -m wsm._compat --install-hook`` adds a one-line ``.pth`` file to the
environment's site-packages that installs it at start-up (`make install` does this for wsm's CPU set).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig
from pathlib import Path

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


def _forget_torchvision(keep_top: bool = False) -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        if not (keep_top and name == "torchvision"):
            del sys.modules[name]


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
        _forget_torchvision()
        _register_cpu_ops()
        import torchvision  # noqa: F401
    _fixed = True


class _RetryingLoader(importlib.abc.Loader):
    """torchvision's own loader, with the CPU fix applied when (and only when) the known failure happens."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name):               # resource readers and the like: torchvision's loader answers
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _fixed
        try:
            self._loader.exec_module(module)
        except RuntimeError as err:
            if _KNOWN_FAILURE not in str(err):
                raise
            _forget_torchvision(keep_top=True)
            _register_cpu_ops()
            self._loader.exec_module(module)
        _fixed = True


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Finds torchvision as usual and hands it the retrying loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" or _fixed:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RetryingLoader(spec.loader)
        return spec


def install_import_hook() -> None:
    """Make every later ``import torchvision`` apply the CPU fix when it needs it (once per process)."""
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())


HOOK_FILE = "wsm-torchvision-cpu.pth"
_HOOK_LINE = "import wsm._compat as _wsm_compat; _wsm_compat.install_import_hook()\n"


def write_hook_file(site_packages: Path | None = None) -> Path:
    """The .pth file that installs the hook whenever Python starts in this environment."""
    folder = Path(site_packages or sysconfig.get_paths()["purelib"])
    path = folder / HOOK_FILE
    path.write_text(_HOOK_LINE, encoding="utf8")
    return path


if __name__ == "__main__":
    if sys.argv[1:] != ["--install-hook"]:
        sys.exit("usage: python -m wsm._compat --install-hook")
    print(f"wrote {write_hook_file()}: `import torchvision` (and timm, pytorch_grad_cam) now works on the CPU torch")
