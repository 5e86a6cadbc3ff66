"""wsm.metrics against the official isic-challenge-scoring 5.6.0, on real masks written as PNG files."""
from __future__ import annotations

import math
import shutil

import cv2
import numpy as np
import pytest

from wsm.io.images import read_mask, write_label_png
from wsm.metrics import (METRIC_NAMES, THRESHOLD_JACCARD, Counts, aggregate, binarise, confusion_counts,
                                image_metrics, score_label_map, score_mask)
from paths import SHARED_DATA

cv2.setNumThreads(1)

ISIC2018 = SHARED_DATA / "isic2018-task1-512"
# isic-challenge-scoring 5.6.0 calls Series.rename(inplace=True), deprecated in pandas 3: not ours to fix
PEER_WARNINGS = pytest.mark.filterwarnings("ignore:The inplace keyword in Series.rename")
KEYS = ("accuracy", "sensitivity", "specificity", "jaccard", "dice", "threshold_jaccard")


def test_confusion_counts_and_metrics_by_hand():
    truth = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    counts = confusion_counts(truth, pred)
    assert counts == Counts(tp=1, fp=1, fn=1, tn=1)
    m = image_metrics(counts)
    assert m == {
        "accuracy": 0.5,
        "sensitivity": 0.5,
        "specificity": 0.5,
        "jaccard": 1 / 3,
        "dice": 0.5,
        "threshold_jaccard": 0.0,
    }


def test_zero_over_zero_cases_follow_the_official_freebies():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    both_empty = image_metrics(confusion_counts(empty, empty))
    assert both_empty["jaccard"] == both_empty["dice"] == both_empty["sensitivity"] == 1.0
    assert both_empty["threshold_jaccard"] == 1.0 and both_empty["specificity"] == 1.0
    missed_all = image_metrics(confusion_counts(empty, full))  # no lesion in truth, all predicted
    assert missed_all["sensitivity"] == 1.0 and missed_all["jaccard"] == 0.0 and missed_all["specificity"] == 0.0
    all_lesion = image_metrics(confusion_counts(full, full))
    assert all_lesion["specificity"] == 1.0 and all_lesion["jaccard"] == 1.0
    assert math.isnan(image_metrics(Counts(0, 0, 0, 0))["accuracy"])


def test_threshold_jaccard_boundary():
    at = image_metrics(Counts(tp=65, fp=35, fn=0, tn=0))
    assert at["jaccard"] == THRESHOLD_JACCARD and at["threshold_jaccard"] == THRESHOLD_JACCARD
    below = image_metrics(Counts(tp=649, fp=351, fn=0, tn=0))
    assert below["threshold_jaccard"] == 0.0


