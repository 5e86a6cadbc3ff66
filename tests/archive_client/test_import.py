"""`wsm import`: real ISIC files from ../shared/data, and synthetic hostile or broken folders."""
from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from archive_client.importer import (PART3_DIAGNOSIS, ImportSummary, import_folders, part3_diagnosis, read_labels,
                                     reference_split)
from archive_client.manifest import DATA_MANIFEST_CORE, GT_MANIFEST
from wsm.errors import LockedError
from wsm.io.lock import exclusive_lock

# 5 of each ISIC 2017 Part 3 case among the ISIC 2018 Task 1 training images (pairs.csv)
MELANOMA = ["ISIC_0000004", "ISIC_0000013", "ISIC_0000022", "ISIC_0000026", "ISIC_0000029"]
KERATOSIS = ["ISIC_0012090", "ISIC_0012143", "ISIC_0012155", "ISIC_0012173", "ISIC_0012204"]
NEVUS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000003", "ISIC_0000006", "ISIC_0000007"]
UNKNOWN = ["ISIC_0000058", "ISIC_0000060", "ISIC_0000115", "ISIC_0000117", "ISIC_0000170"]
REAL_IDS = MELANOMA + KERATOSIS + NEVUS + UNKNOWN


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(path: Path) -> dict[str, dict]:
    return {r["isic_id"]: r for r in pq.read_table(path).to_pylist()}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file, to show a rerun touched nothing."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and ".wsm" not in p.parts}


def jpeg(path: Path, w: int, h: int, seed: int = 0, orientation: int = 1) -> Path:
    """A w x h JPEG as stored; an EXIF ``orientation`` of 5-8 displays it h x w."""
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, format="JPEG", exif=exif)
    return path


def png_mask(path: Path, w: int, h: int, mode: str = "L") -> Path:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).convert(mode).save(path, format="PNG")
    return path


@pytest.fixture
def real_subset(shared_data, tmp_path):
    """20 real images and masks of the ISIC 2018 Task 1 training set, as symlinks (the source is read-only)."""
    src = shared_data / "isic2018-task1-512"
    folder = tmp_path / "src"
    for isic_id in REAL_IDS:
        for sub, name in (("images", f"{isic_id}.jpg"), ("masks", f"{isic_id}_segmentation.png")):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / name).symlink_to(src / sub / name)
    return folder, src / "pairs.csv"


# ----------------------------------------------------------------------------------------- real data

