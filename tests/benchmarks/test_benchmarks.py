"""The benchmarks' own helpers (their numbers come from running them; see docs/RESULTS.md)."""
import sys

import numpy as np
from paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from generality import recolour, shrink_in_frame, widen  # noqa: E402


def test_widen_centres_the_crop_on_its_ring_colour_and_pads_the_mask_with_background():
    image = np.full((20, 30, 3), 50, np.uint8)
    image[:8] = image[-8:] = 200  # outer ring: rows are bright, columns 50 -> mean between
    image[5:15, 10:20] = 7
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    canvas, wide_mask = widen(image, mask)
    assert canvas.shape == (20, 45, 3) and wide_mask.shape == (20, 45)
    assert np.array_equal(canvas[:, 7:37], image) and np.array_equal(wide_mask[:, 7:37], mask)
    assert not wide_mask[:, :7].any() and not wide_mask[:, 37:].any()
    fill = canvas[0, 0]
    assert np.all(canvas[:, :7] == fill) and np.all(canvas[:, 37:] == fill)
    assert 50 < fill[0] < 200  # the ring's mean, not black nor a copy of an edge


def test_a_small_frame_holds_the_crop_whole_off_centre_at_a_place_drawn_from_its_id():
    image = np.full((20, 30, 3), 90, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    frames = {isic_id: shrink_in_frame(image, mask, isic_id) for isic_id in ("ISIC_0000001", "ISIC_0000002")}
    places = set()
    for isic_id, (canvas, frame_mask) in frames.items():
        assert canvas.shape == (40, 90, 3) and frame_mask.shape == (40, 90)
        assert (frame_mask == 255).sum() == (mask == 255).sum()     # the whole lesion, nothing else
        rows, cols = np.nonzero(frame_mask)
        top, left = rows.min() - 5, cols.min() - 10
        assert np.array_equal(canvas[top:top + 20, left:left + 30], image)
        places.add((top, left))
        assert np.array_equal(shrink_in_frame(image, mask, isic_id)[1], frame_mask)   # the same every run
    assert len(places) == 2


def test_recolour_casts_each_image_its_own_way_the_same_every_run():
    image = np.full((4, 4, 3), 128, np.uint8)
    first, again = recolour(image, "ISIC_0000001"), recolour(image, "ISIC_0000001")
    other = recolour(image, "ISIC_0000002")
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    channels = first[0, 0].astype(int)
    assert channels.max() - channels.min() > 5            # a colour cast, not only a brightness change
    assert np.all((channels >= 80) & (channels <= 184))  # 128 / 255 to a power in [0.8, 1.25], x [0.75, 1.25]


def test_the_curve_keeps_one_eval_set_and_draws_the_rest_per_seed():
    from downstream import partition

    ids = [f"ISIC_{i:07d}" for i in range(60)]
    points = [partition(ids, 10, n, -1, seed, eval_seed=0) for n in (5, 20) for seed in (0, 1)]
    assert all(p["eval"] == points[0]["eval"] for p in points)
    for p in points:
        assert not set(p["eval"]) & set(p["labelled"]) and not set(p["labelled"]) & set(p["weak"])
        assert len(p["eval"]) + len(p["labelled"]) + len(p["weak"]) == len(ids)
    assert points[0]["labelled"] != points[1]["labelled"]              # another seed, other labelled images
    assert set(points[0]["labelled"]) <= set(points[2]["labelled"])    # more masks extend, never reshuffle
    assert partition(ids, 10, 5, 20, 0) == partition(ids, 10, 5, 20, 0, eval_seed=None)


def test_the_curve_summary_and_plot(tmp_path):
    from downstream import curve_summary, plot_curve

    rows = [{"n": 100, "arm": "official", "jaccard": j} for j in (0.70, 0.72, 0.74)]
    rows += [{"n": 50, "arm": "official", "jaccard": 0.6}, {"n": 50, "arm": "official+weak", "jaccard": 0.65}]
    summary = curve_summary(rows)
    at_100 = next(s for s in summary if s["n"] == 100)
    assert at_100["seeds"] == 3 and abs(at_100["jaccard"] - 0.72) < 1e-9 and abs(at_100["std"] - 0.02) < 1e-9
    plot_curve(summary, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_share_the_split_and_are_refused_with_other_settings(tmp_path):
    import argparse

    import pytest
    from downstream import check_settings, variant_suffix

    split = {"source": "S", "parts": {"eval": ["ISIC_0000001"]}, "device": "cpu"}
    check_settings(tmp_path / "settings.json", split, "split", "another --work")
    check_settings(tmp_path / "settings.json", split, "split", "another --work")       # the same: fine
    with pytest.raises(SystemExit, match="another --work"):
        check_settings(tmp_path / "settings.json", {**split, "device": "cuda"}, "split", "another --work")
    # a folder from before variants: its settings.json's fit overrides hold until the variant's file exists
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "settings.json").write_text('{"device": "cpu", "fit_overrides": ["prior.epochs=3"]}')
    earlier = {"fit_overrides": ["prior.epochs=3"], "weak_augment": "same"}
    with pytest.raises(SystemExit, match="another --variant"):
        check_settings(tmp_path / "old" / "settings-teacher.json", {"fit_overrides": [], "weak_augment": "same"},
                       "fit overrides", "another --variant", earlier)
    check_settings(tmp_path / "old" / "settings-teacher.json", earlier, "fit overrides", "another --variant", earlier)
    check_settings(tmp_path / "old" / "settings.json", {"device": "cpu"}, "split", "another --work")
    assert "fit_overrides" in (tmp_path / "old" / "settings.json").read_text()        # other keys are kept
    names = {variant_suffix(argparse.Namespace(teacher=t, variant=v))
             for t in ("fit", "student", "student-holdout") for v in ("", "strong")}
    assert names == {"", "-strong", "-student", "-student-strong", "-student-holdout", "-student-holdout-strong"}


def test_the_holdout_teacher_leaves_a_fifth_of_the_labelled_masks_to_calibrate():
    from downstream import partition, rank_key, teacher_split

    ids = [f"ISIC_{i:07d}" for i in range(200)]
    labelled = partition(ids, 50, 100, 50, 0)["labelled"]
    taught, calibrating = teacher_split(labelled, 0)
    assert len(calibrating) == 20 and sorted(taught + calibrating) == labelled
    assert teacher_split(list(reversed(labelled)), 0) == (taught, calibrating)   # by id, not by order
    assert teacher_split(labelled, 1)[1] != calibrating
    # not the partition's own order: the held-out fifth is not the first labelled ids the seed drew
    assert set(calibrating) != set(sorted(labelled, key=lambda i: rank_key(i, 0))[:20])
    assert teacher_split(labelled[:3], 0)[1] and len(teacher_split(labelled[:3], 0)[0]) == 2   # at least one


def test_a_filtered_run_keeps_at_least_the_fraction_asked_by_the_manifest_alone():
    import pandas as pd
    from downstream import kept_by

    manifest = pd.DataFrame({"isic_id": [f"ISIC_{i:07d}" for i in range(10)],
                             "predicted_jaccard": [0.05 * i + 0.3 for i in range(10)]})
    weak = [f"ISIC_{i:07d}" for i in range(1, 10)]          # ISIC_0000000 is not a weak image
    threshold, kept = kept_by(manifest, "predicted_jaccard", weak, 0.5)
    assert kept >= 0.5 * len(weak) and kept == sum(0.05 * i + 0.3 >= threshold for i in range(1, 10))
    assert kept_by(manifest, "predicted_jaccard", weak, 1.0) == (0.35, 9)


def test_the_curve_shows_every_variant_of_the_teacher_once():
    from downstream import curve_rows

    arms = (("official", 0.7), ("official+weak", 0.8), ("official+confident weak", 0.9))

    def report(variant, teacher="student"):
        return {"teacher": teacher, "variant": variant, "weak_map_quality": {"jaccard_255_as_background": 0.7},
                "results": {arm: {"jaccard": j, "threshold_jaccard": j, "dice": j, "n_train": 1, "epochs": 1}
                            for arm, j in arms}}

    rows = curve_rows(100, 0, report(""), "student") + curve_rows(100, 0, report("strong"), "student")
    assert [r["arm"] for r in rows] == ["official", "official+weak", "official", "official+weak [strong]"]
    assert curve_rows(100, 0, report("", teacher="fit"), "student") == []


def test_user_masks_draws_per_seed_and_measures_the_halo(tmp_path):
    from PIL import Image
    from user_masks import draw, halo, summary_table

    ids = [f"IMD{i:03d}" for i in range(100)]
    assert draw(ids, 25, 0) == draw(list(reversed(ids)), 25, 0) and draw(ids, 25, 0) != draw(ids, 25, 1)
    assert len(set(draw(ids, 25, 0))) == 25
    mask, label_map = np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    label_map[8:32, 8:32] = 255               # uncertain band: read as background
    label_map[9:31, 9:31] = 1                 # the 1s: the mask and a 1-pixel halo
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(label_map).save(tmp_path / "map.png")
    assert halo([(tmp_path / "mask.png", tmp_path / "map.png")]) == {"area_ratio": 1.21, "sensitivity": 1.0,
                                                                     "precision": 0.826}
    rows = [{"n": 25, "draw": f"n25-seed{seed}", "calibrated": {"n": 75, "jaccard_255_as_background": j},
             "uncalibrated": {"n": 75, "jaccard_255_as_background": 0.85}} for seed, j in ((0, 0.86), (1, 0.88))]
    assert summary_table(rows)[-1] == ("| 25 | 75 | n25-seed0, n25-seed1 | 0.8600, 0.8800 | 0.8700 | 0.8500 | "
                                       "+0.0200 |")


def test_user_masks_folds_score_every_image_once_and_never_with_its_own_mask():
    from types import SimpleNamespace

    from user_masks import draws, folds

    ids = [f"IMD{i:03d}" for i in range(10)]
    dealt = folds(ids, 4, 0)
    assert sorted(i for fold in dealt for i in fold) == ids and [len(f) for f in dealt] == [3, 3, 2, 2]
    assert folds(list(reversed(ids)), 4, 0) == dealt and folds(ids, 4, 1) != dealt
    planned = draws(ids, SimpleNamespace(folds=4, seeds="0,1", n="25"))
    assert [name for name, *_ in planned] == [f"fold{f}-of4" for f in range(4)]
    for _, chosen, scored in planned:
        assert not set(chosen) & set(scored) and sorted(chosen + scored) == ids
    assert sorted(i for *_, scored in planned for i in scored) == ids
    per_seed = draws(ids, SimpleNamespace(folds=0, seeds="0,1", n="3,5"))
    assert [(name, len(chosen), len(scored)) for name, chosen, scored in per_seed] == [
        ("n3-seed0", 3, 7), ("n3-seed1", 3, 7), ("n5-seed0", 5, 5), ("n5-seed1", 5, 5)]


def test_the_clinical_point_keeps_the_maps_predicted_good_and_gives_the_teacher_the_clinical_recipe(tmp_path):
    import pandas as pd
    from clinical_downstream import CLINICAL, clinical_overrides, kept_maps

    from wsm.config.pipeline import apply_override, load_pipeline
    from wsm.config.recipe import recipes_by_type

    pd.DataFrame({"isic_id": ["a", "b", "c"], "predicted_jaccard": [0.0, 0.65, 0.9]}).to_parquet(
        tmp_path / "manifest.parquet")
    assert kept_maps(tmp_path, ["a", "b", "c"], 0.65) == ["b", "c"]
    assert kept_maps(tmp_path, ["a", "c"], None) == ["a", "c"]

    packaged = recipes_by_type(load_pipeline("default"))[CLINICAL]
    bare = {k: v for k, v in load_pipeline("default").items() if k != "image_types"}   # an older bundle's pipeline
    for text in clinical_overrides():
        apply_override(bare, text)
    given = recipes_by_type(bare)[CLINICAL]
    assert given.box_prompt == packaged.box_prompt and given.framing == packaged.framing
    assert given.framing.max_area < 1
