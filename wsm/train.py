"""`wsm train`: train a segmentation network on official masks, ISIC_WSM weak maps or both, and evaluate it on
the official masks of a held-out split.

RUN/ (the output folder) receives::

    config.json         the resolved options, the training config, the command that reproduces the run, versions
    train_ids.txt, eval_ids.txt   the images trained on (with their label source) and evaluated on
    checkpoint.pt, model.safetensors, train_config.json   from wsm.training (resume: rerun with --resume)
    metrics.json        mean official metrics over the eval images (per image, then mean), with the command,
                        seed, counts, losses and timings; per_image.csv holds the per-image numbers
    predictions/ISIC_x_segmentation.png   0/255 masks of the eval images (with save_predictions)

Which images train, with which labels (``labels``):

- ``official``: the official masks (0/255 -> 0/1) of the ``split_train`` split (a DATA split: train, val, test,
  labeled, all);
- a WSM folder (``wsm generate`` output, or any folder of ``ISIC_x.png`` label maps): the maps of the images of
  ``split_train`` and of the images that have no official mask at all (the archive at large); 255 is ignored by
  the loss;
- ``both`` (with ``wsm``): official masks where ``split_train`` has them, weak maps for the other images.

Images of other official splits are never trained on, whatever their maps, and a run whose training images
include an evaluation image is refused: the evaluation numbers stay honest. ``min_confidence`` keeps only the
weak maps whose confidence (the WSM manifest's) is at least that; official masks are always kept.

Fine-tuning (``init``, ``--init RUN``): the network starts from an earlier run's weights (e.g. trained on weak
maps, then fine-tuned on official masks). The earlier run must have the same network, and neither it nor any run
it started from may have trained on an evaluation image (RUN/init_ids.txt carries that lineage); a bare weights
file, whose training images are unknown, is accepted with a warning.

Multi-class maps (e.g. the five ISIC 2018 Task 2 dermoscopic structures plus background): ``num_classes`` K > 1,
``labels`` a folder of class-index PNGs (0..K-1, 255 ignored), loss ``ce`` (weighted by inverse class pixel
frequency) or ``focal``; evaluation is then per class (Jaccard, Dice) on the eval split's maps in that folder.

Under torchrun (WORLD_SIZE > 1) :func:`run` initialises the process group (gloo on CPU, nccl on CUDA, one GPU per
process from LOCAL_RANK), wsm.training does DDP, and only rank 0 evaluates and writes. ``batch_size`` is the
number of images per optimiser step over all processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from archive_client.atomic import write_text_atomic
from archive_client.transfer import sha256_file
from wsm.data import SPLIT_CHOICES, DataError, read_manifest, read_truth, select_split, with_truth
from wsm.errors import WsmError

__all__ = [
    "LABEL_CHOICES",
    "TrainError",
    "TrainOptions",
    "TrainSummary",
    "distributed",
    "evaluate_binary",
    "evaluate_classes",
    "load_model",
    "run",
    "training_rows",
    "weak_maps",
]

log = logging.getLogger(__name__)

LABEL_CHOICES = ("official", "both")   # or a folder of label maps
CONFIG = "config.json"
TRAIN_IDS = "train_ids.txt"
INIT_IDS = "init_ids.txt"          # images the runs this one was initialised from trained on
INIT_UNKNOWN = "init_unknown.txt"  # this run started from weights whose training images nobody recorded
METRICS = "metrics.json"
PER_IMAGE = "per_image.csv"
NO_EVAL = "none"


class TrainError(WsmError, ValueError):
    """Options `wsm train` cannot run with (unknown architecture, encoder or loss, a bad combination)."""


@contextlib.contextmanager
def _as_train_error() -> Iterator[None]:
    """Registry lookups raise ValueError listing the valid names: show them as a one-line CLI error."""
    try:
        yield
    except WsmError:
        raise
    except ValueError as err:
        raise TrainError(str(err)) from err


@dataclass(frozen=True)
class TrainOptions:
    data: Path                           # the DATA folder (images, manifests, official masks)
    out: Path                            # RUN folder
    labels: str = "official"             # official | both | a folder of label maps (WSM)
    wsm: Path | None = None              # the weak maps for labels = both
    min_confidence: float | None = None  # train only on weak maps whose manifest confidence is at least this
    arch: str = "unet"                   # a key of wsm.models.segmentation.ARCHITECTURES
    encoder: str = "tf_efficientnet_lite0"   # a timm model name
    num_classes: int = 1                 # 1: lesion map (sigmoid); K > 1: class-index maps (softmax)
    loss: str = ""                       # a key of wsm.losses.LOSSES; "": bce+dice for 1 class, ce for K
    split_train: str = "train"           # DATA split whose images train (see the module doc)
    eval_split: str = "val"              # DATA split whose official masks evaluate; "none": no evaluation
    epochs: int = 20
    size: int = 192                      # square working side in pixels (a multiple of 32)
    batch_size: int = 16                 # images per optimiser step (over all processes)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True                 # the DeepHealth recipe (wsm.augment)
    seed: int = 0
    device: str = "cpu"
    workers: int = 0                     # DataLoader worker processes
    amp: bool = True                     # float16 mixed precision on CUDA
    accumulate: int = 1                  # gradient accumulation chunks per batch
    pretrained: bool = True              # ImageNet encoder weights (wsm.models.weights); False: random
    weights_file: str = ""               # or from a local timm weights file
    init: str = ""                       # start from an earlier RUN's whole network (fine-tuning), see check_init
    resume: bool = False                 # continue the checkpoint in RUN (otherwise a RUN with one is refused)
    threshold: float = 0.5               # lesion where the probability is above this
    save_predictions: bool = False       # write RUN/predictions/ISIC_x_segmentation.png (0/255)
    progress: bool = True

    def resolved_loss(self) -> str:
        return self.loss or ("bce+dice" if self.num_classes == 1 else "ce")

    def command(self) -> str:
        """The `wsm train` command line that reproduces these options (every value spelled out)."""
        args = ["wsm", "train", "--data", str(self.data), "--out", str(self.out), "--labels", self.labels]
        if self.wsm is not None:
            args += ["--wsm", str(self.wsm)]
        if self.min_confidence is not None:
            args += ["--min-confidence", str(self.min_confidence)]
        args += ["--arch", self.arch, "--encoder", self.encoder, "--num-classes", str(self.num_classes),
                 "--loss", self.resolved_loss(), "--split-train", self.split_train, "--eval-split", self.eval_split,
                 "--epochs", str(self.epochs), "--size", str(self.size), "--batch-size", str(self.batch_size),
                 "--lr", str(self.lr), "--weight-decay", str(self.weight_decay), "--seed", str(self.seed),
                 "--device", self.device]
        if not self.augment:
            args.append("--no-augment")
        if self.accumulate != 1:
            args += ["--accumulate", str(self.accumulate)]
        if not self.pretrained:
            args.append("--no-pretrained")
        if self.weights_file:
            args += ["--weights", self.weights_file]
        if self.init:
            args += ["--init", self.init]
        if self.threshold != 0.5:
            args += ["--threshold", str(self.threshold)]
        return shlex.join(args)


@dataclass
class TrainSummary:
    out: Path
    metrics: dict = field(default_factory=dict)     # the mean metrics (empty without evaluation)
    n_train: int = 0
    n_eval: int = 0
    losses: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)       # further lines to show (e.g. MB-DCNN's coarse network)

    def lines(self) -> list[str]:
        out = [f"trained on {self.n_train} images; run folder {self.out}"]
        if self.losses:
            out.append("epoch losses: " + ", ".join(f"{x:.4f}" for x in self.losses))
        if self.metrics:
            shown = {k: v for k, v in self.metrics.items() if isinstance(v, float)}
            out.append(f"eval on {self.n_eval} images: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        out += self.notes
        out.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        return out


# --------------------------------------------------------------------------------------------------- rows

def weak_maps(folder: Path | str, min_confidence: float | None = None) -> pd.DataFrame:
    """``isic_id`` and absolute ``label_file`` of every label map in a WSM folder (its manifest's ``ok`` rows, or
    every ``*.png`` when it has no manifest); with ``min_confidence``, only the maps whose manifest confidence is
    at least that."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"label folder {folder} does not exist; give `official`, `both` (with --wsm) or the folder "
                        "`wsm generate` wrote")
    manifest = folder / "manifest.parquet"
    if manifest.exists():
        columns = ["isic_id", "path", "status"]
        if min_confidence is not None:
            if "confidence" not in pq.read_schema(manifest).names:
                raise DataError(f"{manifest} has no confidence column (not written by `wsm generate`); "
                                "leave out --min-confidence")
            columns.append("confidence")
        table = pd.read_parquet(manifest, columns=columns)
        table = table[(table["status"] == "ok") & table["path"].notna()]
        if min_confidence is not None:
            table = table[table["confidence"] >= min_confidence]
        files = [str((folder / p).resolve()) for p in table["path"]]
        out = pd.DataFrame({"isic_id": table["isic_id"].astype(str).tolist(), "label_file": files})
    else:
        if list(folder.glob("manifest-part-*.parquet")):
            raise DataError(f"{folder} holds shard manifests but no manifest.parquet; join them first with "
                            f"`wsm generate --out {folder} --merge`")
        if min_confidence is not None:
            raise DataError(f"--min-confidence needs the confidences of {folder}/manifest.parquet "
                            "(written by `wsm generate`); this folder has none")
        paths = sorted(folder.glob("*.png"))
        out = pd.DataFrame({"isic_id": [p.stem for p in paths], "label_file": [str(p.resolve()) for p in paths]})
    if out.empty:
        hint = f" with confidence >= {min_confidence}" if min_confidence is not None else ""
        raise DataError(f"{folder} holds no label maps (ISIC_x.png){hint}")
    return out.drop_duplicates("isic_id").reset_index(drop=True)


