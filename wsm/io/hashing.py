"""File hashes: every sha256 wsm records (DATA manifests, bundles, run folders, reports) comes from here."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def hash_file(path: Path | str) -> "hashlib._Hash":
    """A sha256 object fed with the whole file (to continue with more bytes, as a resumed download does)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest


def sha256_file(path: Path | str) -> str:
    """The file's sha256, as 64 hex digits."""
    return hash_file(path).hexdigest()


def sha256_bytes(data: bytes) -> str:
    """The sha256 of bytes about to be written (a converted image), as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def ids_sha256(ids: Iterable[str]) -> str:
    """The sha256 of a set of ids, whatever their order (which images a network or a folder of maps saw)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