def test_binarise_and_type_errors():
    assert binarise(np.array([[128, 129, 0, 255]], np.uint8)).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="binarise"):
        confusion_counts(np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="dimensions"):
        confusion_counts(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_score_label_map_background_and_ignore():
    truth = np.array([[255, 255, 255, 0, 0, 0]], np.uint8)
    label_map = np.array([[1, 255, 0, 255, 0, 1]], np.uint8)
    bg = score_label_map(truth, label_map, uncertain="background")
    # as background: tp 1 (px0), fn 2 (px1, px2), tn 2 (px3, px4), fp 1 (px5)
    assert bg["jaccard"] == pytest.approx(1 / 4) and bg["uncertain_fraction"] == pytest.approx(2 / 6)
    ignore = score_label_map(truth, label_map, uncertain="ignore")
    # left out: px1 and px3 -> tp 1, fn 1, tn 1, fp 1 on a coverage of 4/6
    assert ignore["jaccard"] == pytest.approx(1 / 3 * 4 / 6) and ignore["accuracy"] == pytest.approx(0.5 * 4 / 6)
    assert ignore["uncertain_fraction"] == pytest.approx(2 / 6) and ignore["coverage"] == pytest.approx(4 / 6)


def test_leaving_pixels_out_cannot_earn_a_score():
    truth = np.zeros((10, 10), np.uint8)
    truth[2:8, 2:8] = 255
    for scored in (truth, np.zeros_like(truth)):     # with a lesion, and the official 0/0 freebie case
        abstain = score_label_map(scored, np.full_like(scored, 255), uncertain="ignore")
        assert all(abstain[m] == 0.0 for m in METRIC_NAMES) and abstain["coverage"] == 0.0
    nearly = np.full_like(truth, 255)
    nearly[4, 4] = 1                                 # one right lesion pixel, the rest uncertain
    scores = score_label_map(truth, nearly, uncertain="ignore")
    assert scores["jaccard"] == pytest.approx(0.01) and scores["threshold_jaccard"] == 0.0
    perfect = (truth > 128).astype(np.uint8)
    band = perfect.copy()
    band[2, 2:8] = 255                               # a band where the map abstains: coverage 0.94
    assert score_label_map(truth, band, uncertain="ignore")["jaccard"] == pytest.approx(0.94)
    assert score_label_map(truth, perfect, uncertain="ignore")["jaccard"] == 1.0
    rng = np.random.default_rng(5)
    for _ in range(50):
        label_map = rng.choice(np.array([0, 1, 255], np.uint8), size=(8, 8), p=rng.dirichlet([1, 1, 1]))
        scores = score_label_map(truth[:8, :8], label_map, uncertain="ignore")
        assert all(0.0 <= scores[m] <= scores["coverage"] + 1e-12 for m in METRIC_NAMES)


def test_score_label_map_refuses_masks_and_bad_modes():
    truth = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="score_mask"):
        score_label_map(truth, np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(ValueError, match="'background' or 'ignore'"):
        score_label_map(truth, np.zeros((2, 2), np.uint8), uncertain="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimensions"):
        score_label_map(truth, np.zeros((3, 2), np.uint8))


def test_aggregate_means_skip_nan_and_text():
    rows = [
        {"isic_id": "ISIC_0000001", "jaccard": 0.5, "accuracy": math.nan},
        {"isic_id": "ISIC_0000002", "jaccard": 1.0, "accuracy": 0.75},
    ]
    out = aggregate(rows)
    assert out == {"jaccard": 0.75, "accuracy": 0.75, "n_images": 2}
    with pytest.raises(ValueError, match="missing"):
        aggregate([{"jaccard": 1.0}, {"dice": 1.0}])
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])


# ------------------------------------------------------------------------------------------- against the peer


@pytest.mark.peer
def test_random_cases_equal_the_official_per_image_functions():
    confusion = pytest.importorskip("isic_challenge_scoring.confusion")
    official = pytest.importorskip("isic_challenge_scoring.metrics")
    rng = np.random.default_rng(0)
    cases = [(np.zeros((8, 8), bool), np.zeros((8, 8), bool)), (np.ones((8, 8), bool), np.ones((8, 8), bool))]
    cases += [(np.zeros((8, 8), bool), np.ones((8, 8), bool)), (np.ones((8, 8), bool), np.zeros((8, 8), bool))]
    for p in (0.05, 0.3, 0.5, 0.9):
        cases.append((rng.random((40, 50)) < p, rng.random((40, 50)) < 0.5))
    for truth, pred in cases:
        cm = confusion.create_binary_confusion_matrix(truth_binary_values=truth, prediction_binary_values=pred)
        ours = image_metrics(confusion_counts(truth, pred))
        assert ours["accuracy"] == pytest.approx(official.binary_accuracy(cm), abs=1e-12)
        assert ours["sensitivity"] == pytest.approx(official.binary_sensitivity(cm), abs=1e-12)
        assert ours["specificity"] == pytest.approx(official.binary_specificity(cm), abs=1e-12)
        assert ours["jaccard"] == pytest.approx(official.binary_jaccard(cm), abs=1e-12)
        assert ours["dice"] == pytest.approx(official.binary_dice(cm), abs=1e-12)
        assert ours["threshold_jaccard"] == pytest.approx(
            official.binary_threshold_jaccard(cm, threshold=0.65), abs=1e-12
        )


