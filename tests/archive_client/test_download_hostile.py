"""`wsm download` against a hostile archive on loopback: redirects, planted links, resumes of another file,
servers that trickle or never stop paging, and records with holes."""
from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from PIL import Image

from archive_client.download import DownloadOptions, download_images
from archive_client.errors import ArchiveResponseError, InvalidUrlError
from archive_client.transfer import RetryPolicy, fetch_file, make_session
from test_download import JPEG, _LyingArchive, _record
from wsm.cli import main


def _jpeg_with_comment(text: bytes) -> bytes:
    """A 64x64 noise JPEG with a comment segment right after its start: two of them that differ only in the
    comment decode alike and differ only in their first bytes."""
    pixels = bytes((i * 7919) % 251 for i in range(64 * 64 * 3))
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), pixels).save(buf, format="JPEG", quality=95)
    body = buf.getvalue()
    return body[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + body[2:]


OLD = _jpeg_with_comment(b"version 1")
NEW = _jpeg_with_comment(b"version 2")     # a splice of OLD's first half and NEW's second half is OLD


class _Hostile(_LyingArchive):
    """_LyingArchive plus: redirects (path -> Location), trickle (path -> seconds per byte), etags (path -> ETag
    sent with the file), cut (path -> bytes sent of a whole-file answer before hanging up), skewed (paths whose
    Range answers start 100 bytes after the byte asked for), and search_body / search_pause (a raw search answer,
    sent in blocks with that pause between them). Range is always honoured, If-Range never (it lies)."""

    redirects: dict = {}
    trickle: dict = {}
    etags: dict = {}
    cut: dict = {}
    skewed: set = set()
    search_body: bytes | None = None
    search_chunked = False
    search_pause = 0.0

    def do_GET(self):  # noqa: N802
        path = self.path.partition("?")[0]
        if path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in self.trickle:
            self._trickle(path)
        elif path == "/api/v2/images/search/" and self.search_body is not None:
            self._raw_search()
        else:
            super().do_GET()

    def _file(self, path):
        body = self.files[path]
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        asked = int(match[1]) if match and int(match[1]) < len(body) else 0
        start = asked + 100 if asked and path in self.skewed else asked
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if path in self.etags:
            self.send_header("ETag", self.etags[path])
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not asked and path in self.cut:
            payload = payload[:self.cut[path]]
            self.close_connection = True
        self._count(path, self.wfile.write(payload))

    def _trickle(self, path):
        body, pause = self.files[path], self.trickle[path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(min(len(body), int(10 / pause))):     # at most ~10 s, so that the test ends anyway
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass
        self.close_connection = True

    def _raw_search(self):
        type(self).searches += 1
        self.send_response(200)
        if self.search_chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(self.search_body)))
        self.end_headers()
        block = 1 if self.search_pause else 1 << 16
        try:
            for i in range(0, len(self.search_body), block):
                part = self.search_body[i:i + block]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if self.search_chunked else part)
                self.wfile.flush()
                time.sleep(self.search_pause)
            if self.search_chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.close_connection = True


def _serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _handler(name: str = "Hostile"):
    fields = ("records", "pages", "files", "endless", "huge", "sent", "redirects", "trickle", "etags", "cut", "skewed")
    fresh = {key: type(getattr(_Hostile, key))() for key in fields}
    fresh["files"] = {"/files/ISIC_0000001.jpg": JPEG}
    return type(name, (_Hostile,), fresh)


@pytest.fixture()
def archive():
    handler = _handler()
    server = _serve(handler)
    yield handler
    server.shutdown()
    server.server_close()


@pytest.fixture()
def elsewhere():
    """A second server on another port: a host the archive's records must not lead to."""
    handler = _handler("Elsewhere")
    server = _serve(handler)
    yield handler
    server.shutdown()
    server.server_close()


FAST = RetryPolicy(attempts=4, backoff_s=0.01, backoff_max_s=0.1)


def _opts(archive, policy: RetryPolicy = FAST) -> DownloadOptions:
    return DownloadOptions(api_url=f"{archive.url}/api/v2/", progress=False, policy=policy)


def _images(data):
    return sorted(p.name for p in (data / "images").iterdir())


