"""`wsm report` on a constructed case: label maps written by hand for images of the embedded sample.

The case (``case`` fixture) covers every kind of row: exact, grown, shrunk, shifted, banded, empty, all-lesion and
all-uncertain maps; a map fitted to its own mask and an official mask copied as the map (both kept out of the
headline); a map of the wrong size (an error row); a mask with no manifest row, a failed row, and a row whose file
is gone (three missing maps); two maps whose image has no official mask.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from wsm.demo import SAMPLE
from wsm.folders.wsm_folder import WSM_MANIFEST
from wsm.io.images import read_mask, write_label_png
from wsm.report.driver import build_report
from wsm.folders.maps import ReportError
from wsm.report.scoring import breakdown, calibration, gallery_ids, image_group, score_image, size_bins, spearman
from wsm.metrics import METRIC_NAMES, score_label_map

PEER_WARNINGS = pytest.mark.filterwarnings("ignore:The inplace keyword in Series.rename")

IDS = sorted(p.stem for p in (SAMPLE / "images").glob("ISIC_*.jpg"))
SCORED = {  # isic_id -> how its map is made from the official mask
    IDS[0]: "exact", IDS[1]: "grown", IDS[2]: "shrunk", IDS[3]: "shifted", IDS[4]: "banded", IDS[5]: "empty",
    IDS[6]: "all_lesion", IDS[7]: "all_uncertain", IDS[8]: "banded_shifted", IDS[9]: "grown_band",
    IDS[10]: "fitted", IDS[11]: "official", IDS[19]: "fit_unknown",
}
WRONG_SIZE = IDS[12]
NO_ROW, FAILED, GONE = IDS[13], IDS[14], IDS[15]
NO_MASK = [IDS[16], IDS[17]]             # their official masks are removed from DATA
UNTOUCHED = IDS[18]                      # in DATA with a mask, but not in only_ids: never looked at
CASE_IDS = frozenset([*SCORED, WRONG_SIZE, NO_ROW, FAILED, GONE, *NO_MASK])
NO_DIAGNOSIS_3 = IDS[1]                  # grouped under diagnosis_1
CLINICAL = IDS[2]                        # image_type "clinical: close-up"


def _band(mask: np.ndarray, width: int = 4) -> np.ndarray:
    lesion = mask > 128
    return ndimage.binary_dilation(lesion, iterations=width) & ~ndimage.binary_erosion(lesion, iterations=width)


def make_label_map(truth: np.ndarray, kind: str) -> np.ndarray:
    lesion = truth > 128
    if kind in ("exact", "fitted", "official", "fit_unknown"):
        out = lesion.astype(np.uint8)
    elif kind == "grown":
        out = ndimage.binary_dilation(lesion, iterations=8).astype(np.uint8)
    elif kind == "shrunk":
        out = ndimage.binary_erosion(lesion, iterations=10).astype(np.uint8)
    elif kind == "shifted":
        out = np.roll(lesion, 20, axis=1).astype(np.uint8)
    elif kind == "banded":
        out = lesion.astype(np.uint8)
        out[_band(truth)] = 255
    elif kind == "banded_shifted":
        out = np.roll(lesion, 12, axis=0).astype(np.uint8)
        out[np.roll(_band(truth, 6), 12, axis=0)] = 255
    elif kind == "grown_band":
        grown = ndimage.binary_dilation(lesion, iterations=12)
        out = grown.astype(np.uint8)
        out[grown & ~lesion] = 255
    elif kind == "empty":
        out = np.zeros_like(truth)
    elif kind == "all_lesion":
        out = np.ones_like(truth)
    elif kind == "all_uncertain":
        out = np.full_like(truth, 255)
    else:
        raise ValueError(kind)
    return out.astype(np.uint8)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(DATA, WSM, the label maps written) for the constructed case."""
    from archive_client.importer import import_folders

    root = tmp_path_factory.mktemp("report")
    data, pred = root / "data", root / "wsm"
    import_folders(data, images=SAMPLE / "images", masks=SAMPLE / "masks", labels=SAMPLE / "labels.csv",
                   challenge="isic2018", split="train", progress=False)
    manifest = pd.read_parquet(data / "manifest.parquet")
    manifest.loc[manifest["isic_id"] == NO_DIAGNOSIS_3, "diagnosis_3"] = None
    manifest.loc[manifest["isic_id"] == CLINICAL, "image_type"] = "clinical: close-up"
    manifest.to_parquet(data / "manifest.parquet")
    gt = pd.read_parquet(data / "gt_manifest.parquet")
    gt[~gt["isic_id"].isin(NO_MASK)].to_parquet(data / "gt_manifest.parquet")

    pred.mkdir()
    rows, maps = [], {}
    for n, (isic_id, kind) in enumerate(SCORED.items()):
        truth = read_mask(SAMPLE / "masks" / f"{isic_id}_segmentation.png")
        maps[isic_id] = make_label_map(truth, kind)
        write_label_png(pred / f"{isic_id}.png", maps[isic_id])
        rows.append(_row(isic_id, confidence=(n * 7 % 13) / 13, source="official" if kind == "official" else "weak",
                         fitted=None if kind == "fit_unknown" else kind == "fitted"))
    write_label_png(pred / f"{WRONG_SIZE}.png", np.zeros((200, 256), np.uint8))
    rows.append(_row(WRONG_SIZE))
    rows.append({**_row(FAILED), "path": None, "status": "failed", "source": "failed",
                 "error": "ImageDecodeError: truncated"})
    rows.append(_row(GONE))                  # listed ok, file never written
    for isic_id in NO_MASK:
        write_label_png(pred / f"{isic_id}.png", np.zeros((256, 256), np.uint8))
        rows.append(_row(isic_id))
    rows.append(_row(UNTOUCHED))
    pq.write_table(pa.Table.from_pylist(rows, schema=WSM_MANIFEST), pred / "manifest.parquet")
    return data, pred, maps


