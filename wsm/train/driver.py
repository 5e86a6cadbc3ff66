"""`wsm train`: train a segmentation network on official masks, ISIC_WSM weak maps or both, and evaluate it on
the official masks of a held-out split.

Which images train, with which labels (``labels``; :mod:`wsm.train.rows`):

- ``official``: the official masks (0/255 -> 0/1) of the ``split_train`` split (a DATA split: train, val, test,
  labeled, all; or several joined by commas, e.g. train,val);
- a WSM folder (``wsm generate`` output, or any folder of ``ISIC_x.png`` label maps): the maps of the images of
  ``split_train`` and of the images that have no official mask at all (the archive at large); 255 is ignored by
  the loss;
- ``both`` (with ``wsm``): official masks where ``split_train`` has them, weak maps for the other images.

Images of other official splits are never trained on, whatever their maps, and a run whose training images
include an evaluation image is refused: the evaluation numbers stay honest. ``min_confidence`` keeps only the
weak maps whose confidence (the WSM manifest's) is at least that; official masks are always kept.

Fine-tuning (``init``, ``--init RUN``): the network starts from an earlier run's weights (e.g. trained on weak
maps, then fine-tuned on official masks). The earlier run must have the same network, and neither it nor any run
it started from may have trained on an evaluation image (:mod:`wsm.folders.run` keeps that lineage,
:mod:`wsm.train.run_folder` checks it); a bare weights file, whose training images are unknown, is accepted with a
warning.

Multi-class maps (e.g. the five ISIC 2018 Task 2 dermoscopic structures plus background): ``num_classes`` K > 1,
``labels`` a folder of class-index PNGs (0..K-1, 255 ignored), loss ``ce`` (weighted by inverse class pixel
frequency) or ``focal``; evaluation is then per class (Jaccard, Dice) on the eval split's maps in that folder.

Every recipe shares one skeleton (:func:`plan_run`, then :func:`execute`): the checks and image choice before
anything is written; under torchrun (WORLD_SIZE > 1) the process group (gloo on CPU, nccl on CUDA, one GPU per
process from LOCAL_RANK), DDP in :mod:`wsm.learn.loop`, and only rank 0 evaluates and writes; config.json,
metrics.json and per_image.csv in the RUN folder. A recipe supplies only how its networks train and predict: the
single network here (:func:`run`), MB-DCNN's three in :mod:`wsm.train.mbdcnn`. ``batch_size`` is the number of
images per optimiser step over all processes.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wsm.errors import WsmError
from wsm.io.atomic import json_safe, write_json, write_text_atomic
from wsm.io.hashing import sha256_file
from wsm.io.lock import locks_output
from wsm.io.provenance import versions
from wsm.selection import DataError
from wsm.train.distributed import distributed
from wsm.train.evaluate import evaluate_binary, evaluate_classes
from wsm.train.options import LABEL_CHOICES, TrainError, TrainOptions, TrainSummary, as_train_error
from wsm.train.rows import check_no_overlap, eval_rows, training_rows
from wsm.folders.run import RunFolder
from wsm.train.run_folder import (check_init, check_run_folder, check_teacher, init_weights_file,
                                  options_dict, run_identity, write_start)

__all__ = ["Evaluation", "Plan", "Trained", "execute", "load_model", "plan_run", "run"]


@dataclass
class Plan:
    """One run, decided before anything is written: its options, folder, identity and images."""
    opts: TrainOptions
    folder: RunFolder
    identity: dict
    command: str
    train_rows: pd.DataFrame
    test_rows: pd.DataFrame
    inherited: set[str] | None = frozenset()      # what the starting weights learnt from (None: unknown)
    teacher: set[str] | None = frozenset()        # whose masks fed the weak maps' teacher (None: unknown)
    extra_counts: dict = field(default_factory=dict)

    def counts(self) -> dict:
        source = self.train_rows["label_source"]
        return {"n_train": len(self.train_rows), "n_train_official": int((source == "official").sum()),
                "n_train_weak": int((source == "weak").sum()), **self.extra_counts, "n_eval": len(self.test_rows)}


@dataclass
class Evaluation:
    means: dict                          # mean metrics over the eval images
    per_image: pd.DataFrame              # one row per eval image (per_image.csv)
    extra: dict = field(default_factory=dict)    # further metrics.json entries (e.g. another network's means)
    notes: list = field(default_factory=list)    # further summary lines


@dataclass
class Trained:
    """What a recipe's training hands back: its losses and timings, and how to evaluate what it trained."""
    losses: list                                 # the final network's epoch losses
    seconds: dict
    evaluate: Callable[[str], Evaluation]        # called on rank 0 with the device, when there are eval images
    extra: dict = field(default_factory=dict)    # further metrics.json entries (e.g. every network's losses)


