"""Pure functions that shape what the emulated archive answers: image and collection records, cursor paging,
query parameters and license texts. No I/O here; ``store.py`` feeds them and ``server.py`` sends the result.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from ..manifest import DATA_MANIFEST_CORE

# Fields the archive files under ``metadata.acquisition`` (how the picture was taken); every other metadata
# field goes to ``metadata.clinical``. From the ISIC data dictionary as known when this was written.
ACQUISITION_FIELDS = frozenset(
    {"image_type", "image_manipulation", "dermoscopic_type", "pixels_x", "pixels_y", "tbp_tile_type",
     "acquisition_day"}
)
# The manifest stores metadata as strings; these go back to JSON numbers. "True"/"False" become booleans.
INT_FIELDS = frozenset({"pixels_x", "pixels_y", "age_approx", "acquisition_day"})
FLOAT_FIELDS = frozenset({"clin_size_long_diam_mm", "mel_thick_mm"})
# Core manifest columns that are metadata (the rest describe the file on disk or sit at the record's top level).
METADATA_CORE_COLUMNS = frozenset({"image_type", "diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4",
                                   "diagnosis_5"})
NON_METADATA_COLUMNS = frozenset(DATA_MANIFEST_CORE.names) - METADATA_CORE_COLUMNS

MAX_LIMIT = 100
DEFAULT_LIMIT = 100

LICENSES = ("CC-0", "CC-BY", "CC-BY-NC")


# ---------------------------------------------------------------------------------------------- image records
def _absent(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in ("", "nan", "NaN", "None")


def json_value(name: str, value: object) -> object:
    """A manifest string back as the JSON type the archive uses (int, float, bool or the string itself)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in ("True", "False"):
        return text == "True"
    try:
        if name in INT_FIELDS:
            return int(float(text)) if re.fullmatch(r"[+-]?\d+(\.0*)?", text) else value
        if name in FLOAT_FIELDS:
            return float(text)
    except ValueError:
        return value
    return value


def split_metadata(row: Mapping[str, object]) -> tuple[dict, dict]:
    """(acquisition, clinical) dicts from one manifest row, typed, absent fields left out, keys sorted."""
    acquisition: dict[str, object] = {}
    clinical: dict[str, object] = {}
    for name in sorted(row):
        if name in NON_METADATA_COLUMNS or _absent(row[name]):
            continue
        group = acquisition if name in ACQUISITION_FIELDS else clinical
        group[name] = json_value(name, row[name])
    for key, size_column in (("pixels_x", "width"), ("pixels_y", "height")):
        if key not in acquisition and not _absent(row.get(size_column)):
            acquisition[key] = int(row[size_column])
    return dict(sorted(acquisition.items())), clinical


def _top_fields(row: Mapping[str, object]) -> dict[str, object]:
    """The record's fields outside ``files`` and ``metadata``."""
    return {"isic_id": row["isic_id"], "public": True, "copyright_license": row.get("copyright_license"),
            "attribution": row.get("attribution")}


def image_record(row: Mapping[str, object], *, full_url: str, full_size: int, thumbnail_url: str,
                 thumbnail_size: int) -> dict:
    """The archive's JSON record for one manifest row (as ``GET images/{isic_id}/`` returns it)."""
    acquisition, clinical = split_metadata(row)
    return {
        **_top_fields(row),
        "files": {
            "full": {"url": full_url, "size": int(full_size)},
            "thumbnail_256": {"url": thumbnail_url, "size": int(thumbnail_size)},
        },
        "metadata": {"acquisition": acquisition, "clinical": clinical},
    }


def search_fields(row: Mapping[str, object]) -> dict[str, object]:
    """The flat field dict a search query is matched against: top-level fields plus all metadata, typed."""
    acquisition, clinical = split_metadata(row)
    return {
        **_top_fields(row),
        **acquisition,
        **clinical,
    }


# ---------------------------------------------------------------------------------------------- collections
@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    isic_ids: frozenset[str] = field(repr=False)
    description: str = ""
    public: bool = True
    pinned: bool = False
    locked: bool = False
    doi: str | None = None


def collection_record(collection: Collection) -> dict:
    return {
        "id": collection.id,
        "name": collection.name,
        "description": collection.description,
        "public": collection.public,
        "pinned": collection.pinned,
        "locked": collection.locked,
        "doi": collection.doi,
        "doi_url": f"https://doi.org/{collection.doi}" if collection.doi else None,
    }


def collections_from_json(data: object, known_ids: frozenset[str], source: str = "collections.json"
                          ) -> list[Collection]:
    """Collections from the parsed DATA/collections.json (``[{"id": 1, "name": ..., "isic_ids": [...]}]``)."""
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of collections, got {type(data).__name__}")
    out: dict[int, Collection] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("id"), int) or not isinstance(item.get("name"), str):
            raise ValueError(
                f"{source}[{i}]: expected an object with an integer 'id' and a string 'name', got {item!r}")
        ids = item.get("isic_ids", [])
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise ValueError(f"{source}[{i}]: 'isic_ids' must be a list of strings")
        if item["id"] in out:
            raise ValueError(f"{source}[{i}]: collection id {item['id']} appears twice")
        out[item["id"]] = Collection(
            id=item["id"], name=item["name"], isic_ids=frozenset(ids) & known_ids,
            description=str(item.get("description", "")), public=bool(item.get("public", True)),
            pinned=bool(item.get("pinned", False)), locked=bool(item.get("locked", False)), doi=item.get("doi"),
        )
    return [out[k] for k in sorted(out)]


