"""Segmentation losses that leave out uncertain pixels: BCE, soft Dice, BCE + Dice, focal, class-weighted
cross-entropy, and MB-DCNN's hybrid loss (Dice + 0.05 x rank loss).

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` and returns a scalar tensor. Pixels whose target
is ``ignore_index`` (255, ISIC_WSM's "uncertain") count for nothing: they are left out of every sum and every
normaliser, and their gradient is exactly zero.

Shapes (B images, K classes, H x W pixels):

- binary (one lesion channel, sigmoid): logits ``(B, 1, H, W)``; target ``(B, 1, H, W)`` or ``(B, H, W)``, any
  dtype, values 0 (background), 1 (lesion) or 255 (ignored). Losses: ``bce``, ``dice``, ``bce+dice``, ``focal``,
  ``hybrid``.
- multi-class (K > 1 channels, softmax): logits ``(B, K, H, W)``; target ``(B, H, W)`` or ``(B, 1, H, W)``, class
  indices 0..K-1 or 255 (ignored). Losses: ``ce`` (class-weighted cross-entropy), ``focal``, ``dice``.
- multi-label (K channels, one sigmoid each: a pixel may carry several labels, as dermoscopic attributes do):
  logits ``(B, K, H, W)``; target ``(B, K, H, W)``, values 0, 1 or 255 (ignored). Loss: :class:`MultiLabelFocal`.

Reductions: pixel losses (BCE, focal, CE) are means over the valid pixels of the whole batch; Dice is computed per
image (per image and class for K > 1) over its valid pixels, then averaged; the rank loss is per image, then
averaged over the images that have both lesion and background pixels. A batch with no valid pixel gives a loss of
0 that is still connected to the graph (so ``backward`` works and every gradient is zero).

:func:`create_loss` builds one by name (:data:`LOSSES`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BCEDice",
    "BinaryCrossEntropy",
    "Focal",
    "HybridLoss",
    "IGNORE_INDEX",
    "LOSSES",
    "MultiLabelFocal",
    "RankLoss",
    "SoftDice",
    "WeightedCrossEntropy",
    "create_loss",
    "positive_weights",
    "rank_loss",
]

IGNORE_INDEX = 255


# ------------------------------------------------------------------------------------------------ shapes

def _binary_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target as float 0/1 with ignored pixels set to 0, valid mask as float), both shaped like the logits."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"binary losses take logits of shape (B, 1, H, W), got {tuple(logits.shape)}; "
                         "for K > 1 classes use ce, focal or dice with num_classes=K")
    if target.ndim == 3:
        target = target[:, None]
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    valid = target != ignore_index
    return torch.where(valid, target, 0).to(logits.dtype), valid.to(logits.dtype)


def _class_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(class indices (B, H, W) int64 with ignored pixels set to 0, valid mask (B, H, W) bool)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, H, W), got {tuple(logits.shape)}")
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}: "
                         "expected (B, H, W) class indices")
    target = target.long()
    valid = target != ignore_index
    index = torch.where(valid, target, 0)
    if index.numel() and int(index.max()) >= logits.shape[1]:
        raise ValueError(f"target holds class {int(index.max())} but the logits have {logits.shape[1]} classes "
                         f"(values must be 0..{logits.shape[1] - 1} or {ignore_index})")
    return index, valid


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values * weights) / sum(weights); 0 (connected to the graph) when every weight is 0."""
    # with every weight 0 the numerator is exactly 0 (and so is its gradient): no branch, no device sync
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


# ------------------------------------------------------------------------------------------------ losses

class BinaryCrossEntropy(nn.Module):
    """Binary cross-entropy on logits, mean over the valid pixels; ``pos_weight`` scales the lesion term."""

    def __init__(self, pos_weight: float | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.pos_weight, self.ignore_index = pos_weight, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, valid = _binary_target(logits, target, self.ignore_index)
        pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)
        return _masked_mean(bce, valid)


class SoftDice(nn.Module):
    """``1 - soft Dice``, per image (and class), over valid pixels, then averaged.

    Dice = (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p the sigmoid (binary) or softmax (K > 1)
    probability, t the target. For K > 1 every class counts, background included; an image and class with no
    pixel of that class in target or prediction scores 1 (thanks to ``smooth``).
    """

    def __init__(self, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.smooth, self.ignore_index = smooth, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            tgt, valid = _binary_target(logits, target, self.ignore_index)
            prob = torch.sigmoid(logits) * valid
        else:
            index, valid_b = _class_target(logits, target, self.ignore_index)
            valid = valid_b[:, None].to(logits.dtype)
            prob = torch.softmax(logits, dim=1) * valid
            tgt = F.one_hot(index, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype) * valid
        inter = (prob * tgt).flatten(2).sum(-1)
        denom = prob.flatten(2).sum(-1) + tgt.flatten(2).sum(-1)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)   # (B, C)
        return 1 - dice.mean()