def plan_run(opts: TrainOptions, identity: dict, command: str, class_maps: Path | None = None) -> Plan:
    """Check the RUN folder and choose the images: no evaluation image may train (see the module doc)."""
    check_run_folder(opts.out, opts.resume, identity)
    train_rows = training_rows(opts.data, opts.labels, opts.split_train, opts.wsm, opts.min_confidence,
                               opts.min_predicted_jaccard)
    test_rows = eval_rows(opts.data, opts.eval_split, class_maps)
    check_no_overlap(train_rows, test_rows)
    weak = (train_rows["label_source"] == "weak").any()
    maps = Path(opts.wsm) if opts.labels == "both" else Path(opts.labels)
    teacher = check_teacher(maps, test_rows) if weak and class_maps is None else frozenset()
    return Plan(opts, RunFolder(Path(opts.out)), identity, command, train_rows, test_rows, teacher=teacher)


def execute(plan: Plan, train_networks: Callable[..., Trained]) -> TrainSummary | None:
    """Run a recipe in the shared skeleton (see the module doc); returns the summary on rank 0, None elsewhere.

    ``train_networks(device, rank, world, start)`` trains the recipe's networks; it calls ``start(config)`` once,
    before its first training step, with its own config.json entries: rank 0 then writes config.json and the id
    lists, so an interrupted run always says what it was.
    """
    opts, folder = plan.opts, plan.folder
    started = time.perf_counter()
    config: dict = {}

    with distributed(opts.device) as (device, rank, world):
        def start(own: dict) -> None:
            config.update(options=options_dict(opts), identity=plan.identity, command=plan.command,
                          argv=sys.argv, seed=opts.seed, world_size=world, versions=versions(), **own,
                          **plan.counts())
            if rank == 0:
                write_start(folder, config, plan.train_rows, plan.test_rows, plan.inherited, plan.teacher)

        trained = train_networks(device, rank, world, start)
        if rank != 0:
            return None
    seconds = dict(trained.seconds)
    summary = TrainSummary(folder.root, n_train=len(plan.train_rows), n_eval=len(plan.test_rows),
                           losses=trained.losses)
    extra = dict(trained.extra)
    if len(plan.test_rows):
        t0 = time.perf_counter()
        evaluation = trained.evaluate(device)
        summary.metrics = evaluation.means
        summary.notes += evaluation.notes
        extra.update(evaluation.extra)
        write_text_atomic(folder.per_image, evaluation.per_image.to_csv(index=False))
        seconds["eval"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    summary.seconds = seconds
    write_json(folder.metrics, json_safe({"command": plan.command, "seed": opts.seed, "eval_split": opts.eval_split,
                                          "threshold": opts.threshold, "metrics": summary.metrics, **plan.counts(),
                                          "train_losses": trained.losses, "seconds": seconds, "config": config,
                                          **extra}))
    return summary


def _check_options(opts: TrainOptions) -> None:
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


def _load_init(model, weights: Path, opts: TrainOptions) -> None:
    from wsm.learn.loop import load_weights
    from wsm.models.card import NetworkCardError, card_of, checked_card

    wanted = card_of(model)
    try:      # a file that describes its network (wsm.models.card) must hold this run's; any size may fine-tune
        if wanted is not None:
            checked_card(weights, wanted, "this run", source=f"--init {weights}", ignore=("input_size",))
    except NetworkCardError as err:
        raise TrainError(str(err)) from None
    try:
        load_weights(model, weights)
    except Exception as err:     # missing, unexpected or mis-shaped tensors; not a safetensors file
        raise TrainError(f"--init {weights} could not be loaded into a {opts.arch} / {opts.encoder} network with "
                         f"{opts.num_classes} class(es): {str(err).splitlines()[0]}") from err


@locks_output("opts.out", torchrun=True)
def run(opts: TrainOptions) -> TrainSummary | None:
    """Train one segmentation network and evaluate it; see the module doc. The summary on rank 0, else None."""
    _check_options(opts)
    init = init_weights_file(opts.init) if opts.init else None
    # the starting weights by content, not by path: a resumed run must start from the same ones
    identity = run_identity(opts, **({"init": sha256_file(init)} if init else {}))
    plan = plan_run(opts, identity, opts.command(), Path(opts.labels) if opts.num_classes > 1 else None)
    plan.inherited = check_init(init, opts, plan.test_rows) if init else frozenset()
    return execute(plan, lambda device, rank, world, start: _train_one(plan, init, device, start))


def _train_one(plan: Plan, init: Path | None, device: str, start: Callable[[dict], None]) -> Trained:
    import torch

    from wsm.models.segmentation import create_segmenter, predict_prob
    from wsm.models.weights import weight_source
    from wsm.learn.datasets import LabelMapDataset
    from wsm.learn.loop import TrainConfig, class_weights, train
    from wsm.learn.losses import create_loss

    opts = plan.opts
    dataset = LabelMapDataset(opts.data, plan.train_rows, opts.size, seed=opts.seed, num_classes=opts.num_classes,
                              **opts.augmentation())
    weights = None
    loss_name = opts.resolved_loss()
    if opts.num_classes > 1 and loss_name in ("ce", "focal"):
        weights = class_weights(dataset.class_pixel_counts()[:opts.num_classes])
    with as_train_error():
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
    start({"train_config": dataclasses.asdict(cfg), "loss": loss_name,
           "class_weights": None if weights is None else weights.tolist(),
           "initial_weights": {"init": str(init)} if init else weight_source(model)})
    result = train(model, dataset, loss_fn, cfg, plan.folder.root, progress=opts.progress)

    def evaluate(device: str) -> Evaluation:
        model.to(device)
        predict = lambda x: predict_prob(model, x)  # noqa: E731
        if opts.num_classes == 1:
            means, per_image = evaluate_binary(
                predict, opts.data, plan.test_rows, opts.size, opts.batch_size, opts.threshold,
                predictions_dir=plan.folder.predictions if opts.save_predictions else None, progress=opts.progress)
        else:
            means, per_image = evaluate_classes(predict, opts.data, plan.test_rows, opts.size, opts.batch_size,
                                                opts.num_classes)
        return Evaluation(means, pd.DataFrame(per_image))

    return Trained(result.epoch_losses, {"train": result.seconds}, evaluate,
                   extra={"resumed_from_epoch": result.resumed_from})


def load_model(run_dir: Path | str, device: str = "cpu"):
    """The trained network of a RUN folder, in eval mode, and its config (an attribute run's outputs are
    independent sigmoids, named by its ``channels``).

    The network is built from model.safetensors' own description (wsm.models.card), which must agree with
    config.json; a file written before descriptions holds config.json's network."""
    from wsm.learn.loop import load_network
    from wsm.models.card import NetworkCardError

    folder = RunFolder(Path(run_dir))
    config = folder.read_config()
    if config is None:
        raise WsmError(f"{run_dir} has no {folder.config.name}: not a `wsm train` run folder")
    try:
        model = load_network(folder.weights, folder.recorded_card(config), f"its {folder.config.name}").to(device)
    except NetworkCardError as err:
        raise WsmError(str(err)) from None
    return model.eval(), config
