"""ISIC 2018 Task 2 attribute masks: `wsm import --attributes`, the emulator's Task 2 zips, `wsm download --task
attributes`, and the checks (all five masks of an image or none, 0 / 255 only, the image's size)."""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from attribute_factory import ATTRIBUTE_NAMES, SAMPLE, make_attribute_data, write_attribute_folder
from PIL import Image
from test_challenge_data import ZipServer, jpeg_bytes, png_bytes, zip_bytes

from archive_client.attribute_data import check_attribute_mask
from archive_client.challenge_data import download_challenge
from archive_client.challenges import ATTRIBUTE_CATALOG, ATTRIBUTES, get_split
from archive_client.emulator import EmulatorConfig, EmulatorServer
from archive_client.errors import UnsafeArchiveError
from archive_client.importer import import_folders
from archive_client.layout import DataLayout
from archive_client.manifest import ATTRIBUTE_MANIFEST, data_overview

TRAIN = ATTRIBUTE_CATALOG["isic2018"]["train"]
TRUTH_ROUTE = f"/challenges/2018/{TRAIN.truth_zip}"
INPUTS_ROUTE = f"/challenges/2018/{TRAIN.inputs_zip}"


def rows_of(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["isic_id"], r["challenge"], r["attribute"]))


def positives(path: Path) -> int:
    return int((np.asarray(Image.open(path)) == 255).sum())


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A DATA folder with 10 sample images, lesion masks and attribute masks in train / val / test."""
    return make_attribute_data(tmp_path_factory.mktemp("served") / "DATA", n_images=10)


@pytest.fixture(scope="module")
def emulator(served):
    with EmulatorServer(served, config=EmulatorConfig(seed=0)) as server:
        yield server


# ----------------------------------------------------------------------------------------- the catalog

def test_the_catalog_and_the_layout_name_the_task_2_files(tmp_path):
    assert ATTRIBUTES == tuple(ATTRIBUTE_NAMES)
    assert get_split("isic2018", "train", task="attributes").truth_zip == "ISIC2018_Task2_Training_GroundTruth_v3.zip"
    val = get_split("isic2018", "val", task="attributes")
    assert (val.truth_zip, val.inputs_zip, val.n_images) == ("ISIC2018_Task2_Validation_GroundTruth.zip",
                                                             "ISIC2018_Task1-2_Validation_Input.zip", 100)
    assert get_split("isic2018", "val").truth_zip == "ISIC2018_Task1_Validation_GroundTruth.zip"   # lesion default
    with pytest.raises(ValueError, match="isic2017 has no attribute masks: only isic2018"):
        get_split("isic2017", "train", task="attributes")
    with pytest.raises(ValueError, match="unknown task 'dots'; choose one of lesion, attributes"):
        get_split("isic2018", "train", task="dots")
    layout = DataLayout(tmp_path)
    assert layout.attribute_path("ISIC_0000001", "isic2018", "streaks") == (
        tmp_path / "attributes" / "isic2018" / "ISIC_0000001_attribute_streaks.png")
    assert layout.attribute_manifest == tmp_path / "attribute_manifest.parquet"
    with pytest.raises(ValueError, match="unknown attribute 'dots'"):
        layout.attribute_path("ISIC_0000001", "isic2018", "dots")


# ----------------------------------------------------------------------------------------- import

def copy_images(ids: list[str], dest: Path) -> Path:
    dest.mkdir(parents=True)
    for isic_id in ids:
        shutil.copy(SAMPLE / "images" / f"{isic_id}.jpg", dest)
    return dest


def test_import_writes_the_masks_and_their_rows_and_a_rerun_changes_nothing(tmp_path):
    attributes = tmp_path / "attributes"
    ids = write_attribute_folder(attributes, n_images=4)
    images = copy_images(ids, tmp_path / "images")
    data = tmp_path / "DATA"
    summary = import_folders(data, images=images, attributes=attributes, challenge="isic2018", split="val",
                             progress=False)
    assert summary.ok, summary.lines()
    assert (summary.attributes_written, summary.attributes_skipped, summary.attribute_images) == (20, 0, 4)
    layout = DataLayout(data)
    rows = rows_of(layout.attribute_manifest)
    assert pq.read_schema(layout.attribute_manifest).equals(ATTRIBUTE_MANIFEST)
    assert [(r["isic_id"], r["attribute"]) for r in rows] == [(i, a) for i in ids for a in ATTRIBUTES]
    for row in rows:
        source = attributes / f"{row['isic_id']}_attribute_{row['attribute']}.png"
        assert (data / row["mask_file"]).read_bytes() == source.read_bytes()
        assert row["mask_file"] == f"attributes/isic2018/{source.name}"
        assert (row["challenge"], row["split"], row["width"], row["height"]) == ("isic2018", "val", 256, 256)
        assert row["positive_pixels"] == positives(source)
    assert any(r["positive_pixels"] == 0 for r in rows) and any(r["positive_pixels"] > 0 for r in rows)
    assert any("attribute masks for 4 images (val 4)" in line for line in data_overview(data))

    stamps = {p: p.stat().st_mtime_ns for p in [layout.attribute_manifest, *layout.attributes.rglob("*.png")]}
    again = import_folders(data, images=images, attributes=attributes, challenge="isic2018", split="val",
                           progress=False)
    assert (again.attributes_written, again.attributes_skipped, again.attribute_images) == (0, 20, 4)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a later, broken set of an image already in DATA is refused, and the message says DATA kept the earlier one
    (attributes / f"{ids[0]}_attribute_streaks.png").unlink()
    broken = import_folders(data, images=images, attributes=attributes, challenge="isic2018", split="val",
                            progress=False)
    assert dict(broken.attributes_rejected)[ids[0]].endswith("DATA keeps the five it already had.")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_import_takes_an_image_s_masks_all_together_or_not_at_all(tmp_path):
    attributes = tmp_path / "attributes"
    ids = write_attribute_folder(attributes, n_images=5)
    images = copy_images(ids[:4], tmp_path / "images")          # ids[4]'s image is nowhere
    (attributes / f"{ids[0]}_attribute_streaks.png").unlink()
    grey = np.asarray(Image.open(attributes / f"{ids[1]}_attribute_globules.png")).copy()
    grey[:2, :2] = 128
    Image.fromarray(grey).save(attributes / f"{ids[1]}_attribute_globules.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(attributes / f"{ids[2]}_attribute_dots.png")
    data = tmp_path / "DATA"
    summary = import_folders(data, images=images, attributes=attributes, challenge="isic2018", split="train",
                             progress=False)
    assert not summary.ok and summary.attribute_images == 2
    rejected = dict(summary.attributes_rejected)
    assert set(rejected) == {ids[0], ids[1], ids[4]}
    assert rejected[ids[0]].startswith("missing streaks; all 4 of its attribute files were left out")
    assert "values other than 0 and 255 (found 0, 128, 255)" in rejected[ids[1]]
    assert f"no image {ids[4]} was imported" in rejected[ids[4]]
    assert any("named like attribute masks, but the attributes are globules" in line for line in summary.lines())
    written = {p.name[:12] for p in (data / "attributes" / "isic2018").iterdir()}
    assert written == {ids[2], ids[3]}
    assert {r["isic_id"] for r in rows_of(data / "attribute_manifest.parquet")} == {ids[2], ids[3]}


def test_check_attribute_mask(tmp_path):
    mask = np.zeros((8, 10), np.uint8)
    mask[2:4, 2:4] = 255
    (tmp_path / "ok.png").write_bytes(png_bytes(mask))
    assert check_attribute_mask(tmp_path / "ok.png", (10, 8)).ok
    assert "is 10x8 but its image is 11x8" in check_attribute_mask(tmp_path / "ok.png", (11, 8)).reason
    mask[0, 0] = 1
    (tmp_path / "one.png").write_bytes(png_bytes(mask))
    assert check_attribute_mask(tmp_path / "one.png").reason.startswith(
        "has values other than 0 and 255 (found 0, 1, 255); an attribute mask is 0 (absent) and 255 (present)")
    binary = (mask > 0).astype(np.uint8)            # a 0/1 mask means the same as 0/255: taken, re-encoded
    (tmp_path / "binary.png").write_bytes(png_bytes(binary))
    check = check_attribute_mask(tmp_path / "binary.png")
    assert check.ok and set(np.unique(check.pixels).tolist()) == {0, 255} and check.png_bytes is not None


# ----------------------------------------------------------------------------------------- the emulator

def test_the_emulator_serves_task_2_zips_named_like_the_published_ones(emulator, served):
    layout = DataLayout(served)
    by_split: dict[str, set[str]] = {}
    for row in rows_of(layout.attribute_manifest):
        by_split.setdefault(row["split"], set()).add(row["isic_id"])
    for split, ids in by_split.items():
        spec = ATTRIBUTE_CATALOG["isic2018"][split]
        body = requests.get(spec.url(emulator.challenge_url, "truth"), timeout=30).content
        names = zipfile.ZipFile(io.BytesIO(body)).namelist()
        folder = spec.truth_zip.removesuffix(".zip")
        assert sorted(n for n in names if n.endswith(".png")) == sorted(
            f"{folder}/{i}_attribute_{a}.png" for i in ids for a in ATTRIBUTES)
        assert {f"{folder}/", f"{folder}/LICENSE.txt", f"{folder}/ATTRIBUTION.txt"} <= set(names)
    # deterministic: built again from scratch, the same bytes
    url = TRAIN.url(emulator.challenge_url, "truth")
    first = requests.get(url, timeout=30).content
    for cached in (served / ".wsm" / "emulator" / "challenges" / "2018").glob(f"*{TRAIN.truth_zip}"):
        cached.unlink()
    with EmulatorServer(served) as fresh:
        assert requests.get(TRAIN.url(fresh.challenge_url, "truth"), timeout=30).content == first


def test_download_from_the_emulator_gives_the_same_files_and_rows(emulator, served, tmp_path):
    data = tmp_path / "DATA"
    summary = download_challenge(data, "isic2018", inputs=True, base_url=emulator.challenge_url, progress=False,
                                 task="attributes")
    served_rows = rows_of(served / "attribute_manifest.parquet")
    assert summary.ok and summary.splits == ["train", "val", "test"] and summary.unexpected == []
    assert summary.masks_written == len(served_rows) and summary.images_accepted == len(served_rows) // 5
    assert summary.images_written == len(served_rows) // 5
    assert rows_of(data / "attribute_manifest.parquet") == served_rows
    for row in served_rows:
        assert (data / row["mask_file"]).read_bytes() == (served / row["mask_file"]).read_bytes()
    assert not [p for p in (data / ".wsm/challenges/2018").iterdir() if p.name.startswith("staging-")]
    assert "ISIC2018_Task2_Validation_GroundTruth.zip" in "".join(summary.zips)

    again = download_challenge(data, "isic2018", inputs=True, base_url=emulator.challenge_url, progress=False,
                               task="attributes")
    assert set(again.zips.values()) == {"verified"}
    assert (again.masks_written, again.masks_skipped, again.images_written) == (0, len(served_rows), 0)


# ----------------------------------------------------------------------------------------- rejections

def attribute_png(w: int, h: int, grey: bool = False) -> bytes:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2, w // 4: w // 2] = 255
    mask[0, 0] = 128 if grey else 0
    return png_bytes(mask)


def serve_bad_train_zips(server: ZipServer) -> None:
    """Six images: 1 complete, 2 lacks streaks, 3 has a 0/128/255 mask, 4's masks are not its image's size,
    5 (no image) has masks of two sizes, 6 complete; plus an unknown attribute and ids that are not ids."""
    sizes = {f"ISIC_000000{i}": (40, 30) for i in (1, 2, 3, 4, 6)}
    folder = TRAIN.inputs_zip.removesuffix(".zip")
    server.files[INPUTS_ROUTE] = zip_bytes({f"{folder}/{i}.jpg": jpeg_bytes(*wh, seed=n)
                                            for n, (i, wh) in enumerate(sizes.items())})
    folder = TRAIN.truth_zip.removesuffix(".zip") + "/"
    truth = {folder: b""}
    for isic_id in ("ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000006"):
        truth.update({f"{folder}{isic_id}_attribute_{a}.png": attribute_png(40, 30) for a in ATTRIBUTES})
    del truth[f"{folder}ISIC_0000002_attribute_streaks.png"]
    truth[f"{folder}ISIC_0000003_attribute_globules.png"] = attribute_png(40, 30, grey=True)
    truth.update({f"{folder}ISIC_0000004_attribute_{a}.png": attribute_png(41, 30) for a in ATTRIBUTES})
    truth.update({f"{folder}ISIC_0000005_attribute_{a}.png": attribute_png(40, 30) for a in ATTRIBUTES})
    truth[f"{folder}ISIC_0000005_attribute_streaks.png"] = attribute_png(30, 40)
    truth[f"{folder}ISIC_0000001_attribute_dots.png"] = attribute_png(40, 30)
    truth[f"{folder}ISIC_00000061_attribute_globules.png"] = attribute_png(40, 30)
    truth[f"{folder}ISIC_000000\u0661_attribute_globules.png"] = attribute_png(40, 30)
    server.files[TRUTH_ROUTE] = zip_bytes(truth)


def test_each_image_s_masks_are_taken_together_or_not_at_all(tmp_path):
    data = tmp_path / "DATA"
    with ZipServer() as server:
        serve_bad_train_zips(server)
        summary = download_challenge(data, "isic2018", splits=("train",), inputs=True, base_url=server.url,
                                     progress=False, task="attributes")
    assert not summary.ok
    assert (summary.images_accepted, summary.masks_written) == (2, 10)
    rejected = dict(summary.masks_rejected)
    assert set(rejected) == {"ISIC_0000002", "ISIC_0000003", "ISIC_0000004", "ISIC_0000005"}
    assert rejected["ISIC_0000002"].startswith("missing streaks; all 4 of its attribute files were left out")
    assert "ISIC_0000003_attribute_globules.png: mask has values other than 0 and 255 (found 0, 128, 255)" in \
        rejected["ISIC_0000003"]
    assert "mask is 41x30 but its image is 40x30" in rejected["ISIC_0000004"]
    assert "the masks differ in size (" in rejected["ISIC_0000005"] and "streaks 30x40" in rejected["ISIC_0000005"]
    assert len(summary.unexpected) == 3                       # the unknown attribute and the two non-ids
    lines = summary.lines()
    assert lines[0] == "isic2018 train: attribute masks 10 written, 0 already there, 4 rejected"
    assert any("unknown attribute 'dots'" in line for line in lines)
    on_disk = sorted(p.name[:12] for p in (data / "attributes" / "isic2018").iterdir())
    assert on_disk == ["ISIC_0000001"] * 5 + ["ISIC_0000006"] * 5
    assert {r["isic_id"] for r in rows_of(data / "attribute_manifest.parquet")} == {"ISIC_0000001", "ISIC_0000006"}


def test_a_hostile_entry_refuses_the_zip_and_writes_nothing(tmp_path):
    folder = ATTRIBUTE_CATALOG["isic2018"]["val"].truth_zip.removesuffix(".zip")
    entries = {f"{folder}/ISIC_0000001_attribute_{a}.png": attribute_png(8, 8) for a in ATTRIBUTES}
    entries["../../ISIC_0000002_attribute_globules.png"] = attribute_png(8, 8)
    data = tmp_path / "DATA"
    with ZipServer() as server:
        server.files[f"/challenges/2018/{folder}.zip"] = zip_bytes(entries)
        with pytest.raises(UnsafeArchiveError, match=r"'\.\.' component"):
            download_challenge(data, "isic2018", splits=("val",), base_url=server.url, progress=False,
                               task="attributes")
    assert not (data / "attributes").exists() and not (data / "attribute_manifest.parquet").exists()
    assert not list(tmp_path.rglob("ISIC_0000002*"))


# ----------------------------------------------------------------------------------------- the CLI

def test_cli_download_and_import_of_attributes(emulator, served, tmp_path, capsys):
    from wsm.cli import main

    data = tmp_path / "DATA"
    assert main(["-q", "download", "--challenge", "isic2018", "--task", "attributes", "--splits", "train,val",
                 "--challenge-url", emulator.challenge_url, "--out", str(data)]) == 0
    err = capsys.readouterr().err
    assert "isic2018 train,val: attribute masks" in err and "0 rejected" in err
    assert "attribute masks for" in err and "next:" in err

    code = main(["-q", "download", "--challenge", "isic2017", "--task", "attributes", "--challenge-url",
                 emulator.challenge_url, "--out", str(tmp_path / "D2")])
    assert code == 2 and "isic2017 has no attribute masks: only isic2018" in capsys.readouterr().err
    assert main(["-q", "download", "--task", "attributes", "--out", str(tmp_path / "D3")]) == 2
    assert "--task attributes needs --challenge isic2018" in capsys.readouterr().err

    attributes = tmp_path / "attributes"
    ids = write_attribute_folder(attributes, n_images=2)
    images = copy_images(ids, tmp_path / "images")
    assert main(["-q", "import", "--images", str(images), "--attributes", str(attributes), "--challenge", "isic2018",
                 "--out", str(tmp_path / "D4")]) == 0
    assert "attribute masks 10 written, 0 already there; 2 images with all five, 0 rejected" in \
        capsys.readouterr().err
