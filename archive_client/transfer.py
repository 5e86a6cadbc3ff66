"""One verified, resumable file transfer over a pooled HTTP session.

A file is streamed to a hidden partial file in the destination folder (`.NAME.part`), resumed with an
HTTP Range request after a dropped connection or a truncated body (also across runs), checked against
the expected size, hashed, fsynced and only then renamed onto its final name. So no partial file is
ever visible under the final name, whatever kills the process. Nothing is read past the expected size: a
server that sends more is refused and the partial file removed.

What a resume continues is checked: the server's validators of the file (ETag, Last-Modified, size) are kept
beside the partial file (`.NAME.part.json`) and sent back with If-Range; a 206 answer must start at the byte
asked for and describe the same file, else the partial file is discarded and the file fetched from byte 0. A
partial file is never followed if it is a link (it is opened with O_NOFOLLOW), redirects are followed only to
URLs the caller's check accepts, and a file that takes longer than its time limit is given up on.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial as bind
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from wsm.io.atomic import fsync_dir, write_json

from . import __name__ as _pkg
from .errors import ArchiveResponseError, DiskFullError, DownloadError
from .ids import check_http_url, check_same_host

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
    file_grace_s: float = 120.0       # a file may take this long plus its size at min_rate_bps, tries and waits
    min_rate_bps: float = 16_000.0    # included, then it is given up on (a server trickling bytes); 0: no limit
    max_redirects: int = 5            # redirects followed per request, each target checked like the URL itself


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


def get_checked(session: requests.Session, url: str, check_url: Callable[[str], str], max_redirects: int,
                **kwargs) -> requests.Response:
    """``session.get(url, **kwargs)``, following at most max_redirects redirects itself, each target passed
    through check_url first (which raises to refuse it): requests alone would follow a redirect to any host."""
    for _ in range(max_redirects + 1):
        response = session.get(url, allow_redirects=False, **kwargs)
        if not response.is_redirect:
            return response
        target = urljoin(url, session.get_redirect_target(response))
        response.close()
        url = check_url(check_http_url(target))
    raise DownloadError(f"{url}: more than {max_redirects} redirects in a row (a loop?); nothing was fetched")


def iter_body(response: requests.Response, chunk_bytes: int) -> Iterator[bytes]:
    """The body in blocks of at most chunk_bytes, each from at most one read on the socket: unlike iter_content,
    which fills whole blocks, this returns control however slowly the bytes come. urllib3's errors become
    requests' own, as iter_content makes them."""
    try:
        while block := response.raw.read1(chunk_bytes, decode_content=True):
            yield block
    except urllib3.exceptions.ProtocolError as err:
        raise requests.exceptions.ChunkedEncodingError(err) from err
    except urllib3.exceptions.DecodeError as err:
        raise requests.exceptions.ContentDecodingError(err) from err
    except urllib3.exceptions.ReadTimeoutError as err:
        raise requests.ConnectionError(err) from err
    except urllib3.exceptions.SSLError as err:
        raise requests.exceptions.SSLError(err) from err


def read_body(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    """The whole body; ArchiveResponseError past max_bytes (a body announced larger is not read at all),
    requests.Timeout when it is not complete by the time.monotonic() ``deadline``."""
    too_large = ArchiveResponseError(f"{response.url} answered more than {max_bytes} bytes; stopped reading there")
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > max_bytes:
        raise too_large
    body = bytearray()
    for block in iter_body(response, 1 << 16):
        body += block
        if len(body) > max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise requests.Timeout(f"{response.url}: the answer was still incomplete when its time ran out")
    return bytes(body)


def _snippet(response: requests.Response) -> bytes:
    """The first bytes of an error answer (never the whole of a body that may not end)."""
    try:
        return next(iter_body(response, 200), b"")
    except requests.RequestException:
        return b""


class _TimeLimit:
    """How long one file may take, its tries and the waits between them included: the policy's grace plus the
    file's size at the policy's minimum rate (the size once known; until then, the bytes received so far)."""

    def __init__(self, url: str, policy: RetryPolicy, size: int | None):
        self.url, self.grace, self.rate, self.size = url, policy.file_grace_s, policy.min_rate_bps, size
        self.started = time.monotonic()

    def left(self, received: int) -> float:
        if not self.rate:
            return float("inf")
        size = received if self.size is None else self.size
        return self.started + self.grace + size / self.rate - time.monotonic()

    def check(self, received: int) -> None:
        if self.left(received) < 0:
            of = "" if self.size is None else f" of {self.size}"
            raise DownloadError(
                f"{self.url}: gave up after {time.monotonic() - self.started:.0f} s with {received}{of} bytes, "
                f"slower than {self.rate / 1000:g} kB/s on average; rerun later to resume it (--min-rate sets "
                "the slowest rate accepted)")


class _StartOver(Exception):
    """The partial file cannot be continued and was discarded: the next try fetches the file from byte 0."""


def _not_regular(path: Path) -> DownloadError:
    return DownloadError(f"{path} is not a regular file (a folder, a device or a link) where wsm keeps a partial "
                         "download; remove it and rerun")


def _regular_exists(path: Path) -> bool:
    """Whether a regular file is at path. A link there is removed, never followed (it was not written by wsm);
    anything else that is not a regular file is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        log.warning("%s is a link, not a file wsm wrote: removed the link (what it points to is untouched)", path)
        path.unlink()
        return False
    if not stat.S_ISREG(mode):
        raise _not_regular(path)
    return True


def _open_regular(path: Path, flags: int, mode: str):
    """path opened with os.open flags, never through a link (O_NOFOLLOW) nor blocking on a FIFO, and only if it
    is a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _not_regular(path) from err
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_regular(path)
    return os.fdopen(fd, mode)


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, whole size) from 'Content-Range: bytes 100-199/200'; None for what is absent or unknown."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _validators(response: requests.Response, size: int | None) -> dict:
    """What identifies the version of a file a response is (part of)."""
    return {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified"),
            "size": size}


