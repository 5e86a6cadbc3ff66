"""What `wsm train` writes into its RUN folder (:class:`wsm.folders.run.RunFolder`) and the checks before a run:
the same identity when resumed, and honest lineage.

A run's *identity* (its options less those that change nothing it trains) is recorded in config.json; a resumed
run must have the same. An ``--init`` run must come from the same network, and neither it nor any run before it
may have trained on an evaluation image.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd

from wsm.errors import WsmError
from wsm.io.atomic import write_json, write_text_atomic
from wsm.selection import DataError
from wsm.folders.run import RunFolder, teacher_ids, trained_ids
from wsm.learn.loop import WEIGHTS_NAME
from wsm.train.options import TrainError, TrainOptions

log = logging.getLogger(__name__)

# Options that may change when a run is resumed (they do not change what is trained).
_RESUMABLE_CHANGES = frozenset({"resume", "progress", "workers", "device", "save_predictions", "threshold",
                                "eval_split", "out"})


def options_dict(opts) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}


def run_identity(opts: TrainOptions, **extra) -> dict:
    """What defines a run's training: a resumed run must have the same (checked by :func:`check_run_folder`)."""
    options = {k: v for k, v in options_dict(opts).items() if k not in _RESUMABLE_CHANGES}
    return json.loads(json.dumps({**options, **extra}, sort_keys=True, default=str))


def check_run_folder(out: Path, resume: bool, identity: dict | None = None) -> None:
    """A RUN folder that holds a checkpoint (of any stage) is continued (never overwritten) when resume is True,
    and only with the settings it was started with (``identity``, compared with the one in its config.json)."""
    folder = RunFolder(Path(out))
    if not folder.has_checkpoint():
        return
    if not resume:
        raise WsmError(f"{out} already holds a training run (checkpoint.pt); continue it (resume), or choose "
                       "another --out")
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
                inherited: set[str] | None = frozenset(), teacher: set[str] | None = frozenset()) -> None:
    """config.json, and the images this run trains and evaluates on, those its starting weights learnt from
    (``inherited``) and those whose masks fed the teacher of its weak maps (``teacher``); None: unknown, which every
    run started from this one (or taught by maps this one makes) will inherit."""
    folder.root.mkdir(parents=True, exist_ok=True)
    write_json(folder.config, config)
    if inherited is None or teacher is None:
        write_text_atomic(folder.init_unknown, "this run learnt from weights or maps with no record of their "
                                               "training images (--init with a bare file, or maps made elsewhere)\n")
    if inherited:
        write_text_atomic(folder.init_ids, "".join(f"{i}\n" for i in sorted(inherited)))
    if teacher is not None and (train["label_source"] == "weak").any():    # written even when empty
        write_text_atomic(folder.teacher_ids, "".join(f"{i}\n" for i in sorted(teacher)))
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


def _check_lineage(learnt: set[str] | None, evaluation: pd.DataFrame, unknown: str, source: str,
                   advice: str = "choose another --eval-split") -> set[str] | None:
    """``learnt``: the images behind a network or maps (None: nobody recorded them, a warning); refuse when one
    of them is an evaluation image."""
    if learnt is None:
        log.warning("%s; the evaluation is honest only if none of the %d evaluation images was among them", unknown,
                    len(evaluation))
        return None
    seen = sorted(learnt & set(evaluation["isic_id"]))
    if seen:
        raise DataError(f"{source} {len(seen)} of this run's evaluation images (e.g. {seen[:3]}); its numbers would "
                        f"not be honest: {advice}")
    return learnt


def check_teacher(maps: Path | str, evaluation: pd.DataFrame) -> set[str] | None:
    """The images that fed the teacher of the weak maps; refuse when any of them is an evaluation image (the
    student would have learnt from the masks it is scored on, through the maps)."""
    return _check_lineage(teacher_ids(maps), evaluation,
                          f"{maps} holds maps made elsewhere: nothing shows which masks they were fitted to",
                          f"the weak maps in {maps} come from a fit that used the masks of",
                          "choose another --eval-split, or make the maps with a bundle fitted without them "
                          "(`wsm fit --exclude`)")


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
    return _check_lineage(trained_ids(run_dir), evaluation,
                          f"--init {opts.init}: nothing in {run_dir} shows which images those weights (or the weights "
                          "they started from) learnt from",
                          f"--init {opts.init} (or a run it started from) was trained on")
