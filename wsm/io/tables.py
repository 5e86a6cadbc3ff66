"""Parquet tables written atomically: the manifests of DATA and WSM folders and the journals' merges."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wsm.errors import ManifestUnreadableError
from wsm.io.atomic import atomic_path


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


# What to do about a damaged DATA manifest.parquet (the default of the readers below); each other table's reader
# names the command that writes it.
REWRITE_DATA_MANIFEST = ("move it aside and rerun the command that wrote it (`wsm download` rebuilds it from the "
                         "files on disk, verifying each)")


@contextlib.contextmanager
def parquet_errors(path: Path | str, remedy: str = REWRITE_DATA_MANIFEST) -> Iterator[None]:
    """Turn the errors of reading a damaged Parquet file (truncated, not Parquet, an I/O error) into one
    ManifestUnreadableError that names the file and says what to do (``remedy``)."""
    try:
        yield
    except (PermissionError, FileNotFoundError):
        raise                   # not damaged: the CLI names the file and says what to do
    except (pa.ArrowException, OSError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ManifestUnreadableError(f"{path} is damaged ({err.__class__.__name__}: {detail}); {remedy}") from err


def read_table(path: Path | str, core: pa.Schema, columns: list[str] | None = None,
               remedy: str = REWRITE_DATA_MANIFEST) -> pa.Table:
    """Read a manifest, or an empty one with the core schema if the file does not exist yet;
    ManifestUnreadableError (saying ``remedy``) if it exists but is not readable Parquet."""
    path = Path(path)
    if not path.exists():
        return core.empty_table().select(columns or core.names)
    with parquet_errors(path, remedy):
        return pq.read_table(path, columns=columns)


def read_frame(path: Path | str, columns: list[str] | None = None, remedy: str = REWRITE_DATA_MANIFEST):
    """An existing Parquet file as a pandas DataFrame; ManifestUnreadableError (saying ``remedy``) if damaged."""
    import pandas as pd

    with parquet_errors(path, remedy):
        return pd.read_parquet(path, columns=columns)


def table_columns(path: Path | str, remedy: str = REWRITE_DATA_MANIFEST) -> list[str]:
    """The column names of an existing Parquet file (its footer only); ManifestUnreadableError if damaged."""
    with parquet_errors(path, remedy):
        return pq.read_schema(path).names


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