class _Partial:
    """The partial file, the sha256 of exactly the bytes it holds, and the validators of the file it is the start
    of, kept beside it (NAME.json) for a later run. One without validators cannot be checked: it is discarded."""

    def __init__(self, path: Path):
        self.path, self.meta = path, path.with_name(path.name + ".json")
        self.meta_tmp = path.with_name(path.name + ".json.tmp")   # NAME.json while it is written
        self.meta_tmp.unlink(missing_ok=True)   # left by a run killed while writing it (a link: removed, not followed)
        self.validators = self._read_validators()
        self.reload()
        self.continued = self.size > 0     # holds bytes from an earlier try or run
        if self.size and not self.validators:
            log.info("%s: no record of which file it is the start of; fetching that file from byte 0", path)
            self.discard()

    def _read_validators(self) -> dict:
        if not _regular_exists(self.meta):
            return {}
        with _open_regular(self.meta, os.O_RDONLY, "rb") as fh:
            try:
                kept = json.loads(fh.read(1 << 12))
            except ValueError:
                return {}
        return {key: kept.get(key) for key in ("etag", "last_modified", "size")} if isinstance(kept, dict) else {}

    def reload(self) -> None:
        """Hash what the partial file holds (after a body cut short: what reached the disk)."""
        self.digest, self.size = hashlib.sha256(), 0
        if _regular_exists(self.path):
            with _open_regular(self.path, os.O_RDONLY, "rb") as fh:
                self.digest = hashlib.file_digest(fh, "sha256")
                self.size = fh.tell()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)      # a link is removed, never followed
        self.meta.unlink(missing_ok=True)
        self.digest, self.size, self.validators, self.continued = hashlib.sha256(), 0, {}, False

    def resume_headers(self) -> dict:
        """Range from the next byte, If-Range with the validator the server gave: if the file changed, the
        server answers the whole of it instead."""
        if not self.size:
            return {}
        etag, modified = self.validators.get("etag"), self.validators.get("last_modified")
        validator = etag if etag and not etag.startswith("W/") else modified
        return {"Range": f"bytes={self.size}-", **({"If-Range": validator} if validator else {})}

    def resume_problem(self, response: requests.Response) -> str | None:
        """Why a 206 answer does not continue this partial file, or None if it does."""
        start, total = _content_range(response)
        if start != self.size:
            return f"asked to resume at byte {self.size}, the server answered {response.headers.get('Content-Range')!r}"
        for key, value in _validators(response, total).items():
            kept = self.validators.get(key)
            if kept is not None and value != kept:
                return f"the file changed on the server since the partial file was started ({key} {kept!r}, " \
                       f"now {value!r})"
        return None

    def append(self):
        """The partial file open at its end, to continue it."""
        try:
            fh = _open_regular(self.path, os.O_WRONLY | os.O_APPEND, "ab")
        except FileNotFoundError as err:
            raise _StartOver("the partial file is gone") from err
        self.continued = True
        return fh

    def restart(self, validators: dict):
        """Empty the partial file, then record the validators of the file it now receives; returns it open."""
        _regular_exists(self.path)          # a link planted since is removed rather than refused
        fh = _open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb")
        write_json(self.meta, validators, fixed_tmp=self.meta_tmp)   # a kill leaves meta_tmp: __init__ removes it
        self.digest, self.size, self.validators, self.continued = hashlib.sha256(), 0, validators, False
        return fh

    def add(self, block: bytes) -> None:
        self.digest.update(block)
        self.size += len(block)

    def finish(self, dest: Path) -> None:
        """Rename the complete partial file onto dest. Its validators go first: killed in between, a rerun
        fetches the file again rather than keep them forever beside an image it does not look at."""
        if not _regular_exists(self.path):
            raise _not_regular(self.path)
        self.meta.unlink(missing_ok=True)
        os.replace(self.path, dest)
        fsync_dir(dest.parent)


def _check_sizes(response: requests.Response, url: str, start: int, expected_size: int | None) -> int | None:
    """The whole file's size as the answer announces it (None: not announced); DownloadError if that or where
    the body says it ends is not the record's size."""
    length = response.headers.get("Content-Length", "")
    end = start + int(length) if length.isdigit() else None
    total = _content_range(response)[1] if response.status_code == 206 else end
    for announced in (end, total):
        if None not in (expected_size, announced) and announced != expected_size:
            raise DownloadError(f"{url}: the server announces {announced} bytes but the record says {expected_size}; "
                                "the record or the server is wrong, the file was not kept")
    return total


