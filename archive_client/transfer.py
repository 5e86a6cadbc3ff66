"""One verified, resumable file transfer over a pooled HTTP session.

A file is streamed to a hidden partial file in the destination folder (`.NAME.part`), resumed with an
HTTP Range request after a dropped connection or a truncated body (also across runs), checked against
the expected size, hashed, fsynced and only then renamed onto its final name. So no partial file is
ever visible under the final name, whatever kills the process. Nothing is read past the expected size: a
server that sends more is refused and the partial file removed.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from wsm.io.atomic import fsync_dir
from wsm.io.hashing import hash_file

from . import __name__ as _pkg
from .errors import DiskFullError, DownloadError
from .ids import check_http_url

log = logging.getLogger(__name__)


class _RetriesAtDebug(logging.Filter):
    """urllib3 warns on each retry it makes (even with -q); they are expected, so they go to wsm's debug log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Retrying"):
            log.debug("urllib3: %s", record.getMessage())
            return False
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RetriesAtDebug())

RETRY_STATUS = (429, 500, 502, 503, 504)
_STREAM_ERRORS = (
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.Timeout,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8                 # tries per file or API request (and per status code, through urllib3)
    backoff_s: float = 0.25           # first wait; doubles each try
    backoff_max_s: float = 20.0       # longest wait between tries (Retry-After is honoured above it)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0      # silence on an open connection before it counts as dropped
    api_budget_s: float = 120.0       # an API request without a good answer after this long is given up
    chunk_bytes: int = 1 << 16        # small enough that a truncated body keeps most of what arrived


@dataclass(frozen=True)
class FetchResult:
    path: Path
    bytes: int
    sha256: str
    resumed: bool        # some bytes came from an earlier attempt or run


def user_agent() -> str:
    from wsm import __version__

    return f"wsm/{__version__} ({_pkg})"


def make_session(workers: int = 16, policy: RetryPolicy = RetryPolicy()) -> requests.Session:
    """A session with a connection pool sized for ``workers`` threads and urllib3 retries on 429 / 5xx
    (honouring Retry-After) and on connections dropped before a response arrives. A connection that cannot be
    made is not retried here: api and fetch_file retry it themselves (two layers would multiply the waits)."""
    retry = Retry(
        total=policy.attempts,
        connect=0,
        read=policy.attempts,
        status=policy.attempts,
        backoff_factor=policy.backoff_s,
        backoff_max=policy.backoff_max_s,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=workers + 4, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent()
    return session


def _content_range_start(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


class _HashedPartial:
    """The partial file and the sha256 of exactly the bytes it holds, kept up to date while streaming."""

    def __init__(self, path: Path):
        self.path = path
        self.digest, self.size = hashlib.sha256(), 0
        if path.exists() and path.stat().st_size:   # left by an earlier attempt or run: hash what is there
            self.digest, self.size = hash_file(path), path.stat().st_size

    def restart(self) -> None:
        self.digest, self.size = hashlib.sha256(), 0

    def add(self, block: bytes) -> None:
        self.digest.update(block)
        self.size += len(block)


def _stream_once(session, url, part: _HashedPartial, expected_size, policy) -> None:
    """One request: append to (or restart) the partial file. Raises on stream errors."""
    partial = part.path
    offset = part.size
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    timeout = (policy.connect_timeout_s, policy.read_timeout_s)
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            # our partial file is not a prefix the server can continue: start over
            partial.unlink(missing_ok=True)
            part.restart()
            raise requests.ConnectionError("range not satisfiable; restarting from byte 0")
        if response.status_code in RETRY_STATUS:
            raise requests.ConnectionError(f"HTTP {response.status_code} after retries")
        if response.status_code not in (200, 206):
            raise DownloadError(f"GET {url} answered HTTP {response.status_code}: {response.text[:200]!r}")
        resuming = response.status_code == 206 and _content_range_start(response) == offset
        start = offset if resuming else 0
        length = response.headers.get("Content-Length")
        if expected_size is not None and length is not None and start + int(length) != expected_size:
            raise DownloadError(
                f"{url}: the server announces {start + int(length)} bytes but the record says "
                f"{expected_size}; the record or the server is wrong, the file was not kept"
            )
        if not resuming:
            part.restart()
        try:
            with open(partial, "ab" if resuming else "wb") as fh:
                overflow = _write_body(response, fh, part, expected_size, policy)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFullError(
                    errno.ENOSPC, f"disk full while writing {partial}; free space and rerun (complete files are kept)"
                ) from err
            raise
        if overflow:
            partial.unlink(missing_ok=True)
            part.restart()
            raise DownloadError(f"{url}: the server sent more than the {expected_size} bytes the record declares; "
                                "stopped reading there and kept nothing (the record or the server is wrong)")


def _write_body(response: requests.Response, fh, part: _HashedPartial, expected_size: int | None,
                policy: RetryPolicy) -> bool:
    """Append the body to fh, never past expected_size; True if the server had more to send than that."""
    for block in response.iter_content(policy.chunk_bytes):
        if expected_size is not None and part.size + len(block) > expected_size:
            return True
        fh.write(block)
        part.add(block)
    return False


def fetch_file(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    partial: Path | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> FetchResult:
    """Download ``url`` to ``dest`` atomically; resume, retry and verify as described in the module doc."""
    check_http_url(url)
    if expected_size is not None and expected_size < 1:
        raise DownloadError(f"{url}: expected size {expected_size}; a file to fetch has at least one byte")
    dest = Path(dest)
    partial = partial or dest.parent / f".{dest.name}.part"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _HashedPartial(partial)
    resumed = part.size > 0
    last_error: Exception | None = None
    for attempt in range(policy.attempts):
        if expected_size is not None and part.size > expected_size:
            partial.unlink()
            part.restart()
        elif expected_size is not None and part.size == expected_size:
            break
        try:
            _stream_once(session, url, part, expected_size, policy)
        except _STREAM_ERRORS as err:
            last_error = err
            # a body cut short: what was written is on disk; resynchronise the hash with it
            part = _HashedPartial(partial)
            resumed = resumed or part.size > 0
            wait = min(policy.backoff_s * 2**attempt, policy.backoff_max_s)
            log.debug("retrying %s in %.2fs after %s", url, wait, err)
            time.sleep(wait)
            continue
        if expected_size is None or part.size == expected_size:
            break
    else:
        raise DownloadError(f"gave up on {url} after {policy.attempts} tries: {last_error}")
    if expected_size is not None and part.size != expected_size:
        raise DownloadError(f"{url}: got {part.size} bytes, the record says {expected_size}")
    size, digest = part.size, part.digest.hexdigest()
    os.replace(partial, dest)
    fsync_dir(dest.parent)
    return FetchResult(dest, size, digest, resumed)
