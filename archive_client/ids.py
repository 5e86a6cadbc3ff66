"""Validation of everything that comes from outside before it becomes a path or a request."""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlparse

from urllib3.util import parse_url

from .errors import ArchiveResponseError, InvalidIdError, InvalidInputError, InvalidUrlError

ISIC_ID = re.compile(r"ISIC_[0-9]{7}")  # ASCII digits only: \d also matches other scripts' digits


def check_isic_id(isic_id: object) -> str:
    """Return isic_id unchanged if it is ``ISIC_`` plus seven digits, else raise InvalidIdError."""
    if not isinstance(isic_id, str) or not ISIC_ID.fullmatch(isic_id):
        raise InvalidIdError(
            f"refusing isic_id {isic_id!r}: expected ISIC_ followed by 7 digits (e.g. ISIC_0000000)"
        )
    return isic_id


# Ids of images a user brings (PH2's IMD002, an atlas's AMM1): kept as given, but only as safe file names.
IMAGE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,99}")


def check_image_id(image_id: object) -> str:
    """Return image_id unchanged if it is an ISIC id or a safe file name (ASCII letters, digits, ``_``, ``-`` and
    single dots, starting with a letter or digit, at most 100 characters, not ending with a dot, and not a
    malformed ISIC id); else raise InvalidIdError. DATA folders hold archive images and a user's own under one
    rule."""
    if not isinstance(image_id, str) or not IMAGE_ID.fullmatch(image_id) or image_id.endswith("."):
        raise InvalidIdError(
            f"refusing image id {image_id!r}: use ASCII letters, digits, '_', '-' and single dots, starting with a "
            "letter or digit (at most 100 characters), e.g. ISIC_0000000 or IMD002"
        )
    if image_id[:5].upper() == "ISIC_" and not ISIC_ID.fullmatch(image_id):   # a mistyped archive id
        raise InvalidIdError(f"refusing image id {image_id!r}: an id starting with ISIC_ is an archive id, "
                             "ISIC_ followed by 7 digits (e.g. ISIC_0000000)")
    return image_id


# A backslash, whitespace or a control character: parsers disagree on where the host ends (``http://A\@B/`` is
# host A for urllib3, which makes the connection, and host B for urllib.parse)
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")


def safe_image_id(candidate: str) -> str | None:
    """``candidate`` if check_image_id accepts it, else None."""
    try:
        return check_image_id(candidate)
    except InvalidIdError:
        return None


# The file names of a lesion dataset: <id>.<image extension>, <id>_<mask suffix>.<mask extension> (any case).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff")
MASK_SUFFIXES = ("segmentation", "lesion", "contour", "mask")   # 2016's _Segmentation, PH2's _lesion, ...
MASK_EXTENSIONS = ("png", "bmp", "tif", "tiff", "gif")
IMAGE_SUFFIXES = ("_orig",)            # the Waterloo set's photographs: AMM1_orig.jpg beside AMM1_contour.png
IMAGE_NAME = re.compile(rf"(.+)\.({'|'.join(IMAGE_EXTENSIONS)})", re.IGNORECASE)
MASK_NAME = re.compile(rf"(.+)_({'|'.join(MASK_SUFFIXES)})\.({'|'.join(MASK_EXTENSIONS)})", re.IGNORECASE)


def image_id_of(file_name: str) -> str | None:
    """The image id of an image file name (``IMD002.bmp`` -> IMD002, ``AMM1_orig.jpg`` -> AMM1), or None."""
    match = IMAGE_NAME.fullmatch(file_name)
    if not match or MASK_NAME.fullmatch(file_name):
        return None
    stem = match.group(1)
    for suffix in IMAGE_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[:-len(suffix)]
    return safe_image_id(stem)


def mask_id_of(file_name: str) -> str | None:
    """The image id of a mask file name (``IMD002_lesion.bmp`` -> IMD002), or None."""
    match = MASK_NAME.fullmatch(file_name)
    return safe_image_id(match.group(1)) if match else None