@pytest.mark.shared
def test_real_import(real_subset, tmp_path):
    folder, pairs = real_subset
    data = tmp_path / "DATA"
    summary = import_folders(data, folder / "images", folder / "masks", labels=pairs, challenge="isic2018",
                             progress=False)
    assert (summary.images_written, summary.images_rejected, summary.unexpected) == (20, [], [])
    assert (summary.masks_written, summary.masks_rejected) == (20, [])
    assert summary.splits == {"train": 20} and summary.labels_rejected == []
    assert summary.labels_unmatched == 2594 - 20
    assert "mask_fg_fraction" in summary.labels_ignored_columns

    manifest = rows(data / "manifest.parquet")
    assert sorted(manifest) == sorted(REAL_IDS)
    assert pq.read_schema(data / "manifest.parquet").names[: len(DATA_MANIFEST_CORE)] == DATA_MANIFEST_CORE.names
    for isic_id, row in manifest.items():
        source = folder / "images" / f"{isic_id}.jpg"
        copy = data / "images" / f"{isic_id}.jpg"
        assert not copy.is_symlink() and copy.stat().st_ino != source.resolve().stat().st_ino   # a real copy
        assert row["file"] == f"images/{isic_id}.jpg"
        assert row["sha256"] == sha256(source) == sha256(copy)
        assert row["bytes"] == copy.stat().st_size
        assert (row["width"], row["height"]) == (512, 512)
        assert row["image_type"] == "dermoscopic"
        assert (row["copyright_license"], row["attribution"]) == ("CC-0", "ISIC challenge data")
        assert row["source_url"] == source.absolute().as_uri()
    for ids, case in ((MELANOMA, "melanoma"), (KERATOSIS, "seborrheic_keratosis"), (NEVUS, "neither")):
        for isic_id in ids:
            got = tuple(manifest[isic_id][f"diagnosis_{k}"] for k in (1, 2, 3))
            assert got == PART3_DIAGNOSIS[case], isic_id
    for isic_id in UNKNOWN:
        assert all(manifest[isic_id][f"diagnosis_{k}"] is None for k in range(1, 6))

    gt = pq.read_table(data / "gt_manifest.parquet")
    assert gt.schema.equals(GT_MANIFEST)
    for row in gt.to_pylist():
        assert (row["challenge"], row["split"], row["width"], row["height"]) == ("isic2018", "train", 512, 512)
        assert row["mask_file"] == f"masks/isic2018/{row['isic_id']}_segmentation.png"
        assert sha256(data / row["mask_file"]) == sha256(folder / "masks" / f"{row['isic_id']}_segmentation.png")

    with open(data / "metadata.csv", newline="", encoding="utf8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["isic_id", "attribution", "copyright_license", "diagnosis_1", "diagnosis_2",
                                     "diagnosis_3", "image_type", "pixels_x", "pixels_y"]
        meta = {r["isic_id"]: r for r in reader}
    assert meta["ISIC_0000004"]["diagnosis_3"] == "Melanoma, NOS" and meta["ISIC_0000058"]["diagnosis_1"] == ""
    assert (data / "attribution.txt").read_text() == "ISIC challenge data"

    # rerun: nothing rewritten
    before = snapshot(data)
    again = import_folders(data, folder / "images", folder / "masks", labels=pairs, challenge="isic2018",
                           progress=False)
    assert (again.images_written, again.images_skipped, again.masks_written, again.masks_skipped) == (0, 20, 0, 20)
    assert snapshot(data) == before


@pytest.mark.shared
def test_real_import_with_hard_links(real_subset, tmp_path):
    folder, _ = real_subset
    data = tmp_path / "DATA"
    summary = import_folders(data, folder / "images", folder / "masks", link=True, progress=False)
    assert summary.images_written == summary.images_linked == 20
    image = data / "images" / "ISIC_0000004.jpg"
    assert not image.is_symlink()
    assert image.stat().st_ino == (folder / "images" / "ISIC_0000004.jpg").resolve().stat().st_ino
    # no labels: no diagnosis; challenge "local": the split of the newest challenge that has the image
    row = rows(data / "manifest.parquet")["ISIC_0000004"]
    assert row["diagnosis_1"] is None
    assert {r["challenge"] for r in rows(data / "gt_manifest.parquet").values()} == {"local"}
    again = import_folders(data, folder / "images", folder / "masks", link=True, progress=False)
    assert again.images_skipped == 20 and again.images_written == 0


