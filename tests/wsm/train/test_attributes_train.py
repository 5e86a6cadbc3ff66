"""Dermoscopic-attribute maps: the ISIC 2018 Task 2 scoring rule, the multi-label loss, the clean-up and the
dataset (the end-to-end path from the emulator is in test_attributes_end_to_end.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from attribute_factory import SAMPLE, write_attribute_folder

from archive_client.challenges import ATTRIBUTES
from wsm.report.attributes import normalised_counts, task2_scores
from wsm.train.attributes import AttributeDataset, clean_attribute
from wsm.learn.losses import MultiLabelFocal, positive_weights


def _rows(pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> pd.DataFrame:
    """per-image rows of (isic_id, attribute) from (truth, pred) pairs keyed by attribute, image ids by position."""
    rows = []
    for attribute, images in pairs.items():
        for index, (truth, pred) in enumerate(images):
            rows.append({"isic_id": f"ISIC_{index:07d}", "attribute": attribute, **normalised_counts(truth, pred),
                         "truth_pixels": int(truth.sum()), "pred_pixels": int(pred.sum())})
    return pd.DataFrame(rows)


def test_the_task2_rule_sums_counts_normalised_by_image_size_over_the_whole_set():
    small_truth = np.zeros((10, 10), bool)
    small_truth[:5] = True                       # 50 of 100 pixels
    small_pred = np.zeros((10, 10), bool)
    small_pred[:5, :5] = True                    # TP 25, FN 25 -> 0.25, 0.25 normalised
    big_truth = np.zeros((100, 100), bool)       # no attribute here
    big_pred = np.zeros((100, 100), bool)
    big_pred[:10, :10] = True                    # FP 100 of 10000 pixels -> 0.01
    empty = np.zeros((20, 20), bool)
    rows = _rows({"globules": [(small_truth, small_pred), (big_truth, big_pred), (empty, empty)],
                  "streaks": [(empty, empty), (empty, empty), (empty, empty)]})
    scores = task2_scores(rows, attributes=("globules", "streaks"))
    # per attribute: sums of normalised counts, so the large image weighs no more than the small one
    assert scores["globules"]["jaccard"] == pytest.approx(0.25 / (0.25 + 0.01 + 0.25))
    assert scores["globules"]["dice"] == pytest.approx(0.5 / (0.5 + 0.01 + 0.25))
    # an image without the attribute and an empty prediction adds nothing; an attribute that nothing shows scores 1,
    # as the challenge's metrics score an empty truth predicted empty
    assert scores["streaks"]["jaccard"] == 1.0
    assert scores["mean_jaccard"] == pytest.approx((scores["globules"]["jaccard"] + 1.0) / 2)
    assert scores["micro_average"]["jaccard"] == pytest.approx(scores["globules"]["jaccard"])
    assert scores["globules"]["images_with_truth"] == 1 and scores["globules"]["images_with_prediction"] == 2
    assert scores["n_images"] == 3


def test_the_micro_average_pools_every_attribute_and_the_mean_averages_them():
    truth = np.zeros((10, 10), bool)
    truth[:2] = True                                 # 20 px
    perfect, half = truth.copy(), np.zeros((10, 10), bool)
    half[:1] = True                                  # TP 10, FN 10
    rows = _rows({"globules": [(truth, perfect)], "streaks": [(truth, half)]})
    scores = task2_scores(rows, attributes=("globules", "streaks"))
    assert scores["globules"]["jaccard"] == pytest.approx(1.0)
    assert scores["streaks"]["jaccard"] == pytest.approx(0.5)
    assert scores["mean_jaccard"] == pytest.approx(0.75)
    assert scores["micro_average"]["jaccard"] == pytest.approx((0.2 + 0.1) / (0.2 + 0.1 + 0.1))


def test_the_multi_label_focal_loss_ignores_255_and_weighs_rare_positives():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = (torch.rand(2, 3, 8, 8) > 0.8).float()
    target[:, 2] = 255                               # a channel with no truth on these images
    loss = MultiLabelFocal()(logits, target)
    loss.backward()
    assert torch.all(logits.grad[:, 2] == 0) and logits.grad[:, :2].abs().sum() > 0
    # gamma 0 and no weights: plain BCE over the valid pixels
    plain = MultiLabelFocal(gamma=0.0)(logits, target)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], target[:, :2])
    assert plain.item() == pytest.approx(expected.item(), rel=1e-5)
    weighted = MultiLabelFocal(pos_weight=[10.0, 10.0, 10.0])(logits, target)
    assert weighted.item() > loss.item()
    assert positive_weights([1, 0, 50], [101, 100, 100]) == [10.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="multi-label"):
        MultiLabelFocal()(logits, target[:, :2])


def test_the_clean_up_drops_specks_and_keeps_attributes_inside_the_lesion():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True            # a blob
    mask[50, 50] = True                  # a speck
    mask[80:90, 80:90] = True            # a blob outside the lesion below
    cleaned = clean_attribute(mask)
    assert cleaned[15, 15] and not cleaned[50, 50] and cleaned[85, 85]
    lesion = np.zeros((100, 100), bool)
    lesion[:60, :60] = True
    within = clean_attribute(mask, within=lesion)
    assert within[15, 15] and not within[85, 85]


def test_the_dataset_gives_multi_label_targets_that_move_with_the_image(tmp_path):
    ids = write_attribute_folder(tmp_path / "attributes", n_images=3)
    (tmp_path / "images").mkdir()
    rows = []
    for index, isic_id in enumerate(ids):
        shutil.copy(SAMPLE / "images" / f"{isic_id}.jpg", tmp_path / "images")
        row = {"isic_id": isic_id, "file": f"images/{isic_id}.jpg",
               **{f"mask_{a}": f"attributes/{isic_id}_attribute_{a}.png" for a in ATTRIBUTES}}
        if index < 2:     # the third image has no lesion mask: its lesion channel is ignored
            shutil.copy(SAMPLE / "masks" / f"{isic_id}_segmentation.png", tmp_path / "images")
            row["mask_lesion"] = f"images/{isic_id}_segmentation.png"
        rows.append(row)
    rows = pd.DataFrame(rows)
    plain = AttributeDataset(tmp_path, rows, 64, with_lesion=True)
    x, target = plain[2]
    assert x.shape == (3, 64, 64) and target.shape == (6, 64, 64)
    assert torch.all(target[5] == 255) and set(torch.unique(target[:5]).tolist()) <= {0.0, 1.0}
    assert target[3].sum() > 0               # pigment network is present in every sample image
    augmented = AttributeDataset(tmp_path, rows, 64, with_lesion=True, augment=True, seed=1)
    for index in range(3):
        _, moved = augmented[index]
        values = set(torch.unique(moved).tolist())
        assert values <= {0.0, 1.0, 255.0}
        assert (255.0 in values) == (index == 2)     # only the lesion channel without a mask is ignored
        assert moved[:5].eq(1).sum() > 0


def test_the_loss_weights_come_from_the_manifest_and_favour_rare_attributes(tmp_path):
    from attribute_factory import make_attribute_data

    from wsm.train.attributes import attribute_weights

    data = make_attribute_data(tmp_path / "DATA", n_images=6)
    manifest = pd.read_parquet(data / "attribute_manifest.parquet")
    ids = sorted(manifest["isic_id"].unique())
    weights = dict(zip([*ATTRIBUTES, "lesion"], attribute_weights(data, ids, with_lesion=True)))
    assert weights["lesion"] == 1.0 and all(1.0 <= w <= 100.0 for w in weights.values())
    # milia-like cysts are small spots, pigment network covers a fifth of each lesion: the spots weigh more
    assert weights["milia_like_cyst"] > weights["pigment_network"] > 1.0
    pigment = manifest[manifest["attribute"] == "pigment_network"]
    share = pigment["positive_pixels"].sum() / (pigment["width"] * pigment["height"]).sum()
    assert weights["pigment_network"] == pytest.approx(((1 - share) / share) ** 0.5)
