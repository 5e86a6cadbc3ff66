"""One reader of maps for every command: `wsm train --labels DIR` reads a folder of maps as `wsm report` does.

Maps stored as 16-bit, 1-bit or palette PNGs mean what they hold; challenge-style 0/255 masks are lesion only when
named ISIC_x_segmentation.png; a folder mixing those with ISIC_WSM maps, a map of another size than its image, and
maps that point outside their folder (links, ``../x`` or absolute manifest paths) are refused with one clear line.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafactory import make_data
from PIL import Image

from wsm.cli import main
from wsm.folders.wsm_folder import WSM_MANIFEST
from wsm.io.images import ImageDecodeError, MapSizeError, read_lesion_map, read_mask, write_label_png
from wsm.report.driver import build_report
from wsm.folders.maps import ReportError
from wsm.learn.datasets import LabelMapDataset
from wsm.train.rows import training_rows

IDS = [f"ISIC_{i:07d}" for i in range(6)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six images with masks: ISIC_0000000..2 and 5 in train, 3 in val, 4 in test; ISIC_0000000 is 64x64."""
    return make_data(tmp_path_factory.mktemp("maps") / "DATA", n_images=6, with_masks=True, seed=0)


def _truth(data, isic_id: str) -> np.ndarray:
    return read_mask(data / "masks" / "isic2018" / f"{isic_id}_segmentation.png") > 128


def _label(data, isic_id: str) -> np.ndarray:
    """An ISIC_WSM map of the image: its mask as lesion (1), the mask's top rows uncertain (255)."""
    truth = _truth(data, isic_id)
    label = truth.astype(np.uint8)
    rows = np.nonzero(truth.any(axis=1))[0]
    label[rows[:3]] = np.where(truth[rows[:3]], 255, 0)
    return label


def _trained_label(data, folder) -> np.ndarray:
    """What `wsm train --labels FOLDER` learns for ISIC_0000000, at the image's own size (64 px)."""
    rows = training_rows(data, str(folder))
    rows = rows[rows["isic_id"] == IDS[0]]
    return LabelMapDataset(data, rows, size=64).read_label(0)


def _save_palette(path, label: np.ndarray) -> None:
    image = Image.fromarray(label, "P")
    palette = [0, 0, 0] * 256
    palette[3:6] = [255, 0, 0]                # lesion drawn red, uncertain white: the indices are the labels
    palette[765:768] = [255, 255, 255]
    image.putpalette(palette)
    image.save(path)


