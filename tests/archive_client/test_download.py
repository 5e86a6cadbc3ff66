"""`wsm download` against the local archive emulator: complete, verified, resumable, safe."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from archive_client.download import DownloadOptions, download_images, plan_action
from archive_client.errors import QueryError
from archive_client.transfer import RetryPolicy
from wsm.cli import main
from wsm.errors import LockedError
from wsm.io.lock import exclusive_lock

FAST = RetryPolicy(attempts=10, backoff_s=0.01, backoff_max_s=0.2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_files(root: Path) -> dict[str, str]:
    return {p.stem: sha256(p) for p in (root / "images").iterdir() if p.name.startswith("ISIC_")}


def assert_complete(data: Path, served: dict[str, str]) -> None:
    """Every served image is on disk with the served bytes, listed once in the manifest with its sha256."""
    table = pq.read_table(data / "manifest.parquet").to_pylist()
    assert sorted(r["isic_id"] for r in table) == sorted(served)
    for row in table:
        path = data / row["file"]
        assert path.stat().st_size == row["bytes"]
        assert sha256(path) == row["sha256"] == served[row["isic_id"]]
    assert not [p for p in (data / "images").iterdir() if not p.name.startswith("ISIC_")], "partial files left"


def test_download_everything_then_rerun_fetches_nothing(tmp_path, emulator, served_data):
    opts = DownloadOptions(api_url=emulator.api_url, workers=4, progress=False, policy=FAST)
    first = download_images(tmp_path / "data", opts)
    assert (first.matched, first.downloaded, first.skipped, first.ok) == (30, 30, 0, True)
    assert_complete(tmp_path / "data", served_files(served_data))

    second = download_images(tmp_path / "data", opts)
    assert (second.downloaded, second.skipped, second.bytes_downloaded) == (0, 30, 0)


def test_metadata_files_follow_isic_cli(tmp_path, emulator):
    download_images(tmp_path, DownloadOptions(api_url=emulator.api_url, progress=False, policy=FAST))
    with open(tmp_path / "metadata.csv", newline="", encoding="utf8") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    assert header[:3] == ["isic_id", "attribution", "copyright_license"]
    assert header[3:] == sorted(header[3:]) and "diagnosis_1" in header and "pixels_x" in header
    assert len(rows) == 30
    assert (tmp_path / "metadata.csv").read_bytes().count(b"\r\n") == 31
    attributions = (tmp_path / "attribution.txt").read_text().split("\n\n")
    assert sorted(attributions) == sorted({r["attribution"] for r in rows})
    for name in {r["copyright_license"] for r in rows}:
        assert (tmp_path / "licenses" / f"{name}.txt").read_text().strip()


def test_search_limit_and_collections_pass_through(tmp_path, emulator):
    opts = DownloadOptions(api_url=emulator.api_url, query='image_type:dermoscopic', limit=5,
                           collections="1", progress=False, policy=FAST)
    summary = download_images(tmp_path, opts)
    rows = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert summary.taken == len(rows) == 5
    assert {r["image_type"] for r in rows} == {"dermoscopic"}


def test_summary_tells_matched_from_taken_and_verified_from_recovered(tmp_path, emulator):
    opts = DownloadOptions(api_url=emulator.api_url, limit=10, progress=False, policy=FAST)
    first = download_images(tmp_path, opts)
    assert (first.matched, first.taken, first.downloaded) == (30, 10, 10)
    assert first.lines()[0].startswith("matched 30 images, 10 taken (--limit 10): downloaded 10,")

    verified = download_images(tmp_path, DownloadOptions(api_url=emulator.api_url, limit=10, verify=True,
                                                         progress=False, policy=FAST))
    assert (verified.verified, verified.adopted, verified.downloaded, verified.skipped) == (10, 0, 0, 0)
    assert "verified 10 intact, recovered 0" in verified.lines()[0]

    damaged = tmp_path / pq.read_table(tmp_path / "manifest.parquet").to_pylist()[0]["file"]
    good = damaged.read_bytes()
    damaged.write_bytes(bytes([good[0] ^ 1]) + good[1:])             # same size, other bytes
    again = download_images(tmp_path, DownloadOptions(api_url=emulator.api_url, limit=10, verify=True,
                                                      progress=False, policy=FAST))
    assert (again.verified, again.downloaded, again.adopted) == (9, 1, 0)
    assert damaged.read_bytes() == good


def test_bad_query_is_a_clear_error(tmp_path, emulator, capsys):
    with pytest.raises(QueryError, match="refused"):
        download_images(tmp_path, DownloadOptions(api_url=emulator.api_url, query="age_approx:[20 TO",
                                                  progress=False, policy=FAST))
    code = main(["-q", "download", "--out", str(tmp_path), "--api-url", emulator.api_url,
                 "--search", "age_approx:[20 TO"])
    assert code == 2 and "refused" in capsys.readouterr().err


def test_faults_and_truncation_end_complete(tmp_path, served_data):
    from archive_client.emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(fault_rate=0.3, seed=3)
    with EmulatorServer(served_data, config=config) as server:
        summary = download_images(tmp_path, DownloadOptions(api_url=server.api_url, workers=8,
                                                            progress=False, policy=FAST))
        assert server.stats["faults"] > 0
    assert summary.ok, summary.failed
    assert_complete(tmp_path, served_files(served_data))


def test_second_writer_is_refused(tmp_path, emulator):
    with exclusive_lock(tmp_path):
        with pytest.raises(LockedError, match="another wsm process"):
            download_images(tmp_path, DownloadOptions(api_url=emulator.api_url, progress=False))


def test_plan_action(tmp_path):
    f = tmp_path / "ISIC_0000001.jpg"
    assert plan_action(f, 10, None, False) == "fetch"
    f.write_bytes(b"x" * 10)
    assert plan_action(f, 11, None, False) == "fetch"          # wrong size: refetch
    assert plan_action(f, 10, None, False) == "adopt"          # complete but unlisted: hash it
    known = {"bytes": 10, "sha256": "ab"}
    assert plan_action(f, 10, known, False) == "skip"
    assert plan_action(f, 10, known, True) == "verify"         # --verify re-hashes


# --- a hand-written archive that lies, for what the emulator does not do -----------------------------

def _jpeg(size: int = 16, shade: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 60, 40)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()
ENDLESS_CAP = 32 << 20    # an endless body stops here, so that a client without a bound still ends the test


class _LyingArchive(BaseHTTPRequestHandler):
    """A loopback archive whose answers each test chooses (the fixture gives every test fresh class fields):

    records   the results of a one-page search, or pages: search page by its cursor ('' for the first);
              the first search (for the count) also counts as one of the searches;
    files     body by path, served with Range support; endless: paths whose chunked body never ends (up to
              ENDLESS_CAP), huge: paths announcing a terabyte; sent counts the body bytes sent per path;
    query_error  a message answered with HTTP 400 to any search with a query.
    """

    records: list = []
    pages: dict = {}
    files: dict = {}
    endless: set = set()
    huge: set = set()
    sent: dict = {}
    query_error = ""
    url = ""
    searches = 0                  # search requests answered; past max_searches every page is the last
    max_searches = 10**6

    def do_GET(self):  # noqa: N802
        path, _, query = self.path.partition("?")
        if path == "/api/v2/images/search/":
            self._search(parse_qs(query))
        elif path.startswith("/api/v2/zip-download/license-file/"):
            self._send(200, b"license")
        elif path in self.endless or path in self.huge:
            self._stream(path)
        elif path in self.files:
            self._file(path)
        else:
            self.send_error(404)

    def _search(self, params):
        if self.query_error and params.get("query"):
            self._send(400, json.dumps({"message": self.query_error}).encode())
            return
        type(self).searches += 1
        page = self.pages.get(params.get("cursor", [""])[0]) if self.pages else {
            "count": len(self.records), "next": None, "previous": None, "results": self.records}
        if self.searches > self.max_searches:
            page = {**page, "next": None}
        self._send(200, json.dumps(page).encode())

    def _file(self, path):
        body, start = self.files[path], 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and int(match.group(1)) < len(body):
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self._count(path, self.wfile.write(body[start:]))

    def _stream(self, path):
        self.send_response(200)
        if path in self.huge:
            self.send_header("Content-Length", str(10**12))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = JPEG + bytes(65536 - len(JPEG))
        try:
            for _ in range(ENDLESS_CAP // len(block)):
                chunk = block if path in self.huge else b"%x\r\n%s\r\n" % (len(block), block)
                self.wfile.write(chunk)
                self._count(path, len(block))
        except OSError:          # the client hung up
            pass
        self.close_connection = True

    def _count(self, path, nbytes):
        self.sent[path] = self.sent.get(path, 0) + nbytes

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def lying_archive():
    """The _LyingArchive class of this test (set its fields), with .url its address."""
    handler = type("Archive", (_LyingArchive,), {"records": [], "pages": {}, "files": {"/files/ISIC_0000001.jpg": JPEG},
                                                "endless": set(), "huge": set(), "sent": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield handler
    server.shutdown()
    server.server_close()


def _record(isic_id, url, size):
    return {"isic_id": isic_id, "copyright_license": "CC-0", "attribution": "Test",
            "files": {"full": {"url": url, "size": size}}, "metadata": {"acquisition": {}, "clinical": {}}}


def _lying_opts(archive, **kwargs) -> DownloadOptions:
    return DownloadOptions(api_url=f"{archive.url}/api/v2/", progress=False, policy=FAST, **kwargs)


def test_hostile_and_lying_records_fail_alone(tmp_path, lying_archive):
    base = lying_archive.url
    lying_archive.records = [
        _record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", len(JPEG)),  # good
        _record("../../evil", f"{base}/files/evil.jpg", 500),                   # path traversal
        _record("ISIC_0000002", "file:///etc/passwd", 500),                     # not http(s)
        _record("ISIC_0000003", f"{base}/files/ISIC_0000001.jpg", 999),         # size disagrees
        {"isic_id": "ISIC_0000004"},                                            # malformed record
        _record(["ISIC_0000005"], f"{base}/files/ISIC_0000001.jpg", len(JPEG)),  # an id that is a list
        ["not", "a", "record"],
    ]
    summary = download_images(tmp_path / "data", _lying_opts(lying_archive))
    assert summary.downloaded == 1
    assert set(summary.failed) == {"../../evil", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004", "['ISIC_0000005']",
                                   "['not', 'a', 'record']"}
    assert "InvalidIdError" in summary.failed["../../evil"]
    assert "InvalidUrlError" in summary.failed["ISIC_0000002"]
    assert "999" in summary.failed["ISIC_0000003"]
    assert "InvalidIdError" in summary.failed["['ISIC_0000005']"]
    assert sorted(p.name for p in (tmp_path / "data" / "images").iterdir()) == ["ISIC_0000001.jpg"]
    assert not (tmp_path / "evil.jpg").exists()
    assert [r["isic_id"] for r in pq.read_table(tmp_path / "data" / "manifest.parquet").to_pylist()] == [
        "ISIC_0000001"]


@pytest.mark.parametrize("size", [0, -5, "12", 1.5, True, None])
def test_a_record_without_a_usable_size_fails_alone_and_reruns_too(tmp_path, lying_archive, size):
    base = lying_archive.url
    lying_archive.files["/files/ISIC_0000002.jpg"] = JPEG
    lying_archive.records = [_record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", len(JPEG)),
                             _record("ISIC_0000002", f"{base}/files/ISIC_0000002.jpg", size)]
    for run in range(2):
        summary = download_images(tmp_path, _lying_opts(lying_archive))
        assert (summary.downloaded + summary.skipped, list(summary.failed)) == (1, ["ISIC_0000002"])
        assert "expected a positive number of bytes" in summary.failed["ISIC_0000002"]
    assert not list((tmp_path / "images").glob(".*.part"))


def test_nothing_is_read_past_the_size_the_record_declares(tmp_path, lying_archive):
    base = lying_archive.url
    lying_archive.endless = {"/files/ISIC_0000002.jpg"}      # chunked, never ends
    lying_archive.huge = {"/files/ISIC_0000003.jpg"}         # announces 1 TB, as its record does
    lying_archive.records = [_record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", len(JPEG)),
                             _record("ISIC_0000002", f"{base}/files/ISIC_0000002.jpg", 1000),
                             _record("ISIC_0000003", f"{base}/files/ISIC_0000003.jpg", 10**12)]
    summary = download_images(tmp_path, _lying_opts(lying_archive))
    assert summary.downloaded == 1 and set(summary.failed) == {"ISIC_0000002", "ISIC_0000003"}
    assert "more than the 1000 bytes the record declares" in summary.failed["ISIC_0000002"]
    assert "more than the 268435456 an image may have" in summary.failed["ISIC_0000003"]
    assert "/files/ISIC_0000003.jpg" not in lying_archive.sent             # never requested
    assert lying_archive.sent["/files/ISIC_0000002.jpg"] < ENDLESS_CAP // 4   # hung up early (socket buffers aside)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["ISIC_0000001.jpg"]   # no .part kept


def test_a_partial_file_of_garbage_is_not_resumed_into_a_kept_file(tmp_path, lying_archive):
    base = lying_archive.url
    lying_archive.records = [_record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", len(JPEG))]
    partial = tmp_path / "images" / ".ISIC_0000001.jpg.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x00garbage" * 30)                  # a prefix the server will happily continue
    summary = download_images(tmp_path, _lying_opts(lying_archive))
    assert summary.ok and summary.downloaded == 1
    assert (tmp_path / "images" / "ISIC_0000001.jpg").read_bytes() == JPEG
    assert not partial.exists()


def test_what_a_run_killed_while_recording_a_partial_file_left_is_cleared(tmp_path, lying_archive):
    base = lying_archive.url
    lying_archive.records = [_record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", len(JPEG))]
    images = tmp_path / "images"
    images.mkdir(parents=True)
    (images / ".ISIC_0000001.jpg.part").write_bytes(JPEG[:100])
    (images / ".ISIC_0000001.jpg.part.json.tmp").write_text('{"etag": ')     # killed mid-write
    summary = download_images(tmp_path, _lying_opts(lying_archive))
    assert summary.ok and summary.downloaded == 1
    assert sorted(p.name for p in images.iterdir()) == ["ISIC_0000001.jpg"]
    assert (images / "ISIC_0000001.jpg").read_bytes() == JPEG


def test_a_file_that_does_not_decode_is_never_recorded(tmp_path, lying_archive):
    base = lying_archive.url
    garbage = b"\xff\xd8" + b"z" * (len(JPEG) - 2)              # the size of the record, not an image
    lying_archive.files["/files/ISIC_0000002.jpg"] = garbage
    lying_archive.records = [_record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", len(JPEG)),
                             _record("ISIC_0000002", f"{base}/files/ISIC_0000002.jpg", len(JPEG))]
    summary = download_images(tmp_path, _lying_opts(lying_archive))
    assert list(summary.failed) == ["ISIC_0000002"] and "do not decode as an image" in summary.failed["ISIC_0000002"]
    assert not (tmp_path / "images" / "ISIC_0000002.jpg").exists()

    # the same bytes left on disk, with the manifest gone (rebuilt from disk) or listing them (--verify)
    lying_archive.files["/files/ISIC_0000002.jpg"] = JPEG
    (tmp_path / "images" / "ISIC_0000002.jpg").write_bytes(garbage)
    (tmp_path / "manifest.parquet").unlink()
    rebuilt = download_images(tmp_path, _lying_opts(lying_archive))
    assert (rebuilt.ok, rebuilt.adopted, rebuilt.downloaded) == (True, 1, 1)
    assert (tmp_path / "images" / "ISIC_0000002.jpg").read_bytes() == JPEG

    (tmp_path / "images" / "ISIC_0000002.jpg").write_bytes(garbage)
    table = pq.read_table(tmp_path / "manifest.parquet")
    listed = [hashlib.sha256(garbage).hexdigest() if i == "ISIC_0000002" else h
              for i, h in zip(table["isic_id"].to_pylist(), table["sha256"].to_pylist())]
    pq.write_table(table.set_column(table.schema.get_field_index("sha256"), "sha256", pa.array(listed)),
                   tmp_path / "manifest.parquet")                # as a run without decoding recorded it
    verified = download_images(tmp_path, _lying_opts(lying_archive, verify=True))
    assert (verified.ok, verified.verified, verified.downloaded) == (True, 1, 1)
    assert sha256(tmp_path / "images" / "ISIC_0000002.jpg") == hashlib.sha256(JPEG).hexdigest()


# search pages as cursor -> (isic_id of its one record, cursor of the next page)
CYCLE = {"": ("ISIC_0000001", "a"), "a": ("ISIC_0000002", "b"), "b": ("ISIC_0000003", "a")}
SAME_RECORDS = {"": ("ISIC_0000001", "0"), **{str(i): ("ISIC_0000001", str(i + 1)) for i in range(200)}}


@pytest.mark.parametrize("pages, message", [(CYCLE, "points back to a page already read"),
                                            (SAME_RECORDS, "brought no new image")], ids=["cycle", "same-records"])
def test_paging_that_never_ends_is_a_clear_error(tmp_path, lying_archive, capsys, pages, message):
    def page(isic_id, next_cursor):
        lying_archive.files[f"/files/{isic_id}.jpg"] = JPEG
        return {"count": 3, "next": next_cursor and f"/api/v2/images/search/?cursor={next_cursor}", "previous": None,
                "results": [_record(isic_id, f"{lying_archive.url}/files/{isic_id}.jpg", len(JPEG))]}

    lying_archive.pages = {cursor: page(*spec) for cursor, spec in pages.items()}
    lying_archive.max_searches = 300        # then the last page, so that a client that loops still ends the test
    started = time.monotonic()
    code = main(["-q", "download", "--out", str(tmp_path), "--api-url", f"{lying_archive.url}/api/v2/"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert lying_archive.searches < 10 and time.monotonic() - started < 10


def test_malformed_page_is_a_clear_error(tmp_path, lying_archive, capsys):
    lying_archive.records = "not a list"
    code = main(["-q", "download", "--out", str(tmp_path), "--api-url", f"{lying_archive.url}/api/v2/"])
    err = capsys.readouterr().err
    assert code == 2 and "without 'results'" in err


def test_truncated_bodies_resume_with_range(tmp_path, served_data):
    from archive_client.emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(fault_rate=0.5, fault_kinds=("truncate",), fault_routes=("media",), seed=11)
    with EmulatorServer(served_data, config=config) as server:
        # 1 KiB reads: these test images are a few KB, so a half body still leaves whole chunks on disk
        policy = RetryPolicy(attempts=10, backoff_s=0.01, backoff_max_s=0.2, chunk_bytes=1024)
        summary = download_images(tmp_path, DownloadOptions(api_url=server.api_url, workers=4, progress=False,
                                                            policy=policy))
        stats = server.stats
    assert summary.ok and stats["faults"] > 5
    assert stats["range_requests"] > 0, "a truncated body was refetched from byte 0 instead of resumed"
    assert_complete(tmp_path, served_files(served_data))


def test_disk_full_is_a_clear_error_and_nothing_is_half_written(tmp_path, emulator, monkeypatch):
    import errno

    from archive_client import transfer
    from archive_client.errors import DiskFullError

    def full(*args):               # what writing answers on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transfer, "_write_body", full)
    record = json.loads(__import__("requests").get(emulator.api_url + "images/search/?limit=1").text)["results"][0]
    dest = tmp_path / "ISIC_x.jpg"
    with pytest.raises(DiskFullError, match="free space and rerun"):
        transfer.fetch_file(transfer.make_session(1), record["files"]["full"]["url"], dest, policy=FAST)
    assert not dest.exists()


def test_unreachable_archive_fails_fast_with_one_clear_error(tmp_path, caplog):
    """Connection refused is retried by wsm only (not by urllib3 too), within the policy's time budget."""
    import time

    from archive_client.errors import ArchiveUnreachableError

    policy = RetryPolicy(backoff_s=0.2, api_budget_s=1.5)
    started = time.monotonic()
    with caplog.at_level("WARNING"), pytest.raises(ArchiveUnreachableError, match="cannot reach the archive at "
                                                   r"http://127\.0\.0\.1:1/.*Connection refused.*check --api-url"):
        download_images(tmp_path, DownloadOptions(api_url="http://127.0.0.1:1/api/v2/", limit=2, progress=False,
                                                  policy=policy))
    assert time.monotonic() - started < 3
    assert not [r for r in caplog.records if r.name.startswith("urllib3")], "urllib3 retried (and warned) too"


