"""The ISIC archive API v2: one small function per endpoint, and a generator that follows cursor pages.

Base URL https://api.isic-archive.com/api/v2/ (configurable). Search pages look like
``{"count", "next", "previous", "results"}``; ``limit`` is clamped to 100 by the server, ``count`` is only on
the first page and ``next`` is followed verbatim. A bad query gets HTTP 400 ``{"message": ...}``.

What a broken or hostile server can make of this is bounded: an answer larger than MAX_ANSWER_BYTES is not
read, a request gets at most RetryPolicy.api_budget_s, and paging stops past the pages the first page's
``count`` needs (plus some slack), at a ``next`` already followed, or at a page that brings no new image.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import requests

from .errors import ArchiveResponseError, ArchiveUnreachableError, QueryError
from .ids import check_http_url
from .transfer import RetryPolicy, read_body

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.isic-archive.com/api/v2/"
PAGE_LIMIT = 100           # the server's maximum page size
MAX_ANSWER_BYTES = 32 << 20    # a page of 100 image records is a few hundred KB
LICENSES = ("CC-0", "CC-BY", "CC-BY-NC")


class _Retryable(Exception):
    """A failed try that another try may fix; ``unreachable``: no connection could be made."""

    def __init__(self, problem: str, unreachable: bool = False):
        super().__init__(problem)
        self.problem, self.unreachable = problem, unreachable


def _get_once(session: requests.Session, url: str, params: dict | None, timeout: tuple[float, float],
              deadline: float, parse: Callable[[bytes], object]) -> object:
    """One GET: parse(body), QueryError for HTTP 400, _Retryable for what may go better on another try."""
    try:
        with session.get(url, params=params, timeout=timeout, stream=True) as response:
            status, body = response.status_code, read_body(response, MAX_ANSWER_BYTES, deadline)
    except requests.ConnectionError as err:
        raise _Retryable(_no_connection(err), unreachable=True) from err
    except requests.RequestException as err:
        raise _Retryable(f"no answer ({err.__class__.__name__}: {err})") from err
    if status == 400:
        raise QueryError(f"the archive refused the request: {_message(body)}")
    if status >= 400:
        raise _Retryable(f"HTTP {status}: {_message(body)}")
    try:
        return parse(body)
    except ValueError as err:
        raise _Retryable(f"malformed answer ({err}); first bytes {body[:80]!r}") from err


def _get(session: requests.Session, url: str, params: dict | None, policy: RetryPolicy,
         parse: Callable[[bytes], object]) -> object:
    """GET ``url`` and return ``parse(body)``; 400 becomes QueryError, a body over MAX_ANSWER_BYTES
    ArchiveResponseError.

    No connection, an error status or an answer ``parse`` rejects (ValueError) is retried with backoff, for at
    most ``policy.attempts`` tries and ``policy.api_budget_s`` seconds (answers that trickle in included); then
    ArchiveUnreachableError (no connection on the last try) or ArchiveResponseError.
    """
    check_http_url(url)
    started = time.monotonic()
    for attempt in range(1, max(1, policy.attempts) + 1):
        left = policy.api_budget_s - (time.monotonic() - started)
        timeout = (max(0.1, min(policy.connect_timeout_s, left)), policy.read_timeout_s)
        try:
            return _get_once(session, url, params, timeout, started + policy.api_budget_s, parse)
        except _Retryable as err:
            failure = err
        wait = min(policy.backoff_s * 2 ** (attempt - 1), policy.backoff_max_s)
        if time.monotonic() - started + wait >= policy.api_budget_s:
            break
        log.debug("GET %s: %s (try %d); retrying in %.2f s", url, failure.problem, attempt, wait)
        time.sleep(wait)
    spent = f"{attempt} tries in {time.monotonic() - started:.0f} s"
    if failure.unreachable:
        raise ArchiveUnreachableError(f"cannot reach the archive at {url}: {failure.problem} ({spent}); "
                                      "check --api-url and the network, then rerun")
    raise ArchiveResponseError(f"GET {url} failed after {spent}: {failure.problem}")


def _no_connection(err: requests.ConnectionError) -> str:
    """Why no connection was made, without urllib3's wrappers: 'Failed to establish a new connection: [Errno
    111] Connection refused' rather than 'HTTPConnectionPool(...): Max retries exceeded ... (Caused by ...)'."""
    cause = getattr(err.args[0], "reason", err.args[0]) if err.args else err
    return re.sub(r"^(<[^>]*>|\w+\([^)]*\)): ", "", str(cause))


def _get_json(session: requests.Session, url: str, params: dict | None = None,
              policy: RetryPolicy = RetryPolicy()) -> object:
    return _get(session, url, params, policy, json.loads)


