"""``wsm fit``: DATA -> BUNDLE (classifier, segmentation prior, calibrated refinement).

- :mod:`~wsm.fit.driver`: the command: choose the masks, train, calibrate, write the bundle.
- :mod:`~wsm.fit.calibrate`: pick fusion weight, CRF, threshold and uncertain band on the fit's own masks.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "FitOptions": "driver",
    "FitSummary": "driver",
    "fit": "driver",
})