def default_collections(known_ids: frozenset[str]) -> list[Collection]:
    return [Collection(id=1, name="All images", isic_ids=known_ids, pinned=True)]


class ParameterError(ValueError):
    """A bad query-string parameter; the server answers 400 with this message."""


def parse_collection_ids(text: str | None, known: Mapping[int, Collection]) -> tuple[int, ...]:
    """``collections=1,2`` as sorted ids; raise ParameterError for bad syntax or an unknown collection."""
    text = (text or "").strip()
    if not text:
        return ()
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise ParameterError(f"collections must be comma separated integer ids (e.g. 1,2), got {text!r}")
    ids = tuple(sorted({int(x) for x in text.split(",")}))
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ParameterError(
            f"unknown collection id(s) {', '.join(map(str, unknown))}; known: {', '.join(map(str, known)) or 'none'}"
        )
    return ids


# ---------------------------------------------------------------------------------------------- paging
def clamp_limit(raw: str | None) -> int:
    """``limit`` as the archive applies it: default 100 when absent or not an integer, clamped to [1, 100]."""
    try:
        value = int(raw) if raw not in (None, "") else DEFAULT_LIMIT
    except ValueError:
        value = DEFAULT_LIMIT
    return max(1, min(MAX_LIMIT, value))


class CursorError(ValueError):
    """A cursor this server did not make."""


def encode_cursor(direction: str, key: str | int) -> str:
    """An opaque cursor: page after (``a``) or before (``b``) the given sort key."""
    raw = json.dumps([direction, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str | int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise CursorError(f"invalid cursor {cursor!r}") from exc
    if direction not in ("a", "b") or not isinstance(key, (str, int)) or isinstance(key, bool):
        raise CursorError(f"invalid cursor {cursor!r}")
    return direction, key


@dataclass(frozen=True)
class Page:
    keys: list                 # the sort keys on this page, ascending
    next_cursor: str | None
    previous_cursor: str | None
    first: bool                # no cursor was given: the page that carries ``count``
    count: int                 # total matches


def paginate(keys: Sequence, cursor: str | None, limit: int) -> Page:
    """Keyset paging over ascending, unique ``keys``: stable however the pages are interleaved."""
    if cursor:
        direction, pivot = decode_cursor(cursor)
        if keys and type(pivot) is not type(keys[0]):
            raise CursorError(f"invalid cursor {cursor!r}")
        if direction == "a":
            start = bisect_right(keys, pivot)
            end = start + limit
        else:
            end = bisect_left(keys, pivot)
            start = max(0, end - limit)
    else:
        start, end = 0, limit
    chosen = list(keys[start:end])
    has_next = end < len(keys)
    has_previous = start > 0
    return Page(
        keys=chosen,
        next_cursor=encode_cursor("a", chosen[-1]) if has_next and chosen else None,
        previous_cursor=encode_cursor("b", chosen[0]) if has_previous and chosen else None,
        first=not cursor,
        count=len(keys),
    )


def page_body(page: Page, results: list, url: str, params: Mapping[str, str]) -> dict:
    """The paged JSON: ``next``/``previous`` repeat ``params`` and add the cursor; ``count`` only on page one."""

    def link(cursor: str | None) -> str | None:
        return None if cursor is None else f"{url}?{urlencode({**params, 'cursor': cursor})}"

    body: dict = {}
    if page.first:
        body["count"] = page.count
    body.update(next=link(page.next_cursor), previous=link(page.previous_cursor), results=results)
    return body


# ---------------------------------------------------------------------------------------------- licenses
_LICENSE_TEXTS = {
    "CC-0": (
        "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication",
        "https://creativecommons.org/publicdomain/zero/1.0/",
        "The person who associated a work with this deed has dedicated the work to the public domain by waiving\n"
        "all of his or her rights to the work worldwide under copyright law, including all related and\n"
        "neighboring rights, to the extent allowed by law. You can copy, modify, distribute and perform the\n"
        "work, even for commercial purposes, all without asking permission.",
    ),
    "CC-BY": (
        "Attribution 4.0 International (CC BY 4.0)",
        "https://creativecommons.org/licenses/by/4.0/",
        "You are free to share (copy and redistribute the material in any medium or format) and adapt (remix,\n"
        "transform, and build upon the material) for any purpose, even commercially, under the following term:\n"
        "Attribution - you must give appropriate credit, provide a link to the license, and indicate if changes\n"
        "were made. No additional restrictions may be applied.",
    ),
    "CC-BY-NC": (
        "Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
        "https://creativecommons.org/licenses/by-nc/4.0/",
        "You are free to share (copy and redistribute the material in any medium or format) and adapt (remix,\n"
        "transform, and build upon the material) under the following terms: Attribution - you must give\n"
        "appropriate credit, provide a link to the license, and indicate if changes were made.\n"
        "NonCommercial - you may not use the material for commercial purposes.",
    ),
}


def license_text(name: str) -> str | None:
    """The plain-text license the archive serves for CC-0, CC-BY and CC-BY-NC; None for anything else."""
    entry = _LICENSE_TEXTS.get(name)
    if entry is None:
        return None
    title, url, summary = entry
    return f"{title}\n\n{url}\n\n{summary}\n\nThe full legal code is at {url}legalcode\n"