def _check_split(name: str, what: str, allow_none: bool = False) -> None:
    choices = SPLIT_CHOICES + ((NO_EVAL,) if allow_none else ())
    if name not in choices:
        raise DataError(f"unknown {what} {name!r}; choose one of {', '.join(choices)}")


def training_rows(data: Path | str, labels: str, split_train: str = "train", wsm: Path | str | None = None,
                  min_confidence: float | None = None) -> pd.DataFrame:
    """The training images with their labels: columns isic_id, file, label_file, label_kind (mask | labels),
    label_source (official | weak), sorted by isic_id. See the module doc for which images take part."""
    _check_split(split_train, "training split")
    if min_confidence is not None and labels == "official":
        raise DataError("--min-confidence selects weak maps; it needs --labels both or --labels WSM_DIR")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise DataError(f"--min-confidence must be within 0..1 (the WSM manifest's confidence), got {min_confidence}")
    rows = with_truth(read_manifest(data), read_truth(data))
    in_split = select_split(rows, split_train)
    official = in_split[in_split["mask_file"].notna()]
    official = pd.DataFrame({"isic_id": official["isic_id"], "file": official["file"],
                             "label_file": official["mask_file"], "label_kind": "mask", "label_source": "official"})
    if labels == "official":
        out = official
    else:
        if labels == "both":
            if wsm is None:
                raise DataError("--labels both needs the weak maps: --wsm WSM_DIR (the folder `wsm generate` wrote)")
            folder = Path(wsm)
        else:
            folder = Path(labels)
        maps = weak_maps(folder, min_confidence)
        candidates = pd.concat([in_split, select_split(rows, "unlabeled")]).drop_duplicates("isic_id")
        weak = candidates.merge(maps, on="isic_id", how="inner")
        weak = pd.DataFrame({"isic_id": weak["isic_id"], "file": weak["file"], "label_file": weak["label_file"],
                             "label_kind": "labels", "label_source": "weak"})
        if labels == "both":
            weak = weak[~weak["isic_id"].isin(official["isic_id"])]
            out = pd.concat([official, weak])
        else:
            out = weak
    out = out.sort_values("isic_id", kind="stable").reset_index(drop=True)
    if out.empty:
        hint = ("no image of that split has an official mask" if labels == "official"
                else "no image of that split (nor any image without an official mask) has a map in the folder")
        raise DataError(f"nothing to train on with --labels {labels} --split-train {split_train}: {hint}")
    return out