def _row(isic_id: str, confidence: float = 0.5, source: str = "weak", fitted: bool | None = False) -> dict:
    return {"isic_id": isic_id, "path": f"{isic_id}.png", "width": 256, "height": 256, "lesion_fraction": 0.0,
            "uncertain_fraction": 0.0, "confidence": confidence, "source": source, "agreement": None,
            "mask_used_in_fit": fitted, "status": "ok", "error": None, "pipeline_sha256": "p" * 64,
            "model_sha256": "classifier=abc", "wsm_version": "0.1.0"}


@pytest.fixture(scope="module")
def report(case, tmp_path_factory):
    data, pred, _ = case
    out = tmp_path_factory.mktemp("out") / "report"
    summary = build_report(pred, data, out, split="all", only_ids=CASE_IDS)
    metrics = json.loads((out / "metrics.json").read_text())
    per_image = pd.read_csv(out / "per_image.csv")
    return summary, metrics, per_image, out


# ------------------------------------------------------------------------------------------ pure functions

def test_score_image_both_treatments():
    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:6] = 255                    # 16 lesion pixels
    label_map = np.zeros((10, 10), np.uint8)
    label_map[2:6, 2:6] = 1
    label_map[2:4, 2:6] = 255                # 8 of the lesion pixels uncertain
    scores = score_image(truth, label_map)
    assert scores["jaccard_bg"] == 0.5 and scores["sensitivity_bg"] == 0.5 and scores["specificity_bg"] == 1.0
    # left out, weighted by coverage: perfect on the 92 labelled pixels, times 0.92
    assert scores["jaccard_ignore"] == pytest.approx(0.92) and scores["accuracy_ignore"] == pytest.approx(0.92)
    assert scores["uncertain_fraction"] == 0.08 and scores["truth_lesion_fraction"] == 0.16
    assert scores["coverage"] == pytest.approx(0.92)
    assert scores["threshold_jaccard_bg"] == 0.0 and scores["threshold_jaccard_ignore"] == pytest.approx(0.92)
    with pytest.raises(ValueError, match="dimensions"):
        score_image(truth, np.zeros((10, 9), np.uint8))


