"""The archive emulator over real HTTP on loopback: routes, paging, Range, challenge zips, faults, latency."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from datafactory import make_data, split_of
from PIL import Image

from archive_client.challenges import CATALOG
from archive_client.emulator import EmulatorConfig, EmulatorServer
from archive_client.emulator.__main__ import main as cli_main

TIMEOUT = 10


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("emu") / "DATA", n_images=30, with_masks=True, seed=1)


@pytest.fixture(scope="module")
def server(data_root):
    with EmulatorServer(data_root) as running:
        yield running


@pytest.fixture(scope="module")
def rows(data_root) -> dict[str, dict]:
    return {r["isic_id"]: r for r in pq.read_table(data_root / "manifest.parquet").to_pylist()}


def get(url: str, **kw) -> requests.Response:
    return requests.get(url, timeout=TIMEOUT, **kw)


def search_ids(server, **params) -> list[str]:
    """Every id a search returns, following ``next`` verbatim."""
    out, url, first = [], server.api_url + "images/search/", True
    while url:
        response = get(url, params=params if first else None)
        assert response.status_code == 200, response.text
        page = response.json()
        assert ("count" in page) == first
        out += [r["isic_id"] for r in page["results"]]
        url, first = page["next"], False
    return out


# ---------------------------------------------------------------------------------------------- paging
@pytest.fixture(scope="module")
def big_server(tmp_path_factory):
    root = make_data(tmp_path_factory.mktemp("emu_big") / "DATA", n_images=250, with_masks=False, seed=2)
    with EmulatorServer(root) as running:
        yield running


def test_paging_every_id_once_in_order(big_server) -> None:
    expected = [f"ISIC_{i:07d}" for i in range(250)]
    assert search_ids(big_server) == expected
    assert search_ids(big_server, limit=7) == expected


def test_paging_links_and_count(big_server) -> None:
    first = get(big_server.api_url + "images/search/", params={"query": "", "limit": 100}).json()
    assert first["count"] == 250 and first["previous"] is None and len(first["results"]) == 100
    assert first["next"].startswith(big_server.api_url + "images/search/?query=&collections=&limit=100&cursor=")
    second = get(first["next"]).json()
    assert "count" not in second
    assert second["results"][0]["isic_id"] == "ISIC_0000100"
    back = get(second["previous"]).json()
    assert [r["isic_id"] for r in back["results"]] == [r["isic_id"] for r in first["results"]]
    assert back["previous"] is None


@pytest.mark.parametrize(("limit", "n"), [(500, 100), (0, 1), (-3, 1), ("abc", 100), (None, 100), (37, 37)])
def test_limit_is_clamped(big_server, limit, n) -> None:
    params = {} if limit is None else {"limit": limit}
    assert len(get(big_server.api_url + "images/search/", params=params).json()["results"]) == n


def test_next_repeats_query_and_collections(server, rows) -> None:
    page = get(server.api_url + "images/search/",
               params={"query": "diagnosis_1:Benign", "collections": "1", "limit": 2}).json()
    for part in ("query=diagnosis_1%3ABenign", "collections=1", "limit=2"):
        assert part in page["next"]
    assert search_ids(server, query="diagnosis_1:Benign", collections="1", limit=2) == sorted(
        i for i, r in rows.items() if r["diagnosis_1"] == "Benign")


def test_bad_cursor_is_404(server) -> None:
    response = get(server.api_url + "images/search/", params={"cursor": "garbage"})
    assert response.status_code == 404 and response.json() == {"detail": "Invalid cursor"}


# ---------------------------------------------------------------------------------------------- queries
def _expect(rows, predicate) -> list[str]:
    return sorted(i for i, r in rows.items() if predicate(r))


def _age(r) -> int | None:
    return None if r.get("age_approx") is None else int(r["age_approx"])


@pytest.mark.parametrize(
    ("query", "predicate"),
    [
        ('diagnosis_3:"Melanoma Invasive"', lambda r: r["diagnosis_3"] == "Melanoma Invasive"),
        ("age_approx:[20 TO 40]", lambda r: _age(r) is not None and 20 <= _age(r) <= 40),
        ("age_approx:{20 TO 40}", lambda r: _age(r) is not None and 20 < _age(r) < 40),
        ("anatom_site_general:*torso", lambda r: (r.get("anatom_site_general") or "").endswith("torso")),
        ("sex:*", lambda r: r.get("sex") is not None),
        ("-sex:male", lambda r: r.get("sex") != "male"),
        ("NOT image_type:dermoscopic", lambda r: r["image_type"] != "dermoscopic"),
        ('image_type:"clinical: close-up" OR diagnosis_1:malignant',
         lambda r: r["image_type"] == "clinical: close-up" or r["diagnosis_1"] == "Malignant"),
        ("(sex:male OR sex:female) melanocytic:true",
         lambda r: r.get("sex") in ("male", "female") and r.get("melanocytic") == "True"),
        ("pixels_x:[100 TO *] AND copyright_license:CC-BY*",
         lambda r: r["width"] >= 100 and r["copyright_license"].startswith("CC-BY")),
        ("clin_size_long_diam_mm:[2 TO 8.5]",
         lambda r: r.get("clin_size_long_diam_mm") is not None and 2 <= float(r["clin_size_long_diam_mm"]) <= 8.5),
    ],
)
def test_queries_over_http(server, rows, query, predicate) -> None:
    expected = _expect(rows, predicate)
    assert search_ids(server, query=query) == expected
    assert get(server.api_url + "images/search/", params={"query": query, "limit": 1}).json()["count"] == len(expected)


def test_some_queries_are_not_trivial(rows) -> None:
    """The data factory gives each query above both matches and non-matches."""
    assert 0 < len(_expect(rows, lambda r: r["diagnosis_1"] == "Malignant")) < len(rows)
    assert 0 < len(_expect(rows, lambda r: (r.get("anatom_site_general") or "").endswith("torso"))) < len(rows)


@pytest.mark.parametrize("query", ["age_approx:[20 TO 40", "melanoma", "sex:male)", 'diagnosis_3:"x'])
def test_bad_query_is_400_with_message(server, query) -> None:
    for route in ("images/search/", "images/search/size/"):
        response = get(server.api_url + route, params={"query": query})
        assert response.status_code == 400
        message = response.json()["message"]
        assert "query" in message and "position" in message


def test_collections_parameter_errors(server) -> None:
    assert get(server.api_url + "images/search/", params={"collections": "1;2"}).status_code == 400
    response = get(server.api_url + "images/search/", params={"collections": "99"})
    assert response.status_code == 400 and "99" in response.json()["message"]


def test_size_route(server, data_root, rows) -> None:
    def disk(ids):
        return sum((data_root / rows[i]["file"]).stat().st_size for i in ids)

    assert get(server.api_url + "images/search/size/").json() == {"size": disk(rows)}
    benign = _expect(rows, lambda r: r["diagnosis_1"] == "Benign")
    assert get(server.api_url + "images/search/size/", params={"query": "diagnosis_1:Benign"}).json() == {
        "size": disk(benign)}


# ---------------------------------------------------------------------------------------------- records
def test_record_shape_and_types(server, data_root, rows) -> None:
    for isic_id, row in list(rows.items())[:10]:
        record = get(server.api_url + f"images/{isic_id}/").json()
        assert set(record) == {"isic_id", "public", "copyright_license", "attribution", "files", "metadata"}
        assert record["isic_id"] == isic_id and record["public"] is True
        assert record["copyright_license"] in ("CC-0", "CC-BY", "CC-BY-NC")
        full = record["files"]["full"]
        assert full["url"] == f"{server.url}media/images/{isic_id}.jpg"
        assert full["size"] == (data_root / row["file"]).stat().st_size
        acquisition, clinical = record["metadata"]["acquisition"], record["metadata"]["clinical"]
        assert acquisition["pixels_x"] == row["width"] and acquisition["pixels_y"] == row["height"]
        assert acquisition["image_type"] == row["image_type"]
        assert isinstance(clinical["melanocytic"], bool)
        assert clinical["diagnosis_1"] in ("Benign", "Malignant")
        for key in ("diagnosis_2", "diagnosis_3"):
            assert isinstance(clinical[key], str)
        if row.get("age_approx") is None:
            assert "age_approx" not in clinical  # absent fields are left out, not null
        else:
            assert clinical["age_approx"] == int(row["age_approx"])
        if row.get("clin_size_long_diam_mm") is not None:
            assert isinstance(clinical["clin_size_long_diam_mm"], float)
        for group in (acquisition, clinical):
            assert None not in group.values()
        assert not {"file", "sha256", "bytes", "width", "height", "source_url"} & (set(acquisition) | set(clinical))


def test_search_results_equal_detail_records(server) -> None:
    page = get(server.api_url + "images/search/", params={"limit": 3}).json()
    for record in page["results"]:
        assert get(server.api_url + f"images/{record['isic_id']}/").json() == record


def test_files_and_thumbnails(server, data_root, rows) -> None:
    record = get(server.api_url + "images/ISIC_0000004/").json()
    full = get(record["files"]["full"]["url"])
    assert full.status_code == 200 and full.headers["Content-Type"] == "image/jpeg"
    assert full.content == (data_root / rows["ISIC_0000004"]["file"]).read_bytes()
    assert full.headers["Accept-Ranges"] == "bytes"
    thumb = get(record["files"]["thumbnail_256"]["url"])
    assert thumb.status_code == 200 and len(thumb.content) == record["files"]["thumbnail_256"]["size"]
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert img.format == "JPEG" and max(img.size) <= 256
    assert (data_root / ".wsm" / "emulator" / "thumbnails" / "ISIC_0000004_thumbnail_256.jpg").exists()


def test_head_has_length_and_no_body(server, data_root, rows) -> None:
    response = requests.head(f"{server.url}media/images/ISIC_0000001.jpg", timeout=TIMEOUT)
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["Content-Length"]) == (data_root / rows["ISIC_0000001"]["file"]).stat().st_size


@pytest.mark.parametrize(
    "path",
    ["images/ISIC_9999999/", "images/ISIC_123/", "images/..%2F..%2Fetc/", "images/..%2F..%2Fetc%2Fpasswd",
     "images/%2e%2e/", "nothing/here/", "zip-download/license-file/CC-BY-SA/", "collections/7/", "collections/x/"],
)
def test_api_404(server, path) -> None:
    response = get(server.api_url + path)
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}


@pytest.mark.parametrize(
    "path",
    ["media/images/ISIC_9999999.jpg", "media/images/ISIC_0000001.png", "media/images/..%2F..%2Fmanifest.parquet",
     "media/images/../manifest.parquet", "media/thumbnails/ISIC_0000001.jpg",
     "challenges/2017/ISIC-2017_Training_Data.zip",
     "challenges/2018/..%2F..%2Fmanifest.parquet", "manifest.parquet", "images/ISIC_0000001.jpg"],
)
def test_file_404(server, path) -> None:
    assert get(server.url + path).status_code == 404


def test_post_is_405(server) -> None:
    response = requests.post(server.api_url + "images/search/", json={}, timeout=TIMEOUT)
    assert response.status_code == 405


# ---------------------------------------------------------------------------------------------- Range
def test_range_requests(server, data_root, rows) -> None:
    url = f"{server.url}media/images/ISIC_0000002.jpg"
    data = (data_root / rows["ISIC_0000002"]["file"]).read_bytes()
    size = len(data)
    cases = (("bytes=10-99", 10, 99), ("bytes=100-", 100, size - 1), ("bytes=-50", size - 50, size - 1),
             (f"bytes=5-{size + 100}", 5, size - 1))
    for header, first, last in cases:
        response = get(url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == data[first:last + 1]
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(response.headers["Content-Length"]) == last - first + 1
    response = get(url, headers={"Range": f"bytes={size}-"})
    assert response.status_code == 416 and response.headers["Content-Range"] == f"bytes */{size}"
    response = get(url, headers={"Range": "bytes=0-1,4-5"})  # several ranges: the whole file
    assert response.status_code == 200 and response.content == data
    etag = get(url).headers["ETag"]
    assert get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    assert get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'}).status_code == 200
    assert server.stats.range_requests >= 7


# ---------------------------------------------------------------------------------------------- licenses, collections
@pytest.mark.parametrize(("name", "url"), [("CC-0", "publicdomain/zero/1.0"), ("CC-BY", "licenses/by/4.0"),
                                           ("CC-BY-NC", "licenses/by-nc/4.0")])
def test_license_file(server, name, url) -> None:
    response = get(server.api_url + f"zip-download/license-file/{name}/")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert f"https://creativecommons.org/{url}/" in response.text


def test_default_collection(server, rows) -> None:
    page = get(server.api_url + "collections/").json()
    assert page["count"] == 1 and page["next"] is None
    (collection,) = page["results"]
    assert set(collection) >= {"id", "name", "public", "pinned", "locked", "doi", "doi_url"}
    assert get(server.api_url + "collections/1/").json() == collection
    assert search_ids(server, collections="1") == sorted(rows)


def test_collections_json(tmp_path) -> None:
    root = make_data(tmp_path / "DATA", n_images=6, with_masks=False)
    spec = [{"id": i, "name": f"c{i}", "isic_ids": [f"ISIC_{j:07d}" for j in range(i)]} for i in range(1, 6)]
    spec[0]["doi"] = "10.34970/151324"
    (root / "collections.json").write_text(json.dumps(spec))
    with EmulatorServer(root) as srv:
        seen, url = [], srv.api_url + "collections/?limit=2"
        while url:
            page = get(url).json()
            seen += [c["id"] for c in page["results"]]
            url = page["next"]
        assert seen == [1, 2, 3, 4, 5]
        assert get(srv.api_url + "collections/1/").json()["doi_url"] == "https://doi.org/10.34970/151324"
        assert search_ids(srv, collections="2") == ["ISIC_0000000", "ISIC_0000001"]
        assert search_ids(srv, collections="1,3") == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]


# ---------------------------------------------------------------------------------------------- challenge zips
def _zip(server, split) -> tuple[zipfile.ZipFile, zipfile.ZipFile]:
    out = []
    for which in ("truth", "inputs"):
        response = get(split.url(server.challenge_url, which))
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
        out.append(zipfile.ZipFile(io.BytesIO(response.content)))
    return out[0], out[1]


@pytest.mark.parametrize("split_name", ["train", "val", "test"])
def test_challenge_zip_contents(server, data_root, rows, split_name) -> None:
    split = CATALOG["isic2018"][split_name]
    truth, inputs = _zip(server, split)
    ids = sorted(i for i in rows if split_of(int(i[5:])) == split_name)
    truth_stem, inputs_stem = split.truth_zip[:-4], split.inputs_zip[:-4]
    masks = sorted(n for n in truth.namelist() if n.endswith(".png"))
    assert masks == [f"{truth_stem}/{i}_segmentation.png" for i in ids]
    assert {f"{truth_stem}/LICENSE.txt", f"{truth_stem}/ATTRIBUTION.txt"} <= set(truth.namelist())
    assert sorted(n for n in inputs.namelist() if n.endswith(".jpg")) == [f"{inputs_stem}/{i}.jpg" for i in ids]
    assert f"{inputs_stem}/ATTRIBUTION.txt" in inputs.namelist()
    for i in ids:
        with Image.open(io.BytesIO(truth.read(f"{truth_stem}/{i}_segmentation.png"))) as got, \
                Image.open(data_root / "masks" / "isic2018" / f"{i}_segmentation.png") as want:
            assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
            assert set(np.unique(np.asarray(got))) <= {0, 255}
        assert inputs.read(f"{inputs_stem}/{i}.jpg") == (data_root / rows[i]["file"]).read_bytes()
    for member in truth.infolist():
        assert member.date_time == (2018, 1, 1, 0, 0, 0)
        assert split.mask_pattern.fullmatch(member.filename) or not member.filename.endswith(".png")


def test_challenge_zip_is_deterministic_and_ranged(server, data_root) -> None:
    split = CATALOG["isic2018"]["train"]
    url = split.url(server.challenge_url, "truth")
    first = get(url).content
    cached = list((data_root / ".wsm" / "emulator" / "challenges" / "2018").glob("*" + split.truth_zip))
    assert len(cached) == 1
    cached[0].unlink()
    with EmulatorServer(data_root) as fresh:  # builds it again from scratch
        again = get(split.url(fresh.challenge_url, "truth")).content
        assert again == first
        part = get(split.url(fresh.challenge_url, "truth"), headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == first[100:200]
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(again).hexdigest()


def test_challenge_2016_suffix(tmp_path) -> None:
    root = make_data(tmp_path / "DATA", n_images=3, with_masks=True, challenge="isic2016")
    with EmulatorServer(root) as srv:
        split = CATALOG["isic2016"]["train"]
        truth, _ = _zip(srv, split)
        names = sorted(n for n in truth.namelist() if n.endswith(".png"))
        assert names == [f"{split.truth_zip[:-4]}/ISIC_{i:07d}_Segmentation.png" for i in range(3)]
        assert get(CATALOG["isic2018"]["train"].url(srv.challenge_url, "truth")).status_code == 404


# ---------------------------------------------------------------------------------------------- faults
@pytest.fixture
def faulty(data_root):
    servers = []

    def start(**config) -> EmulatorServer:
        srv = EmulatorServer(data_root, config=EmulatorConfig(**config)).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize(("kind", "status"), [("http500", 500), ("http503", 503), ("http429", 429)])
def test_http_faults(faulty, kind, status) -> None:
    srv = faulty(fault_rate=1.0, fault_kinds=(kind,))
    for url in (srv.api_url + "images/search/", f"{srv.url}media/images/ISIC_0000000.jpg",
                CATALOG["isic2018"]["val"].url(srv.challenge_url, "truth")):
        response = get(url)
        assert response.status_code == status
        assert (response.headers.get("Retry-After") == "1") == (kind == "http429")
    assert srv.stats.faults_by_kind == {kind: 3} and srv.stats["faults"] == 3


def test_reset_fault(faulty) -> None:
    srv = faulty(fault_rate=1.0, fault_kinds=("reset",))
    for url in (srv.api_url + "images/search/", f"{srv.url}media/images/ISIC_0000000.jpg"):
        with pytest.raises(requests.ConnectionError):
            get(url)
    assert srv.stats.faults_by_kind == {"reset": 2}


def test_truncate_fault(faulty, data_root, rows) -> None:
    srv = faulty(fault_rate=1.0, fault_kinds=("truncate",))
    for url in (srv.api_url + "images/search/", f"{srv.url}media/images/ISIC_0000000.jpg"):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            get(url)
    response = requests.get(f"{srv.url}media/images/ISIC_0000000.jpg", stream=True, timeout=TIMEOUT)
    size = (data_root / rows["ISIC_0000000"]["file"]).stat().st_size
    assert response.status_code == 200 and int(response.headers["Content-Length"]) == size
    got = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in response.iter_content(256):
            got += chunk
    assert 0 < len(got) < size
    head = requests.head(f"{srv.url}media/images/ISIC_0000000.jpg", timeout=TIMEOUT)  # no body: no truncation
    assert head.status_code == 200


def test_malformed_fault_only_on_api(faulty, data_root, rows) -> None:
    srv = faulty(fault_rate=1.0, fault_kinds=("malformed",))
    response = get(srv.api_url + "images/search/")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        response.json()
    image = get(f"{srv.url}media/images/ISIC_0000000.jpg")
    assert image.content == (data_root / rows["ISIC_0000000"]["file"]).read_bytes()
    assert srv.stats.faults_by_kind == {"malformed": 1}


def test_no_faults_at_rate_zero(faulty) -> None:
    srv = faulty(fault_rate=0.0, fault_kinds=("http500", "reset", "truncate", "malformed"))
    session = requests.Session()
    for i in range(40):
        assert session.get(srv.api_url + "images/search/", params={"limit": 1 + i % 3}, timeout=TIMEOUT).ok
        assert session.get(f"{srv.url}media/images/ISIC_{i % 30:07d}.jpg", timeout=TIMEOUT).ok
    stats = srv.stats
    assert stats.requests == 80 and stats.faults == 0 and stats["faults_by_kind"] == {}
    assert stats.routes == {"search": 40, "media": 40}


def _outcomes(srv) -> list[str]:
    out = []
    for i in range(24):
        url = srv.api_url + "images/search/?limit=1" if i % 2 else f"{srv.url}media/images/ISIC_{i % 5:07d}.jpg"
        try:
            out.append(str(get(url).status_code))
        except requests.ConnectionError:
            out.append("reset")
    return out


def test_faults_are_deterministic_by_seed(faulty) -> None:
    kinds = ("http500", "http503", "http429", "reset")
    a = _outcomes(faulty(fault_rate=0.5, fault_kinds=kinds, seed=7))
    b = _outcomes(faulty(fault_rate=0.5, fault_kinds=kinds, seed=7))
    c = _outcomes(faulty(fault_rate=0.5, fault_kinds=kinds, seed=8))
    assert a == b
    assert a != c
    assert "200" in a and len(set(a)) > 2


def test_fault_routes_and_max_faults(faulty) -> None:
    srv = faulty(fault_rate=1.0, fault_kinds=("http503",), fault_routes=("media",), max_faults=2)
    assert get(srv.api_url + "images/search/?limit=1").status_code == 200
    url = f"{srv.url}media/images/ISIC_0000000.jpg"
    assert [get(url).status_code for _ in range(3)] == [503, 503, 200]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="choose from"):
        EmulatorConfig(fault_kinds=("boom",))
    with pytest.raises(ValueError, match="between 0 and 1"):
        EmulatorConfig(fault_rate=1.5)
    with pytest.raises(ValueError, match="latency"):
        EmulatorConfig(latency_ms=-1)


def test_latency(faulty) -> None:
    srv = faulty(latency_ms=150)
    start = time.perf_counter()
    assert get(srv.api_url + "collections/").ok
    assert time.perf_counter() - start >= 0.15


# ---------------------------------------------------------------------------------------------- server and CLI
def test_refuses_remote_host(data_root) -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        EmulatorServer(data_root, host="0.0.0.0")
    EmulatorServer(data_root, host="0.0.0.0", allow_remote=True)  # allowed, not started
    assert cli_main(["--root", str(data_root), "--host", "0.0.0.0", "--port", "0"]) == 2


def test_cli_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--fault-kinds" in out and "--allow-remote" in out and "isic" in out


def test_cli_serves_until_interrupted(data_root) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "archive_client.emulator", "--root", str(data_root), "--port", "0",
                             "--latency-ms", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        api_url = None
        for line in proc.stdout:
            if line.startswith("API: "):
                api_url = line.split()[1]
                break
        assert api_url and api_url.startswith("http://127.0.0.1:") and api_url.endswith("/api/v2/")
        assert get(api_url + "images/search/?limit=1").json()["count"] == 30
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "served 1 requests" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_root_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="DATA folder"):
        EmulatorServer(tmp_path / "nope")


def test_not_running_has_no_url(data_root) -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = EmulatorServer(data_root).api_url


def test_access_log_is_debug_only(server, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="archive_client.emulator"):
        get(server.api_url + "collections/")
    lines = [r for r in caplog.records if "GET /api/v2/collections/" in r.getMessage()]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)


def test_empty_data_folder(tmp_path) -> None:
    with EmulatorServer(tmp_path) as srv:
        page = get(srv.api_url + "images/search/").json()
        assert page == {"count": 0, "next": None, "previous": None, "results": []}
        assert get(srv.api_url + "images/search/size/").json() == {"size": 0}


@pytest.mark.peer
def test_isic_cli_downloads_from_the_emulator(server, data_root, rows, tmp_path) -> None:
    pytest.importorskip("isic_cli")
    # isic-cli's dev mode is fixed to 127.0.0.1:8000; point it at this server's port instead of racing for 8000.
    code = ("import sys, isic_cli.cli as c; c.DOMAINS['dev'] = sys.argv[1]; "
            "sys.argv = ['isic'] + sys.argv[2:]; c.main()")
    out = tmp_path / "out"
    query = "diagnosis_1:Malignant"
    result = subprocess.run(
        [sys.executable, "-c", code, server.url.rstrip("/"), "--no-version-check", "--guest", "image", "download",
         "--search", query, "--limit", "5", str(out)],
        env={**os.environ, "ISIC_DEV": "1", "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = _expect(rows, lambda r: r["diagnosis_1"] == "Malignant")[:5]
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"{i}.jpg" for i in expected]
    for i in expected:
        assert (out / f"{i}.jpg").read_bytes() == (data_root / rows[i]["file"]).read_bytes()
    header = (out / "metadata.csv").read_text(encoding="utf8").splitlines()[0].split(",")
    assert header[:3] == ["isic_id", "attribution", "copyright_license"] and "pixels_x" in header
    licenses = {rows[i]["copyright_license"] for i in expected}
    assert sorted(p.stem for p in (out / "licenses").glob("*.txt")) == sorted(licenses)