def test_files_are_only_fetched_from_the_archive_or_hosts_the_user_allows(tmp_path, lying_archive):
    with ThreadingHTTPServer(("127.0.0.1", 0), lying_archive) as other:    # same answers, another port
        threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True).start()
        elsewhere = f"127.0.0.1:{other.server_address[1]}"
        lying_archive.records = [_record("ISIC_0000001", f"http://{elsewhere}/files/ISIC_0000001.jpg", len(JPEG))]
        refused = download_images(tmp_path, _lying_opts(lying_archive))
        assert lying_archive.sent == {}
        assert f"its host {elsewhere} is not the archive's" in refused.failed["ISIC_0000001"]
        assert f"--allow-host {elsewhere}" in refused.failed["ISIC_0000001"]
        allowed = download_images(tmp_path, _lying_opts(lying_archive, allow_hosts=(elsewhere,)))
        other.shutdown()
    assert allowed.ok and allowed.downloaded == 1


def test_the_archive_s_own_hosts():
    from archive_client.errors import InvalidInputError, InvalidUrlError
    from archive_client.ids import check_file_host, parse_host

    api = "https://api.isic-archive.com/api/v2/"
    for url in ("https://content.isic-archive.com/x/ISIC_0000001.jpg", "https://api.isic-archive.com/f.jpg"):
        assert check_file_host(url, api) == url
    for url in ("https://evil.example/ISIC_0000001.jpg", "https://content.isic-archive.com:8443/a.jpg",
                "https://isic-archive.com.evil.example/a.jpg", "http://127.0.0.1:8000/a.jpg"):
        with pytest.raises(InvalidUrlError, match="--allow-host"):
            check_file_host(url, api)
    assert check_file_host("http://127.0.0.1:8000/a.jpg", api, [parse_host("127.0.0.1:8000")])
    assert check_file_host("https://cdn.example/a.jpg", api, [parse_host("CDN.example")])
    with pytest.raises(InvalidUrlError):
        check_file_host("http://127.0.0.1:8001/a.jpg", "http://127.0.0.1:8000/api/v2/")
    for bad in ("", "http://x/", "host:port", "a/b"):
        with pytest.raises(InvalidInputError, match="--allow-host"):
            parse_host(bad)


