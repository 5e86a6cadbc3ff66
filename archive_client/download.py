"""`wsm download`: every image matching a search, with its metadata, complete and verified on disk.

How it stays consistent whatever kills it:
- each image goes through transfer.fetch_file (partial file, Range resume, size check, atomic rename), then
  is decoded all through: the archive gives no checksum, so a file that does not decode is never recorded
  (one resumed from an earlier partial file is first fetched again whole);
- a record's file must come from the archive's own host (or one given with allow_hosts), and so must every
  redirect on the way to it; it must declare a size from 1 byte to max_image_bytes (and, where the record
  gives one, its sha256 is checked); a bad record fails alone, with its reason;
- after the rename, its manifest row is appended to DATA/.wsm/download-journal.jsonl;
- at the end (also after Ctrl-C or an error) the journal is merged into DATA/manifest.parquet, written
  atomically, then the journal is emptied. A rerun replays any journal left by a killed run, and adopts
  (after hashing and decoding) a file that is on disk but in neither, so it only fetches what is missing;
- an unreadable manifest.parquet is renamed aside and rebuilt the same way from the files on disk.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow as pa
import requests

from wsm.errors import ManifestUnreadableError
from wsm.io.atomic import write_text_atomic
from wsm.io.hashing import sha256_file
from wsm.io.images import UNDECODABLE, decode_problem, decoded_size, image_size
from wsm.io.journal import Journal, ManifestBuilder, fold_journal
from wsm.io.lock import exclusive_lock
from wsm.io.progress import progress as progress_bar
from wsm.io.tables import read_table

from . import api
from .errors import ArchiveError, DiskFullError, DownloadError, InvalidInputError
from .ids import check_file_host, check_file_size, check_http_url, check_isic_id, file_extension, parse_host
from .isic_files import write_attribution, write_metadata_csv
from .layout import DataLayout
from .manifest import DATA_MANIFEST_CORE, manifest_row
from .transfer import FetchResult, RetryPolicy, fetch_file, make_session

log = logging.getLogger(__name__)

JOURNAL = "download-journal.jsonl"
MAX_IMAGE_BYTES = 256 << 20   # the archive's largest images are a few tens of MB
# what Pillow raises for a file that is not a complete, readable image


@dataclass(frozen=True)
class DownloadOptions:
    api_url: str = api.DEFAULT_API_URL
    query: str = ""               # the archive's search DSL, passed through verbatim
    collections: str = ""         # comma-separated collection ids
    limit: int = 0                # at most this many images; 0 = all that match
    workers: int = 32             # concurrent file transfers over one pooled session (latency-bound work)
    verify: bool = False          # re-hash files the manifest already lists instead of trusting it
    progress: bool = True
    policy: RetryPolicy = RetryPolicy()
    allow_hosts: tuple[str, ...] = ()   # file hosts (HOST or HOST:PORT) trusted besides the archive's own
    max_image_bytes: int = MAX_IMAGE_BYTES   # a record declaring a larger file is refused

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InvalidInputError(f"--connections {self.workers}: give at least 1 concurrent transfer")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise InvalidInputError(f"--limit {self.limit}: give a number of images, or 0 for every match")
        object.__setattr__(self, "api_url", api.normalise_api_url(self.api_url))
        for host in self.allow_hosts:
            parse_host(host)

    def file_hosts(self) -> list[tuple[str, int | None]]:
        """The hosts the user allows image files to come from, as (host, port or None)."""
        return [parse_host(host) for host in self.allow_hosts]


@dataclass
class DownloadSummary:
    matched: int = 0                      # images the archive reports for the query
    taken: int = 0                        # records processed: matched, or fewer with a limit
    limit: int = 0
    downloaded: int = 0
    skipped: int = 0                      # listed in the manifest and complete (not re-hashed)
    verified: int = 0                     # listed, re-hashed with --verify and intact
    adopted: int = 0                      # on disk from a killed run but not listed: hashed and added
    repeated: int = 0                     # records the search listed again under an isic_id already taken
    failed: dict[str, str] = field(default_factory=dict)
    bytes_downloaded: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        rate = self.bytes_downloaded / 1e6 / self.seconds if self.seconds else 0.0
        taken = "" if self.taken == self.matched else f", {self.taken} taken" + (
            f" (--limit {self.limit})" if self.limit else "")
        out = [
            f"matched {self.matched} images{taken}: downloaded {self.downloaded}, skipped {self.skipped} already "
            f"complete, verified {self.verified} intact, recovered {self.adopted} from an earlier run, "
            f"failed {len(self.failed)}",
            f"{self.bytes_downloaded / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.1f} MB/s)",
        ]
        if self.repeated:
            out.append(f"the search listed {self.repeated} record(s) again under an isic_id it had already listed: "
                       "each image was taken once")
        out += [f"  failed {isic_id}: {reason}" for isic_id, reason in sorted(self.failed.items())[:50]]
        if len(self.failed) > 50:
            out.append(f"  ... and {len(self.failed) - 50} more (see the log with -v)")
        return out


_DONE = {"skip": "skipped", "adopt": "adopted", "verify": "verified", "downloaded": "downloaded"}


@dataclass(frozen=True)
class _Outcome:
    isic_id: str
    action: str                  # downloaded | skipped | verified | adopted | failed
    row: dict | None = None
    reason: str = ""
    nbytes: int = 0


def plan_action(dest: Path, expected_size: int, known: Mapping | None, verify: bool) -> str:
    """skip (listed and complete), verify (listed and complete, --verify: re-hash it), adopt (complete on disk
    but unlisted: hash it) or fetch."""
    if not dest.is_file() or dest.is_symlink():      # a link is replaced, never followed
        return "fetch"
    size = dest.stat().st_size
    if size != expected_size:
        return "fetch"
    if known is not None and known.get("bytes") == size and known.get("sha256"):
        return "verify" if verify else "skip"
    return "adopt"


def _check_on_disk(action: str, dest: Path, known: Mapping | None) -> tuple[str, tuple[int, int]] | None:
    """(sha256, displayed size) of the complete file at dest for skip, adopt and verify; None when it must be
    fetched. skip trusts the manifest's hash; adopt and verify hash the file and decode it all through."""
    if action == "fetch":
        return None
    try:
        size = image_size(dest) if action == "skip" else decoded_size(dest)
    except UNDECODABLE as err:
        log.warning("%s does not decode as an image (%s); fetching it again", dest, decode_problem(err))
        return None
    if action == "skip":
        return known["sha256"], size
    digest = sha256_file(dest)
    if action == "verify" and digest != known["sha256"]:
        log.warning("%s: sha256 %s differs from the manifest's %s; fetching it again", dest, digest, known["sha256"])
        return None
    return digest, size


