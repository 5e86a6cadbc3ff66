"""A `wsm train` RUN as a bundle's prior: the student of one self-training round becomes the teacher of the next.

``wsm fit --prior-run RUN`` trains no prior: the RUN's network (one lesion class) is the prior, at the size it
was trained at and on the pixels it learnt from (the files' own: no colour constancy or hair removal), and fit
only calibrates it (on masked images the RUN never learnt from) and writes the bundle.
Every image the RUN learnt from, directly or through the runs and maps it came from
(:func:`wsm.train.run_folder.trained_ids`), counts as fitted: generate marks those maps ``mask_used_in_fit``, and
report never scores them. A RUN that keeps no record of its training images cannot be a teacher.
"""
from __future__ import annotations

from pathlib import Path

from wsm.errors import WsmError
from wsm.io.hashing import sha256_file
from wsm.folders.run import RunFolder, trained_ids


class PriorRunError(WsmError, ValueError):
    """A RUN folder that cannot serve as a bundle's prior."""


def prior_run_settings(run: Path | str) -> tuple[tuple[str, ...], frozenset[str]]:
    """The ``--set`` overrides that make the recipe's prior the RUN's network, and every image it learnt from."""
    folder = RunFolder(Path(run))
    config = folder.read_config()
    if config is None or not folder.weights.is_file():
        raise PriorRunError(f"--prior-run {run}: not a finished `wsm train` run folder (it needs config.json and "
                            f"{folder.weights.name})")
    if "pipeline" in config:
        raise PriorRunError(f"--prior-run {run} is a multi-network run ({config['pipeline']}); give a single-network "
                            "`wsm train` run")
    options = config["options"]
    if options.get("num_classes", 1) != 1:
        raise PriorRunError(f"--prior-run {run} segments {options['num_classes']} classes; a prior maps lesions "
                            "(train it with --num-classes 1)")
    lineage = trained_ids(folder.root)
    if lineage is None:
        raise PriorRunError(f"--prior-run {run} keeps no record of the images its network learnt from (it started "
                            "from unrecorded weights or maps); its maps could never be scored honestly")
    overrides = (f'prior.arch="{options["arch"]}"', f'prior.encoder="{options["encoder"]}"',
                 f"prior.size={options['size']}", "prior.enabled=true",
                 # `wsm train` networks learn from the files' own pixels: show them the same
                 "preprocess.colour_constancy=false", "preprocess.hair_removal=false")
    return overrides, frozenset(lineage)


def load_prior(run: Path | str, arch: str, encoder: str):
    """The RUN's network, in eval mode on the CPU, and where it came from (for the bundle's provenance)."""
    from wsm.models.segmentation import create_segmenter
    from wsm.learn.loop import load_weights

    weights = RunFolder(Path(run)).weights
    model = create_segmenter(arch, encoder)
    load_weights(model, weights)
    return model.eval(), {"source": "run", "path": str(Path(run).resolve()), "sha256": sha256_file(weights)}
