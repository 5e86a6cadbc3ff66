"""Stages 4-5: fuse, dense CRF, clean_mask, refine, decide, confidence, to_original_size on small arrays."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from synthetic import ISIC2018, jaccard, synthetic_dermoscopy

from wsm.stages.preprocess import preprocess
from wsm.stages.refine import (CrfConfig, DecisionConfig, FusionConfig, MorphologyConfig, RefineConfig, Refined,
                               clean_mask, confidence, decide, dense_crf, fuse, refine, to_original_size)

cv2.setNumThreads(1)


def blurred_prob(mask, grow=6, sigma=6.0, lo=0.1, hi=0.9):
    """A CAM-like probability: the mask grown by ``grow`` px, blurred, squeezed into [lo, hi]."""
    grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    p = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), sigma)
    return (lo + (hi - lo) * p).astype(np.float32)


# ------------------------------------------------------------------------------------------------------- fuse


def test_fuse_weighted_mean_and_renormalisation():
    a = np.full((4, 5), 0.2, np.float32)
    b = np.full((4, 5), 0.8, np.float64)
    out = fuse({"cam": a, "prior": b}, {"cam": 1.0, "prior": 3.0})
    assert out.dtype == np.float32 and out.shape == (4, 5)
    assert np.allclose(out, 0.65)
    # a weighted map that is absent is ignored; the remaining weights are renormalised
    assert np.allclose(fuse({"cam": a}, {"cam": 1.0, "prior": 3.0}), 0.2)
    assert np.allclose(fuse({"cam": a, "prior": b}), 0.5)  # no weights: equal
    assert np.allclose(fuse({"cam": a, "prior": b}, FusionConfig({"cam": 0.0, "prior": 2.0})), 0.8)


def test_fuse_errors_say_what_is_wrong():
    a = np.full((4, 5), 0.2, np.float32)
    with pytest.raises(ValueError, match=r"no fusion weight for map\(s\) \['prior'\]"):
        fuse({"cam": a, "prior": a}, {"cam": 1.0})
    with pytest.raises(ValueError, match="sum to 0"):
        fuse({"cam": a}, {"cam": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        fuse({"cam": a}, {"cam": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        fuse({})
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        fuse({"cam": a * 10})
    with pytest.raises(ValueError, match="shape"):
        fuse({"cam": a, "prior": np.zeros((5, 4), np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        fuse({"cam": np.full((2, 2), np.nan, np.float32)})


# -------------------------------------------------------------------------------------------------- dense CRF


def test_dense_crf_moves_blurred_prob_to_the_image_edge():
    rgb, disc, _ = synthetic_dermoscopy(96, 96, frame_r=0)
    prob = blurred_prob(disc)
    out = dense_crf(rgb, prob, CrfConfig())
    assert out.shape == prob.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    err_before = np.abs(prob - disc).mean()
    err_after = np.abs(out - disc).mean()
    assert err_after < 0.5 * err_before
    assert jaccard(out > 0.5, disc) > jaccard(prob > 0.5, disc)
    assert jaccard(out > 0.5, disc) > 0.9


def test_dense_crf_accepts_read_only_and_checks_shapes():
    rgb, disc, _ = synthetic_dermoscopy(48, 64, frame_r=0)
    rgb.setflags(write=False)
    out = dense_crf(rgb, blurred_prob(disc, grow=2, sigma=2), CrfConfig(iterations=2))
    assert out.shape == (48, 64)
    with pytest.raises(ValueError, match="shape"):
        dense_crf(rgb, np.zeros((64, 48), np.float32))


def test_dense_crf_at_a_smaller_size_returns_the_full_size_marginal():
    rgb, disc, _ = synthetic_dermoscopy(96, 128, frame_r=0)
    prob = blurred_prob(disc)
    full = dense_crf(rgb, prob, CrfConfig())
    small = dense_crf(rgb, prob, CrfConfig(size=64))
    assert small.shape == prob.shape and small.dtype == np.float32
    assert small.min() >= 0 and small.max() <= 1
    # half the size, kernels scaled with it: still snaps to the edge, nearly the full-size CRF's mask
    assert jaccard(small > 0.5, disc) > jaccard(prob > 0.5, disc)
    assert jaccard(small > 0.5, full > 0.5) > 0.95
    assert not np.array_equal(small, full)  # it did run smaller
    assert np.array_equal(dense_crf(rgb, prob, CrfConfig(size=128)), full)  # not smaller than the image: as is
    with pytest.raises(ValueError, match="at least 16"):
        CrfConfig(size=8)


# ------------------------------------------------------------------------------------------------- morphology


def test_clean_mask_fills_holes_removes_specks_keeps_central_lesion():
    h = w = 128
    yy, xx = np.mgrid[0:h, 0:w]
    lesion = np.hypot(xx - 64, yy - 64) < 25
    mask = lesion.copy()
    mask[60:66, 60:66] = False  # a hole
    mask[5:7, 100:102] = True  # a speck
    corner = np.hypot(xx - 5, yy - 5) < 22  # a bigger-than-speck blob in a corner, smaller than the lesion
    mask |= corner
    out = clean_mask(mask, np.ones((h, w), bool))
    assert out.dtype == bool and out.shape == (h, w)
    assert jaccard(out, lesion) > 0.95
    assert not out[5, 100] and not out[3, 3]


def test_clean_mask_prefers_central_over_slightly_larger_corner_component():
    h = w = 128
    yy, xx = np.mgrid[0:h, 0:w]
    central = np.hypot(xx - 64, yy - 64) < 18
    corner = np.hypot(xx - 10, yy - 10) < 24
    out = clean_mask(central | corner, np.ones((h, w), bool))
    assert out[64, 64] and not out[5, 5]


def test_clean_mask_drops_rim_hugging_the_frame_keeps_lesion_touching_it():
    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    valid = ~frame
    yy, xx = np.mgrid[0:128, 0:128]
    d = np.hypot(xx - 63.5, yy - 63.5)
    rim = (d > 56) & valid  # the dark blurred edge of the frame, read as lesion
    out = clean_mask(rim, valid)
    assert not out.any()
    big = (d < 70) & valid  # a lesion filling the field of view touches the frame everywhere
    out = clean_mask(big, valid, MorphologyConfig())
    assert out.sum() > 0.9 * big.sum()
    assert not (out & frame).any()


def test_clean_mask_empty_and_type_errors():
    assert not clean_mask(np.zeros((32, 32), bool), np.ones((32, 32), bool)).any()
    with pytest.raises(ValueError, match="bool"):
        clean_mask(np.zeros((32, 32), np.uint8), np.ones((32, 32), bool))
    with pytest.raises(ValueError, match="shape"):
        clean_mask(np.zeros((32, 32), bool), np.ones((16, 32), bool))


# ----------------------------------------------------------------------------------------------------- decide


def test_decide_values_and_regions():
    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    valid = ~frame
    prob = np.where(disc, 0.95, 0.05).astype(np.float32)
    label_map = decide(prob, disc, valid, DecisionConfig(band_px=3))
    assert label_map.dtype == np.uint8 and label_map.shape == (128, 128)
    assert set(np.unique(label_map).tolist()) <= {0, 1, 255}
    assert label_map[64, 64] == 1 and label_map[64, 20] == 0
    assert (label_map[frame] == 0).all()  # the frame is clearly background
    # the band along the boundary is uncertain, on both sides
    edge_col = int(np.nonzero(disc[64])[0][0])
    assert (label_map[64, edge_col - 2 : edge_col + 3] == 255).all()
    assert label_map[64, edge_col + 5] == 1 and label_map[64, edge_col - 5] == 0


def test_decide_disagreement_and_between_thresholds_are_uncertain():
    h = w = 64
    refined = np.zeros((h, w), bool)
    refined[:, :32] = True
    prob = np.zeros((h, w), np.float32)
    prob[:, :16] = 0.9  # lesion, agreed
    prob[:, 16:32] = 0.1  # refined says lesion, prob says background: disagree
    prob[:, 32:48] = 0.5  # between thresholds
    prob[:, 48:] = 0.95  # prob says lesion, refined says background: disagree
    label_map = decide(prob, refined, np.ones((h, w), bool), DecisionConfig(band_px=0))
    assert (label_map[:, :16] == 1).all()
    assert (label_map[:, 16:] == 255).all()
    prob[:, 32:48] = 0.1
    assert (decide(prob, refined, np.ones((h, w), bool), DecisionConfig(band_px=0))[:, 32:48] == 0).all()


def test_decide_invalid_region_never_lesion():
    h = w = 32
    valid = np.ones((h, w), bool)
    valid[:, :8] = False
    prob = np.full((h, w), 0.05, np.float32)
    prob[:4, :8] = 0.99  # the evidence claims lesion on the frame
    refined = np.zeros((h, w), bool)
    label_map = decide(prob, refined, valid)
    assert (label_map[:4, :8] == 255).all() and (label_map[4:, :8] == 0).all()
    assert not (label_map[:, :8] == 1).any()


def test_decide_band_ignores_image_border_and_checks_thresholds():
    h = w = 40
    refined = np.zeros((h, w), bool)
    refined[:, :20] = True  # touches the image border on three sides
    prob = refined.astype(np.float32)
    label_map = decide(prob, refined, np.ones((h, w), bool), DecisionConfig(band_px=2))
    assert (label_map[:, 0] == 1).all() and (label_map[0, :15] == 1).all()
    assert (label_map[:, 18:22] == 255).all()
    with pytest.raises(ValueError, match="background_threshold <= lesion_threshold"):
        decide(prob, refined, np.ones((h, w), bool), DecisionConfig(lesion_threshold=0.3, background_threshold=0.6))


# ------------------------------------------------------------------------------------------ confidence, resize


def test_confidence_formula_and_bounds():
    label_map = np.array([[1, 0, 255, 255]], np.uint8)
    prob = np.array([[0.9, 0.2, 0.5, 0.5]], np.float32)
    # margins 0.8 and 0.6 -> mean 0.7; certain fraction 0.5
    assert confidence(prob, label_map) == pytest.approx(0.35, abs=1e-6)
    assert confidence(prob, np.full((1, 4), 255, np.uint8)) == 0.0
    assert confidence(np.array([[1.0, 0.0]], np.float32), np.array([[1, 0]], np.uint8)) == pytest.approx(1.0)
    # prob contradicting the label adds nothing
    assert confidence(np.array([[0.1]], np.float32), np.array([[1]], np.uint8)) == 0.0
    with pytest.raises(ValueError, match="0 \\(background\\), 1 \\(lesion\\) or 255"):
        confidence(prob, np.array([[1, 0, 128, 255]], np.uint8))


def test_to_original_size_nearest_keeps_values():
    label_map = np.zeros((64, 64), np.uint8)
    label_map[16:48, 16:48] = 1
    label_map[30:34] = 255
    out = to_original_size(label_map, (150, 100))
    assert out.shape == (100, 150) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) == {0, 1, 255}
    assert out[50, 75] == 255 and out[30, 75] == 1 and out[5, 5] == 0
    back = to_original_size(to_original_size(label_map, (128, 128)), (64, 64))
    assert (back == label_map).all()
    with pytest.raises(ValueError, match="size"):
        to_original_size(label_map, (0, 10))


# ------------------------------------------------------------------------------------------------------ chain


def test_chain_finds_disc_and_excludes_vignette():
    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    pre = preprocess(rgb)
    scale = 512 / 128
    disc_w = cv2.resize(disc.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    frame_w = cv2.resize(frame.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    prob = fuse({"cam": blurred_prob(disc_w, grow=int(4 * scale), sigma=6 * scale)})
    refined = refine(pre.image, prob, pre.valid_mask, RefineConfig())
    assert isinstance(refined, Refined) and refined.mask.dtype == bool and refined.prob.dtype == np.float32
    assert jaccard(refined.mask, disc_w) > 0.9
    label_map = decide(prob, refined.mask, pre.valid_mask, DecisionConfig())
    assert set(np.unique(label_map).tolist()) <= {0, 1, 255}
    assert (label_map[frame_w] != 1).all() and (label_map[frame_w] == 0).mean() > 0.95
    out = to_original_size(label_map, pre.original_size)
    assert out.shape == (128, 128)
    assert jaccard(out == 1, disc) > 0.75  # the uncertain band and the soft CAM margin are left out
    assert jaccard(out != 0, disc) > 0.6
    assert 0 < confidence(prob, label_map) <= 1


def test_refine_without_crf_and_configs_frozen():
    rgb, disc, frame = synthetic_dermoscopy(64, 64)
    prob = blurred_prob(disc, grow=0, sigma=1.5)
    refined = refine(rgb, prob, ~frame, RefineConfig(crf=None))
    assert refined.prob is not prob and np.allclose(refined.prob[~frame], prob[~frame])
    assert jaccard(refined.mask, disc) > 0.9
    for cfg in (CrfConfig(), MorphologyConfig(), DecisionConfig(), RefineConfig(), FusionConfig()):
        with pytest.raises(AttributeError):
            cfg.iterations = 1  # type: ignore[misc]


@pytest.mark.shared
def test_real_image_chain_with_mask_derived_prob():
    if not ISIC2018.is_dir():
        pytest.skip(f"{ISIC2018} is absent (real ISIC data for development, not shipped)")
    from wsm.io.images import read_image, read_mask

    truth = read_mask(ISIC2018 / "masks" / "ISIC_0000287_segmentation.png") > 128
    pre = preprocess(read_image(ISIC2018 / "images" / "ISIC_0000287.jpg"))
    prob = blurred_prob(truth, grow=10, sigma=12)
    refined = refine(pre.image, prob, pre.valid_mask)
    label_map = decide(prob, refined.mask, pre.valid_mask)
    assert set(np.unique(label_map).tolist()) <= {0, 1, 255}
    assert jaccard(refined.mask, truth) > 0.8


def test_decide_band_outside_keeps_the_whole_mask_as_lesion():
    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    prob = np.where(disc, 0.95, 0.05).astype(np.float32)
    label_map = decide(prob, disc, ~frame, DecisionConfig(band_px=3, band_side="outside"))
    assert (label_map[disc] == 1).all()                       # 255 counted as background gives the mask itself
    edge_col = int(np.nonzero(disc[64])[0][0])
    assert (label_map[64, edge_col - 3 : edge_col] == 255).all() and label_map[64, edge_col - 5] == 0
    with pytest.raises(ValueError, match="band_side"):
        DecisionConfig(band_side="inside")


def test_calibration_keeps_the_crf_only_where_it_helps():
    from wsm.config.pipeline import load_pipeline
    from wsm.config.recipe import build_recipe
    from wsm.fit.calibrate import Sample, calibrate
    from wsm.stages.preprocess import Preprocessed

    recipe = build_recipe(load_pipeline("default", "cpu", ["preprocess.working_size=128"]))
    assert recipe.calibration.crf_choices == (True, False)
    samples = []
    for seed in range(3):
        rgb, disc, frame = synthetic_dermoscopy(128, 128, seed=seed)
        pre = Preprocessed(image=rgb, valid_mask=np.ones(disc.shape, bool), original_size=(128, 128))
        exact = np.where(disc, 0.9, 0.1).astype(np.float32)     # the prior is already right: the CRF cannot help
        samples.append(Sample(pre, {"prior": exact}, disc))
    result = calibrate(samples, recipe)
    assert result.crf is False and result.prior_weight == 1.0
    assert {g[1] for g in result.grid} == {True, False}
    assert result.apply({"crf": {"iterations": 5}})["crf"] == {"iterations": 5, "enabled": False}


def test_offset_mask_moves_the_boundary_but_never_onto_invalid_pixels_nor_from_the_image_border():
    from wsm.stages.refine import offset_mask

    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    valid = np.ones(disc.shape, bool)
    assert np.array_equal(offset_mask(disc, valid, 0), disc)
    inner, outer = offset_mask(disc, valid, -2), offset_mask(disc, valid, 2)
    row = int(np.nonzero(disc.any(axis=1))[0].mean())
    left = int(np.nonzero(disc[row])[0][0])
    assert np.nonzero(inner[row])[0][0] == left + 2 and np.nonzero(outer[row])[0][0] == left - 2
    assert (inner <= disc).all() and (disc <= outer).all()
    big = np.zeros(disc.shape, bool)
    big[:, :70] = True                                       # a lesion cut by the image border keeps its edge there
    assert offset_mask(big, valid, -3)[:, 0].all() and not offset_mask(big, valid, -3)[:, 67:].any()
    assert not (offset_mask(big, ~frame, 3) & frame).any()
    plain = refine(rgb, np.where(disc, 0.9, 0.1).astype(np.float32), valid, RefineConfig(crf=None))
    moved = refine(rgb, np.where(disc, 0.9, 0.1).astype(np.float32), valid, RefineConfig(crf=None, offset_px=-2))
    assert np.array_equal(moved.mask, offset_mask(plain.mask, valid, -2))


def _disc_samples(radius_grow: int, n: int = 3):
    """Samples whose 'prior' is sure of a disc grown by ``radius_grow`` px around the truth (a halo when > 0)."""
    from wsm.fit.calibrate import Sample
    from wsm.stages.preprocess import Preprocessed

    samples = []
    for seed in range(n):
        rgb, disc, _ = synthetic_dermoscopy(128, 128, seed=seed)
        disc_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_grow + 1,) * 2)
        grown = cv2.dilate(disc.astype(np.uint8), disc_kernel) > 0
        pre = Preprocessed(image=rgb, valid_mask=np.ones(disc.shape, bool), original_size=(128, 128))
        samples.append(Sample(pre, {"prior": np.where(grown, 0.9, 0.05).astype(np.float32)}, disc))
    return samples


def test_calibration_moves_the_boundary_only_for_masks_drawn_tighter_than_the_maps():
    from wsm.config.pipeline import load_pipeline
    from wsm.config.recipe import build_recipe
    from wsm.fit.calibrate import calibrate

    recipe = build_recipe(load_pipeline("default", "cpu", ["preprocess.working_size=128",
                                                            "calibration.crf_choices=[false]"]))
    halo = calibrate(_disc_samples(radius_grow=3), recipe)          # every map 3 px wider than its mask
    assert halo.offset_px == -3 and halo.jaccard > 0.97
    assert halo.apply({})["refine"] == {"mask_threshold": halo.mask_threshold, "offset_px": -3}
    assert calibrate(_disc_samples(radius_grow=0), recipe).offset_px == 0


def test_the_lesion_threshold_does_not_buy_certainty_with_true_lesion():
    from wsm.config.pipeline import load_pipeline
    from wsm.config.recipe import build_recipe
    from wsm.fit.calibrate import Sample, calibrate
    from wsm.mapping import label_image

    recipe = build_recipe(load_pipeline("default", "cpu", [
        "preprocess.working_size=128", "calibration.crf_choices=[false]", "calibration.offsets_px=[0]",
        "calibration.mask_thresholds=[0.5]"]))
    samples = []
    for sample in _disc_samples(radius_grow=3):
        core = cv2.erode(sample.truth.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))) > 0
        prob = np.where(core, 0.95, np.where(sample.maps["prior"] > 0.5, 0.57, 0.05)).astype(np.float32)
        samples.append(Sample(sample.pre, {"prior": prob}, sample.truth))
    # only the core reaches 95% accuracy, but cutting to it would lose a third of the true lesion: the 1s keep it
    result = calibrate(samples, recipe)
    assert result.lesion_threshold == 0.5
    calibrated = build_recipe(result.apply(load_pipeline("default", "cpu", ["preprocess.working_size=128"])))
    for sample in samples:
        assert (label_image(sample.pre, sample.maps, calibrated).label_map[sample.truth] == 1).mean() > 0.99
