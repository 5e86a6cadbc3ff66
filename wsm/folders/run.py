"""The RUN folder `wsm train` writes, and lineage: which images a network, or what made a folder of weak maps,
learnt from.

    RUN/
      config.json                   the resolved options, the training config, the command, versions, identity
      train_ids.txt, eval_ids.txt   the images trained on (with their label source) and evaluated on
      init_ids.txt / init_unknown.txt   what the starting weights (``--init``) learnt from, or that nobody knows
      teacher_ids.txt               the images whose masks fed the bundle that made the weak maps it trained on
      checkpoint.pt, model.safetensors, train_config.json   from :mod:`wsm.learn.loop` (per stage for MB-DCNN)
      metrics.json, per_image.csv   the evaluation (mean and per image)
      predictions/ISIC_x_segmentation.png   0/255 masks of the eval images (with save_predictions)

The checks made before a run (same identity when resumed, honest lineage) are `wsm train`'s:
:mod:`wsm.train.run_folder`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from wsm.folders.bundle import BundleFolder
from wsm.folders.wsm_folder import REWRITE_WSM_MANIFEST, WsmFolder
from wsm.io.tables import read_frame, table_columns
from wsm.learn.loop import CHECKPOINT_NAME, WEIGHTS_NAME
from wsm.models.card import NetworkCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFolder:
    root: Path

    config = property(lambda self: self.root / "config.json")
    train_ids = property(lambda self: self.root / "train_ids.txt")
    eval_ids = property(lambda self: self.root / "eval_ids.txt")
    init_ids = property(lambda self: self.root / "init_ids.txt")          # what the starting weights learnt from
    init_unknown = property(lambda self: self.root / "init_unknown.txt")  # started from weights with no record
    teacher_ids = property(lambda self: self.root / "teacher_ids.txt")    # fed the teacher of its weak maps
    metrics = property(lambda self: self.root / "metrics.json")
    per_image = property(lambda self: self.root / "per_image.csv")
    predictions = property(lambda self: self.root / "predictions")
    weights = property(lambda self: self.root / WEIGHTS_NAME)

    def has_checkpoint(self) -> bool:
        """A checkpoint of any stage (MB-DCNN keeps one per network in a subfolder)."""
        return self.root.is_dir() and any(self.root.rglob(CHECKPOINT_NAME))

    def read_config(self) -> dict | None:
        return json.loads(self.config.read_text(encoding="utf8")) if self.config.exists() else None

    def recorded_card(self, config: dict) -> NetworkCard:
        """The network ``config`` (this folder's config.json) records; an attribute run has one output per
        channel. What it does not record is None (not checked against a weights file's own card)."""
        options = config.get("options", {})
        outputs = len(config.get("channels") or ()) or options.get("num_classes")
        return NetworkCard("segmenter", options.get("arch"), options.get("encoder"), num_classes=outputs,
                           input_size=options.get("size"))


def trained_ids(run_dir: Path) -> set[str] | None:
    """Every image the network of a RUN folder learnt from: its own training images and those of the runs it was
    initialised from (init_ids.txt); for a `wsm fit` bundle, the images whose masks fit used; None when the folder
    keeps no record, or its run started from weights that kept none (init_unknown.txt)."""
    folder = RunFolder(Path(run_dir))
    if not folder.train_ids.exists():
        provenance = BundleFolder(folder.root).read_provenance()
        fitted = provenance.get("fit_mask_ids") if provenance is not None else None
        return set(fitted) if fitted is not None else None
    if folder.init_unknown.exists():
        return None
    rows = [line.split("\t") for line in folder.train_ids.read_text(encoding="utf8").splitlines()]
    if any(row[1:] == ["weak"] for row in rows) and not folder.teacher_ids.exists():
        return None         # trained on weak maps, and nothing says which masks fed their teacher
    ids = {row[0] for row in rows}
    for path in (folder.init_ids, folder.teacher_ids):
        if path.exists():
            ids |= set(path.read_text(encoding="utf8").splitlines())
    return ids


def teacher_ids(maps: Path | str) -> set[str] | None:
    """Every image whose official mask fed what made a folder of weak maps: the fit of the bundle `wsm generate`
    recorded (its ``fit_mask_ids``, a RUN prior's lineage included), else the maps the WSM manifest marks
    ``mask_used_in_fit``, with a warning (a lower bound); None for maps made elsewhere (no record at all)."""
    folder = WsmFolder(Path(maps))
    recorded = folder.made_with()
    if recorded.get("fit_mask_ids") is not None:      # as it was when the maps were made (a refit changes the bundle)
        return set(recorded["fit_mask_ids"])
    provenance = BundleFolder(Path(recorded["bundle"])).read_provenance() if recorded.get("bundle") else None
    if provenance is not None and provenance.get("fit_mask_ids") is not None:
        return set(provenance["fit_mask_ids"])
    manifest = folder.merged_manifest()
    if manifest is None or "mask_used_in_fit" not in table_columns(manifest, REWRITE_WSM_MANIFEST):
        return None
    rows = read_frame(manifest, ["isic_id", "mask_used_in_fit"], REWRITE_WSM_MANIFEST)
    log.warning("%s does not record its bundle (or the bundle is gone): only the maps its manifest marks as fitted "
                "are known to have fed the teacher", maps)
    return set(rows.loc[rows["mask_used_in_fit"].fillna(True).astype(bool), "isic_id"])