def eval_rows(data: Path | str, eval_split: str, class_maps: Path | str | None = None) -> pd.DataFrame:
    """The evaluation images: isic_id, file, mask_file (official masks of ``eval_split``), or with ``class_maps``
    (multi-class) the eval split's maps in that folder as ``mask_file``."""
    _check_split(eval_split, "evaluation split", allow_none=True)
    if eval_split == NO_EVAL:
        return pd.DataFrame(columns=["isic_id", "file", "mask_file"])
    rows = select_split(with_truth(read_manifest(data), read_truth(data)), eval_split)
    if class_maps is not None:
        rows = rows.drop(columns=["mask_file"]).merge(
            weak_maps(class_maps).rename(columns={"label_file": "mask_file"}), on="isic_id", how="inner")
    rows = rows[rows["mask_file"].notna()]
    if rows.empty:
        log.warning("--eval-split %s has no official mask in %s: this run will not be evaluated (choose a split "
                    "with masks, or --eval-split none to say so)", eval_split, data)
    return rows[["isic_id", "file", "mask_file"]].sort_values("isic_id").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------- evaluation

class _Inputs:
    """Eval inputs: images at the working size, normalised, with an optional guide channel (0..255 -> 0..1)."""

    def __init__(self, data: Path, files: list[str], size: int, guide_files: list[str] | None = None):
        self.data, self.files, self.size, self.guide_files = Path(data), files, size, guide_files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torch

        from wsm.augment import normalize
        from wsm.datasets import resize_square
        from wsm.imageio import read_image, read_mask

        image = resize_square(read_image(self.data / self.files[index], min_side=self.size), self.size)
        x = torch.from_numpy(np.ascontiguousarray(normalize(image).transpose(2, 0, 1)))
        if self.guide_files is not None:
            guide = resize_square(read_mask(self.data / self.guide_files[index]), self.size)
            x = torch.cat([x, torch.from_numpy(guide.astype(np.float32) / 255.0)[None]])
        return x


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


