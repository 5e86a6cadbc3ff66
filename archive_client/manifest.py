"""The manifests wsm writes into DATA: their schemas, and atomic Parquet reads and writes.

Schemas are also checked in as JSON (manifests/schemas/*.json) so other tools can read them;
tests assert the two agree.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import atomic_path
from .errors import ManifestUnreadableError

# DATA/manifest.parquet: one row per image. Every other acquisition / clinical metadata field of the
# archive record follows these as a nullable string column named as in isic-cli's metadata.csv.
DATA_MANIFEST_CORE = pa.schema(
    [
        ("isic_id", pa.string()),            # ISIC_ddddddd
        ("file", pa.string()),               # image path relative to DATA, e.g. images/ISIC_0000000.jpg
        ("bytes", pa.int64()),               # file size on disk
        ("sha256", pa.string()),             # hex digest of the file on disk
        ("width", pa.int32()),               # pixels, read from the file header
        ("height", pa.int32()),
        ("image_type", pa.string()),         # dermoscopic, clinical: close-up, ...
        ("diagnosis_1", pa.string()),
        ("diagnosis_2", pa.string()),
        ("diagnosis_3", pa.string()),
        ("diagnosis_4", pa.string()),
        ("diagnosis_5", pa.string()),
        ("copyright_license", pa.string()),  # CC-0, CC-BY, CC-BY-NC
        ("attribution", pa.string()),
        ("source_url", pa.string()),         # where the file came from (file:// for wsm import)
    ]
)

# DATA/gt_manifest.parquet: one row per (isic_id, challenge) official mask.
GT_MANIFEST = pa.schema(
    [
        ("isic_id", pa.string()),
        ("challenge", pa.string()),   # isic2016 | isic2017 | isic2018 | a name given to wsm import
        ("split", pa.string()),       # train | val | test
        ("mask_file", pa.string()),   # relative to DATA, e.g. masks/isic2018/ISIC_0000000_segmentation.png
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

_CORE_NAMES = set(DATA_MANIFEST_CORE.names)


def metadata_fields(record: Mapping) -> dict[str, str | None]:
    """The acquisition and clinical fields of an archive image record, flattened, as strings.

    Values are stringified the way csv.DictWriter writes them (so the manifest and metadata.csv agree);
    booleans keep Python's spelling, missing values stay None.
    """
    meta = record.get("metadata") or {}
    flat: dict[str, str | None] = {}
    for group in ("acquisition", "clinical"):
        for key, value in (meta.get(group) or {}).items():
            flat[key] = None if value is None else str(value)
    return flat


def manifest_row(record: Mapping, *, file: str, nbytes: int, sha256: str, width: int, height: int,
                 source_url: str) -> dict:
    """One DATA manifest row from an archive image record and what was verified on disk."""
    meta = metadata_fields(record)
    row = {name: meta.get(name) for name in _CORE_NAMES}
    row.update(
        isic_id=record["isic_id"],
        file=file,
        bytes=nbytes,
        sha256=sha256,
        width=width,
        height=height,
        copyright_license=record.get("copyright_license"),
        attribution=record.get("attribution"),
        source_url=source_url,
    )
    row.update({k: v for k, v in meta.items() if k not in _CORE_NAMES})
    return row


def rows_to_table(rows: Iterable[Mapping], core: pa.Schema) -> pa.Table:
    """A table with the core schema first, then any extra columns as nullable strings, sorted by name."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(core.names))
    schema = pa.schema(list(core) + [pa.field(name, pa.string()) for name in extra])
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def write_table_atomic(table: pa.Table, dest: Path | str) -> None:
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path | str, core: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read a manifest, or an empty one with the core schema if the file does not exist yet;
    ManifestUnreadableError if it exists but is not readable Parquet."""
    path = Path(path)
    if not path.exists():
        return core.empty_table().select(columns or core.names)
    try:
        return pq.read_table(path, columns=columns)
    except pa.ArrowException as err:
        raise ManifestUnreadableError(
            f"{path} is damaged ({err.__class__.__name__}: {err}); move it aside and rerun the command that "
            "wrote it (`wsm download` rebuilds it from the files on disk, verifying each)") from err


def merge_tables(old: pa.Table, new: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """Old rows whose key is not in ``new``, plus ``new``; columns unified (missing ones null), sorted by key."""
    if old.num_rows and new.num_rows:
        old_keys = _key_array(old, key)
        old = old.filter(pc.invert(pc.is_in(old_keys, value_set=_key_array(new, key))))
    merged = pa.concat_tables([t for t in (old, new) if t.num_rows] or [new], promote_options="default")
    return merged.sort_by([(k, "ascending") for k in key])


def _key_array(table: pa.Table, key: tuple[str, ...]) -> pa.Array:
    columns = [pc.cast(table[k], pa.string()) for k in key]
    return columns[0] if len(columns) == 1 else pc.binary_join_element_wise(*columns, "\x1f")


def merge_rows(old: pa.Table, new_rows: Iterable[Mapping], core: pa.Schema, key: tuple[str, ...]) -> pa.Table:
    """merge_tables for rows given as dicts."""
    return merge_tables(old, rows_to_table(new_rows, core), key)


def schema_description(schema: pa.Schema, extra_columns: str | None = None) -> dict:
    """A JSON-friendly description of a manifest schema (checked in under manifests/schemas/)."""
    described = {"columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]}
    if extra_columns:
        described["extra_columns"] = extra_columns
    return described


SCHEMAS = {
    "data_manifest": (DATA_MANIFEST_CORE, "every other archive metadata field, as a nullable string column"),
    "gt_manifest": (GT_MANIFEST, None),
}
