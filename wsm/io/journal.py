"""Crash-safe bookkeeping for long runs: an append-only journal of finished rows, and a manifest writer.

A run appends a row to its journal only after the file the row describes is complete under its final name.
At the end (or the start of the next run, after a kill) the journal is merged into the manifest, written
atomically, and then emptied; so the manifest only ever lists complete files.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from wsm.io.tables import REWRITE_DATA_MANIFEST, merge_tables, read_table, rows_to_table, write_table_atomic

log = logging.getLogger(__name__)

_FLUSH_S = 0.5        # default: a row lost to a kill costs only a re-check of its file on the next run
_BATCH_ROWS = 5000    # rows kept as Python dicts before they are packed into an Arrow batch


class Journal:
    """Append-only JSON lines of rows whose files are complete.

    Rows reach the file at most ``flush_s`` seconds after they are appended (0: at once, where a lost row costs
    redoing its file rather than re-checking it).
    """

    def __init__(self, path: Path, flush_s: float = _FLUSH_S):
        self.path = Path(path)
        self.flush_s = flush_s
        self._fh = None
        self._flushed = 0.0

    def replay(self) -> list[dict]:
        rows = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    log.debug("ignoring a torn journal line (the process died while writing it)")
        return rows

    def append(self, row: Mapping) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf8")
            self._flushed = time.monotonic()
        self._fh.write(json.dumps(row, default=str) + "\n")
        # flushing every row stalls a coordinating thread under GIL contention: a download keeps the default
        if time.monotonic() - self._flushed >= self.flush_s:
            self._fh.flush()
            self._flushed = time.monotonic()

    def clear(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


class ManifestBuilder:
    """Collects new rows compactly (Arrow batches) and merges them into a manifest, atomically, by key."""

    def __init__(self, path: Path, core: pa.Schema, key: tuple[str, ...] = ("isic_id",),
                 remedy: str = REWRITE_DATA_MANIFEST):
        self.path, self.core, self.key, self.remedy = Path(path), core, key, remedy   # remedy: see read_table
        self.pending: list[dict] = []
        self.tables: list[pa.Table] = []

    def add(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= _BATCH_ROWS:
            self._pack()

    def _pack(self) -> None:
        if self.pending:
            self.tables.append(rows_to_table(self.pending, self.core))
            self.pending = []

    def write(self) -> pa.Table:
        self._pack()
        old = read_table(self.path, self.core, remedy=self.remedy)
        if not self.tables:
            if not self.path.exists():
                write_table_atomic(old, self.path)
            return old
        new = pa.concat_tables(self.tables, promote_options="default")
        merged = merge_tables(old, new, self.key)
        write_table_atomic(merged, self.path)
        return merged


def fold_journal(journal: Journal, builder_path: Path, core: pa.Schema, remedy: str = REWRITE_DATA_MANIFEST) -> int:
    """Merge what a killed run left in its journal into the manifest; returns the rows recovered."""
    rows = journal.replay()
    if rows:
        builder = ManifestBuilder(builder_path, core, remedy=remedy)
        for row in rows:
            builder.add(row)
        builder.write()
    journal.clear()
    return len(rows)
