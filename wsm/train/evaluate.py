"""Evaluation of a trained network on official masks (or class maps): per image, then mean, as the report scores.

The network sees each image as `wsm generate` would show it (:func:`evaluation_preprocess`,
:func:`wsm.models.inputs.network_input`)."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from wsm.stages.preprocess import PreprocessConfig
from wsm.stages.refine import resize_prob


@functools.lru_cache(maxsize=None)
def evaluation_preprocess(size: int) -> PreprocessConfig:
    """The preprocessing train's evaluation puts a ``size`` px network's images through: the default recipe's, at
    the working size of the first of its profiles (CPU, then CUDA) whose working size holds the network (with the
    shipped recipe: 256 px up to 256, 512 px up to 512), or at the network's own size above that.

    Why the default recipe's: a `wsm train` network reaches `wsm generate` as a bundle's prior (`wsm fit
    --prior-run`), and generate shows a prior its recipe's working image resized to the prior's size, never the file
    resized straight to it; so the network is scored here on the tensors generate would give it. Colour constancy
    and hair removal stay off, as `fit --prior-run` keeps them and as the default recipe has them: the network
    learnt from the files' own pixels, as fit's default prior does. The frame (vignette) changes no pixel, so it is
    not looked for."""
    from wsm.config.pipeline import load_pipeline
    from wsm.config.recipe import build_recipe

    for profile in ("cpu", "cuda"):
        cfg = build_recipe(load_pipeline("default", profile)).preprocess
        if cfg.working_size >= size:
            break
    return dataclasses.replace(cfg, working_size=max(cfg.working_size, size), vignette=False, hair_removal=False,
                               colour_constancy=False)


class _Inputs:
    """Eval inputs: each image as generate makes a network's input (:func:`wsm.models.inputs.network_input`), with
    an optional guide channel (0..255 -> 0..1)."""

    def __init__(self, data: Path, files: list[str], size: int, guide_files: list[str] | None = None):
        self.data, self.files, self.size, self.guide_files = Path(data), files, size, guide_files
        self.preprocess = evaluation_preprocess(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from wsm.io.images import read_mask
        from wsm.models.inputs import network_input

        guide = None if self.guide_files is None else read_mask(self.data / self.guide_files[index])
        return network_input(self.data / self.files[index], self.preprocess, self.size, guide)


def batched_predictions(predict: Callable, data: Path, files: list[str], size: int, batch_size: int,
                        guide_files: list[str] | None = None, workers: int = 0) -> Iterator[np.ndarray]:
    """Yield ``predict(batch)`` one image at a time, over the inputs generate would give a ``size`` px network:
    each file preprocessed as :func:`evaluation_preprocess` says, resized to ``size`` and normalised. Every
    prediction a `wsm train` run makes goes this way: its evaluation, MB-DCNN's coarse maps and CAMs (the guides of
    its later networks), the attribute task's maps.

    ``predict`` maps a (B, C, size, size) tensor to a (B, ...) numpy array (e.g. probabilities).
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(_Inputs(data, files, size, guide_files), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    for batch in loader:
        yield from predict(batch)


def evaluate_binary(predict: Callable, data: Path, rows: pd.DataFrame, size: int, batch_size: int,
                    threshold: float = 0.5, guide_files: list[str] | None = None,
                    predictions_dir: Path | None = None, progress: bool = False) -> tuple[dict, list[dict]]:
    """Official metrics of lesion predictions against the official masks (per image, then mean).

    ``predict`` maps a batch to (B, size, size) lesion probabilities; each is resized (bilinear) to its official
    mask's size and thresholded (> threshold) before scoring with :func:`wsm.metrics.score_mask`.
    Returns (means with n_images, per-image rows with isic_id).
    """
    from wsm.io.images import read_mask, write_label_png
    from wsm.io.progress import progress as progress_bar
    from wsm.metrics import aggregate, score_mask

    data = Path(data)
    per_image = []
    preds = batched_predictions(predict, data, rows["file"].tolist(), size, batch_size, guide_files)
    for (isic_id, mask_file), prob in progress_bar(zip(zip(rows["isic_id"], rows["mask_file"]), preds),
                                                   total=len(rows), desc="evaluate", unit="img", enabled=progress):
        truth = read_mask(data / mask_file)
        pred = np.where(resize_prob(prob, truth.shape) > threshold, 255, 0).astype(np.uint8)
        if predictions_dir is not None:
            write_label_png(Path(predictions_dir) / f"{isic_id}_segmentation.png", pred)
        per_image.append({"isic_id": isic_id, **score_mask(truth, pred)})
    if not per_image:
        return {}, []
    return aggregate(per_image), per_image


def evaluate_classes(predict: Callable, data: Path, rows: pd.DataFrame, size: int, batch_size: int,
                     num_classes: int, ignore_index: int = 255) -> tuple[dict, list[dict]]:
    """Per-class Jaccard and Dice of class-index predictions against class-index maps (``rows.mask_file``),
    ignored pixels left out; per image, then mean. ``predict`` maps a batch to (B, K, size, size) probabilities."""
    from wsm.io.images import read_mask
    from wsm.metrics import aggregate, confusion_counts, image_metrics

    data = Path(data)
    per_image = []
    preds = batched_predictions(predict, data, rows["file"].tolist(), size, batch_size)
    for (isic_id, mask_file), probs in zip(zip(rows["isic_id"], rows["mask_file"]), preds):
        truth = read_mask(data / mask_file)
        pred = _class_map_to(np.asarray(probs), truth.shape)
        keep = truth != ignore_index
        row = {"isic_id": isic_id}
        for c in range(num_classes):
            m = image_metrics(confusion_counts((truth == c)[keep], (pred == c)[keep]))
            row[f"jaccard_{c}"], row[f"dice_{c}"] = m["jaccard"], m["dice"]
        per_image.append(row)
    if not per_image:
        return {}, []
    means = aggregate(per_image)
    means["mean_jaccard"] = float(np.mean([means[f"jaccard_{c}"] for c in range(num_classes)]))
    means["mean_dice"] = float(np.mean([means[f"dice_{c}"] for c in range(num_classes)]))
    return means, per_image


def _class_map_to(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, S, S) probabilities -> (H, W) argmax after resizing each class's map (bilinear)."""
    return np.stack([resize_prob(p, shape) for p in probs]).argmax(axis=0)
