"""`wsm import` of lesion datasets that are not ISIC's: their ids, mask conventions and label files; and the
commands after it on such a DATA."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from archive_client.errors import InvalidInputError
from archive_client.importer import image_id_of, import_folders, mask_id_of
from archive_client.labels import read_labels
from wsm.cli import main


def rows(path: Path) -> dict[str, dict]:
    return {r["isic_id"]: r for r in pq.read_table(path).to_pylist()}


def disc(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(w, h) / 3) ** 2


def photo(path: Path, w: int = 24, h: int = 18, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((h, w, 3), 200, np.uint8)
    rgb[disc(w, h)] = (90, 50, 40)
    Image.fromarray(rgb).save(path, format=fmt)


# ----------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name, image, mask", [
    ("ISIC_0000001.jpg", "ISIC_0000001", None), ("ISIC_0000001_segmentation.png", None, "ISIC_0000001"),
    ("ISIC_0000001_Segmentation.png", None, "ISIC_0000001"), ("IMD002.bmp", "IMD002", None),
    ("IMD002_lesion.bmp", None, "IMD002"), ("AMM1_orig.jpg", "AMM1", None), ("AMM1_contour.png", None, "AMM1"),
    ("case-7.tif", "case-7", None), ("case-7_mask.tiff", None, "case-7"), ("scan.v2.JPEG", "scan.v2", None),
    ("ISIC_000008.jpg", None, None), ("isic_0000008.jpg", None, None), ("..x.jpg", None, None),
    ("x .jpg", None, None), ("notes.docx", None, None), ("x.jpg.exe", None, None), ("_orig.jpg", None, None),
    ("\u0660\u0661.jpg", None, None)])
def test_ids_from_file_names(name, image, mask):
    assert (image_id_of(name), mask_id_of(name)) == (image, mask)


# ----------------------------------------------------------------------------------------- mask storage

def _mask_variants(folder: Path, w: int, h: int) -> dict[str, str]:
    """One mask per storage a user brings, each of the same disc; id -> file name."""
    lesion = disc(w, h)
    files = {"one_bit": "one_bit_mask.png", "zero_one": "zero_one_lesion.png", "palette": "palette_mask.png",
             "bmp": "bmp_lesion.bmp", "tiff16": "tiff16_mask.tif", "gif": "gif_contour.gif",
             "isic": "ISIC_0000009_segmentation.png"}
    Image.fromarray(lesion).convert("1").save(folder / files["one_bit"])
    Image.fromarray(lesion.astype(np.uint8)).save(folder / files["zero_one"])
    pal = Image.fromarray(lesion.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(folder / files["palette"])
    Image.fromarray(lesion.astype(np.uint8) * 255).save(folder / files["bmp"])
    Image.fromarray(lesion.astype(np.uint16) * 65535).save(folder / files["tiff16"])
    Image.fromarray(lesion.astype(np.uint8) * 255).save(folder / files["gif"])
    Image.fromarray(lesion.astype(np.uint8) * 255).save(folder / files["isic"])
    return {("ISIC_0000009" if k == "isic" else k): v for k, v in files.items()}


def test_every_mask_storage_is_stored_as_0_255(tmp_path):
    w, h = 24, 18
    folder = tmp_path / "mine"
    folder.mkdir()
    variants = _mask_variants(folder, w, h)
    for image_id in variants:
        photo(folder / f"{image_id}.png", w, h)
    summary = import_folders(tmp_path / "DATA", folder, folder, challenge="mine", progress=False)
    assert summary.ok, summary.lines()
    assert summary.masks_written == len(variants) and summary.splits == {"train": len(variants)}
    for image_id in variants:
        stored = Image.open(tmp_path / f"DATA/masks/mine/{image_id}_segmentation.png")
        assert stored.mode == "L" and stored.format == "PNG"
        assert np.array_equal(np.asarray(stored) == 255, disc(w, h)), image_id


def test_masks_that_are_not_two_valued_are_refused(tmp_path):
    w, h = 16, 12
    photo(tmp_path / "in/a.png", w, h)
    photo(tmp_path / "in/b.png", w, h)
    grey = (disc(w, h) * 200).astype(np.uint8)
    grey[0, 0] = 100
    Image.fromarray(grey).save(tmp_path / "in/a_mask.png")
    Image.fromarray((disc(w, h) * 700).astype(np.uint16)).save(tmp_path / "in/b_mask.tif")
    summary = import_folders(tmp_path / "DATA", tmp_path / "in", tmp_path / "in", progress=False)
    reasons = dict(summary.masks_rejected)
    assert "0, 100, 200" in reasons["a_mask.png"] and "700" in reasons["b_mask.tif"]
    assert not (tmp_path / "DATA/masks").exists() or not any((tmp_path / "DATA/masks").rglob("*.png"))


def test_bmp_and_tiff_images_are_stored_as_png(tmp_path):
    photo(tmp_path / "in/IMD010.bmp", fmt="BMP")
    photo(tmp_path / "in/scan7.tiff", fmt="TIFF")
    summary = import_folders(tmp_path / "DATA", tmp_path / "in", progress=False)
    assert summary.images_written == 2 and summary.ok
    manifest = rows(tmp_path / "DATA/manifest.parquet")
    assert {r["file"] for r in manifest.values()} == {"images/IMD010.png", "images/scan7.png"}
    original = np.asarray(Image.open(tmp_path / "in/IMD010.bmp").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "DATA/images/IMD010.png")), original)
    again = import_folders(tmp_path / "DATA", tmp_path / "in", progress=False)
    assert (again.images_written, again.images_skipped) == (0, 2)


def test_an_import_that_finds_nothing_is_an_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/readme.pdf").write_bytes(b"%PDF")
    with pytest.raises(InvalidInputError, match="no image or mask found .*'in/readme.pdf'"):
        import_folders(tmp_path / "DATA", tmp_path / "in", progress=False)
    assert main(["-q", "import", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "DATA")]) == 2
    assert "no image or mask found" in capsys.readouterr().err
    assert not (tmp_path / "DATA").exists()
    assert main(["-q", "import", "-o", str(tmp_path / "DATA")]) == 2
    assert "nothing to import: pass --images DIR" in capsys.readouterr().err


def test_splits_are_never_guessed_for_the_archive_challenges(tmp_path):
    for i in (1, 2):
        photo(tmp_path / f"in/ISIC_999999{i}.png")
        Image.fromarray(disc(24, 18)).save(tmp_path / f"in/ISIC_999999{i}_segmentation.png")
    photo(tmp_path / "in/ISIC_0012152.png")      # in the ISIC 2017 test set
    Image.fromarray(disc(24, 18)).save(tmp_path / "in/ISIC_0012152_segmentation.png")
    summary = import_folders(tmp_path / "DATA", tmp_path / "in", tmp_path / "in", challenge="isic2017",
                             progress=False)
    assert summary.splits == {"test": 1}
    assert {name for name, _ in summary.masks_rejected} == {"ISIC_9999991_segmentation.png",
                                                            "ISIC_9999992_segmentation.png"}
    assert all("--assign-split" in why for _, why in summary.masks_rejected)
    given = import_folders(tmp_path / "DATA", tmp_path / "in", tmp_path / "in", challenge="isic2017", split="val",
                           progress=False)
    assert given.ok and given.splits == {"val": 3}


# ----------------------------------------------------------------------------------------- label files

def test_plain_and_marked_diagnoses(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,diagnosis,image_type,sex\n"
                      "a,melanoma,clinical: close-up,male\n"
                      "b,Atypical Nevus,,\n"
                      "c,not melanoma,,\n"
                      "d,melanoma,clinical photo,\n"
                      "e,melanoma,,unknown\n", encoding="utf8")
    table = read_labels(labels)
    assert table.by_id["a"]["diagnosis_3"] == "Melanoma, NOS" and table.by_id["a"]["diagnosis"] == "melanoma"
    assert table.by_id["b"]["diagnosis_5"] == "Nevus, Atypical" and table.by_id["b"]["diagnosis_3"] == "Nevus"
    assert table.by_id["c"] == {"diagnosis": "not melanoma"}          # kept, in no class
    assert [line for line, _ in table.rejected] == ["labels.csv:5", "labels.csv:6"]
    assert "image_type='clinical photo'" in table.rejected[0][1] and "sex='unknown'" in table.rejected[1][1]

    marked = tmp_path / "marked.csv"
    marked.write_text("image_id,Common Nevus,Atypical Nevus,Melanoma\nx,X,,\ny,,,x\nz,X,,X\n", encoding="utf8")
    table = read_labels(marked)
    assert table.by_id["x"]["diagnosis_3"] == "Nevus" and table.by_id["y"]["diagnosis_3"] == "Melanoma, NOS"
    assert "marks 2 diagnoses" in table.rejected[0][1]


def test_a_label_file_cut_short_records_nothing_wrong(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("isic_id,diagnosis_1,diagnosis_2,diagnosis_3\n"
                      "ISIC_0000001,Malignant,Malignant melanocytic proliferations (Melanoma),\"Melanoma, NOS\"\n"
                      "ISIC_0000002,Malignant,Malignant melanocytic proliferations (Melanoma),Mel", encoding="utf8")
    table = read_labels(labels)
    assert list(table.by_id) == ["ISIC_0000001"]
    assert "diagnosis_3='Mel' is not in the archive's diagnosis hierarchy" in table.rejected[0][1]
    cut_row = tmp_path / "cut.csv"
    cut_row.write_text("isic_id,diagnosis_1,image_type\nISIC_0000001,Benign,dermoscopic\nISIC_0000002,Ben",
                       encoding="utf8")
    table = read_labels(cut_row)
    assert list(table.by_id) == ["ISIC_0000001"] and "a cut or broken line" in table.rejected[0][1]


def test_files_named_by_a_labels_csv(tmp_path, capsys):
    (tmp_path / "set/outlines").mkdir(parents=True)
    for name in ("p1", "p2"):
        photo(tmp_path / f"set/pics/{name}_orig.jpg")
        Image.fromarray(disc(24, 18)).convert("1").save(tmp_path / f"set/outlines/{name}.png")
    (tmp_path / "set/pairs.csv").write_text(
        "image_id,image,mask,diagnosis\np1,pics/p1_orig.jpg,outlines/p1.png,melanoma\n"
        "p2,pics/p2_orig.jpg,outlines/p2.png,nevus\np3,pics/missing.jpg,,nevus\n", encoding="utf8")
    data = tmp_path / "DATA"
    assert main(["-q", "import", "--labels", str(tmp_path / "set/pairs.csv"), "--challenge", "atlas",
                 "-o", str(data)]) == 1          # one row names a file that does not exist
    assert "pairs.csv:4: its image file 'pics/missing.jpg' does not exist" in capsys.readouterr().err
    assert sorted(rows(data / "manifest.parquet")) == ["p1", "p2"]
    gt = rows(data / "gt_manifest.parquet")
    assert {r["challenge"] for r in gt.values()} == {"atlas"} and sorted(gt) == ["p1", "p2"]


# ----------------------------------------------------------------------------------------- real datasets

def test_clinical_dermis_by_folders_and_by_its_csv(shared_data, tmp_path):
    dermis = shared_data / "clinical-dermis"
    pairs = list(csv.DictReader(open(dermis / "pairs.csv", encoding="utf8")))
    by_folders = import_folders(tmp_path / "A", dermis / "images", dermis / "masks", challenge="dermis",
                                progress=False)
    assert by_folders.ok and by_folders.images_written == by_folders.masks_written == len(pairs) == 69
    by_csv = import_folders(tmp_path / "B", labels=dermis / "pairs.csv", challenge="dermis", progress=False)
    assert by_csv.ok and by_csv.masks_written == 69
    manifest = rows(tmp_path / "B/manifest.parquet")
    assert sorted(manifest) == sorted(p["image_id"] for p in pairs)
    for pair in pairs[:10]:
        row = manifest[pair["image_id"]]
        assert (row["width"], row["height"], row["diagnosis"]) == (int(pair["width"]), int(pair["height"]),
                                                                   pair["diagnosis"])
        mask = np.asarray(Image.open(tmp_path / f"B/masks/dermis/{pair['image_id']}_segmentation.png"))
        assert abs((mask == 255).mean() - float(pair["mask_fg_fraction"])) < 1e-3
    assert {manifest[p["image_id"]]["diagnosis_3"] for p in pairs if p["diagnosis"] == "melanoma"} == {
        "Melanoma, NOS"}
    for name in ("images", "masks/dermis"):
        a, b = sorted((tmp_path / "A" / name).iterdir()), sorted((tmp_path / "B" / name).iterdir())
        assert [p.name for p in a] == [p.name for p in b] and all(x.read_bytes() == y.read_bytes()
                                                                    for x, y in zip(a, b))


def _ph2_original_layout(ph2: Path, root: Path, ids: list[str]) -> Path:
    """PH2 as its authors ship it: BMP files in per-image folders, colour-region folders, an xlsx of diagnoses
    under a legend and a two-row header (clinical diagnosis marked X)."""
    import openpyxl

    pairs = {p["image_id"]: p for p in csv.DictReader(open(ph2 / "pairs.csv", encoding="utf8"))}
    images = root / "PH2 Dataset images"
    for image_id in ids:
        folder = images / image_id
        (folder / f"{image_id}_Dermoscopic_Image").mkdir(parents=True)
        (folder / f"{image_id}_lesion").mkdir()
        (folder / f"{image_id}_roi").mkdir()
        Image.open(ph2 / pairs[image_id]["image"]).save(folder / f"{image_id}_Dermoscopic_Image/{image_id}.bmp")
        Image.open(ph2 / pairs[image_id]["mask"]).save(folder / f"{image_id}_lesion/{image_id}_lesion.bmp")
        Image.open(ph2 / pairs[image_id]["mask"]).save(folder / f"{image_id}_roi/{image_id}_R1_Label4.bmp")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Legends:"])
    sheet.append(["Clinical Diagnosis: Common Nevus, Atypical Nevus, Melanoma"])
    sheet.append([])
    sheet.append(["Image Name", "Histological Diagnosis", "Clinical Diagnosis", None, None, "Asymmetry"])
    sheet.append([None, None, "Common Nevus", "Atypical Nevus", "Melanoma", None])
    columns = {"common nevus": 2, "atypical nevus": 3, "melanoma": 4}
    for image_id in ids:
        row = [image_id, None, None, None, None, 0]
        row[columns[pairs[image_id]["diagnosis"]]] = "X"
        sheet.append(row)
    book.save(root / "PH2_dataset.xlsx")
    (root / "PH2_dataset.txt").write_text("|| Name || Clinical Diagnosis ||\n", encoding="utf8")
    return images


def test_ph2_in_its_original_layout(shared_data, tmp_path):
    ph2 = shared_data / "ph2-half"
    ids = ["IMD002", "IMD006", "IMD008"]
    images = _ph2_original_layout(ph2, tmp_path / "PH2Dataset", ids)
    data = tmp_path / "DATA"
    summary = import_folders(data, images, images, labels=tmp_path / "PH2Dataset/PH2_dataset.xlsx",
                             challenge="ph2", progress=False)
    assert summary.ok and summary.unexpected == [], summary.lines()
    assert (summary.images_written, summary.masks_written) == (3, 3)
    manifest = rows(data / "manifest.parquet")
    assert sorted(manifest) == ids
    pairs = {p["image_id"]: p for p in csv.DictReader(open(ph2 / "pairs.csv", encoding="utf8"))}
    expected = {"common nevus": "Nevus", "atypical nevus": "Nevus", "melanoma": "Melanoma, NOS"}
    for image_id in ids:
        assert manifest[image_id]["diagnosis_3"] == expected[pairs[image_id]["diagnosis"]]
        assert manifest[image_id]["file"] == f"images/{image_id}.png"
        stored = np.asarray(Image.open(data / f"masks/ph2/{image_id}_segmentation.png"))
        assert np.array_equal(stored, np.asarray(Image.open(ph2 / pairs[image_id]["mask"])))
    atypical = [i for i in ids if pairs[i]["diagnosis"] == "atypical nevus"]
    assert all(manifest[i]["diagnosis_5"] == "Nevus, Atypical" for i in atypical)


@pytest.fixture(scope="module")
def ph2_data(shared_data, tmp_path_factory) -> Path:
    """16 PH2 whole frames with their masks and diagnoses, imported as a user's own dataset."""
    ph2 = shared_data / "ph2-half"
    subset = tmp_path_factory.mktemp("ph2")
    pairs = list(csv.DictReader(open(ph2 / "pairs.csv", encoding="utf8")))[:16]
    for kind in ("image", "mask"):
        (subset / f"{kind}s").mkdir()
        for pair in pairs:
            shutil.copy(ph2 / pair[kind], subset / pair[kind])
    data = tmp_path_factory.mktemp("data") / "DATA"
    summary = import_folders(data, subset / "images", subset / "masks", labels=ph2 / "pairs.csv", challenge="ph2",
                             progress=False)
    assert summary.ok and summary.masks_written == 16 and summary.labels_unmatched == 84
    held_out = subset / "held-out"
    held_out.mkdir()
    for pair in pairs[12:]:
        shutil.copy(ph2 / pair["mask"], held_out)
    again = import_folders(data, subset / "images", held_out, challenge="ph2", split="test", progress=False)
    assert again.splits == {"test": 4} and again.images_skipped == 16
    # a rerun without --labels keeps the diagnoses the first import stored
    assert rows(data / "manifest.parquet")[pairs[0]["image_id"]]["diagnosis"] == pairs[0]["diagnosis"]
    assert sorted(r["split"] for r in rows(data / "gt_manifest.parquet").values()) == ["test"] * 4 + ["train"] * 12
    return data


