"""``wsm generate``: DATA + BUNDLE -> WSM (one ISIC_WSM label map per image, and a manifest).

- :mod:`~wsm.generate.driver`: the command: select, shard, run workers, journal, merge.
- :mod:`~wsm.generate.maps`: one image's weak map from the bundle's networks and the stages.
- :mod:`~wsm.generate.folder`: the WSM folder: maps, manifest and its parts, the maker record.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "GenerateOptions": "driver",
    "GenerateSummary": "driver",
    "generate": "driver",
    "merge_parts": "folder",
})
