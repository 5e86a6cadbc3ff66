"""BUNDLE/: what `wsm fit` writes and `wsm generate` reads.

    pipeline.toml       the resolved recipe, calibrated values included
    classifier.safetensors, prior.safetensors   (when the recipe uses them; each describes its network in its
                        header, wsm.models.card, and loads only when that agrees with pipeline.toml)
    prior-2.safetensors ...   the other members of a prior of [prior] members > 1 (averaged at generate)
    calibration.json    the chosen values and the whole grid, with the images they were measured on
    provenance.json     data manifest hash, seed, versions, classes, the ids whose masks fit used, timings
"""
from __future__ import annotations

import copy
import functools
import dataclasses
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsm import __version__
from wsm.config.pipeline import apply_override, to_toml
from wsm.config.recipe import INFERENCE_ONLY, INFERENCE_SECTIONS, Recipe, build_recipe, recipes_by_type
from wsm.errors import WsmError
from wsm.mapping import MapModels, weighted_maps
from wsm.io.atomic import write_text_atomic
from wsm.io.hashing import sha256_file

PIPELINE = "pipeline.toml"
CLASSIFIER = "classifier.safetensors"
PRIOR = "prior.safetensors"
CALIBRATION = "calibration.json"
PROVENANCE = "provenance.json"


def prior_file(member: int) -> str:
    """The file of the prior's ``member`` (0: prior.safetensors; 1: prior-2.safetensors; ...)."""
    return PRIOR if member == 0 else f"prior-{member + 1}.safetensors"


class BundleError(WsmError, ValueError):
    """A bundle folder that is missing or incomplete."""


@dataclass(frozen=True)
class BundleFolder:
    root: Path

    pipeline = property(lambda self: self.root / PIPELINE)
    classifier = property(lambda self: self.root / CLASSIFIER)
    prior = property(lambda self: self.root / PRIOR)
    calibration = property(lambda self: self.root / CALIBRATION)
    provenance = property(lambda self: self.root / PROVENANCE)
    work = property(lambda self: self.root / "work")    # training checkpoints: resume or refit; not needed after

    def prior_files(self) -> list[Path]:
        """prior.safetensors and every other member's file this folder holds."""
        return [self.prior, *sorted(self.root.glob("prior-*.safetensors"))]

    def read_provenance(self) -> dict | None:
        return json.loads(self.provenance.read_text(encoding="utf8")) if self.provenance.exists() else None


def write_pipeline(folder: BundleFolder, resolved: dict) -> None:
    write_text_atomic(folder.pipeline, "# resolved by wsm " + __version__ + "\n" + to_toml(resolved))


@dataclass
class Bundle:
    folder: Path
    resolved: dict
    recipe: Recipe
    provenance: dict

    @functools.cached_property
    def recipes(self) -> dict[str, Recipe]:
        """The recipe of each image type (wsm.config.recipe.recipes_by_type)."""
        return recipes_by_type(self.resolved)

    def network_files(self) -> list[str]:
        """The network files the recipe uses: the classifier, the prior's members."""
        members = self.recipe.prior.members if self.recipe.uses_prior else 1
        return [CLASSIFIER, *(prior_file(k) for k in range(members))]

    def model_hashes(self) -> dict[str, str]:
        return {name: sha256_file(self.folder / name)[:16] for name in self.network_files()
                if (self.folder / name).exists()}

    def load_models(self, device: str = "cpu", *, skip_unweighted: bool = True) -> MapModels:
        """The bundle's networks in eval mode on ``device``.

        A network whose map has fusion weight 0 (calibration can choose that) is not loaded, so its map is not
        computed: it could not change a label. ``skip_unweighted=False`` loads every network (benchmarks).
        """
        available = [name for name, present in (
            ("cam", self.recipe.uses_classifier),
            ("prior", self.recipe.uses_prior and (self.folder / PRIOR).exists())) if present]
        wanted = weighted_maps(self.recipe, available) if skip_unweighted else available
        models = MapModels(self.recipe, device=device)
        if "cam" in wanted:
            cfg = self.recipe.classifier
            models.classifier = self._network(CLASSIFIER, "classifier", cfg.arch, "", cfg.size,
                                              len(self.provenance["classes"])).to(device).eval()
        if "prior" in wanted:
            from wsm.models.segmentation import averaged

            cfg = self.recipe.prior
            members = [self._network(prior_file(k), "segmenter", cfg.arch, cfg.encoder, cfg.size, 1)
                       for k in range(cfg.members)]
            models.prior = averaged(members).to(device).eval()
        return models

    def _network(self, name: str, network: str, arch: str, encoder: str, size: int, num_classes: int):
        """The network in file ``name``: built from the file's own description (wsm.models.card) once it agrees
        with the recipe, or, for a file written before descriptions, from the recipe."""
        from wsm.learn.loop import load_network
        from wsm.models.card import NetworkCard, NetworkCardError

        wanted = NetworkCard(network, arch, encoder, num_classes=num_classes, input_size=size)
        try:
            return load_network(self._need(name), wanted, f"the bundle's {PIPELINE}")
        except NetworkCardError as err:
            raise BundleError(f"{err}; fit the bundle again (`wsm fit`)") from None

    def with_inference_overrides(self, overrides: Sequence[str]) -> Bundle:
        """This bundle with settings that change no training replaced (``prior.flip_tta=false``); any other
        setting would need a new fit, and is refused."""
        if not overrides:
            return self
        resolved = copy.deepcopy(self.resolved)
        allowed = ", ".join([f"<stage>.{key}" for key in sorted(INFERENCE_ONLY)]
                            + [f"{section}.*" for section in sorted(INFERENCE_SECTIONS)])
        for text in overrides:
            keys = apply_override(resolved, text)
            if keys[0] not in INFERENCE_SECTIONS and (len(keys) != 2 or keys[1] not in INFERENCE_ONLY):
                raise BundleError(f"--set {text}: with a fitted bundle only {allowed} can change at generate; "
                                  "other settings change what fit trained or calibrated: fit a new bundle with them")
        bundle = dataclasses.replace(self, resolved=resolved, recipe=build_recipe(resolved))
        bundle.recipes                  # every type's recipe is built now: a bad one is refused before any map
        return bundle

    def _need(self, name: str) -> Path:
        path = self.folder / name
        if not path.exists():
            raise BundleError(f"{self.folder} has no {name}; rerun `wsm fit` to complete the bundle")
        return path


def load_bundle(folder: Path | str) -> Bundle:
    files = BundleFolder(Path(folder))
    for path in (files.pipeline, files.provenance):
        if not path.exists():
            raise BundleError(f"{folder} is not a complete wsm bundle (no {path.name}); create it with `wsm fit`")
    resolved = tomllib.loads(files.pipeline.read_text(encoding="utf8"))
    return Bundle(files.root, resolved, build_recipe(resolved), files.read_provenance())