# --- files only from the archive's hosts ------------------------------------------------------------------

def test_redirects_are_followed_only_to_the_archive_s_hosts_and_a_loop_fails_alone(tmp_path, archive, elsewhere):
    base = archive.url
    archive.redirects = {"/files/away.jpg": f"{elsewhere.url}/files/ISIC_0000001.jpg",
                         "/files/moved.jpg": "/files/ISIC_0000001.jpg",
                         "/files/loop.jpg": "/files/loop.jpg"}
    archive.records = [_record("ISIC_0000001", f"{base}/files/away.jpg", len(JPEG)),
                       _record("ISIC_0000002", f"{base}/files/moved.jpg", len(JPEG)),
                       _record("ISIC_0000003", f"{base}/files/loop.jpg", len(JPEG))]
    summary = download_images(tmp_path, _opts(archive))
    assert elsewhere.sent == {}, "a redirect took the download to another host"
    assert (summary.downloaded, sorted(summary.failed)) == (1, ["ISIC_0000001", "ISIC_0000003"])
    assert "is not the archive's" in summary.failed["ISIC_0000001"]
    assert "redirects in a row" in summary.failed["ISIC_0000003"]
    assert _images(tmp_path) == ["ISIC_0000002.jpg"]


def test_a_url_whose_host_parsers_read_differently_is_refused(tmp_path, archive, elsewhere):
    # urllib.parse reads the archive's host here, urllib3 (which connects) the other server's
    sneaky = f"http://127.0.0.1:{elsewhere.url.rsplit(':', 1)[1]}\\@{archive.url[len('http://'):]}/files/x.jpg"
    archive.records = [_record("ISIC_0000001", sneaky, len(JPEG)),
                       _record("ISIC_0000002", f"http://user@{archive.url[len('http://'):]}/files/x.jpg", len(JPEG))]
    summary = download_images(tmp_path, _opts(archive))
    assert elsewhere.sent == {} and archive.sent == {}
    assert all("host ambiguous" in reason for reason in summary.failed.values()) and len(summary.failed) == 2


def test_check_http_url_reads_hosts_as_the_connection_does():
    from archive_client.ids import check_file_host, check_http_url

    for bad in ("http://a.example\\@content.isic-archive.com/x.jpg", "https://u:p@content.isic-archive.com/x",
                "https://content.isic-archive.com/a b.jpg", "https://content.isic-archive.com/\x00"):
        with pytest.raises(InvalidUrlError, match="ambiguous"):
            check_http_url(bad)
    assert check_file_host("http://[::1]:8000/a.jpg", "http://[::1]:8000/api/v2/")


# --- partial and final files are never followed through links --------------------------------------------

def test_a_partial_file_planted_as_a_link_is_never_followed(tmp_path, archive):
    archive.records = [_record("ISIC_0000001", f"{archive.url}/files/ISIC_0000001.jpg", len(JPEG))]
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / ".ISIC_0000001.jpg.part").symlink_to(outside)
    summary = download_images(data, _opts(archive))
    assert summary.ok and summary.downloaded == 1
    assert outside.read_bytes() == b"precious"
    image = data / "images" / "ISIC_0000001.jpg"
    assert not image.is_symlink() and image.read_bytes() == JPEG


def test_an_image_planted_as_a_link_is_replaced_not_adopted(tmp_path, archive):
    archive.records = [_record("ISIC_0000001", f"{archive.url}/files/ISIC_0000001.jpg", len(JPEG))]
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(JPEG)                     # the right size and bytes, but not in DATA
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "ISIC_0000001.jpg").symlink_to(outside)
    summary = download_images(data, _opts(archive))
    assert summary.ok and summary.downloaded == 1 and summary.adopted == 0
    assert not (data / "images" / "ISIC_0000001.jpg").is_symlink() and outside.read_bytes() == JPEG