def _to_size(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    if prob.shape == shape:
        return prob
    return cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def evaluate_binary(predict: Callable, data: Path, rows: pd.DataFrame, size: int, batch_size: int,
                    threshold: float = 0.5, guide_files: list[str] | None = None,
                    predictions_dir: Path | None = None, progress: bool = False) -> tuple[dict, list[dict]]:
    """Official metrics of lesion predictions against the official masks (per image, then mean).

    ``predict`` maps a batch to (B, size, size) lesion probabilities; each is resized (bilinear) to its official
    mask's size and thresholded (> threshold) before scoring with :func:`wsm.metrics.score_mask`.
    Returns (means with n_images, per-image rows with isic_id).
    """
    from tqdm import tqdm

    from wsm.imageio import read_mask, write_label_png
    from wsm.metrics import aggregate, score_mask

    data = Path(data)
    per_image = []
    preds = batched_predictions(predict, data, rows["file"].tolist(), size, batch_size, guide_files)
    for (isic_id, mask_file), prob in tqdm(zip(zip(rows["isic_id"], rows["mask_file"]), preds), total=len(rows),
                                           desc="evaluate", unit="img", disable=not progress, file=sys.stderr):
        truth = read_mask(data / mask_file)
        pred = np.where(_to_size(np.asarray(prob, np.float32), truth.shape) > threshold, 255, 0).astype(np.uint8)
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
    from wsm.imageio import read_mask
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
    return np.stack([_to_size(p.astype(np.float32), shape) for p in probs]).argmax(axis=0)


# --------------------------------------------------------------------------------------------------- DDP

@contextlib.contextmanager
def distributed(device: str) -> Iterator[tuple[str, int, int]]:
    """Under torchrun (WORLD_SIZE > 1): init the process group (nccl on CUDA, gloo on CPU; the GPU of LOCAL_RANK)
    and destroy it on the way out. Yields (device, rank, world_size); without torchrun (device, 0, 1)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield device, 0, 1
        return
    if dist.is_initialized():
        yield device, dist.get_rank(), dist.get_world_size()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device, dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------- driver

def _versions() -> dict:
    from wsm.bundle import versions

    return versions()


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _options_dict(opts) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}


# Options that may change when a run is resumed (they do not change what is trained).
_RESUMABLE_CHANGES = frozenset({"resume", "progress", "workers", "device", "save_predictions", "threshold",
                                "eval_split", "out"})


def run_identity(opts: TrainOptions, **extra) -> dict:
    """What defines a run's training: a resumed run must have the same (checked by :func:`check_run_folder`)."""
    options = {k: v for k, v in _options_dict(opts).items() if k not in _RESUMABLE_CHANGES}
    return json.loads(json.dumps({**options, **extra}, sort_keys=True, default=str))


def check_run_folder(out: Path, resume: bool, identity: dict | None = None) -> None:
    """A RUN folder that holds a checkpoint (of any stage) is only continued with resume=True, and only with the
    settings it was started with (``identity``, compared with the one in its config.json)."""
    out = Path(out)
    if not (out.is_dir() and any(out.rglob("checkpoint.pt"))):
        return
    if not resume:
        raise WsmError(f"{out} already holds a training run (checkpoint.pt); pass --resume to continue it, or "
                       "choose another --out")
    if identity is None or not (out / CONFIG).exists():
        return
    saved = json.loads((out / CONFIG).read_text(encoding="utf8")).get("identity")
    if saved is None:
        return
    # an option added to wsm after the run was started has its default there
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.default is not dataclasses.MISSING}
    diff = {k: (saved.get(k, defaults.get(k)), identity.get(k, defaults.get(k)))
            for k in sorted(set(saved) | set(identity))}
    diff = {k: (a, b) for k, (a, b) in diff.items() if a != b}
    if diff:
        raise WsmError(f"{out} was trained with other settings (run, now): {diff}; resume with the same settings, "
                       "or choose another --out")


