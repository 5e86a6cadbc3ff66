"""The manifests wsm writes into DATA: their schemas and rows (reads and writes: :mod:`wsm.io.tables`).

Schemas are also checked in as JSON (manifests/schemas/*.json) so other tools can read them;
tests assert the two agree.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

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

# DATA/attribute_manifest.parquet: one row per (isic_id, challenge, attribute) ISIC 2018 Task 2 attribute mask.
# An image has all five rows or none; positive_pixels 0 means the attribute is absent from the image.
ATTRIBUTE_MANIFEST = pa.schema(
    [
        ("isic_id", pa.string()),
        ("challenge", pa.string()),        # isic2018 | a name given to wsm import
        ("split", pa.string()),            # train | val | test
        ("attribute", pa.string()),        # one of archive_client.challenges.ATTRIBUTES
        ("mask_file", pa.string()),        # relative to DATA: attributes/<challenge>/ISIC_x_attribute_<name>.png
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("positive_pixels", pa.int64()),   # pixels at 255
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


def schema_description(schema: pa.Schema, extra_columns: str | None = None) -> dict:
    """A JSON-friendly description of a manifest schema (checked in under manifests/schemas/)."""
    described = {"columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]}
    if extra_columns:
        described["extra_columns"] = extra_columns
    return described


SCHEMAS = {
    "data_manifest": (DATA_MANIFEST_CORE, "every other archive metadata field, as a nullable string column"),
    "gt_manifest": (GT_MANIFEST, None),
    "attribute_manifest": (ATTRIBUTE_MANIFEST, None),
}


def data_overview(root: Path | str) -> list[str]:
    """What a DATA folder holds, and the natural next command: the closing lines of download and import."""
    from wsm.io.tables import read_table

    from .layout import DataLayout

    layout = DataLayout(Path(root))
    images = read_table(layout.manifest, DATA_MANIFEST_CORE)
    diagnosed = [c for c in images.column_names if c.startswith("diagnosis_")]
    with_diagnosis = 0
    if diagnosed:
        frame = images.select(diagnosed).to_pandas()
        with_diagnosis = int(frame.notna().any(axis=1).sum())
    masks = read_table(layout.gt_manifest, GT_MANIFEST).column("split").to_pylist()
    splits = ", ".join(f"{split} {masks.count(split)}" for split in sorted(set(masks)))
    out = [f"DATA {layout.root}: {images.num_rows} images ({with_diagnosis} with a diagnosis), {len(masks)} official "
           f"masks" + (f" ({splits})" if masks else "")]
    if layout.attribute_manifest.exists():
        out.append(_attribute_overview(read_table(layout.attribute_manifest, ATTRIBUTE_MANIFEST)))
    if layout.attribute_manifest.exists():
        out.append(f"next: wsm train --task attributes --data {layout.root} --out RUN (attribute maps), or "
                   f"`wsm fit --data {layout.root} --out BUNDLE` (lesion maps)")
    elif not masks:
        out.append(f"next: add official masks (`wsm download --challenge isic2018 --out {layout.root}`, or "
                   f"`wsm import --masks DIR --out {layout.root}`), then `wsm fit --data {layout.root} --out BUNDLE`")
    else:
        out.append(f"next: wsm fit --data {layout.root} --out BUNDLE")
    return out


def _attribute_overview(table: pa.Table) -> str:
    """One line: the images with attribute masks, per split, and how many of them show each attribute."""
    split_of: dict[tuple[str, str], str] = {}
    present: Counter[str] = Counter()
    for row in table.select(["isic_id", "challenge", "split", "attribute", "positive_pixels"]).to_pylist():
        split_of[(row["isic_id"], row["challenge"])] = row["split"]
        present[row["attribute"]] += bool(row["positive_pixels"])
    line = f"attribute masks for {len(split_of)} images"
    if split_of:
        splits = ", ".join(f"{split} {n}" for split, n in sorted(Counter(split_of.values()).items()))
        line += f" ({splits}); images showing " + ", ".join(f"{name} {present[name]}" for name in sorted(present))
    return line
