"""The HTTP side of the emulator: routing, Range, fault injection and the server thread.

``EmulatorApp.handle`` turns a request into a ``Response`` (no sockets involved); ``_Handler`` only reads the
request, asks the fault injector, and writes the answer (or fails to, on purpose).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..ids import ISIC_ID
from . import records
from .faults import EmulatorConfig, EmulatorStats, FaultInjector
from .files import RangeNotSatisfiable, parse_byte_range
from .query import QueryParseError
from .store import ArchiveStore

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v2/"
_CHUNK = 256 * 1024
_SAFE_HOST = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "zip": "application/zip"}


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None     # when set, ``length`` bytes of it from ``offset`` are the body
    offset: int = 0
    length: int = 0

    @property
    def content_length(self) -> int:
        return self.length if self.file is not None else len(self.body)


def json_response(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


def text_response(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, text.encode())


def _not_found_api() -> Response:
    return json_response(404, {"detail": "Not found."})


def _not_found_file() -> Response:
    return text_response(404, "Not Found\n")


def file_response(path: Path, content_type: str, request_headers: Mapping[str, str]) -> Response:
    """A file (or the byte range asked for) with Content-Length, Accept-Ranges, ETag and Last-Modified."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return _not_found_file()
    size = stat.st_size
    etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
    headers = {
        "Content-Type": content_type,
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
    }
    range_header = request_headers.get("Range")
    if_range = request_headers.get("If-Range")
    if if_range and if_range != etag and if_range != headers["Last-Modified"]:
        range_header = None  # the client's copy is of another version: send the whole file
    try:
        byte_range = parse_byte_range(range_header, size)
    except RangeNotSatisfiable:
        return text_response(416, "Range Not Satisfiable\n", {"Content-Range": f"bytes */{size}"})
    if byte_range is None:
        return Response(200, headers, file=path, offset=0, length=size)
    first, last = byte_range
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return Response(206, headers, file=path, offset=first, length=last - first + 1)


def route_group(path: str) -> str:
    """Which group a raw request path belongs to (decides which faults apply)."""
    if path.startswith("/media/"):
        return "media"
    if path.startswith("/challenges/"):
        return "challenges"
    return "api"