class BCEDice(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - Dice)``, both ignoring 255 (binary only)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.bce = BinaryCrossEntropy(ignore_index=ignore_index)
        self.dice = SoftDice(smooth=smooth, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


class Focal(nn.Module):
    """Focal loss (Lin et al. 2017): ``-w (1 - p_t)^gamma log p_t``, mean over valid pixels (weighted by w).

    Binary (sigmoid): ``alpha`` weighs lesion pixels by alpha and background by 1 - alpha (None: no weighting).
    Multi-class (softmax): ``class_weights`` (K,) weighs each pixel by its true class's weight; the mean is then
    normalised by the sum of the weights, as torch's weighted cross-entropy is.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None,
                 class_weights: Sequence[float] | torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.gamma, self.alpha, self.ignore_index = gamma, alpha, ignore_index
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            tgt, valid = _binary_target(logits, target, self.ignore_index)
            log_pt = -F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
            weight = valid
            if self.alpha is not None:
                weight = weight * (self.alpha * tgt + (1 - self.alpha) * (1 - tgt))
        else:
            index, valid_b = _class_target(logits, target, self.ignore_index)
            log_pt = torch.log_softmax(logits, dim=1).gather(1, index[:, None])[:, 0]
            weight = valid_b.to(logits.dtype)
            if self.class_weights is not None:
                weight = weight * self.class_weights.to(logits.device, logits.dtype)[index]
        focal = -((1 - log_pt.exp()).clamp(min=0) ** self.gamma) * log_pt
        return _masked_mean(focal, weight)


class MultiLabelFocal(nn.Module):
    """Focal loss over K independent sigmoid channels: ``-(w_k t (1 - p)^gamma log p + (1 - t) p^gamma log(1 - p))``,
    mean over the valid pixels of every channel; ``pos_weight`` (K,) weighs each channel's positive pixels (rare
    labels count more: :func:`positive_weights`)."""

    def __init__(self, pos_weight: Sequence[float] | torch.Tensor | None = None, gamma: float = 2.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.gamma, self.ignore_index = gamma, ignore_index
        weights = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4 or target.shape != logits.shape:
            raise ValueError(f"multi-label logits and target must both be (B, K, H, W), got {tuple(logits.shape)} "
                             f"and {tuple(target.shape)}")
        valid = target != self.ignore_index
        t = torch.where(valid, target, 0).to(logits.dtype)
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        p = log_p.exp()
        positive = t * (1 - p).clamp(min=0) ** self.gamma * log_p
        if self.pos_weight is not None:
            positive = positive * self.pos_weight.to(logits.device, logits.dtype)[None, :, None, None]
        negative = (1 - t) * p ** self.gamma * log_not_p
        return _masked_mean(-(positive + negative), valid.to(logits.dtype))


def positive_weights(positives: Sequence[float], totals: Sequence[float], cap: float = 100.0) -> list[float]:
    """Per-channel weights of the positive pixels: sqrt(negatives / positives), within 1..cap (1 for a channel
    with no positive pixel)."""
    out = []
    for pos, total in zip(positives, totals):
        out.append(1.0 if pos <= 0 else float(min(cap, max(1.0, ((total - pos) / pos) ** 0.5))))
    return out


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy over K > 1 classes with per-class weights (e.g. ``wsm.learn.loop.class_weights`` of the
    training maps' pixel counts), ignoring 255; torch's weighted mean over the valid pixels."""

    def __init__(self, class_weights: Sequence[float] | torch.Tensor | None = None,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] < 2:
            raise ValueError("cross-entropy needs K >= 2 class channels; for one lesion channel use bce")
        index, valid = _class_target(logits, target, self.ignore_index)
        if not bool(valid.any()):
            return (logits * 0).sum()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, torch.where(valid, index, self.ignore_index), weight=weight,
                               ignore_index=self.ignore_index)


