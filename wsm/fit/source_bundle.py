"""A fitted bundle's networks recalibrated to other masks: ``wsm fit --from-bundle BUNDLE``.

For masks drawn by another protocol than the ones the networks learnt from (tighter or looser outlines, another
clinic's), fit trains nothing (with ``--fine-tune``, only the prior: it trains further on DATA's masks, which then
also calibrate): it copies the source bundle's networks (prior, classifier) unchanged into the new
bundle and reruns only calibration (fusion weight, dense CRF, mask threshold, boundary offset, decision thresholds,
the quality model) on the official masks of DATA's fitting splits. The recipe is the source's resolved pipeline;
``--set`` may change calibration and inference settings, never what shaped the networks.
Every mask the source was fitted on counts as fitted (it never calibrates), and the new bundle's ``fit_mask_ids``
add the masks calibration used: generate marks those maps ``mask_used_in_fit``, and report never scores them.
"""
from __future__ import annotations

import copy
import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

from wsm.config.pipeline import apply_override
from wsm.config.recipe import INFERENCE_ONLY
from wsm.errors import WsmError
from wsm.folders import bundle as B
from wsm.io.atomic import atomic_path
from wsm.io.hashing import sha256_file

NETWORK_SECTIONS = frozenset({"method", "classes", "preprocess", "classifier", "prior"})   # what shaped the networks
NETWORK_RECORDS = ("classes", "class_counts", "initial_weights")      # and each network's "<name>_losses"


class SourceBundleError(WsmError, ValueError):
    """A --from-bundle folder that cannot give its networks to a new bundle."""


@dataclass(frozen=True)
class SourceBundle:
    bundle: B.Bundle

    @property
    def networks(self) -> tuple[str, ...]:
        """The network files the source holds (classifier.safetensors, prior.safetensors, prior-2...)."""
        return tuple(name for name in self.bundle.network_files() if (self.bundle.folder / name).is_file())

    @functools.cached_property
    def network_hashes(self) -> dict[str, str]:
        """The sha256 of each network file the source holds (read once)."""
        return {name: sha256_file(self.bundle.folder / name) for name in self.networks}

    @property
    def fit_ids(self) -> frozenset[str]:
        """Every image whose mask the source's networks or calibration learnt from."""
        return frozenset(self.bundle.provenance.get("fit_mask_ids") or ())

    def resolved(self, overrides: tuple[str, ...]) -> dict:
        """The source's resolved pipeline with ``overrides`` that leave its networks as they are."""
        resolved = copy.deepcopy(self.bundle.resolved)
        for text in overrides:
            keys = apply_override(resolved, text)
            if keys[0] in NETWORK_SECTIONS and keys[-1] not in INFERENCE_ONLY:
                raise SourceBundleError(
                    f"--set {text}: with --from-bundle the networks are the source bundle's, unchanged; set only what "
                    f"calibration and generation use (not {', '.join(sorted(NETWORK_SECTIONS))}), or fit afresh")
        return resolved

    def load_networks(self, models, device: str) -> None:
        """Put the source's networks into ``models`` (wsm.mapping.MapModels), every one of them: calibration
        may weigh a map the source left out."""
        loaded = self.bundle.load_models(device, skip_unweighted=False)
        models.classifier, models.prior = loaded.classifier, loaded.prior

    def copy_networks(self, folder: B.BundleFolder, with_prior: bool = True) -> None:
        """The source's network files, byte for byte, into the new bundle (the prior's only ``with_prior``: a
        fine-tuned prior is written by its training)."""
        for name in (n for n in self.networks if with_prior or not n.startswith("prior")):
            with atomic_path(folder.root / name) as tmp:
                shutil.copyfile(self.bundle.folder / name, tmp)

    def prior_weights(self, member: int = 0) -> dict:
        """Where the weights of the source's prior (its ``member``) are, and their hash: what a fine-tuned prior
        started from."""
        name = B.prior_file(member)
        return {"path": str((self.bundle.folder / name).resolve()), "sha256": self.network_hashes[name]}

    def provenance(self) -> dict:
        """What the new bundle records of its source: where it is, its networks' hashes, the masks it was fitted on,
        and its records of those networks (classes, initial weights, losses)."""
        kept = {key: value for key, value in self.bundle.provenance.items()
                if key in NETWORK_RECORDS or key.endswith("_losses")}
        return {**kept, "source_bundle": {
            "path": str(self.bundle.folder.resolve()),
            "requested_pipeline_sha256": self.bundle.provenance.get("requested_pipeline_sha256"),
            "networks": self.network_hashes,
            "fit_mask_ids": sorted(self.fit_ids)}}


def open_source(folder: Path | str, out: Path | str) -> SourceBundle:
    """The bundle in ``folder``, checked to be one whose networks a new bundle in ``out`` can take."""
    folder = Path(folder)
    try:
        source = SourceBundle(B.load_bundle(folder))
    except B.BundleError:
        raise SourceBundleError(f"--from-bundle {folder}: not a fitted wsm bundle (it needs {B.PIPELINE} and "
                                f"{B.PROVENANCE}); give a folder written by `wsm fit`") from None
    if folder.resolve() == Path(out).resolve():
        raise SourceBundleError(f"--from-bundle {folder} is also the output folder; write the recalibrated bundle to "
                                "another one (-o NEW_BUNDLE)")
    if source.bundle.recipe.method == "classic":
        raise SourceBundleError(f"--from-bundle {folder} holds the no-learning classic pipeline: it has no network to "
                                "reuse; fit it on your data directly (--pipeline classic)")
    if not source.networks:
        raise SourceBundleError(f"--from-bundle {folder} holds no network ({B.CLASSIFIER}, {B.PRIOR}); rerun its "
                                "`wsm fit` to complete it")
    if source.bundle.provenance.get("fit_mask_ids") is None:
        raise SourceBundleError(f"--from-bundle {folder} keeps no record of the masks it was fitted on "
                                "(fit_mask_ids); its maps could never be scored honestly: refit it")
    return source