def test_a_partial_file_that_is_a_folder_fails_its_record_alone(tmp_path, archive):
    archive.files["/files/ISIC_0000002.jpg"] = JPEG
    archive.records = [_record("ISIC_0000001", f"{archive.url}/files/ISIC_0000001.jpg", len(JPEG)),
                       _record("ISIC_0000002", f"{archive.url}/files/ISIC_0000002.jpg", len(JPEG))]
    (tmp_path / "images" / ".ISIC_0000002.jpg.part").mkdir(parents=True)
    summary = download_images(tmp_path, _opts(archive))
    assert summary.downloaded == 1 and list(summary.failed) == ["ISIC_0000002"]
    assert "not a regular file" in summary.failed["ISIC_0000002"] and "remove it" in summary.failed["ISIC_0000002"]


# --- a resume continues the same file, or starts over ----------------------------------------------------

def _cut_then_replaced(archive, data, *, etags: bool, sha256: str | None = None):
    """A first run cut half-way through OLD (one try, so its partial file stays); then the server has NEW."""
    path = "/files/ISIC_0000001.jpg"
    record = _record("ISIC_0000001", f"{archive.url}{path}", len(OLD))
    if sha256:
        record["files"]["full"]["sha256"] = sha256
    archive.records = [record]
    archive.files[path], archive.cut[path] = OLD, len(OLD) // 2
    if etags:
        archive.etags[path] = '"old"'
    first = download_images(data, _opts(archive, RetryPolicy(attempts=1, backoff_s=0.01, chunk_bytes=1024)))
    assert list(first.failed) == ["ISIC_0000001"]
    assert 1024 <= (data / "images" / ".ISIC_0000001.jpg.part").stat().st_size <= len(OLD) // 2
    archive.files[path] = NEW
    archive.cut.clear()
    if etags:
        archive.etags[path] = '"new"'
    return download_images(data, _opts(archive))


def test_a_resume_served_from_a_changed_file_starts_over(tmp_path, archive):
    summary = _cut_then_replaced(archive, tmp_path, etags=True)
    assert summary.ok and summary.downloaded == 1
    assert (tmp_path / "images" / "ISIC_0000001.jpg").read_bytes() == NEW, "a spliced file was recorded"


def test_a_resumed_file_whose_hash_is_not_the_record_s_is_fetched_whole(tmp_path, archive):
    summary = _cut_then_replaced(archive, tmp_path, etags=False, sha256=hashlib.sha256(NEW).hexdigest())
    assert summary.ok and summary.downloaded == 1
    assert (tmp_path / "images" / "ISIC_0000001.jpg").read_bytes() == NEW, "a spliced file was recorded"


def test_a_range_answer_that_starts_elsewhere_is_not_spliced(tmp_path, archive):
    path = "/files/blob.bin"
    body = bytes(range(256)) * 40
    archive.files[path], archive.skewed = body, {path}
    partial = tmp_path / ".blob.bin.part"
    partial.write_bytes(body[:1000])
    partial.with_name(partial.name + ".json").write_text(json.dumps({"etag": None, "last_modified": None,
                                                                     "size": len(body)}))
    result = fetch_file(make_session(1), f"{archive.url}{path}", tmp_path / "blob.bin", partial=partial, policy=FAST)
    assert (tmp_path / "blob.bin").read_bytes() == body and not result.resumed


# --- nothing takes forever ---------------------------------------------------------------------------

def test_a_file_that_trickles_is_given_up_on_and_the_others_go_on(tmp_path, archive):
    archive.files["/files/slow.jpg"] = JPEG
    archive.trickle = {"/files/slow.jpg": 0.05}                  # 20 bytes a second: well under the rate asked
    archive.records = [_record("ISIC_0000001", f"{archive.url}/files/ISIC_0000001.jpg", len(JPEG)),
                       _record("ISIC_0000002", f"{archive.url}/files/slow.jpg", len(JPEG))]
    policy = RetryPolicy(attempts=4, backoff_s=0.01, file_grace_s=0.5, min_rate_bps=2000)
    started = time.monotonic()
    summary = download_images(tmp_path, _opts(archive, policy))
    assert time.monotonic() - started < 5
    assert summary.downloaded == 1 and list(summary.failed) == ["ISIC_0000002"]
    assert "gave up after" in summary.failed["ISIC_0000002"] and "--min-rate" in summary.failed["ISIC_0000002"]


