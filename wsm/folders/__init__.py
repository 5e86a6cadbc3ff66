"""The folders the commands write and read, below the commands that use them.

- :mod:`~wsm.folders.bundle`: BUNDLE (`wsm fit` writes it, `wsm generate` loads it and its networks).
- :mod:`~wsm.folders.wsm_folder`: WSM (`wsm generate`'s maps and manifest, its parts, the maker record, merging).
- :mod:`~wsm.folders.maps`: reading any folder of maps (WSM or made elsewhere) for `wsm report` and `wsm train`.
- :mod:`~wsm.folders.run`: RUN (`wsm train`), and lineage: which images a network or a folder of maps learnt from.
"""
