"""The software versions every BUNDLE and RUN records beside what it made."""
from __future__ import annotations

import platform

from wsm import __version__


def versions() -> dict:
    """wsm, Python, torch, numpy and timm versions (imports torch and timm: call it once per run)."""
    import numpy
    import torch

    from wsm._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    return {"wsm": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "timm": timm.__version__}