def test_a_search_answer_that_trickles_is_given_up_on(tmp_path, archive):
    archive.search_body = json.dumps({"count": 0, "next": None, "previous": None, "results": []}).encode()
    archive.search_pause = 0.1
    started = time.monotonic()
    with pytest.raises(ArchiveResponseError, match="time ran out"):
        download_images(tmp_path, _opts(archive, RetryPolicy(attempts=2, backoff_s=0.01,
                                                                          api_budget_s=1.0)))
    assert time.monotonic() - started < 4


def test_paging_with_new_ids_forever_stops_at_what_the_count_needs(tmp_path, archive, capsys):
    def page(i):
        isic_id = f"ISIC_{i:07d}"
        archive.files[f"/files/{isic_id}.jpg"] = JPEG
        return {"count": 3, "next": f"/api/v2/images/search/?cursor={i + 1}", "previous": None,
                "results": [_record(isic_id, f"{archive.url}/files/{isic_id}.jpg", len(JPEG))]}

    archive.pages = {"": page(0), **{str(i): page(i) for i in range(1, 300)}}
    archive.max_searches = 300          # then the last page, so that a client that never stops still ends the test
    code = main(["-q", "download", "--out", str(tmp_path), "--api-url", f"{archive.url}/api/v2/"])
    err = capsys.readouterr().err
    assert code == 2 and "announced 3 results but still links to more" in err, err
    assert archive.searches < 10


@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "chunked"])
def test_a_huge_search_page_is_refused_unread(tmp_path, archive, capsys, monkeypatch, chunked):
    from archive_client import api

    monkeypatch.setattr(api, "MAX_ANSWER_BYTES", 1 << 20)
    archive.search_body = json.dumps({"count": 0, "next": None, "previous": None, "results": [],
                                      "padding": "x" * (4 << 20)}).encode()
    archive.search_chunked = chunked
    code = main(["-q", "download", "--out", str(tmp_path), "--api-url", f"{archive.url}/api/v2/"])
    err = capsys.readouterr().err
    assert code == 2 and "answered more than 1048576 bytes" in err and err.count("\n") == 1, err


# --- records with holes ------------------------------------------------------------------------------

def test_ids_listed_twice_by_a_search_are_counted_and_taken_once(tmp_path, archive, caplog):
    def rec(n):
        archive.files[f"/files/ISIC_{n:07d}.jpg"] = JPEG
        return _record(f"ISIC_{n:07d}", f"{archive.url}/files/ISIC_{n:07d}.jpg", len(JPEG))

    archive.pages = {"": {"count": 3, "next": "/api/v2/images/search/?cursor=a", "previous": None,
                          "results": [rec(1), rec(2), rec(2)]},
                     "a": {"next": None, "previous": None, "results": [rec(3), rec(1)]}}
    with caplog.at_level("WARNING"):
        summary = download_images(tmp_path, _opts(archive))
    assert summary.ok and summary.downloaded == 3 and summary.repeated == 2
    assert "listed 2 record(s) again" in caplog.text and any("listed 2 record(s) again" in line
                                                            for line in summary.lines())


def test_records_without_attribution_or_known_licence_still_get_their_files(tmp_path, archive, caplog):
    def rec(n, **fields):
        archive.files[f"/files/ISIC_{n:07d}.jpg"] = JPEG
        record = _record(f"ISIC_{n:07d}", f"{archive.url}/files/ISIC_{n:07d}.jpg", len(JPEG))
        record.update(fields)
        return record

    archive.records = [rec(1), rec(2, attribution=None), rec(3), rec(4, copyright_license="CC-BY-SA"),
                       rec(5, copyright_license=None)]
    del archive.records[2]["attribution"]
    for _ in range(2):                                  # a rerun too
        with caplog.at_level("WARNING"):
            summary = download_images(tmp_path, _opts(archive))
        assert summary.ok and summary.downloaded + summary.skipped == 5
    assert (tmp_path / "attribution.txt").read_text() == "Test"
    assert [p.name for p in (tmp_path / "licenses").iterdir()] == ["CC-0.txt"]
    assert "2 image(s) have no attribution" in caplog.text
    assert "CC-BY-SA: 1" in caplog.text and "none: 1" in caplog.text
    assert (tmp_path / "metadata.csv").read_text().count("\n") == 6