def rank_loss(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, k: int = 30,
              margin: float = 0.3) -> torch.Tensor:
    """MB-DCNN's rank loss on lesion probabilities (Xie et al. 2020, eq. 6).

    Per image: L = the K lesion pixels with the lowest probability (the hardest lesion pixels) and B = the K
    background pixels with the highest one; the loss is the mean over the K x K pairs of
    ``max(0, margin - (p_l - p_b))``. An image with fewer than K lesion (or background) pixels uses all it has;
    an image with none of one kind is left out. The result is the mean over the images left in (0 if none).

    Shape: prob, target, valid (B, H, W) (or (B, 1, H, W)); target 0/1, valid bool or 0/1.
    """
    prob, target, valid = (t.flatten(1) for t in (prob, target, valid))
    valid = valid.bool()
    lesion, background = valid & (target > 0.5), valid & (target <= 0.5)
    k = min(int(k), prob.shape[1])
    inf = torch.finfo(prob.dtype).max
    # hardest lesion pixels: lowest prob (topk of -prob with non-lesion pixels pushed to the end)
    low, low_idx = torch.topk(torch.where(lesion, -prob, -inf), k, dim=1)
    high, high_idx = torch.topk(torch.where(background, prob, -inf), k, dim=1)
    low_ok, high_ok = lesion.gather(1, low_idx), background.gather(1, high_idx)
    p_lesion, p_background = prob.gather(1, low_idx), prob.gather(1, high_idx)
    hinge = (margin - (p_lesion[:, :, None] - p_background[:, None, :])).clamp(min=0)   # (B, k, k)
    pair_ok = (low_ok[:, :, None] & high_ok[:, None, :]).to(prob.dtype)
    n_pairs = pair_ok.sum(dim=(1, 2))
    per_image = (hinge * pair_ok).sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    used = (n_pairs > 0).to(prob.dtype)
    return _masked_mean(per_image, used)


class RankLoss(nn.Module):
    """:func:`rank_loss` on the sigmoid of binary logits, ignoring 255."""

    def __init__(self, k: int = 30, margin: float = 0.3, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.k, self.margin, self.ignore_index = k, margin, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tgt, valid = _binary_target(logits, target, self.ignore_index)
        return rank_loss(torch.sigmoid(logits[:, 0]), tgt[:, 0], valid[:, 0] > 0, self.k, self.margin)


class HybridLoss(nn.Module):
    """MB-DCNN's segmentation loss: ``(1 - Dice) + rank_weight * rank loss`` (rank_weight 0.05, K 30, margin 0.3)."""

    def __init__(self, rank_weight: float = 0.05, k: int = 30, margin: float = 0.3, smooth: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.rank_weight = rank_weight
        self.dice = SoftDice(smooth=smooth, ignore_index=ignore_index)
        self.rank = RankLoss(k=k, margin=margin, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.rank_weight * self.rank(logits, target)


# name -> (binary ok, multi-class ok, what it is)
LOSSES: dict[str, tuple[bool, bool, str]] = {
    "bce": (True, False, "binary cross-entropy"),
    "dice": (True, True, "1 - soft Dice"),
    "bce+dice": (True, False, "BCE + (1 - Dice)"),
    "focal": (True, True, "focal loss, gamma 2 (class-weighted for K > 1)"),
    "ce": (False, True, "class-weighted cross-entropy"),
    "hybrid": (True, False, "MB-DCNN: (1 - Dice) + 0.05 x rank loss (K 30, margin 0.3)"),
}


def create_loss(name: str, num_classes: int = 1, class_weights: Sequence[float] | torch.Tensor | None = None,
                ignore_index: int = IGNORE_INDEX) -> nn.Module:
    """A loss of :data:`LOSSES` by name, for ``num_classes`` output channels (1: binary lesion map).

    ``class_weights`` (K,) is used by ``ce`` and by ``focal`` with K > 1.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid ones: {', '.join(LOSSES)}")
    binary_ok, multi_ok, _ = LOSSES[name]
    if num_classes == 1 and not binary_ok:
        raise ValueError(f"loss {name!r} needs K > 1 classes; for a single lesion channel use one of "
                         f"{', '.join(n for n, v in LOSSES.items() if v[0])}")
    if num_classes > 1 and not multi_ok:
        raise ValueError(f"loss {name!r} is for a single lesion channel; for {num_classes} classes use one of "
                         f"{', '.join(n for n, v in LOSSES.items() if v[1])}")
    if name == "bce":
        return BinaryCrossEntropy(ignore_index=ignore_index)
    if name == "dice":
        return SoftDice(ignore_index=ignore_index)
    if name == "bce+dice":
        return BCEDice(ignore_index=ignore_index)
    if name == "focal":
        return Focal(class_weights=class_weights if num_classes > 1 else None, ignore_index=ignore_index)
    if name == "ce":
        return WeightedCrossEntropy(class_weights, ignore_index=ignore_index)
    return HybridLoss(ignore_index=ignore_index)
