"""`wsm download --challenge`: zips served over loopback, masks checked, manifests merged, reruns verified."""
from __future__ import annotations

import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from archive_client.challenge_data import check_mask, download_challenge
from archive_client.errors import DownloadError, UnsafeArchiveError
from archive_client.layout import DataLayout
from archive_client.manifest import DATA_MANIFEST_CORE, GT_MANIFEST, manifest_row
from wsm.errors import LockedError
from wsm.io.hashing import sha256_file
from wsm.io.lock import exclusive_lock
from wsm.io.tables import rows_to_table, write_table_atomic

# ----------------------------------------------------------------------------------------- fixtures

def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    im.save(buf, format="PNG")
    return buf.getvalue()


def mask_array(w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return m


def jpeg_bytes(w: int, h: int, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


class ZipServer:
    """A loopback HTTP server for a dict of path -> bytes; counts GETs per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/zip")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/challenges/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ZipServer() as s:
        yield s


def serve_2018_train(server: ZipServer) -> None:
    """ISIC 2018 training zips: 4 images; masks: good L, mode '1', wrong size, coloured; plus chaff."""
    sizes = {"ISIC_0000001": (40, 30), "ISIC_0000002": (32, 32), "ISIC_0000003": (20, 24), "ISIC_0000004": (16, 16)}
    inputs = {f"ISIC2018_Task1-2_Training_Input/{i}.jpg": jpeg_bytes(*wh, seed=n)
              for n, (i, wh) in enumerate(sizes.items())}
    inputs["ISIC2018_Task1-2_Training_Input/LICENSE.txt"] = b"CC-0"
    inputs["ISIC2018_Task1-2_Training_Input/ATTRIBUTION.txt"] = b"ISIC"
    folder = "ISIC2018_Task1_Training_GroundTruth/"
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 255
    truth = {
        folder: b"",
        folder + "ISIC_0000001_segmentation.png": png_bytes(mask_array(40, 30)),
        folder + "ISIC_0000002_segmentation.png": png_bytes(mask_array(32, 32), "1"),
        folder + "ISIC_0000003_segmentation.png": png_bytes(mask_array(21, 24)),
        folder + "ISIC_0000004_segmentation.png": png_bytes(colour),
        folder + "LICENSE.txt": b"CC-0",
        folder + "readme.pdf": b"%PDF",
    }
    server.files["/challenges/2018/ISIC2018_Task1-2_Training_Input.zip"] = zip_bytes(inputs)
    server.files["/challenges/2018/ISIC2018_Task1_Training_GroundTruth.zip"] = zip_bytes(truth)


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# ----------------------------------------------------------------------------------------- masks

def test_check_mask_modes(tmp_path):
    m = mask_array(10, 8)
    cases = {
        "l.png": (png_bytes(m), None),
        "one.png": (png_bytes(m, "1"), "converted"),
        "rgb_gray.png": (png_bytes(np.stack([m] * 3, -1)), "converted"),
        "p.png": (png_bytes(m, "P"), "converted"),
        "rgb_colour.png": (png_bytes(np.stack([m, m * 0, m], -1)), "coloured"),
        "rgba_clear.png": (png_bytes(np.stack([m, m, m, m], -1)), "transparent"),
        "i16.png": (png_bytes(m.astype(np.uint16) * 257), "converted"),          # 0/65535 is 0/255
        "i16_other.png": (png_bytes(m.astype(np.uint16) * 3), "16-bit values up to 765"),
        "jpeg.png": (jpeg_bytes(10, 8), "JPEG"),
        "junk.png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "does not decode"),
    }
    for name, (data, expect) in cases.items():
        (tmp_path / name).write_bytes(data)
        result = check_mask(tmp_path / name)
        if expect in (None, "converted"):
            assert result.ok, (name, result.reason)
            assert (result.width, result.height) == (10, 8)
            if expect == "converted":
                back = Image.open(io.BytesIO(result.png_bytes))
                assert back.mode == "L" and np.array_equal(np.asarray(back), m), name
            else:
                assert result.png_bytes is None
        else:
            assert not result.ok and expect in result.reason, (name, result.reason)
    truncated = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    assert "does not decode" in check_mask(tmp_path / "cut.png").reason
    assert "is 10x8 but its image is 11x8" in check_mask(tmp_path / "l.png", (11, 8)).reason


# ----------------------------------------------------------------------------------------- download

def test_download_with_inputs_writes_masks_images_and_manifests(tmp_path, server):
    serve_2018_train(server)
    data = tmp_path / "DATA"
    summary = download_challenge(data, "isic2018", splits=("train",), inputs=True, base_url=server.url,
                                 progress=False)
    layout = DataLayout(data)
    assert summary.splits == ["train"]
    assert summary.images_written == 4 and summary.masks_written == 2 and summary.masks_skipped == 0
    rejected = dict(summary.masks_rejected)
    assert set(rejected) == {"ISIC_0000003", "ISIC_0000004"}
    assert "is 21x24 but its image is 20x24" in rejected["ISIC_0000003"]
    assert "coloured" in rejected["ISIC_0000004"]
    assert summary.unexpected == ["ISIC2018_Task1_Training_GroundTruth/readme.pdf"]
    assert summary.zips == {"2018/ISIC2018_Task1-2_Training_Input.zip": "fetched",
                            "2018/ISIC2018_Task1_Training_GroundTruth.zip": "fetched"}

    masks = sorted(p.name for p in (data / "masks/isic2018").iterdir())
    assert masks == ["ISIC_0000001_segmentation.png", "ISIC_0000002_segmentation.png"]
    converted = Image.open(data / "masks/isic2018/ISIC_0000002_segmentation.png")
    assert converted.mode == "L" and set(np.unique(np.asarray(converted))) == {0, 255}
    assert sorted(p.name for p in layout.images.iterdir()) == [f"ISIC_000000{i}.jpg" for i in range(1, 5)]

    gt = read(layout.gt_manifest)
    assert gt == [
        {"isic_id": "ISIC_0000001", "challenge": "isic2018", "split": "train",
         "mask_file": "masks/isic2018/ISIC_0000001_segmentation.png", "width": 40, "height": 30},
        {"isic_id": "ISIC_0000002", "challenge": "isic2018", "split": "train",
         "mask_file": "masks/isic2018/ISIC_0000002_segmentation.png", "width": 32, "height": 32},
    ]
    assert pq.read_schema(layout.gt_manifest).equals(GT_MANIFEST)
    rows = {r["isic_id"]: r for r in read(layout.manifest)}
    assert sorted(rows) == [f"ISIC_000000{i}" for i in range(1, 5)]
    one = rows["ISIC_0000001"]
    image = data / "images/ISIC_0000001.jpg"
    assert one["file"] == "images/ISIC_0000001.jpg" and one["bytes"] == image.stat().st_size
    assert one["sha256"] == sha256_file(image)
    assert (one["width"], one["height"]) == (40, 30) and (one["pixels_x"], one["pixels_y"]) == ("40", "30")
    assert one["image_type"] == "dermoscopic" and one["copyright_license"] == "CC-0"
    assert one["attribution"] == "ISIC 2018 challenge"
    assert one["source_url"] == server.url + "2018/ISIC2018_Task1-2_Training_Input.zip"

    sums = json.loads((data / ".wsm/challenges/checksums.json").read_text())
    truth_zip = data / ".wsm/challenges/2018/ISIC2018_Task1_Training_GroundTruth.zip"
    assert sums["2018/ISIC2018_Task1_Training_GroundTruth.zip"] == {
        "bytes": truth_zip.stat().st_size, "sha256": sha256_file(truth_zip),
        "url": server.url + "2018/ISIC2018_Task1_Training_GroundTruth.zip"}
    # no staging folders or temporary files left behind
    leftovers = [p for p in (data / ".wsm/challenges/2018").iterdir() if not p.name.endswith(".zip")]
    assert leftovers == []
    assert not [p for p in data.rglob(".*.tmp")]


def test_rerun_verifies_zips_and_skips_everything(tmp_path, server):
    serve_2018_train(server)
    data = tmp_path / "DATA"
    download_challenge(data, "isic2018", splits=("train",), inputs=True, base_url=server.url, progress=False)
    mask = data / "masks/isic2018/ISIC_0000001_segmentation.png"
    stamps = {p: p.stat().st_mtime_ns for p in [mask, data / "images/ISIC_0000001.jpg", data / "gt_manifest.parquet",
                                                data / "manifest.parquet"]}
    gets = dict(server.gets)
    again = download_challenge(data, "isic2018", splits=("train",), inputs=True, base_url=server.url,
                               progress=False)
    assert server.gets == gets                      # nothing fetched again
    assert set(again.zips.values()) == {"verified"}
    assert again.masks_written == 0 and again.masks_skipped == 2 and again.images_skipped == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a zip damaged on disk is fetched again and checked against the recorded sha256
    truth_zip = data / ".wsm/challenges/2018/ISIC2018_Task1_Training_GroundTruth.zip"
    truth_zip.write_bytes(b"garbage")
    third = download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
    assert third.zips == {"2018/ISIC2018_Task1_Training_GroundTruth.zip": "fetched"}
    assert server.gets["/challenges/2018/ISIC2018_Task1_Training_GroundTruth.zip"] == 2

    # the server now serves other bytes of the same size: refused, with both digests; or another size
    truth_zip.unlink()
    route = "/challenges/2018/ISIC2018_Task1_Training_GroundTruth.zip"
    served = server.files[route]
    server.files[route] = served[:100] + bytes([served[100] ^ 1]) + served[101:]
    with pytest.raises(DownloadError, match="differs from the .* recorded"):
        download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
    assert not truth_zip.exists()
    server.files[route] = served + b"more"
    with pytest.raises(DownloadError, match=str(len(served))):
        download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
    assert not truth_zip.exists()


def test_2016_masks_get_the_lower_case_name_and_rows_merge(tmp_path, server):
    data = tmp_path / "DATA"
    layout = DataLayout(data)
    # rows already there: a gt row of another challenge and an image row from the archive must survive
    write_table_atomic(rows_to_table([{"isic_id": "ISIC_0000009", "challenge": "isic2017", "split": "val",
                                       "mask_file": "masks/isic2017/ISIC_0000009_segmentation.png",
                                       "width": 5, "height": 5}], GT_MANIFEST), layout.gt_manifest)
    record = {"isic_id": "ISIC_0000009", "copyright_license": "CC-BY", "attribution": "Somebody",
              "metadata": {"acquisition": {"image_type": "clinical: close-up"}, "clinical": {"sex": "female"}}}
    write_table_atomic(rows_to_table([manifest_row(record, file="images/ISIC_0000009.jpg", nbytes=1, sha256="0" * 64,
                                                   width=5, height=5, source_url="https://x/")],
                                     DATA_MANIFEST_CORE), layout.manifest)
    server.files["/challenges/2016/ISBI2016_ISIC_Part1_Test_GroundTruth.zip"] = zip_bytes({
        "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000010_Segmentation.png": png_bytes(mask_array(12, 10)),
    })
    summary = download_challenge(data, "isic2016", splits=("val", "test"), base_url=server.url, progress=False)
    assert summary.missing_splits == ["val"] and summary.splits == ["test"]
    assert (data / "masks/isic2016/ISIC_0000010_segmentation.png").is_file()
    gt = read(layout.gt_manifest)
    assert [(r["isic_id"], r["challenge"], r["split"]) for r in gt] == [
        ("ISIC_0000009", "isic2017", "val"), ("ISIC_0000010", "isic2016", "test")]
    assert gt[1]["mask_file"] == "masks/isic2016/ISIC_0000010_segmentation.png"
    assert read(layout.manifest)[0]["sex"] == "female"          # untouched


def test_existing_image_and_its_row_are_kept(tmp_path, server):
    serve_2018_train(server)
    data = tmp_path / "DATA"
    layout = DataLayout(data)
    layout.images.mkdir(parents=True)
    mine = layout.images / "ISIC_0000001.jpg"
    mine.write_bytes(jpeg_bytes(40, 30, seed=99))
    record = {"isic_id": "ISIC_0000001", "copyright_license": "CC-BY", "attribution": "Archive",
              "metadata": {"acquisition": {"image_type": "dermoscopic"}, "clinical": {"diagnosis_1": "Benign"}}}
    write_table_atomic(rows_to_table([manifest_row(record, file="images/ISIC_0000001.jpg", nbytes=mine.stat().st_size,
                                                   sha256=sha256_file(mine), width=40, height=30,
                                                   source_url="https://archive/")], DATA_MANIFEST_CORE),
                       layout.manifest)
    before = mine.read_bytes()
    summary = download_challenge(data, "isic2018", splits=["train"], inputs=True, base_url=server.url,
                                 progress=False)
    assert summary.images_written == 3 and summary.images_skipped == 1
    assert mine.read_bytes() == before
    rows = {r["isic_id"]: r for r in read(layout.manifest)}
    assert rows["ISIC_0000001"]["attribution"] == "Archive" and rows["ISIC_0000001"]["diagnosis_1"] == "Benign"
    assert rows["ISIC_0000002"]["attribution"] == "ISIC 2018 challenge"


def test_masks_only_are_checked_against_images_already_on_disk(tmp_path, server):
    serve_2018_train(server)
    data = tmp_path / "DATA"
    summary = download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
    # no images on disk: sizes cannot be compared, so only the coloured mask is refused
    assert summary.masks_written == 3 and [i for i, _ in summary.masks_rejected] == ["ISIC_0000004"]
    assert not (data / "images").exists()


def test_hostile_zip_is_refused_and_writes_nothing(tmp_path, server):
    server.files["/challenges/2018/ISIC2018_Task1_Validation_GroundTruth.zip"] = zip_bytes({
        "g/ISIC_0000001_segmentation.png": png_bytes(mask_array(8, 8)),
        "../../ISIC_0000002_segmentation.png": png_bytes(mask_array(8, 8)),
    })
    data = tmp_path / "DATA"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.' component"):
        download_challenge(data, "isic2018", splits=("val",), base_url=server.url, progress=False)
    assert not (data / "masks").exists() and not (data / "gt_manifest.parquet").exists()
    assert not list(tmp_path.rglob("ISIC_0000002*"))


def test_missing_zip_and_bad_arguments(tmp_path, server):
    with pytest.raises(DownloadError, match="404"):
        download_challenge(tmp_path / "D", "isic2017", splits=("val",), base_url=server.url, progress=False)
    with pytest.raises(ValueError, match="isic2016, isic2017, isic2018"):
        download_challenge(tmp_path / "D", "isic2019", base_url=server.url)
    with pytest.raises(ValueError, match="'training'"):
        download_challenge(tmp_path / "D", "isic2018", splits=("training",), base_url=server.url)


def test_lock_is_held_while_writing(tmp_path, server):
    serve_2018_train(server)
    data = tmp_path / "DATA"
    with exclusive_lock(data):
        with pytest.raises(LockedError):
            download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)


# ----------------------------------------------------------------------------------------- the emulator

def test_round_trip_through_the_emulator(emulator, served_data, tmp_path):
    """Zips built by the emulator from a synthetic DATA folder come back as the same masks, images and rows."""
    data = tmp_path / "DATA"
    summary = download_challenge(data, "isic2018", inputs=True, base_url=emulator.challenge_url, progress=False)
    served_gt = pq.read_table(served_data / "gt_manifest.parquet").to_pylist()
    assert summary.splits == ["train", "val", "test"]
    assert (summary.masks_written, summary.masks_rejected, summary.unexpected) == (len(served_gt), [], [])
    assert summary.images_written == len(served_gt) and summary.images_rejected == []
    got_gt = sorted(read(data / "gt_manifest.parquet"), key=lambda r: r["isic_id"])
    assert got_gt == sorted(served_gt, key=lambda r: r["isic_id"])
    for row in served_gt:
        assert (data / row["mask_file"]).read_bytes() == (served_data / row["mask_file"]).read_bytes()
    served_rows = {r["isic_id"]: r for r in read(served_data / "manifest.parquet")}
    for isic_id, row in {r["isic_id"]: r for r in read(data / "manifest.parquet")}.items():
        assert row["sha256"] == served_rows[isic_id]["sha256"] == sha256_file(data / row["file"])
        assert (row["width"], row["height"]) == (served_rows[isic_id]["width"], served_rows[isic_id]["height"])
    again = download_challenge(data, "isic2018", inputs=True, base_url=emulator.challenge_url, progress=False)
    assert set(again.zips.values()) == {"verified"} and again.masks_written == again.images_written == 0


def test_flaky_server_is_survived(served_data, tmp_path):
    from archive_client.emulator import EmulatorConfig, EmulatorServer
    from archive_client.transfer import RetryPolicy

    config = EmulatorConfig(fault_rate=0.5, fault_kinds=("http500", "http503", "reset", "truncate"),
                            fault_routes=("challenges",), max_faults=8, seed=5)
    fast = RetryPolicy(backoff_s=0.01, backoff_max_s=0.05)
    with EmulatorServer(served_data, config=config) as server:
        summary = download_challenge(tmp_path / "DATA", "isic2018", splits=("train", "val"), inputs=True,
                                     base_url=server.challenge_url, progress=False, policy=fast)
        stats = server.stats
    assert summary.masks_rejected == [] and summary.masks_written == summary.images_written > 0
    assert stats.faults > 0, "the emulator injected no fault; the test proves nothing"


# ----------------------------------------------------------------------------------------- the CLI

def test_cli_exit_code_says_whether_every_mask_came_in(emulator, tmp_path, server, capsys):
    from wsm.cli import main

    def download(url: str, data: Path) -> int:
        return main(["-q", "download", "--challenge", "isic2018", "--splits", "train", "--inputs",
                     "--challenge-url", url, "--out", str(data)])

    assert download(emulator.challenge_url, tmp_path / "DATA") == 0
    assert "0 rejected" in capsys.readouterr().err
    serve_2018_train(server)                               # two of its four masks are refused
    assert download(server.url, tmp_path / "DATA2") == 1
    assert "rejected ISIC_0000004" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- relative paths, cut zips

TRUTH_2018 = "/challenges/2018/ISIC2018_Task1_Training_GroundTruth.zip"
TRUTH_KEY = "2018/ISIC2018_Task1_Training_GroundTruth.zip"


@pytest.mark.parametrize("out", ["../up/DATA", "DATA"])
def test_a_relative_out_folder_takes_genuine_zips_and_leaves_no_nested_tree(tmp_path, server, monkeypatch, out):
    from wsm.cli import main

    serve_2018_train(server)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    code = main(["-q", "download", "--challenge", "isic2018", "--splits", "train", "--inputs",
                 "--challenge-url", server.url, "--out", out])
    assert code == 1                      # two of the four masks are refused, by design of the served zip
    data = (tmp_path / "cwd" / out).resolve()
    assert len(list((data / "masks/isic2018").iterdir())) == 2 and len(list((data / "images").iterdir())) == 4
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and p.name == p.parent.name]   # no DATA/DATA, up/up


def test_a_cut_short_zip_is_never_pinned_and_a_rerun_recovers(tmp_path, server):
    serve_2018_train(server)
    whole = server.files[TRUTH_2018]
    server.files[TRUTH_2018] = whole[: len(whole) // 2]      # served complete, with its own Content-Length
    data = tmp_path / "DATA"
    sums = data / ".wsm/challenges/checksums.json"
    with pytest.raises(DownloadError, match="not a whole zip"):
        download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
    assert TRUTH_KEY not in (json.loads(sums.read_text()) if sums.exists() else {})
    server.files[TRUTH_2018] = whole
    assert download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False).masks_written


def test_a_cut_short_zip_pinned_by_an_earlier_version_recovers(tmp_path, server):
    from archive_client.errors import CorruptArchiveError

    serve_2018_train(server)
    whole = server.files[TRUTH_2018]
    data = tmp_path / "DATA"
    cut = data / ".wsm/challenges" / TRUTH_KEY
    cut.parent.mkdir(parents=True)
    cut.write_bytes(whole[: len(whole) // 2])
    sums = data / ".wsm/challenges/checksums.json"
    sums.write_text(json.dumps({TRUTH_KEY: {"bytes": cut.stat().st_size, "sha256": sha256_file(cut), "url": "x"}}))
    with pytest.raises(CorruptArchiveError, match="removed it and its recorded checksum: rerun"):
        download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
    assert not cut.exists() and TRUTH_KEY not in json.loads(sums.read_text())
    assert download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False).masks_written

    # pinned at a size the server no longer serves, and no zip on disk: the error says how to get out
    sums.write_text(json.dumps({TRUTH_KEY: {"bytes": 123, "sha256": "0" * 64, "url": "x"}}))
    cut.unlink()
    with pytest.raises(DownloadError, match=f"delete the '{TRUTH_KEY}' entry of that file and rerun"):
        download_challenge(data, "isic2018", splits=("train",), base_url=server.url, progress=False)