def test_a_damaged_manifest_is_kept_aside_and_rebuilt_from_verified_files(tmp_path, emulator, served_data, capsys,
                                                                          caplog):
    args = ["-q", "download", "--out", str(tmp_path), "--api-url", emulator.api_url, "--limit", "5"]
    assert main(args) == 0
    (tmp_path / "manifest.parquet").write_bytes(b"PAR1 not really")
    broken = next((tmp_path / "images").glob("ISIC_*"))
    broken.write_bytes(bytes(broken.stat().st_size))             # complete size, no image
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert "Traceback" not in capsys.readouterr().err and "rebuilding it from the verified files" in caplog.text
    [aside] = tmp_path.glob("manifest.parquet.unreadable-*")
    assert aside.read_bytes() == b"PAR1 not really"
    rows = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert len(rows) == 5 and {r["sha256"] for r in rows} <= set(served_files(served_data).values())
    assert sha256(broken) == served_files(served_data)[broken.stem]


@pytest.mark.parametrize("flags, message", [(["--connections", "0"], "--connections 0: give at least 1"),
                                            (["--limit", "-1"], "--limit -1: give a number of images"),
                                            (["--min-rate", "-1"], "--min-rate -1: give a rate in kB/s")])
def test_bad_numbers_are_one_line_errors(tmp_path, emulator, capsys, flags, message):
    assert main(["-q", "download", "--out", str(tmp_path), "--api-url", emulator.api_url, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_folder_that_cannot_be_written_is_a_one_line_error(tmp_path, emulator, capsys, monkeypatch):
    import errno
    import os

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    if os.geteuid() == 0:         # root writes anyway: make mkdir answer as the file system would
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if data in (self, *self.parents):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        assert main(["-q", "download", "--out", str(data), "--api-url", emulator.api_url]) == 2
    finally:
        data.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "permission denied on" in err and "writable" in err


def test_text_from_the_server_reaches_the_terminal_escaped(tmp_path, lying_archive, capsys):
    import logging

    from wsm.cli import _PrintableFormatter

    lying_archive.records = [_record("ISIC_\x1b[2J0000001", f"{lying_archive.url}/files/ISIC_0000001.jpg", 1)]
    lying_archive.query_error = "\x1b]0;owned\x07bad query"
    base = ["-q", "download", "--out", str(tmp_path), "--api-url", f"{lying_archive.url}/api/v2/"]
    assert main(base) == 1
    assert main([*base, "--search", "x"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "failed ISIC_\\x1b[2J0000001" in err and "\\x1b]0;owned\\x07bad query" in err
    record = logging.makeLogRecord({"msg": "%s failed", "args": ("ISIC_\x1b[2J",), "levelname": "WARNING"})
    assert "\x1b" not in _PrintableFormatter("%(message)s").format(record)


def test_an_api_url_without_its_trailing_slash_keeps_its_last_part(tmp_path, emulator):
    assert emulator.api_url.endswith("/api/v2/")
    summary = download_images(tmp_path, DownloadOptions(api_url=emulator.api_url.rstrip("/"), limit=2,
                                                        progress=False, policy=FAST))
    assert summary.ok and summary.downloaded == 2
