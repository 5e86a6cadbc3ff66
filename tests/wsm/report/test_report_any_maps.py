"""`wsm report` on maps made elsewhere, and the advice it gives a newcomer.

Maps without a WSM manifest, in the ISIC_WSM convention (ISIC_x.png, 0/1/255) or the challenge convention
(ISIC_x_segmentation.png, 0/255), are scored on the embedded sample's real images and masks; the report says the
headline is not known to be held out, and --fitted-ids takes images out of it. Folders the report cannot use (two
conventions mixed, no maps, a BUNDLE) and DATA without official masks get errors that say what to do.
"""
from __future__ import annotations

import json
import re
import shutil
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_report import IDS, _row, make_label_map

from wsm.demo import SAMPLE
from wsm.folders.wsm_folder import WSM_MANIFEST
from wsm.io.images import read_mask, write_label_png
from wsm.report.driver import build_report
from wsm.folders.maps import ReportError
from wsm.metrics import METRIC_NAMES, score_label_map

KINDS = {IDS[0]: "exact", IDS[1]: "grown", IDS[2]: "shrunk", IDS[3]: "shifted", IDS[4]: "empty",
         IDS[5]: "all_lesion", IDS[6]: "grown", IDS[7]: "shifted"}        # no 255: the challenge convention has none
BANDED = {IDS[8]: "banded", IDS[9]: "grown_band"}


