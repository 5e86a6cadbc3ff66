"""The predicted quality of a map: its signals, the model fit learns on calibration masks, and how a report
measures it (risk-coverage, AUROC)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from wsm.config.pipeline import stage_config, to_toml
from wsm.report.scoring import auroc, quality_assessment, risk_coverage
from wsm.stages.quality import (SIGNALS, FramingConfig, QualityConfig, as_table, edge_contact, fit_quality,
                                framing_failure, predicted_jaccard, quality_signals)


def _lesion_image(size: int = 64):
    yy, xx = np.mgrid[:size, :size]
    lesion = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    image = np.full((size, size, 3), 200, np.uint8)
    image[lesion] = (80, 50, 40)
    return image, lesion


def test_signals_agree_on_a_good_map_and_not_on_a_bad_one():
    image, lesion = _lesion_image()
    valid = np.ones(lesion.shape, bool)
    good_prob = np.where(lesion, 0.95, 0.05).astype(np.float32)
    good = quality_signals(image, valid, good_prob, lesion, lesion.astype(np.uint8))
    wrong = np.zeros_like(lesion)
    wrong[:, :12] = True                                  # a strip along the frame, where there is no lesion
    bad_prob = np.where(wrong, 0.6, 0.45).astype(np.float32)
    bad = quality_signals(image, valid, bad_prob, wrong, np.where(wrong, 255, 0).astype(np.uint8))
    assert set(good) == set(SIGNALS) == set(bad)
    assert good["agree_threshold"] > 0.8 > 0.1 > bad["agree_threshold"]
    assert good["margin"] > 0.8 > 0.2 > bad["margin"]
    assert good["border"] == 0 and bad["border"] > 0.2
    assert bad["uncertain_ratio"] == 1 and good["uncertain_ratio"] == 0
    assert good["contrast"] > 0.3 > 0.05 > bad["contrast"]           # the strip is skin like its surroundings
    assert good["compactness"] > 0.8 > 0.5 > bad["compactness"]
    assert all(math.isfinite(v) for v in (*good.values(), *bad.values()))


def test_a_crop_s_map_is_scored_against_the_whole_image_s_view_of_it():
    image, lesion = _lesion_image()
    valid = np.ones(lesion.shape, bool)
    prob = np.where(lesion, 0.95, 0.05).astype(np.float32)
    whole = quality_signals(image, valid, prob, lesion, lesion.astype(np.uint8))
    assert whole["agree_scale"] == 1 and whole["cascaded"] == 0          # one view
    same = quality_signals(image, valid, prob, lesion, lesion.astype(np.uint8), whole_view=prob)
    assert same["agree_scale"] == 1 and same["cascaded"] == 1
    shifted = np.roll(prob, 16, axis=1)                                   # the whole image saw the lesion elsewhere
    moved = quality_signals(image, valid, prob, lesion, lesion.astype(np.uint8), whole_view=shifted)
    assert 0 < moved["agree_scale"] < 0.5
    nothing = quality_signals(image, valid, prob, lesion, lesion.astype(np.uint8), whole_view=np.zeros_like(prob))
    assert nothing["agree_scale"] == 0


def test_the_model_learns_a_relation_and_travels_in_the_pipeline_file():
    rng = np.random.default_rng(0)
    signals = [{name: float(rng.uniform()) for name in SIGNALS} for _ in range(200)]
    truth = [0.2 + 0.6 * s["agree_threshold"] for s in signals]          # quality follows one signal
    model = fit_quality(signals, truth)
    predicted = [predicted_jaccard(model, s) for s in signals]
    assert np.corrcoef(predicted, truth)[0, 1] > 0.99 and model.n_images == 200
    assert abs(dict(zip(model.signals, model.coef))["agree_threshold"]) > 5 * max(
        abs(c) for name, c in zip(model.signals, model.coef) if name != "agree_threshold")
    assert predicted_jaccard(model, {**signals[0], "agree_threshold": 50.0}) == 1.0     # clipped to [0, 1]
    import tomllib

    again = stage_config(QualityConfig, tomllib.loads(to_toml({"quality": as_table(model)}))["quality"], "quality")
    assert again == model
    assert predicted_jaccard(QualityConfig(), signals[0]) is None and not QualityConfig().enabled


def test_few_calibration_masks_give_a_cautious_model():
    signals = [{name: 0.5 + (i == j) for j, name in enumerate(SIGNALS)} for i in range(3)]
    model = fit_quality(signals, [0.9, 0.5, 0.7])
    assert all(abs(predicted_jaccard(model, s) - 0.7) < 0.2 for s in signals)


def test_a_map_that_found_no_lesion_is_predicted_to_fail():
    image, lesion = _lesion_image()
    valid = np.ones(lesion.shape, bool)
    empty = np.zeros(lesion.shape, bool)
    signals = quality_signals(image, valid, np.zeros(lesion.shape, np.float32), empty, empty.astype(np.uint8))
    assert signals["agree_refine"] == 0 and signals["area"] == 0      # nothing found is not agreement
    rng = np.random.default_rng(1)
    model = fit_quality([{n: float(rng.uniform(0.1, 1)) for n in SIGNALS} for _ in range(30)],
                        rng.uniform(0.5, 0.9, 30).tolist())
    assert predicted_jaccard(model, signals) == 0.0


def test_the_framing_check_fails_maps_of_most_of_the_image_or_along_a_side():
    valid = np.ones((100, 150), bool)
    centred = np.zeros_like(valid)
    centred[30:70, 50:100] = True                               # a lesion framed in skin: 13% of the image
    along_a_side = np.zeros_like(valid)
    along_a_side[95:, 20:80] = True                             # 4% of the image, on 40% of the bottom side
    skin = np.zeros_like(valid)
    skin[10:, :] = True                                         # the skin below a dark background: 90%
    close_up = FramingConfig(max_area=0.4, max_edge_contact=0.3)
    assert edge_contact(centred, 0.03) == 0 and edge_contact(along_a_side, 0.03) == pytest.approx(0.4)
    assert framing_failure(centred, valid, close_up) is None
    assert "lies along 40% of a side" in framing_failure(along_a_side, valid, close_up)
    assert "marks 90% of the image" in framing_failure(skin, valid, close_up)
    assert all(framing_failure(m, valid, FramingConfig()) is None for m in (centred, along_a_side, skin))
    near = np.zeros_like(valid)
    near[90:94, 20:80] = True                                   # 6 px from the bottom: beyond 3 px (3%), within 10 px
    assert edge_contact(near, 0.03) == 0 and edge_contact(near, 0.1) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="max_area"):
        FramingConfig(max_area=0)


def test_a_model_that_does_not_fit_its_signals_is_refused():
    with pytest.raises(ValueError, match="not quality signals"):
        QualityConfig(("colour",), (0.0,), (1.0,), (0.1,))
    with pytest.raises(ValueError, match="one value per signal"):
        QualityConfig(("area", "margin"), (0.0,), (1.0,), (0.1,))
    with pytest.raises(ValueError, match="positive"):
        QualityConfig(("area",), (0.0,), (0.0,), (0.1,))


def test_risk_coverage_and_auroc_of_perfect_and_useless_rankings():
    actual = [0.9, 0.3, 0.8, 0.5, 0.95, 0.1]
    perfect = quality_assessment(actual, actual)
    assert perfect["aurc"] == pytest.approx(perfect["aurc_oracle"]) and perfect["auroc_fail"] == 1.0
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["mean_kept"] == perfect["mean_kept_oracle"]
    backwards = quality_assessment([-a for a in actual], actual)
    assert backwards["aurc"] > backwards["aurc_random"] > perfect["aurc"] and backwards["auroc_fail"] == 0.0
    assert risk_coverage([1, 0], [1.0, 0.0]) == [0.0, 0.5]
    assert risk_coverage([1, 1], [1.0, 0.0]) == risk_coverage([1, 1], [0.0, 1.0]) == [0.5, 0.5]   # ties: no order
    flags = quality_assessment([0.9, 0.5, 0.6, 0.8], [0.9, 0.4, 0.7, 0.3])
    assert (flags["flagged"], flags["flag_precision"], flags["flag_recall"]) == (2, 0.5, 0.5)
    assert auroc([0.1, 0.1], [True, False]) == 0.5 and auroc([1, 2], [True, True]) is None
    assert quality_assessment([math.nan, 0.5], [0.2, 0.4]) is None
