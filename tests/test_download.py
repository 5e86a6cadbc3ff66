"""`wsm download` against the local archive emulator: complete, verified, resumable, safe."""
from __future__ import annotations

import csv
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from archive_client.download import DownloadOptions, download_images, plan_action
from archive_client.errors import LockedError, QueryError
from archive_client.layout import exclusive_lock
from archive_client.transfer import RetryPolicy
from wsm.cli import main

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

class _LyingArchive(BaseHTTPRequestHandler):
    """Answers one search page with records chosen by the test, and serves one 500-byte file."""

    records: list = []
    body = b"\xff\xd8" + b"z" * 498

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/api/v2/images/search/"):
            payload = json.dumps({"count": len(self.records), "next": None, "previous": None,
                                  "results": self.records}).encode()
        elif self.path.startswith("/api/v2/zip-download/license-file/"):
            payload = b"license"
        elif self.path.startswith("/files/"):
            payload = self.body
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def lying_archive():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingArchive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _record(isic_id, url, size):
    return {"isic_id": isic_id, "copyright_license": "CC-0", "attribution": "Test",
            "files": {"full": {"url": url, "size": size}}, "metadata": {"acquisition": {}, "clinical": {}}}


def test_hostile_and_lying_records_fail_alone(tmp_path, lying_archive):
    base = lying_archive
    _LyingArchive.records = [
        _record("ISIC_0000001", f"{base}/files/ISIC_0000001.jpg", 500),        # good
        _record("../../evil", f"{base}/files/evil.jpg", 500),                   # path traversal
        _record("ISIC_0000002", "file:///etc/passwd", 500),                     # not http(s)
        _record("ISIC_0000003", f"{base}/files/ISIC_0000003.jpg", 999),         # size disagrees
        {"isic_id": "ISIC_0000004"},                                            # malformed record
    ]
    summary = download_images(tmp_path / "data", DownloadOptions(api_url=f"{base}/api/v2/", progress=False,
                                                                 policy=FAST))
    assert summary.downloaded == 1
    assert set(summary.failed) == {"../../evil", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"}
    assert "InvalidIdError" in summary.failed["../../evil"]
    assert "InvalidUrlError" in summary.failed["ISIC_0000002"]
    assert "999" in summary.failed["ISIC_0000003"]
    assert sorted(p.name for p in (tmp_path / "data" / "images").iterdir()) == ["ISIC_0000001.jpg"]
    assert not (tmp_path / "evil.jpg").exists()
    assert [r["isic_id"] for r in pq.read_table(tmp_path / "data" / "manifest.parquet").to_pylist()] == [
        "ISIC_0000001"]


def test_malformed_page_is_a_clear_error(tmp_path, lying_archive, capsys):
    _LyingArchive.records = "not a list"
    code = main(["-q", "download", "--out", str(tmp_path), "--api-url", f"{lying_archive}/api/v2/"])
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


def test_disk_full_is_a_clear_error_and_nothing_is_half_written(tmp_path, emulator):
    from archive_client.errors import DiskFullError
    from archive_client.transfer import fetch_file, make_session

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to produce a real ENOSPC")
    record = json.loads(__import__("requests").get(emulator.api_url + "images/search/?limit=1").text)["results"][0]
    dest = tmp_path / "ISIC_x.jpg"
    with pytest.raises(DiskFullError, match="free space and rerun"):
        fetch_file(make_session(1), record["files"]["full"]["url"], dest, partial=Path("/dev/full"), policy=FAST)
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