def _fetch_image(session, url: str, dest: Path, expected: int, partial: Path, opts: DownloadOptions, *,
                 sha256: str | None = None, last_try: bool = False) -> tuple[FetchResult, tuple[int, int]]:
    """fetch_file, then decode the file all through (the archive gives no checksum to check it against).
    A file that does not decode is removed; if part of it came from an earlier partial file, it is fetched
    whole once more before it is given up."""
    def allowed(target: str) -> str:
        return check_file_host(target, opts.api_url, opts.file_hosts())

    result = fetch_file(session, url, dest, expected_size=expected, expected_sha256=sha256, partial=partial,
                        check_url=allowed, policy=opts.policy)
    try:
        return result, decoded_size(dest)
    except UNDECODABLE as err:
        dest.unlink()
        why = decode_problem(err)
        if last_try or not result.resumed:
            raise DownloadError(f"{url}: the {result.bytes} bytes served do not decode as an image ({why}); "
                                "nothing was kept, rerun later to retry") from err
    log.warning("%s: resumed from an earlier partial file but does not decode (%s); fetching it whole again",
                dest, why)
    return _fetch_image(session, url, dest, expected, partial, opts, sha256=sha256, last_try=True)


def _record_sha256(full: Mapping) -> str | None:
    """The sha256 a record gives for its file, if it gives a well-formed one."""
    digest = full.get("sha256")
    return digest.lower() if isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest) else None


def _process(record: Mapping, layout: DataLayout, known: Mapping[str, dict], session,
             opts: DownloadOptions) -> _Outcome:
    isic_id = str(record.get("isic_id"))
    try:
        check_isic_id(record.get("isic_id"))
        full = record["files"]["full"]
        url = check_file_host(check_http_url(full["url"]), opts.api_url, opts.file_hosts())
        expected = check_file_size(full["size"], opts.max_image_bytes)
        dest = layout.image_path(isic_id, file_extension(url))
        action = plan_action(dest, expected, known.get(isic_id), opts.verify)
        found, nbytes = _check_on_disk(action, dest, known.get(isic_id)), 0
        if found is None:
            result, size = _fetch_image(session, url, dest, expected, layout.partial_path(dest), opts,
                                        sha256=_record_sha256(full))
            found, nbytes, action = (result.sha256, size), result.bytes, "downloaded"
        sha256, (width, height) = found
        row = manifest_row(record, file=dest.relative_to(layout.root).as_posix(), nbytes=expected,
                           sha256=sha256, width=width, height=height, source_url=url)
        return _Outcome(isic_id, _DONE[action], row, nbytes=nbytes)
    except DiskFullError:
        raise
    except (ArchiveError, requests.RequestException, KeyError, TypeError, ValueError) as err:
        return _Outcome(isic_id, "failed", reason=f"{err.__class__.__name__}: {err}")


def _known_rows(table: pa.Table) -> dict[str, dict]:
    """isic_id -> what is known verified on disk: file, bytes, sha256."""
    cols = ["isic_id", "file", "bytes", "sha256"]
    return {r["isic_id"]: r for r in table.select(cols).to_pylist()} if table.num_rows else {}


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable, max_pending: int) -> Iterator[Future]:
    """Submit fn(item) for each item, never holding more than max_pending futures; yield them as they finish."""
    pending: set[Future] = set()
    for item in items:
        if len(pending) >= max_pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from done
        pending.add(pool.submit(fn, item))
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from done


