"""`wsm generate` writes only into a folder of its own and keeps only maps it can vouch for.

An --out that is, or is inside, DATA, the --images folder or the bundle is refused before anything is written; two
files for one id are refused; a resume into a WSM folder made from other images is refused; a map in WSM that is
empty, truncated or altered is made again on resume. Runs use the `classic` recipe (no network) on tiny images.
"""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from datafactory import make_data
from PIL import Image

from wsm.cli import main
from wsm.io.images import write_label_png


def _generate(*args) -> int:
    return main(["-q", "generate", "--workers", "1", "--batch-size", "4", *args])


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("guards") / "DATA", n_images=6, with_masks=True, seed=0)


@pytest.fixture(scope="module")
def bundle(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "BUNDLE"
    assert main(["-q", "fit", "--data", str(data), "--out", str(out), "--pipeline", "classic",
                 "--set", "preprocess.working_size=64"]) == 0
    return out


@pytest.fixture(scope="module")
def wsm(data, bundle, tmp_path_factory):
    """The maps of DATA, made once; tests copy the folder before changing it."""
    out = tmp_path_factory.mktemp("wsm") / "WSM"
    assert _generate("--data", str(data), "--bundle", str(bundle), "--out", str(out)) == 0
    return out


@pytest.mark.parametrize("where", ["DATA/images", "DATA", "DATA/images/sub", "BUNDLE/maps"])
def test_out_inside_what_generate_reads_is_refused_before_anything_is_written(data, bundle, where, capsys):
    out = str(data / where[5:]) if where.startswith("DATA") else str(bundle / where[7:])
    before = {"data": _files(data), "bundle": _files(bundle)}
    assert _generate("--data", str(data), "--bundle", str(bundle), "--out", out) == 2
    err = capsys.readouterr().err
    assert "give --out a folder of its own" in err and "Traceback" not in err
    assert {"data": _files(data), "bundle": _files(bundle)} == before


def test_out_inside_data_is_refused_before_a_bundle_is_fitted_into_it(data, capsys):
    before = _files(data)
    assert _generate("--data", str(data), "--out", str(data / "images")) == 2
    assert "is inside --data" in capsys.readouterr().err and _files(data) == before


def test_maps_never_overwrite_png_images_of_an_images_folder(data, bundle, tmp_path, capsys):
    images = tmp_path / "pngs"
    images.mkdir()
    for jpg in sorted((data / "images").glob("*.jpg"))[:2]:
        Image.open(jpg).save(images / f"{jpg.stem}.png")
    before = _files(images)
    for out in (images, images / "maps"):
        assert _generate("--images", str(images), "--bundle", str(bundle), "--out", str(out)) == 2
        assert "--images" in capsys.readouterr().err
    assert _files(images) == before


@pytest.mark.parametrize("suffixes", [(".jpg", ".png"), (".JPG", ".jpeg")])
def test_two_files_for_one_id_are_refused(data, bundle, tmp_path, suffixes, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for index, jpg in enumerate(sorted((data / "images").glob("*.jpg"))[:2]):
        for suffix in suffixes:
            Image.open(jpg).save(images / f"{jpg.stem}{suffix}", format="PNG" if suffix == ".png" else "JPEG")
    assert _generate("--images", str(images), "--bundle", str(bundle), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "more than one file for 2 id(s)" in err and "ISIC_0000000" in err
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_resume_from_other_images_with_the_same_ids_is_refused(wsm, bundle, tmp_path, capsys):
    other = make_data(tmp_path / "OTHER", n_images=6, with_masks=True, seed=1)     # same ids, other pictures
    out = tmp_path / "WSM"
    shutil.copytree(wsm, out)
    before = _files(out)
    assert _generate("--data", str(other), "--bundle", str(bundle), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "holds maps of other images" in err and "write to a new --out" in err
    assert _files(out) == before


def test_damaged_maps_are_made_again_on_resume(data, wsm, bundle, tmp_path, capsys, caplog):
    out = tmp_path / "WSM"
    shutil.copytree(wsm, out)
    good = _files(out)
    maps = sorted(out.glob("ISIC_*.png"))
    maps[0].write_bytes(b"")                                          # empty
    maps[1].write_bytes(good[maps[1].name][:-20])                     # truncated
    altered = np.asarray(Image.open(maps[2])).copy()
    altered[0, 0] = 1 if altered[0, 0] != 1 else 0
    write_label_png(maps[2], altered)                                 # decodes, but is not the recorded map
    assert main(["generate", "--workers", "1", "--batch-size", "4", "--data", str(data), "--bundle", str(bundle),
                 "--out", str(out)]) == 0
    assert "3 maps in" in caplog.text and "made again" in caplog.text
    assert "3 maps written, 3 already complete" in capsys.readouterr().err
    assert {k: v for k, v in _files(out).items() if k.endswith(".png")} == \
        {k: v for k, v in good.items() if k.endswith(".png")}
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert all(r["image_bytes"] == (data / "images" / f"{r['isic_id']}.jpg").stat().st_size for r in rows)


@pytest.mark.parametrize("table, column, bad", [("manifest.parquet", "file", "../outside.jpg"),
                                                ("manifest.parquet", "file", "/etc/hostname"),
                                                ("gt_manifest.parquet", "mask_file", "masks/../../outside.png")])
def test_a_data_manifest_naming_a_file_outside_data_is_refused(data, bundle, wsm, tmp_path, table, column, bad,
                                                               capsys):
    """Nothing outside DATA is read, scored or trained on, whatever an edited or foreign manifest names."""
    import pyarrow as pa

    copy = tmp_path / "DATA"
    shutil.copytree(data, copy)
    rows = pq.read_table(copy / table)
    values = rows.column(column).to_pylist()
    rows = rows.set_column(rows.schema.get_field_index(column), column, pa.array([bad, *values[1:]]))
    pq.write_table(rows, copy / table)
    assert _generate("--data", str(copy), "--bundle", str(bundle), "--out", str(tmp_path / "WSM")) == 2
    assert "not a path inside DATA" in capsys.readouterr().err
    assert main(["-q", "report", "--data", str(copy), "--maps", str(wsm), "--out", str(tmp_path / "REPORT")]) == 2
    assert "not a path inside DATA" in capsys.readouterr().err
