"""``wsm train``: DATA + masks and/or WSM maps -> RUN (a segmentation network, evaluated on official masks).

- :mod:`~wsm.train.driver`: the command's skeleton (plan, DDP, train, evaluate, record) and the single network.
- :mod:`~wsm.train.mbdcnn`: the MB-DCNN recipe (coarse network, mask-guided classifier, enhanced network).
- :mod:`~wsm.train.options`, :mod:`~wsm.train.rows`, :mod:`~wsm.train.evaluate`, :mod:`~wsm.train.run_folder`,
  :mod:`~wsm.train.distributed`: options, which images, evaluation, the RUN folder and its lineage, torchrun.
- :mod:`~wsm.train.loop`, :mod:`~wsm.train.losses`, :mod:`~wsm.train.datasets`, :mod:`~wsm.train.augment`: the
  training loop every network of wsm uses (``wsm fit``'s too), its losses, datasets and augmentation.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TrainOptions": "options",
    "TrainSummary": "options",
    "load_model": "driver",
    "run": "driver",
})