def _as_record(record: object) -> Mapping:
    """A search result as a mapping; anything else becomes a record that fails with its text as its id."""
    return record if isinstance(record, Mapping) else {"isic_id": repr(record)[:40]}


def _read_or_set_aside(manifest: Path) -> pa.Table:
    """The DATA manifest; an unreadable one is renamed aside (kept, not deleted) and an empty table returned,
    so that this run lists again the files on disk, each re-hashed and decoded before it is adopted."""
    try:
        return read_table(manifest, DATA_MANIFEST_CORE)
    except ManifestUnreadableError as err:
        aside = manifest.with_name(f"{manifest.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(manifest, aside)
        log.warning("%s is unreadable (%s); kept it as %s and rebuilding it from the verified files on disk",
                    manifest, err.__cause__ or err, aside.name)
        return DATA_MANIFEST_CORE.empty_table()


def download_images(data_root: Path | str, opts: DownloadOptions = DownloadOptions()) -> DownloadSummary:
    """Download every image matching opts into data_root; see the module doc for the guarantees."""
    layout = DataLayout(Path(data_root))
    layout.images.mkdir(parents=True, exist_ok=True)
    summary = DownloadSummary(limit=opts.limit)
    started = time.monotonic()
    with exclusive_lock(layout.root):
        session = make_session(opts.workers, opts.policy)
        journal = Journal(layout.state / JOURNAL)
        table = _read_or_set_aside(layout.manifest)
        if fold_journal(journal, layout.manifest, DATA_MANIFEST_CORE):   # rows a killed run verified, never merged
            table = read_table(layout.manifest, DATA_MANIFEST_CORE)
        builder = ManifestBuilder(layout.manifest, DATA_MANIFEST_CORE)
        known = _known_rows(table)

        summary.matched = api.count_images(session, opts.api_url, opts.query, opts.collections, opts.policy)
        total = min(summary.matched, opts.limit) if opts.limit else summary.matched
        repeated: Counter = Counter()
        records = api.search_images(session, opts.api_url, opts.query, opts.collections, opts.policy, repeated)
        records = map(_as_record, islice(records, opts.limit) if opts.limit else records)
        images_bar = progress_bar(total=total, unit="img", desc="images", enabled=opts.progress, position=0)
        bytes_bar = progress_bar(unit="B", unit_scale=True, desc="bytes ", enabled=opts.progress, position=1)
        recording = threading.Lock()

        def work(record: Mapping) -> _Outcome:
            # the thread that finished a file records it: after Ctrl-C the pool still completes the transfers
            # in flight, and each of them reaches the manifest even though this loop no longer runs
            outcome = _process(record, layout, known, session, opts)
            if outcome.action != "failed":
                with recording:
                    journal.append(outcome.row)
                    builder.add(outcome.row)
            return outcome

        try:
            with ThreadPoolExecutor(opts.workers, thread_name_prefix="wsm-download") as pool:
                for future in _bounded_map(pool, work, records, opts.workers * 4):
                    outcome = future.result()
                    summary.taken += 1
                    if outcome.action == "failed":
                        summary.failed[outcome.isic_id] = outcome.reason
                        log.warning("%s failed: %s", outcome.isic_id, outcome.reason)
                    else:
                        setattr(summary, outcome.action, getattr(summary, outcome.action) + 1)
                        summary.bytes_downloaded += outcome.nbytes
                        bytes_bar.update(outcome.nbytes)
                    images_bar.update(1)
        finally:
            images_bar.close()
            bytes_bar.close()
            with recording:     # a second Ctrl-C can leave transfers running
                manifest = builder.write()
                journal.clear()
            summary.seconds = time.monotonic() - started
            summary.repeated = sum(repeated.values())
        if summary.repeated:
            log.warning("the search listed %d record(s) again under an isic_id already taken (%s); each image was "
                        "taken once", summary.repeated, ", ".join(sorted(repeated)[:5]))
        _write_isic_files(layout, manifest, session, opts)
    return summary


def _write_isic_files(layout: DataLayout, manifest: pa.Table, session, opts: DownloadOptions) -> None:
    """metadata.csv, attribution.txt and licenses/ for every image in the manifest, as isic-cli writes them.
    Images whose record names no attribution or no known licence are counted in a warning, not guessed."""
    if not manifest.num_rows:
        return
    write_metadata_csv(layout.metadata_csv, manifest)
    unattributed = write_attribution(layout.attribution, manifest)
    if unattributed:
        log.warning("%d image(s) have no attribution in their archive record (see metadata.csv); attribution.txt "
                    "lists the others: find whom to credit on the archive before publishing them", unattributed)
    licenses = Counter(manifest["copyright_license"].to_pylist())
    for license_name in sorted(name for name in licenses if name in api.LICENSES):
        text = api.get_license_text(session, opts.api_url, license_name, opts.policy)
        write_text_atomic(layout.licenses / f"{license_name}.txt", text)
    unknown = {name or "none": n for name, n in licenses.items() if name not in api.LICENSES}
    if unknown:
        log.warning("image(s) without a known licence (%s): no licence text was written for them; check their "
                    "terms on the archive before reusing them", ", ".join(f"{k}: {n}" for k, n in unknown.items()))
