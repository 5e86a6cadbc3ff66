"""The ISIC archive API v2: one small function per endpoint, and a generator that follows cursor pages.

Base URL https://api.isic-archive.com/api/v2/ (configurable). Search pages look like
``{"count", "next", "previous", "results"}``; ``limit`` is clamped to 100 by the server, ``count`` is only on
the first page and ``next`` is followed verbatim. A bad query gets HTTP 400 ``{"message": ...}``.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import requests

from .errors import ArchiveResponseError, ArchiveUnreachableError, QueryError
from .ids import check_http_url, check_isic_id
from .transfer import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.isic-archive.com/api/v2/"
PAGE_LIMIT = 100           # the server's maximum page size


class _Retryable(Exception):
    """A failed try that another try may fix; ``unreachable``: no connection could be made."""

    def __init__(self, problem: str, unreachable: bool = False):
        super().__init__(problem)
        self.problem, self.unreachable = problem, unreachable


def _get_once(session: requests.Session, url: str, params: dict | None, timeout: tuple[float, float],
              parse: Callable[[requests.Response], object]) -> object:
    """One GET: parse(response), QueryError for HTTP 400, _Retryable for what may go better on another try."""
    try:
        response = session.get(url, params=params, timeout=timeout)
    except requests.ConnectionError as err:
        raise _Retryable(_no_connection(err), unreachable=True) from err
    except requests.RequestException as err:
        raise _Retryable(f"no answer ({err.__class__.__name__}: {err})") from err
    if response.status_code == 400:
        raise QueryError(f"the archive refused the request: {_message(response)}")
    if not response.ok:
        raise _Retryable(f"HTTP {response.status_code}: {_message(response)}")
    try:
        return parse(response)
    except ValueError as err:
        raise _Retryable(f"malformed answer ({err}); first bytes {response.content[:80]!r}") from err


def _get(session: requests.Session, url: str, params: dict | None, policy: RetryPolicy,
         parse: Callable[[requests.Response], object]) -> object:
    """GET ``url`` and return ``parse(response)``; 400 becomes QueryError.

    No connection, an error status or an answer ``parse`` rejects (ValueError) is retried with backoff, for at
    most ``policy.attempts`` tries and ``policy.api_budget_s`` seconds; then ArchiveUnreachableError (no
    connection on the last try) or ArchiveResponseError.
    """
    check_http_url(url)
    started = time.monotonic()
    for attempt in range(1, max(1, policy.attempts) + 1):
        left = policy.api_budget_s - (time.monotonic() - started)
        timeout = (max(0.1, min(policy.connect_timeout_s, left)), policy.read_timeout_s)
        try:
            return _get_once(session, url, params, timeout, parse)
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
    return _get(session, url, params, policy, lambda response: response.json())


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body.get("detail") or body)
    except ValueError:
        return response.text[:200]


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


def iter_pages(session: requests.Session, url: str, params: dict | None = None,
               policy: RetryPolicy = RetryPolicy()) -> Iterator[dict]:
    """Yield each page of a cursor-paged route, following ``next`` verbatim; a ``next`` that points back to a
    page already read is an ArchiveResponseError (it would loop forever)."""
    page = _check_page(_get_json(session, url, params, policy), url)
    yield page
    seen = set()
    while page["next"]:
        next_url = urljoin(url, page["next"])
        if next_url in seen:
            raise ArchiveResponseError(f"the archive's 'next' link {next_url!r} points back to a page already read; "
                                       "stopping rather than looping (its paging is broken: rerun later)")
        seen.add(next_url)
        page = _check_page(_get_json(session, next_url, policy=policy), next_url)
        yield page


def search_params(query: str = "", collections: str = "", limit: int = PAGE_LIMIT) -> dict:
    return {"query": query, "collections": collections, "limit": limit}


def search_images(session, api_url: str, query: str = "", collections: str = "",
                  policy: RetryPolicy = RetryPolicy()) -> Iterator[dict]:
    """Every image record matching the query, in the archive's order, each isic_id once. A page that brings
    no new isic_id but links to a next one is an ArchiveResponseError (the paging would never end)."""
    seen: set = set()
    for page in iter_pages(session, urljoin(api_url, "images/search/"), search_params(query, collections), policy):
        before = len(seen)
        for record in page["results"]:
            key = _record_key(record)
            if key not in seen:
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


def search_size(session, api_url: str, query: str = "", collections: str = "") -> int:
    body = _get_json(session, urljoin(api_url, "images/search/size/"), {"query": query, "collections": collections})
    if not isinstance(body, dict) or not isinstance(body.get("size"), int):
        raise ArchiveResponseError(f"images/search/size/ answered {str(body)[:120]!r}, expected {{'size': int}}")
    return body["size"]


def get_image(session, api_url: str, isic_id: str) -> dict:
    return _get_json(session, urljoin(api_url, f"images/{check_isic_id(isic_id)}/"))


def iter_collections(session, api_url: str) -> Iterator[dict]:
    for page in iter_pages(session, urljoin(api_url, "collections/")):
        yield from page["results"]


def get_license_text(session, api_url: str, license_name: str, policy: RetryPolicy = RetryPolicy()) -> str:
    if license_name not in ("CC-0", "CC-BY", "CC-BY-NC"):
        raise ArchiveResponseError(f"unknown license {license_name!r} in an image record")
    url = urljoin(api_url, f"zip-download/license-file/{license_name}/")
    return _get(session, url, None, policy, lambda response: response.text)