def _stream_once(session, url, part: _Partial, expected_size, check_url, limit: _TimeLimit, policy) -> None:
    """One request: append to (or restart) the partial file. Raises on stream errors."""
    offset = part.size
    timeout = (policy.connect_timeout_s, max(0.01, min(policy.read_timeout_s, limit.left(offset))))
    with get_checked(session, url, check_url, policy.max_redirects, headers=part.resume_headers(), stream=True,
                     timeout=timeout) as response:
        status = response.status_code
        if status == 416 and offset:
            part.discard()
            raise _StartOver("range not satisfiable; restarting from byte 0")
        if status in RETRY_STATUS:
            raise requests.ConnectionError(f"HTTP {status} after retries")
        if status not in (200, 206) or (status == 206 and not offset):
            raise DownloadError(f"GET {url} answered HTTP {status}: {_snippet(response)!r}")
        problem = part.resume_problem(response) if status == 206 else None
        if problem:
            part.discard()
            raise _StartOver(f"{problem}; discarded the partial file")
        total = _check_sizes(response, url, offset if status == 206 else 0, expected_size)
        if limit.size is None:
            limit.size = total
        fh = part.append() if status == 206 else part.restart(_validators(response, total))
        try:
            with fh:
                overflow = _write_body(response, fh, part, expected_size, limit, policy)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFullError(errno.ENOSPC, f"disk full while writing {part.path}; free space and rerun "
                                                  "(complete files are kept)") from err
            raise
        if overflow:
            part.discard()
            raise DownloadError(f"{url}: the server sent more than the {expected_size} bytes the record declares; "
                                "stopped reading there and kept nothing (the record or the server is wrong)")


def _write_body(response: requests.Response, fh, part: _Partial, expected_size: int | None, limit: _TimeLimit,
                policy: RetryPolicy) -> bool:
    """Append the body to fh, never past expected_size nor the time limit; True if the server had more to send
    than expected_size."""
    for block in iter_body(response, policy.chunk_bytes):
        if expected_size is not None and part.size + len(block) > expected_size:
            return True
        fh.write(block)
        part.add(block)
        limit.check(part.size)
    return False


def _transfer(session, url: str, part: _Partial, expected_size: int | None, check_url, policy: RetryPolicy) -> None:
    """Fill the partial file with the whole file: retried, resumed and timed as the module doc says."""
    limit = _TimeLimit(url, policy, expected_size)
    last_error: Exception | None = None
    for attempt in range(policy.attempts):
        limit.check(part.size)
        try:
            _stream_once(session, url, part, expected_size, check_url, limit, policy)
        except (*_STREAM_ERRORS, _StartOver) as err:
            last_error = err
            part.reload()            # a body cut short: what was written is on disk; resynchronise the hash with it
            wait = min(policy.backoff_s * 2**attempt, policy.backoff_max_s, max(0.0, limit.left(part.size)))
            log.debug("retrying %s in %.2fs after %s", url, wait, err)
            time.sleep(wait)
            continue
        except requests.RequestException as err:      # not worth another try: a bad URL, a bad redirect...
            raise DownloadError(f"{url}: {err.__class__.__name__}: {err}") from err
        if expected_size is None or part.size == expected_size:
            return
    raise DownloadError(f"gave up on {url} after {policy.attempts} tries: {last_error}")


def fetch_file(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    partial: Path | None = None,
    check_url: Callable[[str], str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> FetchResult:
    """Download ``url`` to ``dest`` atomically; resume, retry and verify as described in the module doc.

    A redirect is followed only to a URL that check_url returns (it raises to refuse one; by default only the
    host and port of url are accepted). A file whose bytes do not hash to expected_sha256 is never kept; if it
    was resumed from an earlier partial file, it is first fetched whole once more."""
    check_http_url(url)
    if expected_size is not None and expected_size < 1:
        raise DownloadError(f"{url}: expected size {expected_size}; a file to fetch has at least one byte")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Partial(partial or dest.parent / f".{dest.name}.part")
    if expected_size is not None and part.size >= expected_size:
        part.discard()     # complete, or more: whether it is the server's file cannot be checked by resuming it
    check_url = check_url or bind(check_same_host, origin=url)
    while True:
        _transfer(session, url, part, expected_size, check_url, policy)
        digest = part.digest.hexdigest()
        if expected_sha256 is None or digest == expected_sha256:
            break
        resumed = part.continued
        part.discard()
        if not resumed:
            raise DownloadError(f"{url}: the bytes served hash to sha256 {digest}, the record says "
                                f"{expected_sha256}; nothing was kept, rerun later to retry")
        log.warning("%s: resumed from an earlier partial file, its sha256 is not the record's; fetching it whole",
                    url)
    part.finish(dest)
    return FetchResult(dest, part.size, digest, part.continued)
