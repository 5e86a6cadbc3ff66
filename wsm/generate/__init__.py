"""``wsm generate``: DATA + BUNDLE -> WSM (one ISIC_WSM label map per image, and a manifest).

- :mod:`~wsm.generate.driver`: the command: select, shard, run workers, journal, merge.
- :mod:`~wsm.generate.workers`, :mod:`~wsm.generate.plan`, :mod:`~wsm.generate.resume`: the worker processes, the
  batches and cores, what a rerun keeps.
- below it: one image's map in :mod:`wsm.mapping`, the BUNDLE and WSM folders in :mod:`wsm.folders`.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "GenerateOptions": "driver",
    "GenerateSummary": "driver",
    "generate": "driver",
})