def _message(body: bytes) -> str:
    try:
        answer = json.loads(body)
        return str(answer.get("message") or answer.get("detail") or answer)
    except (ValueError, AttributeError):
        return body[:200].decode("utf8", "replace")


def _check_page(page: object, url: str) -> dict:
    if not isinstance(page, dict) or not isinstance(page.get("results"), list) or "next" not in page:
        raise ArchiveResponseError(
            f"{url} answered a page without 'results' and 'next' (got {str(page)[:120]!r}); "
            "is --api-url pointing at an ISIC API v2?"
        )
    if page["next"] is not None and not isinstance(page["next"], str):
        raise ArchiveResponseError(f"{url}: 'next' should be a URL or null, got {page['next']!r}")
    return page


def normalise_api_url(api_url: str) -> str:
    """The base URL with its trailing slash: relative routes are joined onto it, and without the slash
    ``.../api/v2`` would lose its ``v2``."""
    check_http_url(api_url)
    return api_url if api_url.endswith("/") else api_url + "/"


def _max_pages(first: dict) -> int | None:
    """How many pages the first page's ``count`` needs at its page size, plus slack for results added while
    paging; None when it gives no count."""
    count = first.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    needed = math.ceil(count / max(1, len(first["results"])))
    return max(1, needed) + 2 + needed // 10


def iter_pages(session: requests.Session, url: str, params: dict | None = None,
               policy: RetryPolicy = RetryPolicy()) -> Iterator[dict]:
    """Yield each page of a cursor-paged route, following ``next`` verbatim. A ``next`` that points back to a
    page already read, or more pages than the first page's ``count`` needs, is an ArchiveResponseError (the
    paging would never end)."""
    page = _check_page(_get_json(session, url, params, policy), url)
    yield page
    count, max_pages, pages, seen = page.get("count"), _max_pages(page), 1, set()
    while page["next"]:
        next_url = urljoin(url, page["next"])
        if next_url in seen:
            raise ArchiveResponseError(f"the archive's 'next' link {next_url!r} points back to a page already read; "
                                       "stopping rather than looping (its paging is broken: rerun later)")
        if max_pages is not None and pages >= max_pages:
            raise ArchiveResponseError(f"the archive announced {count} results but still links to more after "
                                       f"{pages} pages; stopping rather than paging forever (its paging is broken: "
                                       "rerun later)")
        seen.add(next_url)
        page = _check_page(_get_json(session, next_url, policy=policy), next_url)
        pages += 1
        yield page


def search_params(query: str = "", collections: str = "", limit: int = PAGE_LIMIT) -> dict:
    return {"query": query, "collections": collections, "limit": limit}


def search_images(session, api_url: str, query: str = "", collections: str = "",
                  policy: RetryPolicy = RetryPolicy(), repeated: Counter | None = None) -> Iterator[dict]:
    """Every image record matching the query, in the archive's order, each isic_id once; the isic_ids listed
    again are counted in ``repeated`` (a Counter of the extra times each was listed). A page that brings no new
    isic_id but links to a next one is an ArchiveResponseError (the paging would never end)."""
    seen: set = set()
    repeated = Counter() if repeated is None else repeated
    for page in iter_pages(session, urljoin(api_url, "images/search/"), search_params(query, collections), policy):
        before = len(seen)
        for record in page["results"]:
            key = _record_key(record)
            if key in seen:
                repeated[key] += 1
                log.debug("the search lists %s again; taken once", key)
                continue
            seen.add(key)
            yield record
        if len(seen) == before and page["next"]:
            raise ArchiveResponseError(f"a search page brought no new image but links to another ({page['next']!r}); "
                                       "stopping rather than looping (the archive's paging is broken: rerun later)")


def _record_key(record: object) -> str:
    """What identifies a record when deduplicating: its isic_id, or its text when it has none usable."""
    isic_id = record.get("isic_id") if isinstance(record, dict) else None
    return isic_id if isinstance(isic_id, str) else repr(record)


def count_images(session, api_url: str, query: str = "", collections: str = "",
                 policy: RetryPolicy = RetryPolicy()) -> int:
    page = _get_json(session, urljoin(api_url, "images/search/"), search_params(query, collections, 1), policy)
    count = page.get("count") if isinstance(page, dict) else None
    if not isinstance(count, int):
        raise ArchiveResponseError(f"the first search page has no integer 'count' (got {count!r})")
    return count


def get_license_text(session, api_url: str, license_name: str, policy: RetryPolicy = RetryPolicy()) -> str:
    if license_name not in LICENSES:
        raise ArchiveResponseError(f"unknown license {license_name!r} in an image record")
    url = urljoin(api_url, f"zip-download/license-file/{license_name}/")
    return _get(session, url, None, policy, lambda body: body.decode("utf8", "replace"))