@pytest.mark.slow
def test_fit_generate_report_and_train_on_a_users_dataset(ph2_data, tmp_path, capsys):
    from test_fit_generate import TINY, _sets

    bundle, maps, report, run = (tmp_path / n for n in ("BUNDLE", "WSM", "REPORT", "RUN"))
    assert main(["-q", "fit", "-d", str(ph2_data), "-o", str(bundle), *_sets(TINY)]) == 0
    assert main(["-q", "generate", "-d", str(ph2_data), "--bundle", str(bundle), "--split", "all",
                 "-o", str(maps), "-j", "0", "-b", "8"]) == 0
    assert sorted(p.stem for p in maps.glob("*.png")) == sorted(rows(ph2_data / "manifest.parquet"))
    assert main(["report", "-d", str(ph2_data), "-m", str(maps), "--split", "test", "-o", str(report)]) == 0
    err = capsys.readouterr().err
    assert "4 images scored against their official masks (ph2 4)" in err
    assert "official masks of ph2 (4)" in (report / "report.html").read_text(encoding="utf8")
    assert f"--maps {maps} --out RUN --eval-split test" in err          # the next command can be scored
    assert main(["-q", "train", "-d", str(ph2_data), "--labels", "both", "-m", str(maps), "-o", str(run),
                 "--epochs", "1", "--size", "64", "--encoder", "test_resnet", "--no-pretrained", "-b", "4",
                 "--eval-split", "test"]) == 0
    assert json.loads((run / "metrics.json").read_text())["n_eval"] == 4