def _perturbations(truth: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """0/255 predictions of a 0/255 truth: grown, shrunk, shifted, noisy, empty, full."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.05
    noisy[flip] = 255 - noisy[flip]
    grey = np.where(truth > 0, 200, 100).astype(np.uint8)  # values on both sides of the 128 cut
    return [
        cv2.dilate(truth, kernel),
        cv2.erode(truth, kernel),
        np.roll(truth, (25, -40), axis=(0, 1)),
        noisy,
        np.zeros_like(truth),
        np.full_like(truth, 255),
        grey,
    ]


@pytest.mark.peer
@pytest.mark.shared
@PEER_WARNINGS
def test_real_masks_equal_the_official_scorer_on_files(tmp_path):
    segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")
    if not ISIC2018.is_dir():
        pytest.skip(f"{ISIC2018} is absent (real ISIC data for development, not shipped)")
    masks = sorted((ISIC2018 / "masks").glob("ISIC_*_segmentation.png"))[:4]
    rng = np.random.default_rng(1)
    perturbation_names = ["grown", "shrunk", "shifted", "noisy", "empty", "full", "grey"]
    for k, name in enumerate(perturbation_names):
        truth_dir, pred_dir = tmp_path / name / "truth", tmp_path / name / "pred"
        truth_dir.mkdir(parents=True)
        pred_dir.mkdir(parents=True)
        ours = []
        for mask_path in masks:
            shutil.copy(mask_path, truth_dir / mask_path.name)
            truth = read_mask(mask_path)
            pred = _perturbations(truth, rng)[k]
            isic_id = mask_path.name.split("_segmentation")[0]
            write_label_png(pred_dir / f"{isic_id}_segmentation.png", pred)
            written = read_mask(pred_dir / f"{isic_id}_segmentation.png")
            ours.append(score_mask(read_mask(truth_dir / mask_path.name), written))
        # an image with no lesion at all, to exercise the 0/0 rules through the files
        write_label_png(truth_dir / "ISIC_9999999_segmentation.png", np.zeros((64, 64), np.uint8))
        empty_pred = np.zeros((64, 64), np.uint8) if k % 2 else np.full((64, 64), 255, np.uint8)
        write_label_png(pred_dir / "ISIC_9999999_segmentation.png", empty_pred)
        ours.append(score_mask(np.zeros((64, 64), np.uint8), empty_pred))

        official = segmentation.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
        mine = aggregate(ours)
        for key in KEYS:
            assert mine[key] == pytest.approx(float(official[key]), abs=1e-9), (name, key)


@pytest.mark.peer
@pytest.mark.shared
@PEER_WARNINGS
def test_label_map_with_uncertain_as_background_equals_official_on_export(tmp_path):
    segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")
    if not ISIC2018.is_dir():
        pytest.skip(f"{ISIC2018} is absent (real ISIC data for development, not shipped)")
    masks = sorted((ISIC2018 / "masks").glob("ISIC_*_segmentation.png"))[4:8]
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(2)
    ours = []
    for mask_path in masks:
        shutil.copy(mask_path, truth_dir / mask_path.name)
        truth = read_mask(mask_path)
        label_map = np.where(np.roll(truth, 10, axis=1) > 128, 1, 0).astype(np.uint8)
        label_map[rng.random(truth.shape) < 0.1] = 255
        exported = np.where(label_map == 1, 255, 0).astype(np.uint8)  # the challenge convention: 255 -> 0
        write_label_png(pred_dir / mask_path.name, exported)
        row = score_label_map(truth, label_map, uncertain="background")
        assert 0.05 < row["uncertain_fraction"] < 0.15
        ours.append(row)
        ignored = score_label_map(truth, label_map, uncertain="ignore")
        assert ignored["jaccard"] <= ignored["coverage"] == pytest.approx(1 - row["uncertain_fraction"])
    official = segmentation.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    mine = aggregate(ours)
    for key in KEYS:
        assert mine[key] == pytest.approx(float(official[key]), abs=1e-9), key