def write_ids(out: Path, train: pd.DataFrame, evaluation: pd.DataFrame,
              inherited: set[str] | None = frozenset()) -> None:
    """The images this run trained and evaluated on, and those its starting weights learnt from (``inherited``;
    None: unknown, which every run started from this one will inherit)."""
    if inherited is None:
        write_text_atomic(out / INIT_UNKNOWN, "this run started from weights with no record of their training "
                                              "images (--init with a bare file)\n")
    elif inherited:
        write_text_atomic(out / INIT_IDS, "".join(f"{i}\n" for i in sorted(inherited)))
    write_text_atomic(out / TRAIN_IDS, "".join(f"{i}\t{s}\n" for i, s in zip(train["isic_id"],
                                                                                   train["label_source"])))
    write_text_atomic(out / "eval_ids.txt", "".join(f"{i}\n" for i in evaluation["isic_id"]))


def check_no_overlap(train: pd.DataFrame, evaluation: pd.DataFrame) -> None:
    both = sorted(set(train["isic_id"]) & set(evaluation["isic_id"]))
    if both:
        raise DataError(f"{len(both)} evaluation images are also training images (e.g. {both[:3]}); choose a "
                        "--split-train that excludes the --eval-split (or --eval-split none)")


def init_weights_file(init: Path | str) -> Path:
    """The weights file of ``--init`` (a RUN folder or a .safetensors file)."""
    from wsm.training import WEIGHTS_NAME

    init = Path(init)
    weights = init / WEIGHTS_NAME if init.is_dir() else init
    if not weights.is_file():
        raise TrainError(f"--init {init}: no weights there (give a finished `wsm train` RUN folder, which holds "
                         f"{WEIGHTS_NAME}, or a .safetensors file)")
    return weights