def test_link_falls_back_to_copy_across_devices(tmp_path, monkeypatch):
    import errno

    jpeg(tmp_path / "src/ISIC_0000001.jpg", 8, 8)

    def no_link(src, dst, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    summary = import_folders(tmp_path / "DATA", tmp_path / "src", link=True, progress=False)
    assert summary.images_written == 1 and summary.images_linked == 0
    assert sha256(tmp_path / "DATA/images/ISIC_0000001.jpg") == sha256(tmp_path / "src/ISIC_0000001.jpg")


# ----------------------------------------------------------------------------------------- synthetic

@pytest.fixture
def messy(tmp_path):
    """A folder of images and masks with every kind of problem next to two good pairs."""
    img, msk = tmp_path / "in/images", tmp_path / "in/masks"
    jpeg(img / "ISIC_0000001.jpg", 40, 30, 1)
    png_mask(msk / "ISIC_0000001_segmentation.png", 40, 30)
    jpeg(img / "sub/ISIC_0000002.JPG", 20, 20, 2)               # nested folder, upper-case extension
    png_mask(msk / "ISIC_0000002_Segmentation.png", 20, 20, "1")  # 2016 spelling, bilevel: converted to L
    jpeg(img / "ISIC_0000003.jpg", 40, 30, 3)
    png_mask(msk / "ISIC_0000003_segmentation.png", 41, 30)      # wrong size
    jpeg(img / "ISIC_0000004.jpg", 16, 16, 4)
    jpeg(msk / "ISIC_0000004_segmentation.png", 16, 16)          # a JPEG named .png
    jpeg(img / "ISIC_0000005.jpg", 16, 16, 5)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 1] = 200
    Image.fromarray(colour).save(msk / "ISIC_0000005_segmentation.png")   # RGB with colour
    (img / "ISIC_0000006.jpg").write_bytes(b"not a jpeg at all")          # broken image ...
    png_mask(msk / "ISIC_0000006_segmentation.png", 16, 16)               # ... so its mask has no image
    png_mask(msk / "ISIC_0000007_segmentation.png", 16, 16)               # no image at all
    jpeg(img / "ISIC_0000001.png", 40, 30, 9)                             # second file for ISIC_0000001
    hostile = ["ISIC_0000008.jpg\n", "ISIC_000008.jpg", "ISIC_0000008.jpg.exe", "..ISIC_0000008.jpg",
               "isic_0000008.jpg", "ISIC_\u0660\u0660\u0660\u0660\u0660\u0660\u0668.jpg", "ISIC_0000008 .jpg",
               "ISIC_0000008.gif"]
    for name in hostile:
        jpeg(img / name, 8, 8)
    (img / "notes.docx").write_bytes(b"x")
    (img / "LICENSE.txt").write_text("CC-0")
    (img / ".DS_Store").write_bytes(b"x")
    (img / "__MACOSX").mkdir()
    (img / "__MACOSX/._ISIC_0000001.jpg").write_bytes(b"x")
    return img, msk, hostile