class EmulatorApp:
    """Routes a request to a Response. ``root_url`` is the server's own ``http://host:port/``."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store

    def handle(self, method: str, target: str, headers: Mapping[str, str], root_url: str) -> tuple[str, Response]:
        """(route name, response) for one request."""
        split = urlsplit(target)
        params = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        # Decode each segment on its own: an encoded "/" (%2F) stays inside its segment and matches no route.
        segments = [unquote(s) for s in split.path.split("/")]
        if method not in ("GET", "HEAD"):
            group = route_group(split.path)
            if group == "api":
                return "method", json_response(405, {"detail": f'Method "{method}" not allowed.'},
                                               {"Allow": "GET, HEAD"})
            return "method", text_response(405, "Method Not Allowed\n", {"Allow": "GET, HEAD"})
        if split.path.startswith(API_PREFIX):
            api = [s for s in segments[3:] if s != ""]  # after "", "api", "v2"; tolerate a missing final "/"
            return self._api(api, params, root_url)
        if len(segments) == 4 and segments[:2] == ["", "media"]:
            return self._media(segments[2], segments[3], headers)
        if len(segments) == 4 and segments[:2] == ["", "challenges"]:
            path = self.store.challenge_zip(segments[2], segments[3]) if segments[3].endswith(".zip") else None
            if path is None:
                return "challenge", _not_found_file()
            return "challenge", file_response(path, "application/zip", headers)
        return "not_found", _not_found_file()

    # -- the JSON API
    def _api(self, api: list[str], params: dict[str, str], root_url: str) -> tuple[str, Response]:
        api_url = root_url + API_PREFIX.lstrip("/")
        match api:
            case ["images", "search"]:
                return "search", self._search(params, api_url, root_url)
            case ["images", "search", "size"]:
                return "size", self._size(params)
            case ["images", isic_id] if ISIC_ID.fullmatch(isic_id) and isic_id in self.store.images:
                return "image", json_response(200, self.store.record(isic_id, root_url))
            case ["collections"]:
                return "collections", self._collections(params, api_url)
            case ["collections", cid] if cid.isdigit() and int(cid) in self.store.collections:
                return "collection", json_response(200, records.collection_record(self.store.collections[int(cid)]))
            case ["zip-download", "license-file", name]:
                text = records.license_text(name)
                if text is None:
                    return "license", _not_found_api()
                return "license", text_response(200, text)
        return "not_found", _not_found_api()

    def _matches(self, params: dict[str, str]) -> tuple[str, tuple[str, ...]] | Response:
        """(raw collections text, matching ids), or the 400 to send."""
        try:
            collection_ids = records.parse_collection_ids(params.get("collections"), self.store.collections)
            ids = self.store.search(params.get("query", ""), collection_ids)
        except (QueryParseError, records.ParameterError) as exc:
            return json_response(400, {"message": str(exc)})
        return params.get("collections", ""), ids

    def _search(self, params: dict[str, str], api_url: str, root_url: str) -> Response:
        found = self._matches(params)
        if isinstance(found, Response):
            return found
        collections_text, ids = found
        limit = records.clamp_limit(params.get("limit"))
        try:
            page = records.paginate(ids, params.get("cursor"), limit)
        except records.CursorError:
            return json_response(404, {"detail": "Invalid cursor"})
        results = [self.store.record(i, root_url) for i in page.keys]
        link_params = {"query": params.get("query", ""), "collections": collections_text, "limit": str(limit)}
        return json_response(200, records.page_body(page, results, api_url + "images/search/", link_params))

    def _size(self, params: dict[str, str]) -> Response:
        found = self._matches(params)
        if isinstance(found, Response):
            return found
        return json_response(200, {"size": self.store.total_size(found[1])})

    def _collections(self, params: dict[str, str], api_url: str) -> Response:
        limit = records.clamp_limit(params.get("limit"))
        keys = sorted(self.store.collections)
        try:
            page = records.paginate(keys, params.get("cursor"), limit)
        except records.CursorError:
            return json_response(404, {"detail": "Invalid cursor"})
        results = [records.collection_record(self.store.collections[k]) for k in page.keys]
        return json_response(200, records.page_body(page, results, api_url + "collections/", {"limit": str(limit)}))

    # -- files
    def _media(self, folder: str, name: str, headers: Mapping[str, str]) -> tuple[str, Response]:
        if folder == "images":
            stem, _, ext = name.partition(".")
            image = self.store.images.get(stem) if ISIC_ID.fullmatch(stem) else None
            if image is None or ext != image.ext:
                return "media", _not_found_file()
            return "media", file_response(image.path, _CONTENT_TYPES.get(ext, "application/octet-stream"), headers)
        if folder == "thumbnails":
            stem = name.removesuffix("_thumbnail_256.jpg")
            if stem == name or not ISIC_ID.fullmatch(stem) or stem not in self.store.images:
                return "thumbnail", _not_found_file()
            try:
                path = self.store.thumbnail(stem)
            except OSError:
                return "thumbnail", _not_found_file()
            return "thumbnail", file_response(path, "image/jpeg", headers)
        return "not_found", _not_found_file()


# ---------------------------------------------------------------------------------------------- the socket side
def _fault_response(kind: str, group: str) -> Response:
    status = {"http500": 500, "http503": 503, "http429": 429}[kind]
    headers = {"Retry-After": "1"} if kind == "http429" else {}
    reason = {500: "Internal Server Error", 503: "Service Unavailable", 429: "Too Many Requests"}[status]
    if group == "api":
        return json_response(status, {"detail": f"{reason} (injected by the wsm emulator)"}, headers)
    return text_response(status, f"{reason} (injected by the wsm emulator)\n", headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the real archive and its CDN
    server_version = "wsm-emulator/1"
    timeout = 30                    # an idle keep-alive connection is dropped after this many seconds
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus delayed ACKs add ~40 ms to
        # every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def _root_url(self) -> str:
        host = self.headers.get("Host", "")
        if not _SAFE_HOST.fullmatch(host):
            host = self.server.public_host
        return f"http://{host}/"

    def _serve(self) -> None:
        emulator = self.server.emulator
        config, injector = emulator.config, emulator.injector
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # a request body is never read: the connection cannot be reused
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        path = urlsplit(self.path).path
        group = route_group(path)
        has_body = self.command != "HEAD"
        fault = injector.decide(self.command, self.path, group, has_body)
        if fault == "reset":
            injector.count(group, False)
            logger.debug("%s %s %s: connection reset (injected)", self.address_string(), self.command, self.path)
            self._reset()
            return
        if fault in ("http500", "http503", "http429"):
            injector.count(group, False)
            self._send(_fault_response(fault, group), truncate=False)
            return
        try:
            route, response = emulator.app.handle(self.command, self.path, self.headers, self._root_url())
        except Exception:  # noqa: BLE001 - one bad request must not take the server down
            logger.exception("emulator failed on %s %s", self.command, self.path)
            route, response = "error", json_response(500, {"detail": "emulator error (see its log)"})
        injector.count(route, bool(self.headers.get("Range")) and group != "api")
        if fault == "malformed":
            # API answers are never files; cut the JSON in half and say the half is all there is
            half = response.body[: len(response.body) // 2] or b"{"
            response = Response(200, {"Content-Type": "application/json"}, half)
        self._send(response, truncate=fault == "truncate")

    def _send(self, response: Response, truncate: bool) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(response.content_length))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        budget = response.content_length // 2 if truncate else response.content_length
        try:
            if response.file is None:
                self.wfile.write(response.body[:budget])
            else:
                with open(response.file, "rb") as fh:
                    fh.seek(response.offset)
                    if _copy(fh, self.wfile, budget) < budget:  # the file shrank meanwhile
                        self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if truncate:
            self.close_connection = True  # the server closes the socket: the client sees a short body

    def _reset(self) -> None:
        """Close the connection with a TCP reset, without a byte of answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s %s", self.address_string(), format % args)