def test_size_bins_are_terciles():
    names, edges = size_bins([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert names == ["small"] * 3 + ["medium"] * 3 + ["large"] * 3
    assert edges == pytest.approx([0.2 + 0.1 * 2 / 3, 0.5 + 0.1 / 3], abs=1e-12)
    names, _ = size_bins([0.3, 0.3, 0.3, 0.3])  # ties share a bin
    assert names == ["small"] * 4
    assert size_bins([]) == ([], [])


def test_image_group_falls_back_to_diagnosis_1():
    assert image_group("Nevus", "Benign") == "Nevus"
    assert image_group(None, "Benign") == "Benign"
    assert image_group(float("nan"), " ") == "unknown"


def test_breakdown_counts_headline_and_all():
    rows = pd.DataFrame({"g": ["a", "a", "b", None], "jaccard_bg": [0.5, 1.0, 0.2, 0.4],
                         "jaccard_ignore": [0.6, 1.0, 0.3, 0.4], "headline": [True, False, True, True]})
    out = breakdown(rows, "g")
    assert [(r["group"], r["n"], r["n_headline"]) for r in out] == [("a", 2, 1), ("b", 1, 1), ("unknown", 1, 1)]
    assert out[0]["jaccard_bg"] == 0.75 and out[0]["jaccard_bg_headline"] == 0.5
    assert out[0]["jaccard_ignore"] == 0.8


def test_calibration_bins_and_spearman():
    ids = [f"ISIC_{i:07d}" for i in range(12)]
    confidence = [0.9, 0.1, 0.5, 0.5, 0.5, 0.2, 0.8, 0.3, 0.7, 0.6, 0.4, float("nan")]
    jaccard = [0.95, 0.1, 0.5, 0.6, 0.4, 0.3, 0.9, 0.2, 0.7, 0.8, 0.45, 0.5]
    cal = calibration(ids, confidence, jaccard)
    assert cal["n"] == 11 and [b["n"] for b in cal["bins"]] == [3, 2, 2, 2, 2]
    assert [b["bin"] for b in cal["bins"]] == [1, 2, 3, 4, 5]
    assert cal["bins"][0]["confidence_min"] == 0.1 and cal["bins"][-1]["confidence_max"] == 0.9
    means = [b["confidence_mean"] for b in cal["bins"]]
    assert means == sorted(means)
    from scipy.stats import spearmanr

    assert cal["spearman"] == pytest.approx(spearmanr(confidence[:11], jaccard[:11]).statistic, abs=1e-12)
    assert math.isnan(spearman([0.5, 0.5], [0.1, 0.9]))
    assert calibration([], [], [])["bins"] == []
    assert [b["n"] for b in calibration(ids[:2], [0.2, 0.1], [0.3, 0.4])["bins"]] == [1, 1]


def test_gallery_ids():
    rows = pd.DataFrame({"isic_id": [f"ISIC_{i:07d}" for i in range(20)], "status": "scored",
                         "jaccard_bg": [i / 20 for i in range(20)], "headline": [i != 19 for i in range(20)]})
    best, worst, pool = gallery_ids(rows)
    assert pool == "headline" and best == [f"ISIC_{i:07d}" for i in range(18, 10, -1)]  # 19 is not headline
    assert worst == [f"ISIC_{i:07d}" for i in range(8)]
    best, worst, pool = gallery_ids(rows.head(3).assign(headline=False))
    assert (best, worst, pool) == (["ISIC_0000002", "ISIC_0000001"], ["ISIC_0000000"], "all scored")


# ------------------------------------------------------------------------------------------ the constructed case

def test_counts_missing_and_errors(report):
    summary, metrics, per_image, _ = report
    counts = metrics["counts"]
    assert counts == {"split_images": len(CASE_IDS), "with_mask": len(CASE_IDS) - 2, "map_without_mask": 2,
                      "maps_outside_split": 1, "scored": 13, "headline": 10, "excluded_mask_used_in_fit": 2,
                      "excluded_official_source": 1, "missing_map": 3, "errors": 1,
                      "datasets": {"isic2018": len(CASE_IDS) - 2}}
    assert summary.counts == counts
    headline = metrics["headline"]["uncertain_as_background"]
    low, high = headline["jaccard_ci95"]
    assert low < headline["jaccard"] < high and headline["n_images"] == 10
    assert f"n {headline['n_images']}" in summary.lines()[1]
    missing = {r["isic_id"]: r["reason"] for r in metrics["missing"]}
    assert set(missing) == {NO_ROW, FAILED, GONE}
    assert "no row" in missing[NO_ROW] and "truncated" in missing[FAILED] and "absent" in missing[GONE]
    assert [e["isic_id"] for e in metrics["errors"]] == [WRONG_SIZE]
    assert "256x256" in metrics["errors"][0]["error"] and "256x200" in metrics["errors"][0]["error"]
    assert not summary.ok and any(line.startswith(f"error {WRONG_SIZE}: ") for line in summary.lines())
    status = dict(zip(per_image["isic_id"], per_image["status"]))
    assert status == {**{i: "scored" for i in SCORED}, WRONG_SIZE: "error", NO_ROW: "missing", FAILED: "missing",
                      GONE: "missing"}
    assert per_image.loc[per_image["status"] != "scored", "jaccard_bg"].isna().all()
    headline = dict(zip(per_image["isic_id"], per_image["headline"]))
    assert not headline[IDS[10]] and not headline[IDS[11]] and sum(headline.values()) == 10
    assert not headline[IDS[19]]                # the manifest does not say whether fit used it: not counted


def test_known_per_image_values(report, case):
    _, _, per_image, _ = report
    _, _, maps = case
    rows = per_image.set_index("isic_id")
    assert rows.loc[IDS[0], "jaccard_bg"] == 1.0 and rows.loc[IDS[0], "threshold_jaccard_bg"] == 1.0
    assert rows.loc[IDS[5], "jaccard_bg"] == 0.0 and rows.loc[IDS[5], "specificity_bg"] == 1.0
    all_lesion = rows.loc[IDS[6]]
    assert all_lesion["sensitivity_bg"] == 1.0 and all_lesion["jaccard_bg"] == all_lesion["truth_lesion_fraction"]
    uncertain = rows.loc[IDS[7]]
    assert uncertain["jaccard_bg"] == 0.0 and uncertain["jaccard_ignore"] == 0.0  # abstaining scores nothing
    assert uncertain["accuracy_ignore"] == 0.0 and uncertain["uncertain_fraction"] == 1.0
    assert uncertain["coverage"] == 0.0
    banded = rows.loc[IDS[4]]
    assert banded["jaccard_ignore"] == pytest.approx(banded["coverage"]) and banded["jaccard_bg"] < 1.0
    assert 0 < banded["uncertain_fraction"] == pytest.approx(1 - banded["coverage"])
    for isic_id, label_map in maps.items():
        truth = read_mask(SAMPLE / "masks" / f"{isic_id}_segmentation.png")
        for mode, suffix in (("background", "bg"), ("ignore", "ignore")):
            expected = score_label_map(truth, label_map, uncertain=mode)
            for m in METRIC_NAMES:
                got = rows.loc[isic_id, f"{m}_{suffix}"]
                assert (math.isnan(got) and math.isnan(expected[m])) or got == expected[m], (isic_id, m, suffix)


def test_breakdowns_exact(report, case):
    _, metrics, per_image, _ = report
    data, _, _ = case
    scored = per_image[per_image["status"] == "scored"]
    manifest = pd.read_parquet(data / "manifest.parquet").set_index("isic_id")
    diagnosis = {i: manifest.loc[i, "diagnosis_3"] if pd.notna(manifest.loc[i, "diagnosis_3"])
                 else manifest.loc[i, "diagnosis_1"] for i in scored["isic_id"]}
    assert diagnosis[NO_DIAGNOSIS_3] == manifest.loc[NO_DIAGNOSIS_3, "diagnosis_1"]
    expected = {}
    for isic_id, value in diagnosis.items():
        expected.setdefault(value, []).append(float(scored.set_index("isic_id").loc[isic_id, "jaccard_bg"]))
    got = {g["group"]: g for g in metrics["breakdowns"]["diagnosis"]}
    assert set(got) == set(expected)
    for value, jaccards in expected.items():
        assert got[value]["n"] == len(jaccards)
        assert got[value]["jaccard_bg"] == pytest.approx(np.mean(jaccards), abs=1e-12)
    image_types = {g["group"]: (g["n"], g["n_headline"]) for g in metrics["breakdowns"]["image_type"]}
    assert image_types == {"dermoscopic": (12, 9), "clinical: close-up": (1, 1)}
    sources = {g["group"]: g for g in metrics["breakdowns"]["source"]}
    assert (sources["weak"]["n"], sources["weak"]["n_headline"]) == (12, 10)
    assert (sources["official"]["n"], sources["official"]["n_headline"], sources["official"]["jaccard_bg"]) == (1, 0, 1.0)
    assert sources["official"]["jaccard_bg_headline"] is None
    # lesion size: terciles of the official masks' lesion fraction, recomputed here
    fractions = scored.set_index("isic_id")["truth_lesion_fraction"]
    low, high = np.quantile(fractions.to_numpy(), [1 / 3, 2 / 3])
    assert metrics["lesion_size_edges"] == pytest.approx([low, high], abs=1e-15)
    bins = {g["group"]: g["n"] for g in metrics["breakdowns"]["lesion_size"]}
    assert bins == {"small": int((fractions <= low).sum()), "medium": int(((fractions > low) & (fractions <= high)).sum()),
                    "large": int((fractions > high).sum())}
    assert [g["group"] for g in metrics["breakdowns"]["lesion_size"]] == ["small", "medium", "large"]
    assert sum(bins.values()) == 13 and min(bins.values()) >= 4


def test_calibration_output_shape(report):
    _, metrics, per_image, _ = report
    cal = metrics["calibration"]
    assert cal["n"] == 10 and [b["n"] for b in cal["bins"]] == [2] * 5
    honest = per_image[per_image["headline"]]
    from scipy.stats import spearmanr

    assert cal["spearman"] == pytest.approx(spearmanr(honest["confidence"], honest["jaccard_bg"]).statistic, abs=1e-12)
    lows = [b["confidence_min"] for b in cal["bins"]]
    assert lows == sorted(lows) and all(b["jaccard_bg"] is not None for b in cal["bins"])


def test_json_and_csv_agree(report, case):
    summary, metrics, per_image, out = report
    data, pred, _ = case
    import hashlib

    assert metrics["wsm_manifest_sha256"] == hashlib.sha256((pred / "manifest.parquet").read_bytes()).hexdigest()
    assert metrics["data_manifest_sha256"] == hashlib.sha256((data / "manifest.parquet").read_bytes()).hexdigest()
    assert metrics["command"].startswith("wsm report --maps ") and metrics["split"] == "all"
    assert metrics["only_ids"] == sorted(CASE_IDS)
    honest = per_image[per_image["headline"]]
    scored = per_image[per_image["status"] == "scored"]
    for block, rows in (("headline", honest), ("all_scored", scored)):
        for treatment, suffix in (("uncertain_as_background", "bg"), ("uncertain_ignored", "ignore")):
            numbers = metrics[block][treatment]
            assert numbers["n_images"] == len(rows)
            assert numbers["uncertain_fraction"] == pytest.approx(rows["uncertain_fraction"].mean(), abs=1e-12)
            assert numbers["coverage"] == pytest.approx(rows["coverage"].mean(), abs=1e-12)
            for m in METRIC_NAMES:
                assert numbers[m] == pytest.approx(rows[f"{m}_{suffix}"].mean(), abs=1e-12), (block, m)
    assert summary.headline == metrics["headline"]
    for column in ("confidence", "source", "mask_used_in_fit", "diagnosis", "image_type", "size_bin", "error"):
        assert column in per_image.columns
    assert set(per_image.loc[per_image["status"] == "scored", "size_bin"]) == {"small", "medium", "large"}
    text = "\n".join(summary.lines())
    assert "headline on 10" in text and "2 whose mask fit used or may have used" in text and str(out / "report.html") in text
    assert "255 left out, weighted by coverage" in text
    assert "wholly uncertain map scores 0" in metrics["uncertain_ignored_definition"]
    assert metrics["galleries"]["from"] == "headline"
    best, worst = metrics["galleries"]["best"], metrics["galleries"]["worst"]
    assert len(best) == len(worst) == 5 and not set(best) & set(worst)  # 10 headline images: halves, not 8 + 8
    assert best[0] == IDS[0] and worst[:2] == sorted([IDS[5], IDS[7]])   # J 1.0 first; the two J 0.0 first
    assert IDS[10] not in best + worst and IDS[19] not in best + worst  # fitted (or maybe) to its own mask


@pytest.mark.peer
@PEER_WARNINGS
def test_parity_with_isic_challenge_scoring(report, case, tmp_path):
    segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")
    _, metrics, per_image, _ = report
    _, _, maps = case
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    for isic_id, label_map in maps.items():
        shutil.copy(SAMPLE / "masks" / f"{isic_id}_segmentation.png", truth_dir)
        write_label_png(pred_dir / f"{isic_id}_segmentation.png", np.where(label_map == 1, 255, 0).astype(np.uint8))
    rows = per_image.set_index("isic_id")
    keys = ["accuracy", "sensitivity", "specificity", "jaccard", "dice", "threshold_jaccard"]
    from isic_challenge_scoring.load_image import iter_image_pairs

    for pair in iter_image_pairs(truth_dir, pred_dir):
        official = segmentation.SegmentationScore([pair]).macro_average
        for key in keys:
            assert rows.loc[pair.image_id, f"{key}_bg"] == pytest.approx(float(official[key]), abs=1e-9), \
                (pair.image_id, key)
    official = segmentation.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for key in keys:
        assert metrics["all_scored"]["uncertain_as_background"][key] == pytest.approx(float(official[key]), abs=1e-9)


def test_cli_report_and_split(case, tmp_path, capsys):
    from wsm.cli import main

    data, pred, _ = case
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(sorted(SCORED)) + "\n")
    out = tmp_path / "cli"
    assert main(["-q", "report", "--pred", str(pred), "--data", str(data), "--only", str(ids),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["scored"] == 13 and metrics["counts"]["missing_map"] == 0
    assert f"--only {ids}" in metrics["command"]
    # --split test: no image of the sample is in the test split, which is an error that names the splits there are
    empty = tmp_path / "empty"
    assert main(["-q", "report", "--pred", str(pred), "--data", str(data), "--split", "test",
                 "--out", str(empty)]) == 2
    assert "no official mask to score in --split test" in capsys.readouterr().err and not empty.exists()


def test_clear_errors_for_a_bad_wsm_folder(case, tmp_path):
    data, _, _ = case
    with pytest.raises(ReportError, match="wsm generate"):
        build_report(tmp_path / "nothing", data, tmp_path / "out")
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "manifest-part-0000-of-0002.parquet").write_bytes(b"")
    with pytest.raises(ReportError, match="--merge"):
        build_report(parts, data, tmp_path / "out")


# ------------------------------------------------------------------------------------------ the page

def test_page_is_self_contained(report):
    _, metrics, _, out = report
    page = (out / "report.html").read_text()
    assert 'id="headline"' in page and 'id="calibration"' in page
    assert not re.search(r"https?://|//cdn|<script|<link", page, re.IGNORECASE)
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) == 1 + 4 + 10                   # histogram, 4 breakdowns, 5 best + 5 worst
    for src in sources:
        _decode_png(src)
    gallery = {m for m in re.findall(r'<img alt="(ISIC_\d{7})"', page)}
    assert gallery == set(metrics["galleries"]["best"]) | set(metrics["galleries"]["worst"])
    assert 'id="left-out"' in page and "wholly uncertain map scores 0" in page


def test_every_png_the_conventions_allow_is_read_and_others_are_refused(case, tmp_path):
    """A perfect map stored as 1-bit, 16-bit or palette PNG scores 1; a 0/1 official mask is lesion where 1;
    values neither convention allows are an error row that names them."""
    data, _, _ = case
    copy, pred = tmp_path / "data", tmp_path / "wsm"
    shutil.copytree(data, copy)
    pred.mkdir()
    truths = {isic_id: read_mask(SAMPLE / "masks" / f"{isic_id}_segmentation.png") for isic_id in IDS[:7]}
    lesion = {isic_id: truth > 128 for isic_id, truth in truths.items()}
    stored = {
        IDS[0]: Image.fromarray(lesion[IDS[0]]),                                    # mode 1
        IDS[1]: Image.fromarray(lesion[IDS[1]].astype(np.uint16)),                  # I;16
        IDS[2]: Image.fromarray(lesion[IDS[2]].astype(np.uint8)).convert("P"),      # palette
        IDS[3]: Image.fromarray(lesion[IDS[3]].astype(np.uint8)),                   # L, against a 0/1 mask
        IDS[4]: Image.fromarray(lesion[IDS[4]].astype(np.uint8) * 128),             # 0/128: not a label map
        IDS[5]: Image.fromarray(lesion[IDS[5]].astype(np.uint8)),                   # against a 0/100 mask
        IDS[6]: Image.fromarray(np.stack([lesion[IDS[6]].astype(np.uint8)] * 3, axis=2)),   # RGB
    }
    for isic_id, picture in stored.items():
        picture.save(pred / f"{isic_id}.png")
    for isic_id, lesion_value in ((IDS[3], 1), (IDS[5], 100)):
        Image.fromarray(lesion[isic_id].astype(np.uint8) * lesion_value).save(
            copy / "masks" / "isic2018" / f"{isic_id}_segmentation.png")
    rows = [_row(isic_id) for isic_id in stored]
    pq.write_table(pa.Table.from_pylist(rows, schema=WSM_MANIFEST), pred / "manifest.parquet")
    build_report(pred, copy, tmp_path / "out", only_ids=set(stored))
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv").set_index("isic_id")
    assert (per_image.loc[list(IDS[:4]), "jaccard_bg"] == 1.0).all(), per_image["jaccard_bg"]
    errors = per_image.loc[list(IDS[4:7]), "error"]
    assert (per_image.loc[list(IDS[4:7]), "status"] == "error").all()
    assert "label map holds 0 (background), 1 (lesion) and 255 (uncertain) but this one holds 0, 128" in errors[IDS[4]]
    assert "official mask holds 0/255 (or 0/1) but this one holds 0, 100" in errors[IDS[5]]
    assert "mode 'RGB'" in errors[IDS[6]]


def test_overlay_draws_contours_and_band():
    from wsm.report.html import GREEN, RED, overlay

    image = np.full((512, 400, 3), 128, np.uint8)
    truth = np.zeros((512, 400), np.uint8)
    truth[100:300, 100:300] = 255
    label_map = np.zeros((512, 400), np.uint8)
    label_map[150:350, 150:350] = 1
    label_map[0:40, :] = 255
    picture = overlay(image, truth, label_map, size=256)
    assert picture.shape == (256, 200, 3) and picture.dtype == np.uint8
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert GREEN in colours and RED in colours
    band = picture[2:15, 50]
    assert (band[:, 0] > 128).all() and (band[:, 2] < 128).all()  # yellowish over grey


def _decode_png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    im.load()
    assert im.format == "PNG" and im.width > 0
    return im


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no chromium (install it with scripts/install-chromium.sh, as root on Debian)")


def test_chromium_renders_the_page(report, tmp_path):
    chromium = _chromium()
    _, _, _, out = report
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'id="headline"' in dom and "threshold_jaccard" in dom
    sources = re.findall(r'<img[^>]*src="([^"]*)"', dom)
    assert len(sources) == 15
    for src in sources:
        _decode_png(src)
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,3000", url], capture_output=True,
                   timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (3000, 1200) and pixels.std() > 10


def test_the_headline_interval_is_reproducible_and_wide_on_few_images():
    from wsm.report.scoring import bootstrap_interval

    few, many = [0.2, 0.9, 0.5, 0.7, 0.8, 0.3, 0.95, 0.6], [0.2, 0.9, 0.5, 0.7, 0.8, 0.3, 0.95, 0.6] * 40
    assert bootstrap_interval(few) == bootstrap_interval(few)
    (a, b), (c, d) = bootstrap_interval(few), bootstrap_interval(many)
    assert a < c < sum(few) / len(few) < d < b and (b - a) > 4 * (d - c)
    assert bootstrap_interval([0.5]) is None and bootstrap_interval([0.5, float("nan")]) is None
