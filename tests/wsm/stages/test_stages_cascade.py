"""The cascade for whole frames (wsm.stages.cascade): where the crop goes, what the crop holds, and the map put back
into the frame; on synthetic frames and on real full-resolution ISIC frames."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from wsm.models.inputs import mask_at
from wsm.stages.cascade import (CascadeConfig, crop, crop_region, detail_image, mask_in, missed_lesion, pixel_box,
                                to_frame, view_of_crop)
from wsm.stages.preprocess import PreprocessConfig, preprocess
from wsm.stages.refine import LABEL_LESION

ON = CascadeConfig(enabled=True)


def _blob(shape, box) -> np.ndarray:
    prob = np.zeros(shape, np.float32)
    x0, y0, x1, y1 = box
    prob[y0:y1, x0:x1] = 0.9
    return prob


def test_a_small_lesion_gets_a_crop_grown_about_its_centre():
    prob = _blob((100, 200), (100, 40, 120, 60))             # a 20 x 20 box in a 200 x 100 image
    region = crop_region(prob, np.ones(prob.shape, bool), ON)
    assert region == pytest.approx((0.475, 0.35, 0.625, 0.65))   # 30 x 30 px round (110, 50)


def test_the_crop_is_clipped_to_the_image():
    prob = _blob((100, 100), (0, 0, 20, 10))
    x0, y0, x1, y1 = crop_region(prob, np.ones(prob.shape, bool), ON)
    assert (x0, y0) == (0, 0) and x1 == pytest.approx(0.25) and y1 == pytest.approx(0.125)


def test_no_crop_without_a_lesion_or_for_a_lesion_that_fills_much_of_the_image():
    valid = np.ones((100, 100), bool)
    assert crop_region(np.zeros((100, 100), np.float32), valid, ON) is None
    large = _blob((100, 100), (10, 10, 70, 70))              # its box covers 0.36 of the image
    assert crop_region(large, valid, ON) is None
    assert crop_region(large, valid, CascadeConfig(enabled=True, max_area=0.5)) is not None
    hidden = _blob((100, 100), (10, 10, 20, 20))
    valid[:30, :30] = False                                  # in the dermoscope's frame: no lesion there
    assert crop_region(hidden, valid, ON) is None


def test_pixel_boxes_hold_at_least_one_pixel_inside_the_image():
    assert pixel_box((0.25, 0.5, 0.75, 1.0), (200, 100)) == (50, 50, 150, 100)
    assert pixel_box((0.999, 0.999, 1.0, 1.0), (10, 10)) == (9, 9, 10, 10)
    assert pixel_box((0.5, 0.5, 0.5, 0.5), (10, 10)) == (5, 5, 6, 6)


def test_the_detail_copy_keeps_the_aspect_and_is_never_enlarged():
    rgb = np.zeros((300, 600, 3), np.uint8)
    assert detail_image(rgb, 100).shape == (100, 200, 3)
    assert detail_image(rgb, 1000) is rgb


def _frame(width=1200, height=800, lesion=(840, 200, 960, 320)):
    """A skin-coloured frame with a dark square lesion (x0, y0, x1, y1) and its true mask."""
    rgb = np.full((height, width, 3), (210, 160, 140), np.uint8)
    truth = np.zeros((height, width), bool)
    x0, y0, x1, y1 = lesion
    rgb[y0:y1, x0:x1] = (90, 60, 50)
    truth[y0:y1, x0:x1] = True
    return rgb, truth


def _whole(rgb, detail_side=600, working=64):
    cfg = PreprocessConfig(working_size=working, vignette=False)
    return preprocess(rgb, cfg)._replace(detail=detail_image(rgb, detail_side)), cfg


def test_the_crop_shows_the_lesion_at_the_working_size_and_knows_its_place():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    region = crop_region(_blob((64, 64), (45, 16, 51, 26)), pre.valid_mask, ON)
    cropped = crop(pre, region, cfg)
    assert cropped.image.shape == (64, 64, 3) and cropped.valid_mask.all()
    assert cropped.original_size == (1200, 800) and cropped.detail is None
    x0, y0, x1, y1 = cropped.placement
    assert x0 <= 840 and y0 <= 200 and x1 >= 960 and y1 >= 320 and (x1 - x0) * (y1 - y0) < 0.05 * 1200 * 800
    dark = cropped.image.mean(axis=2) < 120
    assert dark.mean() > 0.3 > (pre.image.mean(axis=2) < 120).mean()    # the lesion fills much of the crop


def test_a_crop_takes_the_whole_image_s_valid_mask():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    valid = pre.valid_mask.copy()
    valid[:, 48:] = False                                    # a frame along the right side
    cropped = crop(pre._replace(valid_mask=valid), (0.5, 0.0, 1.0, 0.5), cfg)
    assert cropped.valid_mask[:, :32].all() and not cropped.valid_mask[:, 32:].any()


def test_the_crop_s_valid_mask_is_cut_where_its_pixels_are():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    valid = pre.valid_mask.copy()
    valid[:, 40:] = False                                    # the frame from 0.625 of the width on
    cropped = crop(pre._replace(valid_mask=valid), (0.5, 0.0, 0.8, 0.5), cfg)     # not on the working grid
    edge = (0.625 - 0.5) / 0.3 * 64                          # 26.7 columns of the crop's 64
    assert cropped.valid_mask[:, :26].all() and not cropped.valid_mask[:, 28:].any(), edge


def test_a_speck_gets_no_crop():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    assert crop(pre, (0.5, 0.5, 0.51, 0.51), cfg) is None   # 9 x 6 px of the 900 x 600 detail copy


def test_the_crop_s_map_goes_back_to_its_place_with_background_round_it():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    cropped = crop(pre, (0.6, 0.2, 0.9, 0.5), cfg)
    label_map = np.full((64, 64), LABEL_LESION, np.uint8)
    frame = to_frame(label_map, cropped)
    x0, y0, x1, y1 = cropped.placement
    assert frame.shape == (800, 1200) and (x0, y0, x1, y1) == (720, 160, 1080, 400)
    assert (frame[y0:y1, x0:x1] == LABEL_LESION).all() and (frame == LABEL_LESION).sum() == (x1 - x0) * (y1 - y0)
    assert np.array_equal(to_frame(label_map, pre), np.full((800, 1200), LABEL_LESION, np.uint8))   # no crop


def test_a_crop_s_truth_is_the_mask_in_its_place_at_the_working_size():
    rgb, truth = _frame()
    pre, cfg = _whole(rgb)
    cropped = crop(pre, (0.6, 0.2, 0.9, 0.5), cfg)         # (720, 160)-(1080, 400): the lesion at its centre
    mask = np.where(truth, 255, 0).astype(np.uint8)
    inside = mask_at(mask_in(cropped, mask), 64)
    assert inside.shape == (64, 64) and 0.1 < inside.mean() < 0.2 and inside[32, 32] and not inside[2, 2]
    halved = mask[::2, ::2]                                   # a mask stored at half the image's size
    assert (mask_at(mask_in(cropped, halved), 64) != inside).mean() < 0.02
    assert mask_in(pre, mask) is mask                         # no crop: the whole mask


def test_lesion_left_outside_a_crop_is_counted_in_the_crop_s_working_pixels():
    rgb, truth = _frame()
    pre, cfg = _whole(rgb)
    mask = np.where(truth, 255, 0).astype(np.uint8)
    assert missed_lesion(crop(pre, (0.6, 0.2, 0.9, 0.5), cfg), mask, 64) == 0      # the whole lesion inside
    half = crop(pre, (0.6, 0.2, 0.75, 0.5), cfg)            # x 720-900 of the lesion's 840-960: 60 x 120 px out
    assert half.placement == (720, 160, 900, 400)
    assert missed_lesion(half, mask, 64) == pytest.approx(60 * 120 * 64 * 64 / (180 * 240))
    assert missed_lesion(half, mask[::2, ::2], 64) == pytest.approx(60 * 120 * 64 * 64 / (180 * 240), rel=0.05)
    assert missed_lesion(pre, mask, 64) == 0                                       # not a crop


def test_the_whole_image_s_view_of_a_crop_is_the_same_place_at_the_crop_s_size():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    cropped = crop(pre, (0.6, 0.2, 0.9, 0.5), cfg)         # (720, 160)-(1080, 400) of 1200 x 800
    centres = (np.arange(64, dtype=np.float32) + 0.5) / 64
    across = np.tile(centres, (64, 1))                        # each pixel's x as a fraction of the width
    view = view_of_crop(across, cropped)
    expected = (720 + (np.arange(64) + 0.5) * 360 / 64) / 1200
    assert view.shape == (64, 64) and np.allclose(view[:, 2:-2], expected[2:-2], atol=1e-4)
    down = view_of_crop(across.T.copy(), cropped)               # y as a fraction of the height
    assert np.allclose(down[2:-2, 0], ((160 + (np.arange(64) + 0.5) * 240 / 64) / 800)[2:-2], atol=1e-4)
    assert view_of_crop(across, pre) is across                # not a crop: the whole map


def test_a_crop_needs_the_detail_copy():
    rgb, _ = _frame()
    pre, cfg = _whole(rgb)
    with pytest.raises(ValueError, match="detail"):
        crop(pre._replace(detail=None), (0.1, 0.1, 0.5, 0.5), cfg)


@pytest.mark.parametrize("kwargs, message", [({"max_area": 0}, "max_area"), ({"grow": 0.5}, "grow"),
                                             ({"detail_side": 10}, "detail_side")])
def test_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CascadeConfig(**kwargs)


def test_real_whole_frames_crop_round_their_lesion_and_come_back_in_place(shared_data):
    """On the ISIC 2017 full-resolution frames (up to 4288 px), the crop round the true lesion, cut from the
    detail copy, holds the lesion, and its mask put back into the frame matches the true mask."""
    from wsm.io.images import image_size, read_image, read_mask
    from wsm.models.inputs import truth_at

    root = shared_data / "isic2017-fullres-sample"
    if not (root / "pairs.csv").exists():
        pytest.skip(f"needs {root}")
    cfg = PreprocessConfig(working_size=256)
    with open(root / "pairs.csv", newline="") as fh:
        pairs = list(csv.DictReader(fh))[:3]
    for pair in pairs:
        rgb = read_image(root / pair["image"], max_pixels=None, min_side=1024)
        pre = preprocess(rgb, cfg)._replace(original_size=image_size(root / pair["image"]),
                                            detail=detail_image(rgb, 1024))
        truth = read_mask(root / pair["mask"]) > 128
        lesion = truth_at(root / pair["mask"], 256).astype(np.float32)
        region = crop_region(lesion, np.ones(lesion.shape, bool), CascadeConfig(enabled=True, max_area=1))
        cropped = crop(pre, region, cfg)
        x0, y0, x1, y1 = cropped.placement
        inside = truth[y0:y1, x0:x1].sum() / truth.sum()
        assert inside > 0.99, (pair["image"], inside)
        # the true mask, seen through the crop at the working size, put back where it was
        crop_truth = cv2_resize_nearest(truth[y0:y1, x0:x1], 256)
        back = to_frame(crop_truth.astype(np.uint8), cropped) == 1
        assert (back & truth).sum() / (back | truth).sum() > 0.97


def cv2_resize_nearest(mask: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST_EXACT) > 0
