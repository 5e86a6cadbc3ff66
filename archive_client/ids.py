"""Validation of everything that comes from outside before it becomes a path or a request."""
from __future__ import annotations

import re
from urllib.parse import urlparse

from .errors import InvalidIdError, InvalidUrlError

ISIC_ID = re.compile(r"ISIC_[0-9]{7}")  # ASCII digits only: \d also matches other scripts' digits


def check_isic_id(isic_id: object) -> str:
    """Return isic_id unchanged if it is ``ISIC_`` plus seven digits, else raise InvalidIdError."""
    if not isinstance(isic_id, str) or not ISIC_ID.fullmatch(isic_id):
        raise InvalidIdError(
            f"refusing isic_id {isic_id!r}: expected ISIC_ followed by 7 digits (e.g. ISIC_0000000)"
        )
    return isic_id


def check_http_url(url: object) -> str:
    """Return url unchanged if it is an absolute http(s) URL, else raise InvalidUrlError."""
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidUrlError(f"refusing URL {url!r}: only absolute http:// or https:// URLs are fetched")
    return url


def file_extension(url: str, default: str = "jpg") -> str:
    """The image file extension from a file URL's path, as isic-cli derives it (``jpg`` when absent)."""
    path = urlparse(url).path
    name = path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if re.fullmatch(r"[a-z0-9]{1,5}", ext) else default
