"""The RUN folder `wsm train` writes, and its lineage: which images the network learnt from.

    RUN/
      config.json                   the resolved options, the training config, the command, versions, identity
      train_ids.txt, eval_ids.txt   the images trained on (with their label source) and evaluated on
      init_ids.txt / init_unknown.txt   what the starting weights (``--init``) learnt from, or that nobody knows
      checkpoint.pt, model.safetensors, train_config.json   from :mod:`wsm.train.loop` (per stage for MB-DCNN)
      metrics.json, per_image.csv   the evaluation (mean and per image)
      predictions/ISIC_x_segmentation.png   0/255 masks of the eval images (with save_predictions)

A run's *identity* (its options less those that change nothing it trains) is recorded in config.json; a resumed
run must have the same. An ``--init`` run must come from the same network, and neither it nor any run before it
may have trained on an evaluation image.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wsm.errors import WsmError
from wsm.io.atomic import write_json, write_text_atomic
from wsm.selection import DataError
from wsm.train.loop import CHECKPOINT_NAME, WEIGHTS_NAME
from wsm.train.options import TrainError, TrainOptions

log = logging.getLogger(__name__)

# Options that may change when a run is resumed (they do not change what is trained).
_RESUMABLE_CHANGES = frozenset({"resume", "progress", "workers", "device", "save_predictions", "threshold",
                                "eval_split", "out"})


@dataclass(frozen=True)
class RunFolder:
    root: Path

    config = property(lambda self: self.root / "config.json")
    train_ids = property(lambda self: self.root / "train_ids.txt")
    eval_ids = property(lambda self: self.root / "eval_ids.txt")
    init_ids = property(lambda self: self.root / "init_ids.txt")          # what the starting weights learnt from
    init_unknown = property(lambda self: self.root / "init_unknown.txt")  # started from weights with no record
    metrics = property(lambda self: self.root / "metrics.json")
    per_image = property(lambda self: self.root / "per_image.csv")
    predictions = property(lambda self: self.root / "predictions")
    weights = property(lambda self: self.root / WEIGHTS_NAME)

    def has_checkpoint(self) -> bool:
        """A checkpoint of any stage (MB-DCNN keeps one per network in a subfolder)."""
        return self.root.is_dir() and any(self.root.rglob(CHECKPOINT_NAME))

    def read_config(self) -> dict | None:
        return json.loads(self.config.read_text(encoding="utf8")) if self.config.exists() else None


def options_dict(opts) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}


def run_identity(opts: TrainOptions, **extra) -> dict:
    """What defines a run's training: a resumed run must have the same (checked by :func:`check_run_folder`)."""
    options = {k: v for k, v in options_dict(opts).items() if k not in _RESUMABLE_CHANGES}
    return json.loads(json.dumps({**options, **extra}, sort_keys=True, default=str))


def check_run_folder(out: Path, resume: bool, identity: dict | None = None) -> None:
    """A RUN folder that holds a checkpoint (of any stage) is only continued with resume=True, and only with the
    settings it was started with (``identity``, compared with the one in its config.json)."""
    folder = RunFolder(Path(out))
    if not folder.has_checkpoint():
        return
    if not resume:
        raise WsmError(f"{out} already holds a training run (checkpoint.pt); pass --resume to continue it, or "
                       "choose another --out")
    saved = (folder.read_config() or {}).get("identity") if identity is not None else None
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


def write_start(folder: RunFolder, config: dict, train: pd.DataFrame, evaluation: pd.DataFrame,
                inherited: set[str] | None = frozenset()) -> None:
    """config.json, and the images this run trains and evaluates on and those its starting weights learnt from
    (``inherited``; None: unknown, which every run started from this one will inherit)."""
    folder.root.mkdir(parents=True, exist_ok=True)
    write_json(folder.config, config)
    if inherited is None:
        write_text_atomic(folder.init_unknown, "this run started from weights with no record of their training "
                                               "images (--init with a bare file)\n")
    elif inherited:
        write_text_atomic(folder.init_ids, "".join(f"{i}\n" for i in sorted(inherited)))
    write_text_atomic(folder.train_ids, "".join(f"{i}\t{s}\n" for i, s in zip(train["isic_id"],
                                                                                 train["label_source"])))
    write_text_atomic(folder.eval_ids, "".join(f"{i}\n" for i in evaluation["isic_id"]))


def init_weights_file(init: Path | str) -> Path:
    """The weights file of ``--init`` (a RUN folder or a .safetensors file)."""
    init = Path(init)
    weights = RunFolder(init).weights if init.is_dir() else init
    if not weights.is_file():
        raise TrainError(f"--init {init}: no weights there (give a finished `wsm train` RUN folder, which holds "
                         f"{WEIGHTS_NAME}, or a .safetensors file)")
    return weights


def trained_ids(run_dir: Path) -> set[str] | None:
    """Every image the network of a RUN folder learnt from: its own training images and those of the runs it was
    initialised from (init_ids.txt); for a `wsm fit` bundle, the images whose masks fit used; None when the folder
    keeps no record, or its run started from weights that kept none (init_unknown.txt)."""
    from wsm.fit.bundle import BundleFolder

    folder = RunFolder(Path(run_dir))
    if not folder.train_ids.exists():
        provenance = BundleFolder(folder.root).read_provenance()
        fitted = provenance.get("fit_mask_ids") if provenance is not None else None
        return set(fitted) if fitted is not None else None
    if folder.init_unknown.exists():
        return None
    ids = set()
    for path in (folder.train_ids, folder.init_ids):
        if path.exists():
            ids |= {line.split("\t", 1)[0] for line in path.read_text(encoding="utf8").splitlines()}
    return ids


def check_init(weights: Path, opts: TrainOptions, evaluation: pd.DataFrame) -> set[str] | None:
    """Check the run ``weights`` comes from: the same network (arch, encoder, classes), and no evaluation image
    among the images it (or any run before it) trained on. Returns those images, or None (with a warning) when
    the weights' folder is not a `wsm train` RUN and no such check is possible."""
    run_dir = weights.parent
    config = RunFolder(run_dir).read_config()
    if config is not None:
        earlier = config.get("options", {})
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
