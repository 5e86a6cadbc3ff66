"""Evaluation of a trained network on official masks (or class maps): per image, then mean, as the report scores."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from wsm.stages.refine import resize_prob


class _Inputs:
    """Eval inputs: images at the working size, normalised, with an optional guide channel (0..255 -> 0..1)."""

    def __init__(self, data: Path, files: list[str], size: int, guide_files: list[str] | None = None):
        self.data, self.files, self.size, self.guide_files = Path(data), files, size, guide_files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from wsm.io.images import read_image, read_mask
        from wsm.models.inputs import image_tensor, resize_square

        image = resize_square(read_image(self.data / self.files[index], min_side=self.size), self.size)
        guide = None
        if self.guide_files is not None:
            guide = resize_square(read_mask(self.data / self.guide_files[index]), self.size)
        return image_tensor(image, guide)


def batched_predictions(predict: Callable, data: Path, files: list[str], size: int, batch_size: int,
                        guide_files: list[str] | None = None, workers: int = 0) -> Iterator[np.ndarray]:
    """Yield ``predict(batch)`` one image at a time, over images read at the working size.

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