def test_messy_folders(messy, tmp_path):
    img, msk, hostile = messy
    data = tmp_path / "DATA"
    summary = import_folders(data, img, msk, challenge="mine", split="val", progress=False)
    assert sorted(p.name for p in (data / "images").iterdir()) == [
        "ISIC_0000001.jpg", "ISIC_0000002.jpg", "ISIC_0000003.jpg", "ISIC_0000004.jpg", "ISIC_0000005.jpg"]
    assert sorted(p.name for p in (data / "masks/mine").iterdir()) == [
        "ISIC_0000001_segmentation.png", "ISIC_0000002_segmentation.png"]
    converted = Image.open(data / "masks/mine/ISIC_0000002_segmentation.png")
    assert converted.mode == "L" and set(np.unique(np.asarray(converted))) == {0, 255}

    images_rejected = dict(summary.images_rejected)
    assert set(images_rejected) == {"ISIC_0000001.png", "ISIC_0000006.jpg"}
    assert "ISIC_0000001.jpg" in images_rejected["ISIC_0000001.png"]
    assert "does not decode" in images_rejected["ISIC_0000006.jpg"]
    masks_rejected = dict(summary.masks_rejected)
    assert "is 41x30 but its image is 40x30" in masks_rejected["ISIC_0000003_segmentation.png"]
    assert "JPEG" in masks_rejected["ISIC_0000004_segmentation.png"]
    assert "coloured" in masks_rejected["ISIC_0000005_segmentation.png"]
    assert "no image" in masks_rejected["ISIC_0000006_segmentation.png"]
    assert "no image" in masks_rejected["ISIC_0000007_segmentation.png"]
    assert sorted(summary.unexpected) == sorted([f"images/{n}" for n in hostile] + ["images/notes.docx"])
    assert summary.splits == {"val": 2}
    assert all("\n" not in line for line in summary.lines())     # hostile names are quoted for the terminal
    assert "'evil\\n.jpg'" in ImportSummary(unexpected=["evil\n.jpg"]).lines()[-1]

    gt = rows(data / "gt_manifest.parquet")
    assert sorted(gt) == ["ISIC_0000001", "ISIC_0000002"]
    assert gt["ISIC_0000002"] == {"isic_id": "ISIC_0000002", "challenge": "mine", "split": "val",
                                  "mask_file": "masks/mine/ISIC_0000002_segmentation.png",
                                  "width": 20, "height": 20}
    assert sorted(rows(data / "manifest.parquet")) == [f"ISIC_000000{i}" for i in range(1, 6)]
    # nothing but the expected files, no temporary files left, nothing written beside DATA
    assert not [p for p in data.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA", "in"]

    before = snapshot(data)
    again = import_folders(data, img, msk, challenge="mine", split="val", progress=False)
    assert (again.images_written, again.images_skipped, again.masks_written, again.masks_skipped) == (0, 5, 0, 2)
    assert snapshot(data) == before


def test_masks_are_0_255_or_0_1_and_nothing_else(tmp_path):
    """A 0/1 mask is lesion where 1 (written as 0/255); 0/100 or 0/1/255 is refused with the values found."""
    img, msk, data = tmp_path / "in/images", tmp_path / "in/masks", tmp_path / "DATA"
    lesion = np.zeros((16, 16), bool)
    lesion[4:12, 4:12] = True
    values = {1: (0, 1), 2: (0, 100), 3: (0, 255), 4: (0, 1, 255)}
    msk.mkdir(parents=True)
    for n, levels in values.items():
        jpeg(img / f"ISIC_000000{n}.jpg", 16, 16, n)
        mask = np.where(lesion, levels[1], levels[0]).astype(np.uint8)
        mask[0, 0] = levels[-1] if len(levels) == 3 else levels[0]
        Image.fromarray(mask).save(msk / f"ISIC_000000{n}_segmentation.png")
    summary = import_folders(data, img, msk, challenge="mine", split="train", progress=False)
    assert sorted(p.name for p in (data / "masks/mine").iterdir()) == [
        "ISIC_0000001_segmentation.png", "ISIC_0000003_segmentation.png"]
    written = np.asarray(Image.open(data / "masks/mine/ISIC_0000001_segmentation.png"))
    assert set(np.unique(written)) == {0, 255} and ((written == 255) == lesion).all()
    rejected = dict(summary.masks_rejected)
    assert set(rejected) == {"ISIC_0000002_segmentation.png", "ISIC_0000004_segmentation.png"}
    assert "holds 0, 100" in rejected["ISIC_0000002_segmentation.png"]
    assert "holds 0, 1, 255" in rejected["ISIC_0000004_segmentation.png"]
    assert sorted(rows(data / "gt_manifest.parquet")) == ["ISIC_0000001", "ISIC_0000003"]


def test_changed_source_is_rewritten_and_rows_merge(tmp_path):
    data = tmp_path / "DATA"
    jpeg(tmp_path / "a/ISIC_0000001.jpg", 8, 8, 1)
    import_folders(data, tmp_path / "a", progress=False)
    jpeg(tmp_path / "b/ISIC_0000002.jpg", 8, 8, 2)
    jpeg(tmp_path / "b/ISIC_0000001.jpg", 8, 8, 3)             # new content for an existing image
    summary = import_folders(data, tmp_path / "b", progress=False)
    assert summary.images_written == 2 and summary.images_skipped == 0
    manifest = rows(data / "manifest.parquet")
    assert sorted(manifest) == ["ISIC_0000001", "ISIC_0000002"]
    assert manifest["ISIC_0000001"]["sha256"] == sha256(tmp_path / "b/ISIC_0000001.jpg")
    assert manifest["ISIC_0000001"]["source_url"].endswith("/b/ISIC_0000001.jpg")
    assert len((data / "metadata.csv").read_text().splitlines()) == 3


def test_sizes_are_as_displayed_for_exif_rotated_images(tmp_path):
    from wsm.io.images import image_size, read_image

    jpeg(tmp_path / "img/ISIC_0000001.jpg", 12, 8, orientation=6)     # displayed 8 wide, 12 high
    jpeg(tmp_path / "img/ISIC_0000002.jpg", 12, 8, orientation=6)
    png_mask(tmp_path / "msk/ISIC_0000001_segmentation.png", 8, 12)    # drawn on the displayed image
    png_mask(tmp_path / "msk/ISIC_0000002_segmentation.png", 12, 8)    # drawn on the stored pixels
    summary = import_folders(tmp_path / "DATA", tmp_path / "img", tmp_path / "msk", progress=False)
    row = rows(tmp_path / "DATA" / "manifest.parquet")["ISIC_0000001"]
    image = tmp_path / "DATA" / row["file"]
    assert (row["width"], row["height"]) == image_size(image) == (8, 12)
    assert read_image(image).shape == (12, 8, 3)
    assert summary.masks_written == 1
    assert [name for name, _ in summary.masks_rejected] == ["ISIC_0000002_segmentation.png"]


def test_masks_in_the_images_folder(tmp_path):
    folder = tmp_path / "both"
    jpeg(folder / "ISIC_0000001.jpg", 12, 10)
    png_mask(folder / "ISIC_0000001_segmentation.png", 12, 10)
    (folder / "stray.bin").write_bytes(b"x")
    summary = import_folders(tmp_path / "DATA", folder, folder, progress=False)
    assert (summary.images_written, summary.masks_written, summary.unexpected) == (1, 1, ["both/stray.bin"])
    # without --masks the masks are reported, not imported
    alone = import_folders(tmp_path / "DATA2", folder, progress=False)
    assert alone.masks_written == 0
    assert sorted(alone.unexpected) == ["both/ISIC_0000001_segmentation.png", "both/stray.bin"]


# ----------------------------------------------------------------------------------------- labels

def test_archive_style_labels(tmp_path):
    for i in (1, 2, 3):
        jpeg(tmp_path / f"img/ISIC_000000{i}.jpg", 10, 10, i)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "isic_id,diagnosis_1,diagnosis_3,anatom_site_general,age_approx,image_type,copyright_license,"
        "attribution,width\n"
        "ISIC_0000001,Malignant,\"Melanoma, NOS\",back,55,clinical: close-up,CC-BY,Hospital A,999\n"
        "ISIC_0000002,Benign,,,,,,,\n"
        "ISIC_0000002,Malignant,,,,,,,\n"
        "../etc/passwd,Benign,,,,,,,\n"
        "ISIC_0000009,Benign,,,,,,,\n", encoding="utf8")
    data = tmp_path / "DATA"
    summary = import_folders(data, tmp_path / "img", labels=labels, progress=False)
    manifest = rows(data / "manifest.parquet")
    one = manifest["ISIC_0000001"]
    assert (one["diagnosis_1"], one["diagnosis_3"], one["anatom_site_general"], one["age_approx"]) == (
        "Malignant", "Melanoma, NOS", "back", "55")
    assert (one["image_type"], one["copyright_license"], one["attribution"]) == ("clinical: close-up", "CC-BY",
                                                                                 "Hospital A")
    assert one["width"] == 10                                   # measured, not taken from the labels
    assert manifest["ISIC_0000002"]["diagnosis_1"] == "Benign"  # first row wins
    assert manifest["ISIC_0000003"]["diagnosis_1"] is None
    assert [row for row, _ in summary.labels_rejected] == ["labels.csv:4", "labels.csv:5"]
    assert "refusing image id '../etc/passwd'" in summary.labels_rejected[1][1]
    assert summary.labels_unmatched == 1 and summary.labels_ignored_columns == ["width"]
    with open(data / "metadata.csv", newline="", encoding="utf8") as fh:
        header = next(csv.reader(fh))
    assert header == ["isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general",
                      "diagnosis_1", "diagnosis_3", "image_type", "pixels_x", "pixels_y"]
    # isic-cli order: most images first, then by name
    assert (data / "attribution.txt").read_text() == "ISIC challenge data\n\nHospital A"


