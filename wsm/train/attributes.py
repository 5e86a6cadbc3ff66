"""`wsm train --task attributes`: dermoscopic-attribute maps (ISIC 2018 Task 2) as multi-label segmentation.

As in the thesis on that task (Caramazana): the five attributes overlap (a pixel can be pigment network and
globules), so the network has one sigmoid channel per attribute (in ``archive_client.challenges.ATTRIBUTES``
order), and with ``with_lesion`` the Task 1 lesion as a sixth channel (its pixels ignored on images without an
official lesion mask); any ``--arch`` / ``--encoder`` of `wsm train` serves. The loss is a focal loss (gamma 2)
whose positive pixels are weighted per attribute by sqrt(negatives / positives) over the training images (capped at
100; counted from DATA's attribute manifest, at the masks' own size, nothing decoded): attributes cover from a few
percent of a lesion (pigment network) down to a few pixels (milia-like cysts), and an unweighted loss learns to
predict none; the lesion channel, common, is not weighted. (The thesis names focal loss and class weighting; the
square-root weighting is this module's choice.)

Predictions are thresholded at ``threshold``, brought back to the image's size and cleaned with morphology
(:func:`clean_attribute`: a 3x3 opening, components under ``MIN_AREA`` of the image dropped, and with the lesion
channel only pixels within the predicted lesion kept); the eval images' maps are written as the challenge took
them (RUN/predictions/ISIC_x_attribute_<name>.png, 0/255) and scored by the challenge's rule
(:mod:`wsm.report.attributes`), with the attribute report in RUN/report/.

Images: those of ``split_train`` whose five attribute masks are in DATA (attribute_manifest.parquet) train; those
of ``eval_split`` evaluate; an image in both is refused, as for lesion maps.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from archive_client.challenges import ATTRIBUTES, attribute_file_name
from wsm.io.images import read_mask, write_label_png
from wsm.io.lock import locks_output
from wsm.selection import DataError, read_truth
from wsm.stages.refine import resize_prob
from wsm.learn.augment import SEGMENTER_AUGMENT, augment
from wsm.models.inputs import image_tensor, resize_square
from wsm.learn.datasets import LazyImages
from wsm.train.driver import Evaluation, Plan, Trained, execute
from wsm.train.options import NO_EVAL, TrainOptions, TrainSummary, as_train_error
from wsm.train.rows import check_no_overlap
from wsm.folders.run import RunFolder
from wsm.train.run_folder import check_run_folder, run_identity

__all__ = ["AttributeDataset", "MIN_AREA", "attribute_command", "attribute_rows", "attribute_weights", "channel_names",
           "clean_attribute", "run_attributes"]

LESION = "lesion"
IGNORE = 255
MIN_AREA = 5e-5          # attribute components smaller than this fraction of the image are noise (at least 4 px)


def channel_names(with_lesion: bool) -> tuple[str, ...]:
    return ATTRIBUTES + ((LESION,) if with_lesion else ())


def attribute_rows(data: Path | str, split: str) -> pd.DataFrame:
    """The images of ``split`` with their five attribute masks (``mask_<attribute>``) and, where there is one,
    the official lesion mask (``mask_lesion``, else NaN); an empty frame for ``none``."""
    from wsm.report.attributes import read_attribute_truths

    if split == NO_EVAL:
        return pd.DataFrame(columns=["isic_id", "file"])
    rows = read_attribute_truths(data, split)
    lesion = read_truth(data)[["isic_id", "mask_file"]].rename(columns={"mask_file": f"mask_{LESION}"})
    return rows.merge(lesion, on="isic_id", how="left")


class AttributeDataset(LazyImages):
    """Images with their attribute masks as a multi-label target.

    Items: ``(image (3, size, size) float32, target (K, size, size) float32)``, K = 5 attributes (+ the lesion);
    target values 0, 1, and 255 where the lesion channel has no mask. The channels move with the image under the
    DeepHealth augmentation (one geometric draw: they travel as the bits of one 16-bit map, nearest-neighbour).
    """

    def __init__(self, data_root: str | os.PathLike, rows: pd.DataFrame, size: int, with_lesion: bool = False,
                 augment: bool = False, seed: int = 0):
        super().__init__(data_root, size, augment, seed)
        self.channels = channel_names(with_lesion)
        self.rows = rows.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def read_target(self, index: int) -> np.ndarray:
        """(K, size, size) uint8: 0, 1, or IGNORE for a lesion channel without a mask; un-augmented."""
        row = self.rows.iloc[index]
        planes = []
        for name in self.channels:
            file = row.get(f"mask_{name}")
            if not isinstance(file, str):
                planes.append(np.full((self.size, self.size), IGNORE, np.uint8))
                continue
            mask = resize_square(read_mask(self.data_root / file), self.size, nearest=True)
            planes.append((mask > 128).astype(np.uint8))
        return np.stack(planes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._read_image(self.rows.at[index, "file"])
        target = self.read_target(index)
        if self.augment:
            unknown = target == IGNORE
            bits = np.zeros(target.shape[1:], np.uint16)
            for k in range(len(target)):     # bit k: channel k is 1; bit 8 + k: channel k is unknown
                bits |= (target[k] == 1).astype(np.uint16) << k
                bits |= unknown[k].astype(np.uint16) << (8 + k)
            image, bits = augment(self._rng(index), image, bits, cfg=SEGMENTER_AUGMENT)
            target = np.stack([np.where((bits >> (8 + k)) & 1, IGNORE, (bits >> k) & 1)
                               for k in range(len(target))]).astype(np.uint8)
        return image_tensor(image), torch.from_numpy(target.astype(np.float32))



def attribute_weights(data: Path | str, ids, with_lesion: bool) -> list[float]:
    """The loss's positive-pixel weight of each channel, from the attribute manifest's pixel counts of ``ids``
    (:func:`wsm.learn.losses.positive_weights`); 1 for the lesion channel."""
    from wsm.selection import read_attribute_manifest
    from wsm.learn.losses import positive_weights

    masks = read_attribute_manifest(data)
    masks = masks[masks["isic_id"].isin(set(ids))].drop_duplicates(["isic_id", "attribute"], keep="last")
    pixels = masks.assign(total=masks["width"].astype("int64") * masks["height"].astype("int64"))
    sums = pixels.groupby("attribute")[["positive_pixels", "total"]].sum().reindex(list(ATTRIBUTES), fill_value=0)
    weights = positive_weights(sums["positive_pixels"].tolist(), sums["total"].tolist())
    return weights + ([1.0] if with_lesion else [])


def clean_attribute(mask: np.ndarray, min_area: float = MIN_AREA, within: np.ndarray | None = None) -> np.ndarray:
    """The morphological clean-up of one predicted attribute map (bool (H, W)): a 3x3 opening, components smaller
    than ``min_area`` of the image (at least 4 pixels) dropped, and with ``within`` (the predicted lesion) only the
    pixels inside it kept."""
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if within is not None:
        m &= within.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(4, min_area * mask.size)
    keep[0] = False
    return keep[labels]


def _sigmoid_batches(model) -> Callable:
    def predict(batch: torch.Tensor) -> np.ndarray:
        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            return torch.sigmoid(model(batch.to(device))).float().cpu().numpy()
    return predict


def write_predictions(model, data: Path, rows: pd.DataFrame, size: int, batch_size: int, threshold: float,
                      channels: tuple[str, ...], out: Path, progress: bool = False) -> None:
    """The cleaned 0/255 attribute maps of ``rows``' images, at each image's size, into ``out``."""
    from wsm.io.images import image_size
    from wsm.io.progress import progress as progress_bar
    from wsm.train.evaluate import batched_predictions

    probs = batched_predictions(_sigmoid_batches(model), data, rows["file"].tolist(), size, batch_size)
    for (isic_id, file), prob in progress_bar(zip(zip(rows["isic_id"], rows["file"]), probs), total=len(rows),
                                              desc="predict", unit="img", enabled=progress):
        width, height = image_size(data / file)
        full = [resize_prob(p, (height, width)) > threshold for p in prob]
        lesion = clean_attribute(full[-1], min_area=0.001) if channels[-1] == LESION else None
        for name, mask in zip(ATTRIBUTES, full):
            pixels = clean_attribute(mask, within=lesion).astype(np.uint8) * 255
            write_label_png(out / attribute_file_name(isic_id, name), pixels)


def attribute_command(opts: TrainOptions, with_lesion: bool) -> str:
    """The `wsm train --task attributes` command line of these options (every value spelled out); the label, class
    and loss flags of lesion runs do not apply."""
    return opts.command(lead=["--task", "attributes", *(["--with-lesion"] if with_lesion else [])],
                        drop=("--labels", "--maps", "--num-classes", "--loss"))


@locks_output("opts.out", torchrun=True)
def run_attributes(opts: TrainOptions, with_lesion: bool = False) -> TrainSummary | None:
    """Train and evaluate an attribute network (see the module doc); the summary on rank 0, else None."""
    if opts.size % 32:
        raise DataError(f"--size must be a multiple of 32, got {opts.size}")
    if opts.loss not in ("", "focal"):
        raise DataError(f"--task attributes trains with the focal loss (one sigmoid per attribute); leave out "
                        f"--loss {opts.loss}")
    identity = run_identity(opts, task="attributes", with_lesion=with_lesion)
    command = attribute_command(opts, with_lesion)
    check_run_folder(opts.out, opts.resume, identity)
    train_rows = attribute_rows(opts.data, opts.split_train)
    test_rows = attribute_rows(opts.data, opts.eval_split)
    check_no_overlap(train_rows, test_rows)
    plan = Plan(opts, RunFolder(Path(opts.out)), identity, command, train_rows.assign(label_source="official"),
                test_rows)
    summary = execute(plan, lambda device, rank, world, start: _train(plan, with_lesion, device, start))
    if summary is not None:
        split = "SPLIT" if opts.eval_split == NO_EVAL else opts.eval_split
        summary.next_step = (f"score attribute maps the same way with `wsm report --attributes DIR --data "
                             f"{opts.data} --split {split} --out REPORT`")
    return summary


def _train(plan: Plan, with_lesion: bool, device: str, start: Callable[[dict], None]) -> Trained:
    from wsm.models.segmentation import create_segmenter
    from wsm.models.weights import weight_source
    from wsm.report.attributes import build_attribute_report
    from wsm.learn.loop import TrainConfig, train
    from wsm.learn.losses import MultiLabelFocal

    opts = plan.opts
    channels = channel_names(with_lesion)
    dataset = AttributeDataset(opts.data, plan.train_rows, opts.size, with_lesion, opts.augment, opts.seed)
    weights = attribute_weights(opts.data, plan.train_rows["isic_id"], with_lesion)
    with as_train_error():
        torch.manual_seed(opts.seed)
        model = create_segmenter(opts.arch, opts.encoder, num_classes=len(channels), pretrained=opts.pretrained,
                                 weights_file=opts.weights_file or None)
    cfg = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, weight_decay=opts.weight_decay,
                      num_workers=opts.workers, seed=opts.seed, device=device, amp=opts.amp,
                      accumulate=opts.accumulate)
    start({"train_config": dataclasses.asdict(cfg), "task": "attributes", "channels": list(channels),
           "loss": "multi-label focal (gamma 2)", "positive_weights": dict(zip(channels, weights)),
           "initial_weights": weight_source(model)})
    result = train(model, dataset, MultiLabelFocal(weights), cfg, plan.folder.root, progress=opts.progress)

    def evaluate(device: str) -> Evaluation:
        model.to(device)
        folder = plan.folder
        write_predictions(model, Path(opts.data), plan.test_rows, opts.size, opts.batch_size, opts.threshold,
                          channels, folder.predictions, progress=opts.progress)
        report = build_attribute_report(folder.predictions, opts.data, folder.root / "report", opts.eval_split,
                                        only_ids=plan.test_rows["isic_id"], command=plan.command,
                                        progress=opts.progress)
        scores = report.scores
        means = {"mean_jaccard": scores["mean_jaccard"], "micro_jaccard": scores["micro_average"]["jaccard"],
                 **{f"jaccard_{a}": scores[a]["jaccard"] for a in ATTRIBUTES}}
        per_image = pd.read_csv(folder.root / "report" / "per_image.csv")
        notes = [f"attribute maps: {folder.predictions}; report: {report.html}"]
        return Evaluation(means, per_image, extra={"attribute_scores": scores}, notes=notes)

    return Trained(result.epoch_losses, {"train": result.seconds}, evaluate)