WRITERS = {
    "8-bit": lambda path, label: write_label_png(path, label),
    "16-bit": lambda path, label: Image.fromarray(label.astype(np.uint16)).save(path),
    "palette": _save_palette,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_train_reads_a_map_as_report_does(data, tmp_path, kind):
    label = _label(data, IDS[0])
    WRITERS[kind](tmp_path / f"{IDS[0]}.png", label)
    np.testing.assert_array_equal(_trained_label(data, tmp_path), label)
    np.testing.assert_array_equal(read_lesion_map(tmp_path / f"{IDS[0]}.png"), label)


def test_a_one_bit_map_is_background_and_lesion(data, tmp_path):
    truth = _truth(data, IDS[0])
    Image.fromarray(truth).save(tmp_path / f"{IDS[0]}.png")           # mode "1": 0/1, lesion where 1
    assert Image.open(tmp_path / f"{IDS[0]}.png").mode == "1"
    np.testing.assert_array_equal(_trained_label(data, tmp_path), truth.astype(np.uint8))


def test_challenge_masks_are_lesion_under_their_own_name_and_refused_under_an_isic_wsm_name(data, tmp_path):
    truth = _truth(data, IDS[0])
    masks = tmp_path / "masks"
    masks.mkdir()
    write_label_png(masks / f"{IDS[0]}_segmentation.png", truth.astype(np.uint8) * 255)
    np.testing.assert_array_equal(_trained_label(data, masks), truth.astype(np.uint8))
    misnamed = tmp_path / "misnamed"
    misnamed.mkdir()
    write_label_png(misnamed / f"{IDS[0]}.png", truth.astype(np.uint8) * 255)
    with pytest.raises(ReportError, match="look like challenge-style masks"):
        training_rows(data, str(misnamed))


def test_a_map_of_another_size_is_refused_never_stretched(data, tmp_path, capsys):
    write_label_png(tmp_path / f"{IDS[0]}.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(MapSizeError, match="is 32x32 but its image is 64x64"):
        training_rows(data, str(tmp_path))
    with pytest.raises(MapSizeError, match="is 32x32 but its image is 64x64"):
        read_lesion_map(tmp_path / f"{IDS[0]}.png", size=(64, 64))
    code = main(["-q", "train", "--data", str(data), "--labels", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "is 32x32 but its image is 64x64" in err and "Traceback" not in err


def test_a_map_with_other_values_is_refused(data, tmp_path):
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / f"{IDS[0]}.png")
    with pytest.raises(ImageDecodeError, match="holds 0 .*1 .*255 .*but this one holds 128"):
        _trained_label(data, tmp_path)


# ------------------------------------------------------------------------------ one convention per folder

def _mixed_folder(data, folder):
    """Challenge-style 0/255 masks named ISIC_x.png (identical to the official masks), and one ISIC_WSM map."""
    folder.mkdir()
    for isic_id in IDS[1:5]:
        write_label_png(folder / f"{isic_id}.png", _truth(data, isic_id).astype(np.uint8) * 255)
    write_label_png(folder / f"{IDS[0]}.png", _label(data, IDS[0]))
    return folder


def test_report_refuses_a_folder_mixing_challenge_masks_with_isic_wsm_maps(data, tmp_path, capsys):
    maps = _mixed_folder(data, tmp_path / "maps")
    with pytest.raises(ReportError, match="mixes 1 ISIC_WSM maps .* and 4 maps with only 0 and 255"):
        build_report(maps, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    code = main(["-q", "report", "--maps", str(maps), "--data", str(data), "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and "ISIC_x_segmentation.png" in err and not (tmp_path / "cli").exists()
    with pytest.raises(ReportError, match="mixes"):
        training_rows(data, str(maps))


def test_a_folder_of_isic_wsm_maps_is_scored_as_such(data, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for isic_id in IDS[:5]:
        write_label_png(maps / f"{isic_id}.png", _truth(data, isic_id).astype(np.uint8))
    summary = build_report(maps, data, tmp_path / "out")
    assert summary.counts["scored"] == 5


# ------------------------------------------------------------------------------ nothing outside the folder

def _manifest(folder, paths: dict[str, str]) -> None:
    rows = [{"isic_id": i, "path": p, "status": "ok", "source": "weak", "confidence": 0.5, "mask_used_in_fit": False}
            for i, p in paths.items()]
    pq.write_table(pa.Table.from_pylist(rows, schema=WSM_MANIFEST), folder / "manifest.parquet")


def test_a_link_out_of_the_maps_folder_is_refused(data, tmp_path):
    outside = tmp_path / "outside.png"
    write_label_png(outside, _label(data, IDS[0]))
    maps = tmp_path / "maps"
    maps.mkdir()
    os.symlink(outside, maps / f"{IDS[0]}.png")
    with pytest.raises(ReportError, match="is a link to .*outside.png, outside"):
        build_report(maps, data, tmp_path / "out")
    with pytest.raises(ReportError, match="outside"):
        training_rows(data, str(maps))
    (maps / f"{IDS[0]}.png").unlink()                 # a link that stays inside the folder is read
    write_label_png(maps / "real.png", _label(data, IDS[0]))
    os.symlink("real.png", maps / f"{IDS[0]}.png")
    assert build_report(maps, data, tmp_path / "out", only_ids={IDS[0]}).counts["scored"] == 1


@pytest.mark.parametrize("path", ["../outside.png", "ABSOLUTE"])
def test_manifest_paths_out_of_the_folder_are_refused(data, tmp_path, path):
    outside = tmp_path / "outside.png"
    write_label_png(outside, _label(data, IDS[0]))
    wsm = tmp_path / "wsm"
    wsm.mkdir()
    _manifest(wsm, {IDS[0]: str(outside) if path == "ABSOLUTE" else path})
    with pytest.raises(ReportError, match="names the map .*outside"):
        build_report(wsm, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ReportError, match="outside"):
        training_rows(data, str(wsm))
