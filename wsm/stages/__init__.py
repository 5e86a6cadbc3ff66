"""Pipeline stages: pure functions over numpy arrays, one frozen config dataclass each, no file I/O.

- :mod:`wsm.stages.preprocess`: working size, dermoscope frame, hair removal, colour constancy.
- :mod:`wsm.stages.refine`: fuse probability maps, dense CRF, morphology, decide 0 / 1 / 255, map back.
- :mod:`wsm.stages.classic`: the no-learning colour-threshold baseline.

The neural stages (classifier, CAM, segmentation prior) live beside these and produce the probability maps
that :func:`~wsm.stages.refine.fuse` combines.
"""
from wsm.stages import classic as _classic, preprocess as _preprocess, refine as _refine

__all__ = sorted({*_classic.__all__, *_preprocess.__all__, *_refine.__all__})

# each stage's public names, as its __all__ lists them (preprocess and refine are then the functions)
from wsm.stages.classic import *  # noqa: E402,F403
from wsm.stages.preprocess import *  # noqa: E402,F403
from wsm.stages.refine import *  # noqa: E402,F403