def _copy(src, dst, n: int) -> int:
    """Copy up to n bytes; return how many were copied."""
    copied = 0
    while copied < n:
        chunk = src.read(min(_CHUNK, n - copied))
        if not chunk:
            break
        dst.write(chunk)
        copied += len(chunk)
    return copied


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: EmulatorServer
    public_host: str


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmulatorServer:
    """The emulated ISIC archive over a DATA folder, served on a background thread.

    Use as a context manager (``with EmulatorServer(root) as server: server.api_url``) or call start/stop.
    ``port=0`` picks a free port. A non-loopback host needs ``allow_remote=True``.
    """

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0,
                 config: EmulatorConfig = EmulatorConfig(), *, allow_remote: bool = False) -> None:
        if not allow_remote and not _is_loopback(host):
            raise ValueError(
                f"refusing to serve on {host!r}: the emulator is for local tests; bind 127.0.0.1 "
                "or pass allow_remote=True (--allow-remote) to expose it"
            )
        self.host = host
        self.requested_port = port
        self.config = config
        self.store = ArchiveStore(root)
        self.app = EmulatorApp(self.store)
        self.injector = FaultInjector(config)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> EmulatorServer:
        if self._httpd is not None:
            raise RuntimeError("the emulator is already running")

        class _Server(_HTTPServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        httpd = _Server((self.host, self.requested_port), _Handler)
        httpd.emulator = self
        port = httpd.server_address[1]
        httpd.public_host = f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"wsm-emulator-{port}", daemon=True)
        self._thread.start()
        logger.info("ISIC archive emulator serving %s at %s", self.store.root, self.api_url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- where it is
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the emulator is not running; call start() or use it in a with block")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """``http://host:port/``"""
        self.port  # noqa: B018 - raises when not running
        return f"http://{self._httpd.public_host}/"

    @property
    def api_url(self) -> str:
        """``http://host:port/api/v2/``, what a client uses as its archive base URL."""
        return self.url + API_PREFIX.lstrip("/")

    @property
    def challenge_url(self) -> str:
        """``http://host:port/challenges/``, a stand-in for the challenge zips' S3 base URL."""
        return self.url + "challenges/"

    # -- what it did
    @property
    def stats(self) -> EmulatorStats:
        """Counters so far: ``stats.requests``, ``stats.faults`` (also ``stats["faults"]``), ``faults_by_kind``,
        ``routes`` (requests per route; requests failed before routing count under their group: api, media,
        challenges) and ``range_requests``."""
        return self.injector.stats()

    def reset_stats(self) -> None:
        self.injector.reset_stats()


__all__ = ["EmulatorApp", "EmulatorServer", "Response", "file_response"]
