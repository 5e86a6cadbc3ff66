"""``wsm train``: DATA + masks and/or WSM maps -> RUN (a segmentation network, evaluated on official masks).

- :mod:`~wsm.train.driver`: the command's skeleton (plan, DDP, train, evaluate, record) and the single network.
- :mod:`~wsm.train.mbdcnn`: the MB-DCNN recipe (coarse network, mask-guided classifier, enhanced network).
- :mod:`~wsm.train.options`, :mod:`~wsm.train.rows`, :mod:`~wsm.train.evaluate`, :mod:`~wsm.train.run_folder`,
  :mod:`~wsm.train.distributed`: options, which images, evaluation, the checks on a RUN folder (identity, lineage),
  torchrun; the RUN folder itself is :mod:`wsm.folders.run`.
- the training loop, losses, datasets and augmentation it shares with ``wsm fit`` live below it, in :mod:`wsm.learn`.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TrainOptions": "options",
    "TrainSummary": "options",
    "load_model": "driver",
    "run": "driver",
})
