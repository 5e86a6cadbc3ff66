"""Shared I/O for both packages (``wsm`` and ``archive_client``): atomic writes, locks, journals, Parquet tables,
hashes and image files. It imports nothing else from either package except :mod:`wsm.errors`.
"""
