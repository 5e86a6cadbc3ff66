"""The emulated archive's content, read from a DATA folder, with on-demand thumbnails and challenge zips
(lesion masks from gt_manifest.parquet; ISIC 2018 Task 2 attribute masks from attribute_manifest.parquet).

Everything is loaded once when the store is made; thumbnails and challenge zips are made on first request
and cached under DATA/.wsm/emulator/ (thumbnails are remade when their image is newer, zips are named by a
fingerprint of their sources, so a changed DATA folder never serves a stale zip).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wsm.io.atomic import atomic_path, write_bytes_atomic
from wsm.io.tables import read_table

from ..challenges import CATALOGS, ChallengeSplit, attribute_file_name
from ..ids import check_isic_id
from ..layout import DataLayout
from ..manifest import ATTRIBUTE_MANIFEST, DATA_MANIFEST_CORE, GT_MANIFEST
from . import records
from .files import challenge_attribution_text, challenge_license_text, make_thumbnail, write_zip
from .query import parse_query

logger = logging.getLogger(__name__)

# Bump when the zip layout changes, so cached zips from an older emulator are not served.
_ZIP_FORMAT = "1"


@dataclass(frozen=True)
class StoredImage:
    isic_id: str
    path: Path          # the image file on disk
    ext: str            # lower-case extension, as in the served URL
    size: int           # bytes on disk
    mtime_ns: int
    row: dict           # the manifest row
    fields: dict        # flat typed fields that queries match


@dataclass(frozen=True)
class ChallengeZip:
    split: ChallengeSplit
    which: str                            # "inputs" | "truth"
    name: str                             # the zip's file name
    entries: tuple[tuple[str, Path], ...]  # (name inside the zip, source file)
    attributions: tuple[str, ...]


class ArchiveStore:
    """What the emulator serves, loaded from ``root`` (a DATA folder, see archive_client.layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder; expected a DATA folder with manifest.parquet "
                                    "(see archive_client.layout)")
        self.layout = DataLayout(self.root)
        self.cache_dir = self.layout.state / "emulator"
        self.images: dict[str, StoredImage] = self._load_images()
        self.ids: list[str] = sorted(self.images)
        self.collections: dict[int, records.Collection] = {c.id: c for c in self._load_collections()}
        self.challenge_zips: dict[tuple[str, str], ChallengeZip] = self._plan_challenge_zips()
        self._thumb_sizes: dict[str, int] = {}
        self._thumb_lock = threading.Lock()
        self._zip_lock = threading.Lock()
        self._zip_paths: dict[tuple[str, str], Path] = {}
        self._search = functools.lru_cache(maxsize=64)(self._search_uncached)

    # -- loading
    def _inside(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{relative!r} in the manifests of {self.root} points outside the DATA folder")
        return path

    def _load_images(self) -> dict[str, StoredImage]:
        images: dict[str, StoredImage] = {}
        for row in read_table(self.layout.manifest, DATA_MANIFEST_CORE).to_pylist():
            isic_id = check_isic_id(row["isic_id"])
            if isic_id in images:
                raise ValueError(f"{self.layout.manifest}: {isic_id} appears twice")
            path = self._inside(row["file"])
            try:
                stat = path.stat()
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            except FileNotFoundError:
                logger.warning("%s is in the manifest but %s is missing; its file requests will 404", isic_id, path)
                size, mtime_ns = int(row.get("bytes") or 0), 0
            images[isic_id] = StoredImage(
                isic_id=isic_id, path=path, ext=path.suffix.lstrip(".").lower() or "jpg", size=size,
                mtime_ns=mtime_ns, row=row, fields=records.search_fields(row),
            )
        return images

    def _load_collections(self) -> list[records.Collection]:
        known = frozenset(self.images)
        path = self.root / "collections.json"
        if not path.exists():
            return records.default_collections(known)
        return records.collections_from_json(json.loads(path.read_text(encoding="utf8")), known, str(path))

    def _plan_challenge_zips(self) -> dict[tuple[str, str], ChallengeZip]:
        """The ground-truth zips of every published split DATA has masks of (lesion: gt_manifest; attributes:
        attribute_manifest), and the inputs zip of each such split with the images of both."""
        planned: dict[tuple[str, str], tuple[ChallengeSplit, str, dict[str, tuple[Path, str]]]] = {}
        warned: set[tuple[str, str]] = set()

        def add(split: ChallengeSplit, which: str, name: str, entry: str, source: Path, isic_id: str) -> None:
            folder = name.removesuffix(".zip")
            planned.setdefault((split.year, name), (split, which, {}))[2][f"{folder}/{entry}"] = (source, isic_id)

        for task, isic_id, split, entry, source in self._truth_files():
            add(split, "truth", split.truth_zip, entry, source, isic_id)
            image = self.images.get(isic_id)
            if image is not None:
                add(split, "inputs", split.inputs_zip, f"{isic_id}.{image.ext}", image.path, isic_id)
            elif (split.inputs_zip, isic_id) not in warned:
                warned.add((split.inputs_zip, isic_id))
                logger.warning("%s has %s masks in %s but no image in the manifest; left out of %s", isic_id, task,
                               split.challenge, split.inputs_zip)
        zips: dict[tuple[str, str], ChallengeZip] = {}
        for (year, name), (split, which, entries) in sorted(planned.items()):
            ids = dict.fromkeys(isic_id for _, isic_id in entries.values())
            attributions = tuple(self.images[i].row.get("attribution") or "Anonymous" for i in ids if i in self.images)
            members = tuple(sorted((entry, source) for entry, (source, _) in entries.items()))
            zips[(year, name)] = ChallengeZip(split, which, name, members, attributions)
        return zips

    def _truth_files(self) -> Iterator[tuple[str, str, ChallengeSplit, str, Path]]:
        """(task, isic_id, split, entry name in the truth zip's folder, file) of each mask of a published split;
        masks filed under a name given to `wsm import` have no official zip to emulate and are left out."""
        for task, path, schema in (("lesion", self.layout.gt_manifest, GT_MANIFEST),
                                   ("attributes", self.layout.attribute_manifest, ATTRIBUTE_MANIFEST)):
            for row in read_table(path, schema).to_pylist():
                split = CATALOGS[task].get(row["challenge"], {}).get(row["split"])
                if split is None:
                    continue
                isic_id = check_isic_id(row["isic_id"])
                if task == "lesion":
                    entry = f"{isic_id}{split.mask_suffix}.png"
                    default = self.layout.mask_path(isic_id, split.challenge)
                else:
                    entry = attribute_file_name(isic_id, row["attribute"])
                    default = self.layout.attribute_path(isic_id, split.challenge, row["attribute"])
                source = self._inside(row["mask_file"]) if row.get("mask_file") else default
                yield task, isic_id, split, entry, source

    # -- search
    def _search_uncached(self, query: str, collection_ids: tuple[int, ...]) -> tuple[str, ...]:
        predicate = parse_query(query)
        allowed: frozenset[str] | None = None
        if collection_ids:
            allowed = frozenset().union(*(self.collections[c].isic_ids for c in collection_ids))
        return tuple(
            i for i in self.ids if (allowed is None or i in allowed) and predicate.matches(self.images[i].fields)
        )

    def search(self, query: str, collection_ids: tuple[int, ...] = ()) -> tuple[str, ...]:
        """Sorted ids that match; raise QueryParseError for a bad query (collection ids must exist)."""
        return self._search(query.strip(), tuple(sorted(collection_ids)))

    def total_size(self, ids: tuple[str, ...]) -> int:
        return sum(self.images[i].size for i in ids)

    # -- records
    def record(self, isic_id: str, root_url: str) -> dict:
        """The archive record of one image; ``root_url`` is the server's own ``http://host:port/``."""
        image = self.images[isic_id]
        try:
            thumbnail_size = self.thumbnail(isic_id).stat().st_size
        except OSError as exc:  # the image is missing or unreadable: the record still lists it
            logger.warning("no thumbnail for %s: %s", isic_id, exc)
            thumbnail_size = 0
        return records.image_record(
            image.row,
            full_url=f"{root_url}media/images/{isic_id}.{image.ext}",
            full_size=image.size,
            thumbnail_url=f"{root_url}media/thumbnails/{isic_id}_thumbnail_256.jpg",
            thumbnail_size=thumbnail_size,
        )

    # -- files made on demand
    def thumbnail(self, isic_id: str) -> Path:
        """The cached 256-px thumbnail of an image, made now if missing or older than the image."""
        image = self.images[isic_id]
        dest = self.cache_dir / "thumbnails" / f"{isic_id}_thumbnail_256.jpg"
        if isic_id in self._thumb_sizes:
            return dest
        with self._thumb_lock:
            if isic_id not in self._thumb_sizes:
                try:
                    fresh = dest.stat().st_mtime_ns >= image.mtime_ns
                except FileNotFoundError:
                    fresh = False
                if not fresh:
                    write_bytes_atomic(dest, make_thumbnail(image.path))
                self._thumb_sizes[isic_id] = dest.stat().st_size
        return dest

    def challenge_zip(self, year: str, name: str) -> Path | None:
        """The cached zip for ``/challenges/<year>/<name>``, built now if needed; None if there is none."""
        spec = self.challenge_zips.get((year, name))
        if spec is None:
            return None
        with self._zip_lock:
            if (year, name) in self._zip_paths:
                return self._zip_paths[(year, name)]
            present = [(n, p) for n, p in spec.entries if p.exists()]
            for n, p in spec.entries:
                if not p.exists():
                    logger.warning("%s is missing; left out of %s", p, name)
            digest = hashlib.sha256(_ZIP_FORMAT.encode())
            for entry_name, path in present:
                stat = path.stat()
                digest.update(f"{entry_name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            dest = self.cache_dir / "challenges" / year / f"{digest.hexdigest()[:16]}-{name}"
            if not dest.exists():
                stem = name.removesuffix(".zip")
                entries: list[tuple[str, bytes | Path]] = [(f"{stem}/", b""), *present]
                entries.append((f"{stem}/LICENSE.txt", challenge_license_text(spec.split.challenge).encode()))
                entries.append((f"{stem}/ATTRIBUTION.txt", challenge_attribution_text(spec.attributions).encode()))
                with atomic_path(dest) as tmp:
                    write_zip(tmp, entries, int(year))
                logger.debug("built %s (%d entries) at %s", name, len(entries), dest)
            self._zip_paths[(year, name)] = dest
            return dest