def test_maps_of_a_users_dataset_made_elsewhere_are_read_by_their_ids(tmp_path):
    from wsm.io.images import ISIC_WSM, write_label_png
    from wsm.folders.maps import read_maps

    label = np.zeros((6, 8), np.uint8)
    label[2:4, 2:5] = 1
    for name in ("IMD002.png", "AMM1.png", "ISIC_01.png"):       # the last: a mistyped archive id, not a map
        write_label_png(tmp_path / name, label)
    (tmp_path / "notes.txt").write_text("x")
    maps = read_maps(tmp_path)
    assert sorted(maps.rows["isic_id"]) == ["AMM1", "IMD002"] and maps.convention == ISIC_WSM


def test_an_image_over_the_pixel_cap_is_refused_at_import(tmp_path):
    """wsm decodes at most 120 megapixels: a larger image is refused where it comes in, not in generate."""
    import warnings

    folder = tmp_path / "in"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.new("1", (12000, 12000)).save(folder / "huge.png")      # 144 megapixels, a few kB on disk
    photo(folder / "small.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # nothing but the clear rejection
        summary = import_folders(tmp_path / "DATA", folder, progress=False)
    assert summary.images_written == 1
    assert "is 12000x12000 (144 megapixels), more than the 120 wsm decodes" in dict(summary.images_rejected)[
        "huge.png"]
    assert not (tmp_path / "DATA/images/huge.png").exists()


def test_label_files_that_would_be_misread_are_refused_or_kept_apart(tmp_path):
    from wsm.selection import read_manifest, read_truth, select_split, with_truth

    def table(name: str, text: str):
        path = tmp_path / name
        path.write_text(text, encoding="utf8")
        return read_labels(path)

    # a column named as one of wsm's own is stored under another name, and the DATA stays usable
    renamed = table("split.csv", "image_id,Diagnosis,split,source\nIMD1,melanoma,test,clinic A\n")
    assert renamed.by_id["IMD1"] == {"diagnosis": "melanoma", "diagnosis_1": "Malignant",
                                     "diagnosis_2": "Malignant melanocytic proliferations (Melanoma)",
                                     "diagnosis_3": "Melanoma, NOS", "label_split": "test", "label_source": "clinic A"}
    photo(tmp_path / "in/IMD1.png")
    Image.fromarray(disc(24, 18)).save(tmp_path / "in/IMD1_mask.png")
    import_folders(tmp_path / "DATA", tmp_path / "in", tmp_path / "in", labels=tmp_path / "split.csv",
                   progress=False)
    rows_ = with_truth(read_manifest(tmp_path / "DATA"), read_truth(tmp_path / "DATA"))
    assert list(select_split(rows_, "train")["isic_id"]) == ["IMD1"]
    # a value with an unquoted comma, a column named twice
    extra = table("extra.csv", "image_id,diagnosis,anatom_site_general\nIMD1,nevus, atypical,back\n")
    assert not extra.by_id and "3 cells for 3 columns" not in extra.rejected[0][1]
    assert "unquoted comma" in extra.rejected[0][1]
    with pytest.raises(InvalidInputError, match="more than once"):
        table("twice.csv", "image_id,diagnosis,Diagnosis\nIMD1,melanoma,nevus\n")
    short = table("short.csv", "image_id,,diagnosis\nIMD1,x\n")
    assert not short.by_id and "cut or broken" in short.rejected[0][1]


def test_an_ordinary_sheet_is_read_as_it_is(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    for row in (["image_id", "diagnosis", "age_approx"], [None, "melanoma", 40], ["IMD1", "nevus", 30]):
        book.active.append(row)
    book.save(tmp_path / "plain.xlsx")
    table = read_labels(tmp_path / "plain.xlsx")
    assert table.by_id["IMD1"]["diagnosis"] == "nevus" and table.by_id["IMD1"]["age_approx"] == "30"
    only_files = openpyxl.Workbook()
    only_files.active.append(["image", "diagnosis"])
    photo(tmp_path / "AMM1_orig.jpg")
    only_files.active.append(["AMM1_orig.jpg", "melanoma"])
    only_files.save(tmp_path / "files.xlsx")
    assert list(read_labels(tmp_path / "files.xlsx").by_id) == ["AMM1"]        # the id a folder import gives


def test_two_datasets_that_reuse_an_id_never_swap_images(tmp_path):
    """A second dataset's image 1 does not replace the first's (whose mask would then outline another lesion);
    ids that differ only in case are refused (one file on case-insensitive disks)."""
    for folder, colour in (("a", 90), ("b", 30)):
        rgb = np.full((18, 24, 3), colour, np.uint8)
        (tmp_path / folder).mkdir()
        Image.fromarray(rgb).save(tmp_path / folder / "1.png")
    Image.fromarray(disc(24, 18)).save(tmp_path / "a/1_mask.png")
    import_folders(tmp_path / "DATA", tmp_path / "a", tmp_path / "a", challenge="setA", progress=False)
    before = (tmp_path / "DATA/images/1.png").read_bytes()
    second = import_folders(tmp_path / "DATA", tmp_path / "b", challenge="setB", progress=False)
    assert second.images_written == 0 and "DATA already holds another image 1" in second.images_rejected[0][1]
    assert (tmp_path / "DATA/images/1.png").read_bytes() == before
    Image.fromarray(np.full((18, 24, 3), 60, np.uint8)).save(tmp_path / "a/1.png")     # the same file, edited
    assert import_folders(tmp_path / "DATA", tmp_path / "a", progress=False).images_written == 1
    photo(tmp_path / "c/Img7.png")
    photo(tmp_path / "c/sub/img7.png")
    cased = import_folders(tmp_path / "DATA", tmp_path / "c", progress=False)
    assert cased.images_written == 1 and "another case" in cased.images_rejected[0][1]


def test_other_pictures_beside_the_maps_are_not_taken_for_maps(tmp_path):
    from wsm.io.images import ISIC_WSM, write_label_png
    from wsm.folders.maps import read_maps

    for image_id in ("IMD002", "AMM1"):
        photo(tmp_path / f"in/{image_id}.png")
    import_folders(tmp_path / "DATA", tmp_path / "in", progress=False)
    label = np.zeros((18, 24), np.uint8)
    label[5:9, 5:9] = 1
    maps = tmp_path / "maps"
    maps.mkdir()
    for name in ("IMD002.png", "AMM1.png", "overview.png"):      # overview.png: a picture, no image of DATA
        write_label_png(maps / name, label)
    read = read_maps(maps, tmp_path / "DATA")
    assert sorted(read.rows["isic_id"]) == ["AMM1", "IMD002"] and read.convention == ISIC_WSM