def trained_ids(run_dir: Path) -> set[str] | None:
    """Every image the network of a RUN folder learnt from: its own training images and those of the runs it was
    initialised from (``INIT_IDS``); for a `wsm fit` bundle, the images whose masks fit used; None when the folder
    keeps no record, or its run started from weights that kept none (``INIT_UNKNOWN``)."""
    from wsm.bundle import PROVENANCE

    if not (run_dir / TRAIN_IDS).exists():
        if not (run_dir / PROVENANCE).exists():
            return None
        fitted = json.loads((run_dir / PROVENANCE).read_text(encoding="utf8")).get("fit_mask_ids")
        return set(fitted) if fitted is not None else None
    if (run_dir / INIT_UNKNOWN).exists():
        return None
    ids = set()
    for name in (TRAIN_IDS, INIT_IDS):
        if (run_dir / name).exists():
            ids |= {line.split("\t", 1)[0] for line in (run_dir / name).read_text(encoding="utf8").splitlines()}
    return ids


def check_init(weights: Path, opts: TrainOptions, evaluation: pd.DataFrame) -> set[str] | None:
    """Check the run ``weights`` comes from: the same network (arch, encoder, classes), and no evaluation image
    among the images it (or any run before it) trained on. Returns those images, or None (with a warning) when
    the weights' folder is not a `wsm train` RUN and no such check is possible."""
    run_dir = weights.parent
    if (run_dir / CONFIG).exists():
        earlier = json.loads((run_dir / CONFIG).read_text(encoding="utf8")).get("options", {})
        differ = {k: (earlier.get(k), getattr(opts, k)) for k in ("arch", "encoder", "num_classes")
                  if earlier.get(k) != getattr(opts, k)}
        if differ:
            raise TrainError(f"--init {opts.init} holds another network (its value, this run's): {differ}")
    seen_before = trained_ids(run_dir)
    if seen_before is None:
        log.warning("--init %s: nothing in %s shows which images those weights (or the weights they started "
                    "from) learnt from; the evaluation is honest only if none of the %d evaluation images was "
                    "among them", opts.init, run_dir, len(evaluation))
        return None
    seen = sorted(seen_before & set(evaluation["isic_id"]))
    if seen:
        raise DataError(f"--init {opts.init} (or a run it started from) was trained on {len(seen)} of this run's "
                        f"evaluation images (e.g. {seen[:3]}); its numbers would not be honest: choose another "
                        "--eval-split")
    return seen_before


def _load_init(model, weights: Path, opts: TrainOptions) -> None:
    from wsm.training import load_weights

    try:
        load_weights(model, weights)
    except Exception as err:     # missing, unexpected or mis-shaped tensors; not a safetensors file
        raise TrainError(f"--init {weights} could not be loaded into a {opts.arch} / {opts.encoder} network with "
                         f"{opts.num_classes} class(es): {str(err).splitlines()[0]}") from err


