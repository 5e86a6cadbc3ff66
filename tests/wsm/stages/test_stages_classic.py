"""The no-learning baseline: lesion_prob_classic and the whole segment_classic chain."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from synthetic import ISIC2018, jaccard, synthetic_dermoscopy

from wsm.stages.classic import (CHANNELS, ClassicConfig, ClassicPipelineConfig, ClassicResult, lesion_prob_classic,
                                otsu_threshold, segment_classic)
from wsm.stages.preprocess import PreprocessConfig, vignette_mask

cv2.setNumThreads(1)


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(60, 5, 1000), rng.normal(180, 5, 3000)])
    t, low, high = otsu_threshold(values)
    assert 75 < t < 165 and low == pytest.approx(60, abs=2) and high == pytest.approx(180, abs=2)
    assert otsu_threshold(np.full(10, 42.0)) == (42.0, 42.0, 42.0)
    with pytest.raises(ValueError):
        otsu_threshold(np.array([]))


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_lesion_prob_classic_contract(channel):
    rgb, disc, frame = synthetic_dermoscopy(96, 96)
    found = vignette_mask(rgb)  # the frame plus its blurred rim
    prob = lesion_prob_classic(rgb, ~found, ClassicConfig(channel=channel))
    assert prob.shape == (96, 96) and prob.dtype == np.float32
    assert prob.min() >= 0 and prob.max() <= 1
    assert (prob[found] == 0).all()
    if channel != "lab_a":  # a* (redness) does not separate brown from pink skin: a listed weak channel
        assert jaccard(prob > 0.5, disc) > 0.9
        assert prob[disc].mean() > 0.9 and prob[~disc & ~frame].mean() < 0.1


def test_lesion_prob_classic_errors():
    rgb, _, frame = synthetic_dermoscopy(32, 32)
    with pytest.raises(ValueError, match=r"valid channels: \['blue'"):
        lesion_prob_classic(rgb, ~frame, ClassicConfig(channel="purple"))
    with pytest.raises(ValueError, match="bool"):
        lesion_prob_classic(rgb, (~frame).astype(np.uint8), ClassicConfig())
    assert not lesion_prob_classic(rgb, np.zeros((32, 32), bool)).any()


def test_segment_classic_finds_disc_excludes_vignette_on_non_square_input():
    rgb, disc, frame = synthetic_dermoscopy(120, 160)
    cfg = ClassicPipelineConfig(preprocess=PreprocessConfig(working_size=128))
    result = segment_classic(rgb, cfg)
    assert isinstance(result, ClassicResult)
    assert result.label_map.shape == (120, 160) and result.label_map.dtype == np.uint8
    assert set(np.unique(result.label_map).tolist()) <= {0, 1, 255}
    square = cv2.resize(disc.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    assert jaccard(result.refined_mask, square) > 0.9
    lesion = result.label_map == 1
    assert (lesion & disc).sum() / lesion.sum() > 0.98  # lesion labels are inside the disc
    assert (result.label_map[disc] == 0).mean() < 0.01  # the disc is lesion or, at its edge, uncertain
    assert (result.label_map[frame] == 0).all()  # the frame is background
    assert (~result.valid_mask).mean() == pytest.approx(frame.mean(), abs=0.05)
    assert 0.5 < result.confidence <= 1
    assert result.prob.shape == result.refined_mask.shape == result.valid_mask.shape == (128, 128)


def test_same_input_same_output():
    rgb, _, _ = synthetic_dermoscopy(64, 64, seed=3)
    cfg = ClassicPipelineConfig(preprocess=PreprocessConfig(working_size=64))
    a, b = segment_classic(rgb, cfg), segment_classic(rgb.copy(), cfg)
    assert (a.label_map == b.label_map).all() and a.confidence == b.confidence


@pytest.mark.shared
def test_real_images_reach_colour_threshold_quality():
    if not ISIC2018.is_dir():
        pytest.skip(f"{ISIC2018} is absent (real ISIC data for development, not shipped)")
    from wsm.io.images import read_image, read_mask

    # the first 8 ids of the set (not chosen) and one with a dermoscope frame
    ids = sorted(p.stem for p in (ISIC2018 / "images").glob("ISIC_*.jpg"))[:8] + ["ISIC_0000287"]
    scores = []
    for isic_id in ids:
        rgb = read_image(ISIC2018 / "images" / f"{isic_id}.jpg")
        truth = read_mask(ISIC2018 / "masks" / f"{isic_id}_segmentation.png") > 128
        result = segment_classic(rgb)
        assert result.label_map.shape == truth.shape
        assert set(np.unique(result.label_map).tolist()) <= {0, 1, 255}
        scores.append(jaccard(result.label_map == 1, truth))
    assert np.mean(scores) > 0.7, scores  # a regression guard; benchmarks/classic_baseline.py gives the number
    assert scores[-1] > 0.7, scores  # the frame is not taken for lesion
