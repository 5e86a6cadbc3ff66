"""A `wsm train` RUN as a bundle's prior: the student of one self-training round becomes the teacher of the next.

``wsm fit --prior-run RUN`` trains no prior: the RUN's network (one lesion class) is the prior, at the size it
was trained at and on the pixels it learnt from (the files' own: no colour constancy or hair removal), and fit
only calibrates it (on masked images the RUN never learnt from) and writes the bundle.
Every image the RUN learnt from, directly or through the runs and maps it came from
(:func:`wsm.folders.run.trained_ids`), counts as fitted: generate marks those maps ``mask_used_in_fit``, and
report never scores them. A RUN that keeps no record of its training images cannot be a teacher.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from wsm.errors import WsmError
from wsm.io.hashing import sha256_file
from wsm.folders.run import RunFolder, trained_ids


class PriorRunError(WsmError, ValueError):
    """A RUN folder that cannot serve as a bundle's prior."""


def prior_run_settings(run: Path | str) -> tuple[tuple[str, ...], frozenset[str]]:
    """The ``--set`` overrides that make the recipe's prior the RUN's network, and every image it learnt from.

    The network is the one its weights file describes (wsm.models.card), which must agree with the RUN's
    config.json; a file written before networks described themselves is taken to hold config.json's network.
    """
    folder = RunFolder(Path(run))
    config = folder.read_config()
    if config is None or not folder.weights.is_file():
        raise PriorRunError(f"--prior-run {run}: not a finished `wsm train` run folder (it needs config.json and "
                            f"{folder.weights.name})")
    if "pipeline" in config:
        raise PriorRunError(f"--prior-run {run} is a multi-network run ({config['pipeline']}); give a single-network "
                            "`wsm train` run")
    lineage = trained_ids(folder.root)
    if lineage is None:
        raise PriorRunError(f"--prior-run {run} keeps no record of the images its network learnt from (it started "
                            "from unrecorded weights or maps); its maps could never be scored honestly")
    card = _described(folder, config)
    if card.num_classes != 1:
        raise PriorRunError(f"--prior-run {run} segments {card.num_classes} classes; a prior maps lesions "
                            "(train it with --num-classes 1)")
    overrides = (f'prior.arch="{card.arch}"', f'prior.encoder="{card.encoder}"',
                 *([f"prior.size={card.input_size}"] if card.input_size else []), "prior.enabled=true",
                 # `wsm train` networks learn from the files' own pixels: show them the same
                 "preprocess.colour_constancy=false", "preprocess.hair_removal=false")
    return overrides, frozenset(lineage)


def _described(folder: RunFolder, config: dict):
    """The RUN's network: its weights file's description, checked against config.json; without one (a file written
    before descriptions) config.json's. The size it was trained at comes from config.json where the file does not
    record it."""
    from wsm.models.card import NetworkCardError, checked_card

    recorded = folder.recorded_card(config)
    try:
        card = checked_card(folder.weights, recorded, f"its {folder.config.name}")
    except NetworkCardError as err:
        raise PriorRunError(f"--prior-run {folder.root}: {err}") from None
    return card if card.input_size else dataclasses.replace(card, input_size=recorded.input_size)


def load_prior(run: Path | str, arch: str, encoder: str):
    """The RUN's network, in eval mode on the CPU, and where it came from (for the bundle's provenance).

    It is built from its weights file's description (wsm.models.card), which must be the recipe's ``arch`` and
    ``encoder``; a file written before descriptions holds the recipe's network, described by config.json's size.
    """
    from wsm.learn.loop import load_network
    from wsm.models.card import NetworkCard, NetworkCardError

    folder = RunFolder(Path(run))
    size = ((folder.read_config() or {}).get("options") or {}).get("size")
    try:
        model = load_network(folder.weights, NetworkCard("segmenter", arch, encoder, input_size=size),
                             "the recipe's [prior]", ignore=("input_size",))
    except NetworkCardError as err:
        raise PriorRunError(f"--prior-run {run}: {err}") from None
    return model.eval(), {"source": "run", "path": str(Path(run).resolve()), "sha256": sha256_file(folder.weights)}
