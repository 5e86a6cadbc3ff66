"""The ISIC archive API v2: one small function per endpoint, and a generator that follows cursor pages.

Base URL https://api.isic-archive.com/api/v2/ (configurable). Search pages look like
``{"count", "next", "previous", "results"}``; ``limit`` is clamped to 100 by the server, ``count`` is only on
the first page and ``next`` is followed verbatim. A bad query gets HTTP 400 ``{"message": ...}``.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from urllib.parse import urljoin

import requests

from .errors import ArchiveResponseError, QueryError
from .ids import check_http_url, check_isic_id

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.isic-archive.com/api/v2/"
PAGE_LIMIT = 100           # the server's maximum page size
_MALFORMED_TRIES = 4       # a truncated or malformed JSON answer is retried this many times


def _get_json(session: requests.Session, url: str, params: dict | None = None) -> object:
    """GET and decode JSON; 400 becomes QueryError, a malformed answer is retried, then ArchiveResponseError."""
    check_http_url(url)
    for attempt in range(_MALFORMED_TRIES):
        try:
            response = session.get(url, params=params, timeout=(10, 60))
        except requests.RequestException as err:
            problem = f"no answer ({err.__class__.__name__}: {err})"
        else:
            if response.status_code == 400:
                raise QueryError(f"the archive refused the request: {_message(response)}")
            if response.ok:
                try:
                    return response.json()
                except (ValueError, json.JSONDecodeError) as err:
                    problem = f"malformed JSON ({err}); first bytes {response.content[:80]!r}"
            else:
                problem = f"HTTP {response.status_code}: {_message(response)}"
        log.debug("GET %s: %s (try %d)", url, problem, attempt + 1)
        time.sleep(0.2 * 2**attempt)
    raise ArchiveResponseError(f"GET {url} failed after {_MALFORMED_TRIES} tries: {problem}")


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


def iter_pages(session: requests.Session, url: str, params: dict | None = None) -> Iterator[dict]:
    """Yield each page of a cursor-paged route, following ``next`` verbatim."""
    page = _check_page(_get_json(session, url, params), url)
    yield page
    while page["next"]:
        next_url = urljoin(url, page["next"])
        page = _check_page(_get_json(session, next_url), next_url)
        yield page


def search_params(query: str = "", collections: str = "", limit: int = PAGE_LIMIT) -> dict:
    return {"query": query, "collections": collections, "limit": limit}


def search_images(session, api_url: str, query: str = "", collections: str = "") -> Iterator[dict]:
    """Every image record matching the query, in the archive's order."""
    for page in iter_pages(session, urljoin(api_url, "images/search/"), search_params(query, collections)):
        yield from page["results"]


def count_images(session, api_url: str, query: str = "", collections: str = "") -> int:
    page = _get_json(session, urljoin(api_url, "images/search/"), search_params(query, collections, 1))
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


def get_license_text(session, api_url: str, license_name: str) -> str:
    if license_name not in ("CC-0", "CC-BY", "CC-BY-NC"):
        raise ArchiveResponseError(f"unknown license {license_name!r} in an image record")
    url = urljoin(api_url, f"zip-download/license-file/{license_name}/")
    response = session.get(url, timeout=(10, 60))
    if not response.ok:
        raise ArchiveResponseError(f"GET {url} answered HTTP {response.status_code}")
    return response.text