def run(opts: TrainOptions) -> TrainSummary | None:
    """Train and evaluate; see the module doc. Returns the summary on rank 0, None on the other ranks."""
    import torch

    from wsm.datasets import LabelMapDataset
    from wsm.losses import create_loss
    from wsm.models.segmentation import create_segmenter, predict_prob
    from wsm.models.weights import weight_source
    from wsm.training import TrainConfig, class_weights, train

    started = time.perf_counter()
    out = Path(opts.out)
    if opts.num_classes < 1:
        raise DataError(f"--num-classes must be at least 1, got {opts.num_classes}")
    if opts.num_classes > 1 and opts.labels in LABEL_CHOICES:
        raise DataError(f"--num-classes {opts.num_classes} needs --labels DIR, a folder of class-index maps; the "
                        "official masks are lesion / background only")
    if opts.size % 32:
        raise DataError(f"--size must be a multiple of 32 (the encoders' output stride), got {opts.size}; "
                        f"e.g. {max(32, round(opts.size / 32) * 32)}")
    if opts.init and opts.weights_file:
        raise TrainError("--init replaces every weight; leave out --weights")
    init = init_weights_file(opts.init) if opts.init else None
    # the starting weights by content, not by path: a resumed run must start from the same ones
    identity = run_identity(opts, **({"init": sha256_file(init)} if init else {}))
    check_run_folder(out, opts.resume, identity)
    train_rows = training_rows(opts.data, opts.labels, opts.split_train, opts.wsm, opts.min_confidence)
    class_maps = Path(opts.labels) if opts.num_classes > 1 else None
    test_rows = eval_rows(opts.data, opts.eval_split, class_maps)
    check_no_overlap(train_rows, test_rows)
    inherited = check_init(init, opts, test_rows) if init else frozenset()

    with distributed(opts.device) as (device, rank, world):
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        dataset = LabelMapDataset(opts.data, train_rows, opts.size, augment=opts.augment, seed=opts.seed,
                                  num_classes=opts.num_classes)
        weights = None
        loss_name = opts.resolved_loss()
        if opts.num_classes > 1 and loss_name in ("ce", "focal"):
            weights = class_weights(dataset.class_pixel_counts()[:opts.num_classes])
        with _as_train_error():
            loss_fn = create_loss(loss_name, opts.num_classes, class_weights=weights)
            torch.manual_seed(opts.seed)
            model = create_segmenter(opts.arch, opts.encoder, num_classes=opts.num_classes,
                                     pretrained=opts.pretrained and init is None,   # --init replaces every weight
                                     weights_file=opts.weights_file or None)
            if init is not None:
                _load_init(model, init, opts)
        cfg = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, weight_decay=opts.weight_decay,
                          num_workers=opts.workers, seed=opts.seed, device=device, amp=opts.amp,
                          accumulate=opts.accumulate)
        counts = {"n_train": len(train_rows),
                  "n_train_official": int((train_rows["label_source"] == "official").sum()),
                  "n_train_weak": int((train_rows["label_source"] == "weak").sum()), "n_eval": len(test_rows)}
        config = {"options": _options_dict(opts), "identity": identity, "train_config": dataclasses.asdict(cfg),
                  "loss": loss_name,
                  "class_weights": None if weights is None else weights.tolist(), "command": opts.command(),
                  "argv": sys.argv, "seed": opts.seed, "world_size": world, "versions": _versions(),
                  "initial_weights": {"init": str(init)} if init else weight_source(model), **counts}
        if rank == 0:
            _write_json(out / CONFIG, config)
            write_ids(out, train_rows, test_rows, inherited)
        result = train(model, dataset, loss_fn, cfg, out, progress=opts.progress)
        if rank != 0:
            return None
    seconds = {"train": result.seconds}
    summary = TrainSummary(out, n_train=len(train_rows), n_eval=len(test_rows), losses=result.epoch_losses)
    if len(test_rows):
        t0 = time.perf_counter()
        model.to(device)
        if opts.num_classes == 1:
            means, per_image = evaluate_binary(
                lambda x: predict_prob(model, x), opts.data, test_rows, opts.size, opts.batch_size, opts.threshold,
                predictions_dir=out / "predictions" if opts.save_predictions else None, progress=opts.progress)
        else:
            means, per_image = evaluate_classes(lambda x: predict_prob(model, x), opts.data, test_rows, opts.size,
                                                opts.batch_size, opts.num_classes)
        summary.metrics = means
        seconds["eval"] = time.perf_counter() - t0
        pd.DataFrame(per_image).to_csv(out / PER_IMAGE, index=False)
    seconds["total"] = time.perf_counter() - started
    summary.seconds = seconds
    _write_json(out / METRICS, {"command": opts.command(), "seed": opts.seed, "eval_split": opts.eval_split,
                                "threshold": opts.threshold, "metrics": summary.metrics, **counts,
                                "train_losses": result.epoch_losses, "resumed_from_epoch": result.resumed_from,
                                "seconds": seconds, "config": config})
    return summary


def load_model(run_dir: Path | str, device: str = "cpu"):
    """The trained network of a RUN folder (rebuilt from config.json, weights from model.safetensors), in eval
    mode, and its config."""
    from wsm.models.segmentation import create_segmenter
    from wsm.training import WEIGHTS_NAME, load_weights

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG
    if not config_path.exists():
        raise WsmError(f"{run_dir} has no {CONFIG}: not a `wsm train` run folder")
    config = json.loads(config_path.read_text(encoding="utf8"))
    opts = config["options"]
    model = create_segmenter(opts["arch"], opts["encoder"], num_classes=opts["num_classes"]).to(device)
    load_weights(model, run_dir / WEIGHTS_NAME)
    return model.eval(), config