def check_http_url(url: object) -> str:
    """Return url unchanged if it is an absolute http(s) URL whose host every parser reads alike, else raise
    InvalidUrlError. User info (``user@host``) and characters that parsers split differently are refused."""
    try:
        parsed, host = (urlparse(url), parse_url(url).host) if isinstance(url, str) else (None, None)
    except ValueError:        # urllib3's LocationParseError is a ValueError too
        parsed, host = None, None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise InvalidUrlError(f"refusing URL {url!r}: only absolute http:// or https:// URLs are fetched")
    if _AMBIGUOUS.search(url) or "@" in parsed.netloc or host.strip("[]").lower() != parsed.hostname:
        raise InvalidUrlError(f"refusing URL {url!r}: user info, a backslash, a space or a control character makes "
                              "its host ambiguous")
    return url


def check_file_size(size: object, limit: int) -> int:
    """Return a record's declared file size if it is a whole number of bytes from 1 to limit, else raise
    ArchiveResponseError (nothing is fetched for a size that cannot be checked against)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArchiveResponseError(f"the record declares a file size of {size!r}; expected a positive number of bytes")
    if size > limit:
        raise ArchiveResponseError(f"the record declares a file of {size} bytes, more than the {limit} an image "
                                   "may have; not fetched (raise the limit only if such images are genuine)")
    return size


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(url: str) -> tuple[str, int]:
    """The host and port a connection to url goes to, parsed as urllib3 (which makes it) parses them."""
    parsed = parse_url(url)
    host = (parsed.host or "").lower().strip("[]")
    return host, parsed.port or _DEFAULT_PORTS.get(parsed.scheme or "", 0)


def parse_host(text: str) -> tuple[str, int | None]:
    """``HOST`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port or None); InvalidInputError if not."""
    try:
        parsed = urlparse(f"//{text.strip()}")
        host, port = (parsed.hostname or "").lower(), parsed.port
    except ValueError:
        host, port = "", None
    if not host or parsed.path or parsed.username:
        raise InvalidInputError(f"--allow-host {text!r}: give a host name or address, with an optional :PORT "
                                "(e.g. content.example.org or 127.0.0.1:8000)")
    return host, port


def _same_site(host: str, port: int, api_url: str) -> bool:
    """The API's own host and port, or a sibling under the API's parent domain on a default port (files of
    api.isic-archive.com are served by content.isic-archive.com)."""
    api_host, api_port = _host_port(api_url)
    if (host, port) == (api_host, api_port):
        return True
    labels = api_host.split(".")
    is_name = len(labels) >= 3 and not labels[-1].isdigit()
    parent = ".".join(labels[1:])
    return is_name and host.endswith("." + parent) and port in _DEFAULT_PORTS.values()


def check_file_host(url: str, api_url: str, allowed: Iterable[tuple[str, int | None]] = ()) -> str:
    """Return url if its host is the archive's own (see _same_site) or one of ``allowed`` (host, port or None
    for any port), else raise InvalidUrlError naming the refused host."""
    host, port = _host_port(url)
    if _same_site(host, port, api_url) or any(host == h and p in (None, port) for h, p in allowed):
        return url
    raise InvalidUrlError(f"refusing URL {url!r}: its host {host}:{port} is not the archive's "
                          f"({_host_port(api_url)[0]}); pass --allow-host {host}:{port} if you trust it")


def check_same_host(url: str, origin: str) -> str:
    """Return url if a connection to it goes where one to origin goes (host and port), else raise InvalidUrlError:
    the rule for a redirect when nothing else says which hosts a file may come from."""
    if _host_port(url) != _host_port(origin):
        raise InvalidUrlError(f"refusing URL {url!r}: a redirect away from {_host_port(origin)[0]}")
    return url


def file_extension(url: str, default: str = "jpg") -> str:
    """The image file extension from a file URL's path, as isic-cli derives it (``jpg`` when absent)."""
    path = urlparse(url).path
    name = path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if re.fullmatch(r"[a-z0-9]{1,5}", ext) else default


def comma_choices(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse ``type`` for a comma-separated list of ``choices`` (``train,val``); an unknown item is an error
    that lists the valid ones."""
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}")
        return items

    return parse
