"""Segmentation losses on small tensors: values by hand, ignored pixels, gradients, the MB-DCNN rank loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsm.learn.losses import (LOSSES, BCEDice, BinaryCrossEntropy, Focal, HybridLoss, RankLoss, SoftDice,
                              WeightedCrossEntropy, create_loss, rank_loss)

torch.set_num_threads(1)


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


# one image, 2 x 3 pixels: lesion pixels with p 0.9, 0.4, 0.2; background pixels with p 0.1, 0.5, 0.35
PROB = torch.tensor([[[0.9, 0.4, 0.2], [0.1, 0.5, 0.35]]], dtype=torch.float64)
TARGET = torch.tensor([[[1, 1, 1], [0, 0, 0]]], dtype=torch.float64)


def test_rank_loss_by_hand():
    valid = torch.ones_like(TARGET, dtype=torch.bool)
    # K = 2: hardest lesion pixels 0.2, 0.4; hardest background 0.5, 0.35; margin 0.3:
    # (0.2, 0.5): 0.6, (0.2, 0.35): 0.45, (0.4, 0.5): 0.4, (0.4, 0.35): 0.25 -> mean 1.7 / 4
    assert float(rank_loss(PROB, TARGET, valid, k=2, margin=0.3)) == pytest.approx(1.7 / 4)
    # K = 30 > 3 pixels of each kind: all 9 pairs; positive ones: 0.4 vs (0.5, 0.35): 0.4, 0.25;
    # 0.2 vs (0.1, 0.5, 0.35): 0.2, 0.6, 0.45 -> 1.9 / 9
    assert float(rank_loss(PROB, TARGET, valid, k=30, margin=0.3)) == pytest.approx(1.9 / 9)
    # the 0.2 lesion pixel ignored: lesion 0.4, 0.9 -> (0.4, 0.5) 0.4, (0.4, 0.35) 0.25, the 0.9 pairs 0 -> 0.65 / 4
    valid[0, 0, 2] = False
    assert float(rank_loss(PROB, TARGET, valid, k=2, margin=0.3)) == pytest.approx(0.65 / 4)


def test_rank_loss_images_without_both_kinds_are_left_out():
    prob = torch.cat([PROB, torch.full_like(PROB, 0.7)])
    target = torch.cat([TARGET, torch.ones_like(TARGET)])     # image 2: lesion only
    valid = torch.ones_like(target, dtype=torch.bool)
    assert float(rank_loss(prob, target, valid, k=2)) == pytest.approx(1.7 / 4)
    assert float(rank_loss(prob[1:], target[1:], valid[1:], k=2)) == 0.0


def test_rank_module_on_logits_ignores_255_and_has_gradients_on_the_hard_pixels_only():
    logits = _logit(PROB)[:, None].clone().requires_grad_(True)
    target = TARGET[:, None].clone()
    target[0, 0, 0, 2] = 255                                     # the 0.2 lesion pixel is uncertain
    loss = RankLoss(k=2, margin=0.3)(logits, target)
    assert float(loss.detach()) == pytest.approx(0.65 / 4)
    loss.backward()
    grad = logits.grad[0, 0]
    assert grad[0, 2] == 0 and grad[0, 0] == 0 and grad[1, 0] == 0   # ignored; easy lesion 0.9; easy background 0.1
    assert grad[0, 1] < 0 and grad[1, 1] > 0 and grad[1, 2] > 0      # push the hard lesion up, hard background down


def test_hybrid_is_dice_plus_005_rank():
    logits = _logit(PROB)[:, None]
    target = TARGET[:, None]
    expected = SoftDice()(logits, target) + 0.05 * RankLoss()(logits, target)
    assert float(HybridLoss()(logits, target)) == pytest.approx(float(expected))
    # hand Dice: sum(p t) = 1.5, sum(p) = 2.45, sum(t) = 3 -> 1 - (3 + 1) / (5.45 + 1)
    assert float(SoftDice()(logits, target)) == pytest.approx(1 - 4 / 6.45)


def test_bce_by_hand_and_ignored_pixels():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]], requires_grad=True)
    target = torch.tensor([[[[1, 0], [255, 0]]]], dtype=torch.float32)
    loss = BinaryCrossEntropy()(logits, target)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + math.log1p(math.exp(3.0))) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0, 1, 0] == 0                         # the 255 pixel
    # same as torch's BCE on the valid pixels only
    keep = target != 255
    ref = F.binary_cross_entropy_with_logits(logits.detach()[keep], target[keep])
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_ignores_what_is_ignored(name):
    """Changing the logits or the stored value under ignored pixels changes nothing."""
    torch.manual_seed(0)
    k = 1 if LOSSES[name][0] else 3
    logits = torch.randn(2, k, 8, 8)
    target = torch.randint(0, max(k, 2), (2, 1, 8, 8)).float()
    target[:, :, :3] = 255
    loss = create_loss(name, k, class_weights=torch.tensor([0.5, 1.0, 2.0]) if k > 1 else None)
    base = float(loss(logits, target))
    other = logits.clone()
    other[:, :, :3] = torch.randn(2, k, 3, 8) * 10
    assert float(loss(other, target)) == pytest.approx(base, rel=1e-6)
    # every pixel ignored: 0, and backward still works
    x = logits.clone().requires_grad_(True)
    empty = loss(x, torch.full_like(target, 255))
    assert float(empty.detach()) == 0.0
    empty.backward()
    assert torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_good_predictions_score_lower_than_bad_ones(name):
    k = 1 if LOSSES[name][0] else 3
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    if k == 1:
        good, bad = target[:, None] * 20.0 - 10, 10 - target[:, None] * 20.0
    else:
        target[:, 2:6, 4:6] = 2
        good = F.one_hot(target, k).permute(0, 3, 1, 2).float() * 20 - 10
        bad = -good
    loss = create_loss(name, k)
    assert float(loss(good, target)) < 0.05 < float(loss(bad, target))


def test_focal_reduces_to_cross_entropy_at_gamma_0():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 6, 6)
    target = (torch.rand(2, 1, 6, 6) > 0.5).float()
    assert float(Focal(gamma=0)(logits, target)) == pytest.approx(float(BinaryCrossEntropy()(logits, target)), rel=1e-5)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6))
    target[0, 0] = 255
    w = torch.tensor([0.2, 1.0, 3.0])
    ce = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert float(Focal(gamma=0, class_weights=w)(logits, target)) == pytest.approx(float(ce), rel=1e-5)
    assert float(WeightedCrossEntropy(w)(logits, target)) == pytest.approx(float(ce), rel=1e-6)
    # gamma 2 down-weights easy pixels: never above cross-entropy
    assert float(Focal(gamma=2, class_weights=w)(logits, target)) < float(ce)


def test_multiclass_dice_by_hand():
    # one image, 1 x 2 pixels, 2 classes: probabilities (0.8, 0.2) and (0.4, 0.6), targets 0 and 1
    logits = torch.log(torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]]))
    target = torch.tensor([[[0, 1]]])
    dice0 = (2 * 0.8 + 1) / (1.2 + 1 + 1)
    dice1 = (2 * 0.6 + 1) / (0.8 + 1 + 1)
    assert float(SoftDice()(logits, target)) == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-6)


def test_bce_dice_and_shapes():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    assert float(BCEDice()(target * 20 - 10, target)) < 0.05
    assert float(BCEDice()(target * 20 - 10, target[:, 0])) < 0.05   # (B, H, W) target is accepted
    with pytest.raises(ValueError, match="does not match"):
        BCEDice()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="class 5"):
        WeightedCrossEntropy()(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 5))


def test_create_loss_checks_the_number_of_classes():
    with pytest.raises(ValueError, match="valid ones"):
        create_loss("lovasz")
    with pytest.raises(ValueError, match="K > 1"):
        create_loss("ce", 1)
    with pytest.raises(ValueError, match="single lesion channel"):
        create_loss("hybrid", 3)


def test_bce_dice_scores_a_right_prediction_low_and_a_wrong_one_high():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = BCEDice()(target * 20 - 10, target)
    bad = BCEDice()(10 - target * 20, target)
    assert float(good) < 0.05 < 1.0 < float(bad)