def _truth(isic_id: str) -> np.ndarray:
    return read_mask(SAMPLE / "masks" / f"{isic_id}_segmentation.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """DATA: the 40 sample images with their official masks, all in the train split."""
    from archive_client.importer import import_folders

    root = tmp_path_factory.mktemp("any-maps") / "data"
    import_folders(root, images=SAMPLE / "images", masks=SAMPLE / "masks", labels=SAMPLE / "labels.csv",
                   challenge="isic2018", split="train", progress=False)
    return root


def _isic_wsm_folder(root, kinds) -> dict:
    root.mkdir(parents=True)
    maps = {isic_id: make_label_map(_truth(isic_id), kind) for isic_id, kind in kinds.items()}
    for isic_id, label_map in maps.items():
        write_label_png(root / f"{isic_id}.png", label_map)
    return maps


def _challenge_folder(root, maps) -> None:
    root.mkdir(parents=True)
    for isic_id, label_map in maps.items():
        assert not (label_map == 255).any()
        write_label_png(root / f"{isic_id}_segmentation.png", np.where(label_map == 1, 255, 0).astype(np.uint8))


def _report(out):
    return json.loads((out / "metrics.json").read_text()), pd.read_csv(out / "per_image.csv"), \
        (out / "report.html").read_text()


# ------------------------------------------------------------------------------------------ any folder of maps

def test_isic_wsm_maps_without_a_manifest_are_scored_and_flagged(data, tmp_path):
    maps = _isic_wsm_folder(tmp_path / "maps", {**KINDS, **BANDED})
    out = tmp_path / "report"
    summary = build_report(tmp_path / "maps", data, out, only_ids=set(maps))
    metrics, per_image, page = _report(out)
    counts = metrics["counts"]
    assert counts["scored"] == counts["headline"] == len(maps) and counts["missing_map"] == 0
    assert metrics["headline_held_out"] == "not known" and metrics["maps"]["fitting_known"] is False
    assert metrics["maps"]["convention"] == "ISIC_WSM" and metrics["wsm_manifest_sha256"] is None
    assert "NOT KNOWN to be held out" in metrics["maps"]["fitting"]
    assert set(per_image["source"]) == {"weak"} and per_image["mask_used_in_fit"].isna().all()
    rows = per_image.set_index("isic_id")
    for isic_id, label_map in maps.items():
        for mode, suffix in (("background", "bg"), ("ignore", "ignore")):
            expected = score_label_map(_truth(isic_id), label_map, uncertain=mode)
            for m in METRIC_NAMES:
                assert rows.loc[isic_id, f"{m}_{suffix}"] == pytest.approx(expected[m], abs=1e-15), (isic_id, m)
    assert rows.loc[IDS[8], "uncertain_fraction"] > 0                      # 255 read as uncertain
    text = "\n".join(summary.lines())
    assert "not known to be held out" in text and "has no WSM manifest" in text and "--fitted-ids FILE" in text
    assert "NOT KNOWN to be held out" in text.splitlines()[2]              # the headline line itself
    assert 'id="not-held-out"' in page and "(not known to be held out)</h2>" in page
    assert "no WSM manifest" in page and "No confidence scores" in page


def test_challenge_masks_score_as_the_equivalent_label_maps(data, tmp_path):
    maps = _isic_wsm_folder(tmp_path / "wsm", KINDS)
    _challenge_folder(tmp_path / "challenge", maps)
    build_report(tmp_path / "wsm", data, tmp_path / "r-wsm", only_ids=set(maps))
    summary = build_report(tmp_path / "challenge", data, tmp_path / "r-challenge", only_ids=set(maps))
    wsm_metrics, wsm_rows, _ = _report(tmp_path / "r-wsm")
    metrics, rows, page = _report(tmp_path / "r-challenge")
    assert metrics["maps"]["convention"] == "challenge" and metrics["headline_held_out"] == "not known"
    assert metrics["counts"] == wsm_metrics["counts"] and metrics["counts"]["scored"] == len(maps)
    assert (rows["uncertain_fraction"] == 0).all()
    numbers = [c for c in rows.columns if c.endswith(("_bg", "_ignore")) or c in ("coverage", "truth_lesion_fraction")]
    pd.testing.assert_frame_equal(rows[["isic_id", *numbers]], wsm_rows[["isic_id", *numbers]])
    assert metrics["headline"] == wsm_metrics["headline"] and metrics["all_scored"] == wsm_metrics["all_scored"]
    assert "ISIC_x_segmentation.png" in page
    last = summary.lines()[-1]
    assert last.startswith(f"next: open {tmp_path / 'r-challenge' / 'report.html'}") and "wsm train" not in last


def test_fitted_ids_leave_the_headline(data, tmp_path, capsys):
    from wsm.cli import main

    maps = _isic_wsm_folder(tmp_path / "maps", KINDS)
    fitted = sorted(maps)[:3]
    ids = tmp_path / "fitted.csv"
    ids.write_text("isic_id,fold\n" + "".join(f"{i},0\n" for i in fitted))
    only = tmp_path / "only.txt"
    only.write_text("\n".join(maps) + "\n")
    out = tmp_path / "report"
    assert main(["-q", "report", "-m", str(tmp_path / "maps"), "-d", str(data), "--only", str(only),
                 "--fitted-ids", str(ids), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    metrics, per_image, page = _report(out)
    counts = metrics["counts"]
    assert counts["scored"] == len(maps) and counts["headline"] == len(maps) - 3
    assert counts["excluded_mask_used_in_fit"] == 3 and metrics["fitted_ids"] == fitted
    rows = per_image.set_index("isic_id")
    assert not rows.loc[fitted, "headline"].any() and rows.loc[fitted, "mask_used_in_fit"].all()
    assert metrics["headline"]["uncertain_as_background"]["n_images"] == len(maps) - 3
    assert f"--fitted-ids {ids}" in metrics["command"] and "except the 3 images --fitted-ids names" in err
    assert "except the 3 images of --fitted-ids" in page

    # with a WSM manifest, --fitted-ids adds to mask_used_in_fit
    wsm = tmp_path / "wsm"
    shutil.copytree(tmp_path / "maps", wsm)
    pq.write_table(pa.Table.from_pylist([_row(i) for i in maps], schema=WSM_MANIFEST), wsm / "manifest.parquet")
    plain = build_report(wsm, data, tmp_path / "plain", only_ids=set(maps))
    assert plain.counts["headline"] == len(maps) and plain.fitting_known
    summary = build_report(wsm, data, tmp_path / "fitted", only_ids=set(maps), fitted_ids=fitted[:2])
    assert summary.counts["headline"] == len(maps) - 2 and summary.counts["excluded_mask_used_in_fit"] == 2
    metrics = json.loads((tmp_path / "fitted" / "metrics.json").read_text())
    assert metrics["headline_held_out"] == "known" and "--fitted-ids IDS" in metrics["command"]


def test_a_folder_mixing_both_conventions_is_refused(data, tmp_path, capsys):
    from wsm.cli import main

    maps = _isic_wsm_folder(tmp_path / "maps", dict(list(KINDS.items())[:2]))
    label_map = make_label_map(_truth(IDS[5]), "exact")
    write_label_png(tmp_path / "maps" / f"{IDS[5]}_segmentation.png", label_map * 255)
    with pytest.raises(ReportError, match="mixes two conventions: 2 ISIC_WSM maps .* and 1 challenge-style masks"):
        build_report(tmp_path / "maps", data, tmp_path / "out")
    out = tmp_path / "cli"
    assert main(["-q", "report", "--maps", str(tmp_path / "maps"), "--data", str(data), "--out", str(out)]) == 2
    assert "one kind" in capsys.readouterr().err and not out.exists() and maps


def test_challenge_masks_named_as_isic_wsm_maps_are_refused_not_scored_as_empty(data, tmp_path):
    misnamed = tmp_path / "misnamed"
    misnamed.mkdir()
    for isic_id in IDS[:3]:
        write_label_png(misnamed / f"{isic_id}.png", make_label_map(_truth(isic_id), "exact") * 255)
    with pytest.raises(ReportError, match="only 0 and 255: they look like challenge-style masks .*_segmentation.png"):
        build_report(misnamed, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # one real ISIC_WSM map among them (a lesion pixel) does not make the others ISIC_WSM maps: the folder mixes two
    write_label_png(misnamed / f"{IDS[0]}.png", make_label_map(_truth(IDS[0]), "banded"))
    with pytest.raises(ReportError, match="mixes 1 ISIC_WSM maps .* and 2 maps with only 0 and 255"):
        build_report(misnamed, data, tmp_path / "out", only_ids=set(IDS[:3]))
    assert not (tmp_path / "out").exists()


def test_a_folder_with_no_maps_says_what_was_expected(data, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    shutil.copy(SAMPLE / "images" / f"{IDS[0]}.jpg", junk)
    (junk / "notes.txt").write_text("x")
    with pytest.raises(ReportError) as err:
        build_report(junk, data, tmp_path / "out")
    message = str(err.value)
    assert f"{junk} holds no maps (it holds {IDS[0]}.jpg, notes.txt)" in message
    for expected in ("ISIC_x.png", "255 uncertain", "ISIC_x_segmentation.png", "0/255", "wsm generate"):
        assert expected in message
    with pytest.raises(ReportError, match="does not exist.*wsm generate"):
        build_report(tmp_path / "absent", data, tmp_path / "out")


def test_a_bundle_given_as_maps_gets_the_generate_advice(data, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "pipeline.toml").write_text('name = "default"\n')
    (bundle / "provenance.json").write_text("{}")
    with pytest.raises(ReportError) as err:
        build_report(bundle, data, tmp_path / "out")
    message = str(err.value)
    assert f"{bundle} is a BUNDLE written by `wsm fit`" in message
    assert f"`wsm generate --data {data} --bundle {bundle} --out WSM`" in message
    assert f"`wsm report --maps WSM --data {data} --out REPORT`" in message


def test_a_data_folder_given_as_maps_is_named(data, tmp_path):
    with pytest.raises(ReportError, match="is a DATA folder"):
        build_report(data, data, tmp_path / "out")


def test_data_without_masks_gets_the_import_and_download_advice(data, tmp_path, capsys):
    from wsm.cli import main

    _isic_wsm_folder(tmp_path / "maps", KINDS)
    bare = tmp_path / "bare"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("masks", "gt_manifest.parquet"))
    with pytest.raises(ReportError) as err:
        build_report(tmp_path / "maps", bare, tmp_path / "out")
    message = str(err.value)
    assert "has no official masks (no gt_manifest.parquet)" in message
    assert f"`wsm import --images {bare / 'images'} --masks MASKS --out {bare}`" in message
    assert f"`wsm download --challenge isic2018 --out {bare}`" in message
    # masks, but in another split: which splits have how many, and the same advice
    out = tmp_path / "cli"
    assert main(["-q", "report", "-m", str(tmp_path / "maps"), "-d", str(data), "--split", "test",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no official mask to score in --split test" in err and "train (40 images)" in err
    assert "--split train" in err and "wsm download --challenge isic2018" in err and "wsm import" in err
    assert not out.exists()


def test_pred_still_works_and_says_it_is_now_maps(data, tmp_path, capsys):
    from wsm.cli import main

    _isic_wsm_folder(tmp_path / "maps", KINDS)
    out = tmp_path / "report"
    assert main(["-q", "report", "--pred", str(tmp_path / "maps"), "--data", str(data), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wsm: note: --pred is now --maps" in captured.err
    assert captured.out.strip() == str(out / "report.html")
    assert json.loads((out / "metrics.json").read_text())["command"].startswith("wsm report --maps ")
    assert main(["-q", "report", "--data", str(data), "--out", str(tmp_path / "none")]) == 2
    assert "-m/--maps" in capsys.readouterr().err


def test_the_summary_ends_with_the_report_and_the_next_command(data, tmp_path):
    maps = _isic_wsm_folder(tmp_path / "maps", KINDS)
    out = tmp_path / "report"
    lines = build_report(tmp_path / "maps", data, out, only_ids=set(maps)).lines()
    assert lines[-2].startswith(f"report: {out / 'report.html'}")
    train = f"wsm train --data {data} --labels both --maps {tmp_path / 'maps'} --out RUN --eval-split"
    assert lines[-1] == (f"next: open {out / 'report.html'} in a browser; to train a segmentation network on these "
                         "maps (DATA has no val or test masks to score it on: import some with `wsm import "
                         f"--assign-split test`): {train} none")
    # with held-out masks in DATA, the command trains on the maps and is scored on them
    from datafactory import make_data
    from wsm.report.driver import train_hint

    with_val = make_data(tmp_path / "with-val", n_images=5, with_masks=True, seed=0)
    assert train_hint(with_val, tmp_path / "maps").endswith("--eval-split val")


# ------------------------------------------------------------------------------------------ the page

def test_confidence_bin_labels_differ_at_both_ends(data, tmp_path):
    from wsm.report.html import bin_ranges

    bins = [{"confidence_min": 0.001 + k * 2e-5, "confidence_max": 0.001 + k * 2e-5 + 1e-5} for k in range(5)]
    labels, digits = bin_ranges(bins)
    ends = [label.split(" &ndash; ") for label in labels]
    assert all(len(pair) == 2 and pair[0] != pair[1] for pair in ends), labels
    flat = [v for pair in ends for v in pair]
    assert len(set(flat)) == len(flat) and digits >= 6
    assert bin_ranges([{"confidence_min": 0.1, "confidence_max": 0.9}])[0] == ["0.100 &ndash; 0.900"]
    assert bin_ranges([{"confidence_min": 0.5, "confidence_max": 0.5}])[0] == ["0.500"]

    # on the page: confidences 1e-6 apart
    wsm = tmp_path / "wsm"
    maps = _isic_wsm_folder(wsm, {**KINDS, **BANDED})
    rows = [_row(isic_id, confidence=0.001 + n * 1e-6) for n, isic_id in enumerate(sorted(maps))]
    pq.write_table(pa.Table.from_pylist(rows, schema=WSM_MANIFEST), wsm / "manifest.parquet")
    build_report(wsm, data, tmp_path / "report", only_ids=set(maps))
    page = (tmp_path / "report" / "report.html").read_text()
    table = page[page.index('id="calibration"'):]
    table = table[:table.index("</table>")]
    pairs = re.findall(r"<td>([0-9.]+) &ndash; ([0-9.]+)</td>", table)
    assert len(pairs) == 5 and all(low != high for low, high in pairs), pairs
    assert len({v for pair in pairs for v in pair}) == 10


def test_gallery_shows_the_plain_image_beside_a_light_overlay():
    from wsm.report.html import BAND_ALPHA, GAP, YELLOW, overlay, side_by_side

    assert 0.15 <= BAND_ALPHA <= 0.2
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, size=(300, 400, 3), dtype=np.uint8)
    truth = np.zeros((300, 400), np.uint8)
    label_map = np.zeros((300, 400), np.uint8)
    label_map[:, :200] = 255                          # half the picture uncertain
    picture = overlay(image, truth, label_map, size=200)
    plain = side_by_side(image, picture)[:, :200]
    both = side_by_side(image, picture)
    assert both.shape == (150, 2 * 200 + GAP, 3) and (both[:, 200:200 + GAP] == 255).all()
    assert (both[:, 200 + GAP:] == picture).all()
    inside = (slice(10, 140), slice(10, 90))          # well inside the band, away from its outline
    shift = np.abs(picture[inside].astype(float) - plain[inside].astype(float))
    most = np.abs(np.array(YELLOW, float) - plain[inside].astype(float))
    assert (shift <= most * BAND_ALPHA + 1).all()     # the skin under the band still shows
    assert (picture[5, 99] == YELLOW).all() or (picture[5, 100] == YELLOW).all()   # the band's thin outline


def test_provenance_names_the_pipeline_folder_and_date(data, tmp_path):
    wsm = tmp_path / "wsm"
    maps = _isic_wsm_folder(wsm, KINDS)
    pq.write_table(pa.Table.from_pylist([_row(i) for i in maps], schema=WSM_MANIFEST), wsm / "manifest.parquet")
    (wsm / "bundle").mkdir()
    (wsm / "bundle" / "pipeline.toml").write_text('name = "classic"\nmethod = "classic"\n')
    build_report(wsm, data, tmp_path / "report", only_ids=set(maps))
    metrics, _, page = _report(tmp_path / "report")
    assert metrics["maps"]["pipeline_name"] == "classic" and metrics["maps"]["folder"] == str(wsm)
    made = datetime.fromisoformat(metrics["created"])
    assert made.tzinfo is not None and abs((datetime.now(made.tzinfo) - made).total_seconds()) < 600
    provenance = page[page.index("<h2>Provenance</h2>"):]
    for text in ("report made", metrics["created"], "pipeline</td><td class=\"l\">classic", "p" * 64,
                 "classifier=abc", str(wsm), "wsm version"):
        assert text in provenance, text
