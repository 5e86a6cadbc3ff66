"""metadata.csv, attribution.txt and licenses/ exactly as isic-cli 12.4.0 writes them.

metadata.csv: columns isic_id, attribution, copyright_license, then the sorted union of the acquisition and
clinical metadata keys; attribution.txt: distinct attributions by image count (descending), then name,
"Anonymous" last, separated by a blank line.
"""
from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from wsm.io.atomic import atomic_path, write_text_atomic

BASE_FIELDS = ["isic_id", "attribution", "copyright_license"]
# Manifest columns that describe the file on disk, not the archive's metadata.
_FILE_FIELDS = {"file", "bytes", "sha256", "width", "height", "source_url"}


def table_metadata_keys(table: pa.Table) -> list[str]:
    """metadata_keys for a manifest table: columns with at least one value."""
    present = [name for name in table.column_names if table[name].null_count < table.num_rows]
    return sorted(set(present) - set(BASE_FIELDS) - _FILE_FIELDS)


def write_metadata_csv(path: Path, table: pa.Table, batch_rows: int = 10_000) -> None:
    """Stream a manifest table into metadata.csv (bytes: csv's \r\n line ends, as in isic-cli's file)."""
    headers = BASE_FIELDS + table_metadata_keys(table)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf8") as fh:
        writer = csv.DictWriter(fh, headers, extrasaction="ignore")
        writer.writeheader()
        for batch in table.select(headers).to_batches(batch_rows):
            for row in batch.to_pylist():
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _named(name: object) -> bool:
    return isinstance(name, str) and bool(name.strip())


def attributions(names: Iterable[str | None]) -> list[str]:
    """Distinct attributions, most images first, then by name, "Anonymous" last; none or blank is left out."""
    counts = Counter(name for name in names if _named(name))
    ordered = sorted(counts.most_common(), key=lambda item: (-item[1], item[0]))
    ordered = sorted(ordered, key=lambda item: item[0] == "Anonymous")
    return [name for name, _ in ordered]


def write_attribution(path: Path, table: pa.Table) -> int:
    """Write attribution.txt; the number of images it could not credit (no attribution in their record)."""
    names = table["attribution"].to_pylist()
    write_text_atomic(path, "\n\n".join(attributions(names)))
    return sum(not _named(name) for name in names)