def test_part3_table():
    assert part3_diagnosis(1, 0) == part3_diagnosis(1, None) == PART3_DIAGNOSIS["melanoma"]
    assert part3_diagnosis(0, 1) == part3_diagnosis(None, 1) == PART3_DIAGNOSIS["seborrheic_keratosis"]
    assert part3_diagnosis(0, 0) == ("Benign", "Benign melanocytic proliferations", "Nevus")
    assert part3_diagnosis(None, None) is None and part3_diagnosis(0, None) is None
    with pytest.raises(ValueError, match="exclusive"):
        part3_diagnosis(1, 1)


def test_part3_labels_csv(tmp_path):
    labels = tmp_path / "gt.csv"
    labels.write_text("\ufeffimage_id,melanoma,seborrheic_keratosis,extra\n"     # ISIC 2017's own CSV, with a BOM
                      "ISIC_0000001,1.0,0.0,a\nISIC_0000002,0,1,b\nISIC_0000003,0,0,c\nISIC_0000004,,,d\n"
                      "ISIC_0000005,1,1,e\nISIC_0000006,yes,0,f\n", encoding="utf8")
    parsed = read_labels(labels)
    assert parsed.by_id["ISIC_0000001"]["diagnosis_3"] == "Melanoma, NOS"
    assert parsed.by_id["ISIC_0000002"]["diagnosis_3"] == "Seborrheic keratosis"
    assert parsed.by_id["ISIC_0000003"]["diagnosis_3"] == "Nevus"
    assert parsed.by_id["ISIC_0000004"] == {}
    assert [r for r, _ in parsed.rejected] == ["gt.csv:6", "gt.csv:7"]
    assert "'yes'" in parsed.rejected[1][1]
    assert parsed.ignored_columns == ["extra"]
    (tmp_path / "bad.csv").write_text("id,melanoma\nISIC_0000001,1\n")
    with pytest.raises(ValueError, match="no isic_id"):
        read_labels(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------- splits, arguments

def test_reference_split():
    assert reference_split("ISIC_0012152", "isic2017") == "test"     # only in the ISIC 2017 test set
    assert reference_split("ISIC_0012152", "local") == "test"        # any challenge's split
    assert reference_split("ISIC_0001769", "isic2017") == "val"      # 2017 val, 2018 train
    assert reference_split("ISIC_0001769", "local") == "train"       # the newest challenge that has it
    assert reference_split("ISIC_9999999", "local") == "train"       # not in the reference


def test_bad_arguments_and_lock(tmp_path):
    jpeg(tmp_path / "img/ISIC_0000001.jpg", 8, 8)
    for challenge in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ValueError, match="folder name"):
            import_folders(tmp_path / "DATA", tmp_path / "img", challenge=challenge, progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        import_folders(tmp_path / "DATA", tmp_path / "img", split="training", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        import_folders(tmp_path / "DATA", tmp_path / "nope", progress=False)
    assert not (tmp_path / "DATA").exists()
    with exclusive_lock(tmp_path / "DATA"), pytest.raises(LockedError):
        import_folders(tmp_path / "DATA", tmp_path / "img", progress=False)


# ----------------------------------------------------------------------------------------- the CLI

def test_cli_exit_code_says_whether_everything_was_imported(tmp_path, capsys):
    from wsm.cli import main

    jpeg(tmp_path / "img/ISIC_0000001.jpg", 12, 10)
    png_mask(tmp_path / "msk/ISIC_0000001_segmentation.png", 12, 10)
    args = ["-q", "import", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk")]
    assert main(args + ["--out", str(tmp_path / "DATA")]) == 0
    assert "masks 1 written" in capsys.readouterr().err

    png_mask(tmp_path / "msk/ISIC_0000002_segmentation.png", 12, 10)       # a mask without an image
    assert main(args + ["--out", str(tmp_path / "DATA2")]) == 1
    assert "rejected 'ISIC_0000002_segmentation.png': no image" in capsys.readouterr().err
    labels = tmp_path / "labels.csv"
    labels.write_text("isic_id,diagnosis_1\nISIC_0000001,Benign\n../not-an-id,Benign\n", encoding="utf8")
    (tmp_path / "msk/ISIC_0000002_segmentation.png").unlink()
    assert main(args + ["--labels", str(labels), "--out", str(tmp_path / "DATA3")]) == 1
    assert "label row labels.csv:3" in capsys.readouterr().err


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    from archive_client.errors import ArchiveError
    from wsm.cli import main

    jpeg(tmp_path / "img/ISIC_0000001.jpg", 8, 8)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("isic_id,diagnosis_1\nISIC_0000001,Nävus\n".encode("latin-1"))
    cases = [(["--images", str(tmp_path / "nope")], "the images folder .*nope does not exist"),
             (["--images", str(tmp_path / "img"), "--masks", str(tmp_path / "img/ISIC_0000001.jpg")],
              "the masks folder .* is not a folder; pass an existing folder to --masks"),
             (["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "none.csv")],
              "labels file .*none.csv does not exist"),
             (["--images", str(tmp_path / "img"), "--labels", str(latin1)], "labels file .* is not a UTF-8 CSV"),
             (["--images", str(tmp_path / "img"), "--challenge", "../x"], "becomes a folder name")]
    for extra, message in cases:
        assert main(["-q", "import", "--out", str(tmp_path / "DATA"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wsm: error: ") and err.count("\n") == 1, err
        assert re.search(message, err), err
    with pytest.raises(ArchiveError, match="does not exist"):         # what the CLI catches, also from Python
        import_folders(tmp_path / "DATA", tmp_path / "nope", progress=False)


def test_masks_given_as_images_are_pointed_to_masks(tmp_path):
    for i in (1, 2):
        png_mask(tmp_path / f"msk/ISIC_000000{i}_segmentation.png", 8, 8)
    jpeg(tmp_path / "msk/ISIC_0000003.jpg", 8, 8)
    (tmp_path / "msk/readme.pdf").write_bytes(b"%PDF")
    alone = import_folders(tmp_path / "DATA", tmp_path / "msk", progress=False)
    assert alone.images_written == 1 and alone.masks_written == 0
    text = "\n".join(alone.lines())
    assert "2 files skipped ('msk/ISIC_0000001_segmentation.png', 'msk/ISIC_0000002_segmentation.png'): these " \
           "look like masks: pass their folder with --masks DIR" in text
    assert "1 files skipped (not named like images or masks): 'msk/readme.pdf'" in text
    # and the other way round: an image in the masks folder
    jpeg(tmp_path / "img/ISIC_0000001.jpg", 8, 8)
    swapped = import_folders(tmp_path / "DATA2", tmp_path / "img", tmp_path / "msk", progress=False)
    assert "1 files skipped ('msk/ISIC_0000003.jpg'): these look like images: pass their folder with --images" \
        in "\n".join(swapped.lines())


# ----------------------------------------------------------------------------------------- file modes

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_mode_of_a_new_file(tmp_path, umask):
    """Not mkstemp's 0600, also when the writer swaps in a file of its own (safetensors does)."""
    import tempfile

    from wsm.io.atomic import atomic_path, write_text_atomic

    def replace_with_private_file(tmp: Path) -> None:
        fd, other = tempfile.mkstemp(dir=tmp.parent)
        os.write(fd, b"weights")
        os.close(fd)
        os.replace(other, tmp)

    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "model.safetensors") as tmp:
            replace_with_private_file(tmp)
        jpeg(tmp_path / "img/ISIC_0000001.jpg", 8, 8)
        import_folders(tmp_path / "DATA", tmp_path / "img", progress=False)
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "model.safetensors", tmp_path / "DATA/images/ISIC_0000001.jpg",
                 tmp_path / "DATA/manifest.parquet"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_a_truncated_jpeg_is_rejected_at_import(tmp_path):
    img = tmp_path / "images"
    jpeg(img / "ISIC_0000001.jpg", 64, 48, 1)
    jpeg(img / "ISIC_0000002.jpg", 64, 48, 2)
    whole = (img / "ISIC_0000002.jpg").read_bytes()
    (img / "ISIC_0000002.jpg").write_bytes(whole[: len(whole) * 2 // 3])    # the header still gives a size
    summary = import_folders(tmp_path / "DATA", img, progress=False)
    rejected = dict(summary.images_rejected)
    assert list(rejected) == ["ISIC_0000002.jpg"] and "truncated" in rejected["ISIC_0000002.jpg"]
    assert sorted(rows(tmp_path / "DATA" / "manifest.parquet")) == ["ISIC_0000001"] and not summary.ok
