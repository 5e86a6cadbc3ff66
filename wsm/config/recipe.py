"""A resolved pipeline file as typed, frozen stage configs (what `fit` trains and `generate` runs).

The stages' own configs live with their stages (wsm.stages.*); the learning parts' configs live here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from wsm.config.pipeline import PipelineError, merge_tables, stage_config
from wsm.stages.box_prompt import BoxPromptConfig
from wsm.stages.cascade import CascadeConfig
from wsm.stages.classic import ClassicConfig
from wsm.stages.preprocess import PreprocessConfig
from wsm.stages.quality import FramingConfig, QualityConfig
from wsm.stages.refine import CrfConfig, DecisionConfig, FusionConfig, MorphologyConfig, RefineConfig

METHODS = ("weak", "cam-only", "classic")


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = "tf_efficientnet_lite0"   # a key of wsm.models.classifier.CLASSIFIERS
    size: int = 128                 # square input side in pixels
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pretrained: bool = True         # ImageNet weights (wsm.models.weights: packaged, else the hub); false: random
    weights_file: str = ""          # or local timm weights
    enabled: bool = True            # method "weak": train it and offer its CAM to calibration (cam-only: always)


@dataclass(frozen=True)
class CamConfig:
    method: str = "gradcam++"       # a key of wsm.models.cam.CAM_METHODS
    flip_tta: bool = True           # average with the flipped images' maps


@dataclass(frozen=True)
class SegmenterConfig:
    arch: str = "unet"              # a key of wsm.models.segmentation.ARCHITECTURES
    encoder: str = "tf_efficientnet_lite0"   # a timm model name
    size: int = 128                 # square input side (a multiple of 32)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pretrained: bool = True         # ImageNet encoder weights (wsm.models.weights); false: random
    weights_file: str = ""          # or local timm encoder weights
    encoder_lr_scale: float = 1.0   # the encoder learns at this times lr (the decoder at lr)
    warmup_fraction: float = 0.0    # of the steps: linear learning-rate warm-up before the cosine decay

    def __post_init__(self):
        if not self.encoder_lr_scale > 0:
            raise PipelineError(f"encoder_lr_scale = {self.encoder_lr_scale}: give a number > 0 (1: the encoder "
                                "learns at lr like the decoder; 0.1: ten times slower)")
        if not 0 <= self.warmup_fraction < 1:
            raise PipelineError(f"warmup_fraction = {self.warmup_fraction}: give a fraction of the steps in [0, 1) "
                                "(0: no warm-up)")


class _AtLeastSteps:
    """A training config with ``epochs``, ``min_steps`` and ``batch_size``."""

    def epochs_for(self, n_images: int) -> int:
        """The epochs to train on ``n_images`` masks: ``epochs``, or more to reach ``min_steps``."""
        steps_per_epoch = max(1, -(-n_images // self.batch_size))
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))


MAX_MEMBERS = 8


@dataclass(frozen=True)
class PriorConfig(SegmenterConfig, _AtLeastSteps):
    enabled: bool = True            # train a segmentation net on the official masks of the fitting split
    flip_tta: bool = False          # average its maps over the four flips of the image (4x the prior's cost)
    augment_scale: tuple[float, float] = (1.0, 1.0)   # training zoom range (wsm.learn.augment.AugmentConfig.scale)
    augment_stretch: float = 1.0                      # training stretch (wsm.learn.augment.AugmentConfig.stretch)
    augment_colour: bool = False    # training colour jitter (wsm.learn.augment.COLOUR_JITTER)
    min_steps: int = 60             # train at least this many optimiser steps: more epochs when there are few masks
                                    # (40 sample images: Jaccard 0.13 after 12 steps, 0.72 after 60; docs/RESULTS.md)
    early_size: int = 0             # progressive resizing: the first early_fraction of the epochs train at this
    early_fraction: float = 0.0     # smaller input side (cheaper steps), the rest at size; 0: size throughout
    members: int = 1                # priors trained with seeds seed, seed+1, ...; their probabilities averaged

    def early_epochs(self, epochs: int) -> int:
        """How many of ``epochs`` train at ``early_size`` (the last one always trains at ``size``)."""
        if not self.early_size:
            return 0
        return min(int(round(self.early_fraction * epochs, 6)), epochs - 1)   # 0.29 x 100: 29, not 28

    def __post_init__(self):
        super().__post_init__()
        low, high = self.augment_scale
        if not 0 < low <= high:
            raise PipelineError(f"[prior] augment_scale = {list(self.augment_scale)}: give [low, high] with "
                                "0 < low <= high, e.g. [0.6, 1.0] ([1.0, 1.0]: no zoom)")
        if self.augment_stretch < 1:
            raise PipelineError(f"[prior] augment_stretch = {self.augment_stretch}: give 1 or more "
                                "(1: no stretch; 1.5: up to 1.5x wider than high, or higher than wide)")
        if self.early_size and not (64 <= self.early_size <= self.size and self.early_size % 32 == 0):
            raise PipelineError(f"[prior] early_size = {self.early_size}: give a multiple of 32 from 64 to size "
                                f"({self.size}), or 0 to train at size throughout")
        if not 0 <= self.early_fraction < 1:
            raise PipelineError(f"[prior] early_fraction = {self.early_fraction}: give the fraction of the epochs "
                                "in [0, 1) that train at early_size (0: none)")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise PipelineError(f"[prior] members = {self.members}: give how many priors to train and average, from 1 "
                                f"to {MAX_MEMBERS} (each costs a prior's fit time, and its forward pass at generate)")


INFERENCE_ONLY = frozenset({"flip_tta"})   # stage settings that change no training: `generate --set` may change them
# sections that change no training either
INFERENCE_SECTIONS = frozenset({"box_prompt", "cascade", "framing", "image_types"})
# what a type may change
TYPE_SECTIONS = frozenset({"box_prompt", "cascade", "refine", "crf", "morphology", "decision", "framing"})
DEFAULT_TYPE = "dermoscopic"       # the recipe of an image whose type is not known


@dataclass(frozen=True)
class ImageTypesConfig:
    """Per image type (the archive's `image_type`): no map at all, or the recipe with some stages changed."""
    skip: tuple[str, ...] = ()               # types that get no map (manifest status "skipped", with the reason)
    overrides: dict = field(default_factory=dict)   # type -> {section: {key: value}} over the recipe

    def __post_init__(self):
        for image_type, table in self.overrides.items():
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise PipelineError(f"[image_types.overrides.{image_type!r}] must hold tables of settings, e.g. "
                                    "box_prompt.enabled = true")
            other = sorted(set(table) - TYPE_SECTIONS)
            if other:
                raise PipelineError(f"[image_types.overrides.{image_type!r}] changes {other}: a type may change only "
                                    f"{', '.join(sorted(TYPE_SECTIONS))} (the networks are the same for every type)")
        both = sorted(set(self.skip) & set(self.overrides))
        if both:
            raise PipelineError(f"[image_types] lists {both} both in skip and in overrides: choose one")


@dataclass(frozen=True)
class CalibrationConfig:
    enabled: bool = True                 # choose fusion weight and mask threshold by agreement with masks
    holdout_fraction: float = 0.2        # fitting-split masks kept from the prior's training to calibrate on
    max_images: int = 500                # calibration images at most (each candidate runs the CRF on all)
    prior_weights: tuple[float, ...] = (0.5, 0.7, 0.85, 1.0)   # weight of the prior; the CAM gets the rest
    mask_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
    crf_choices: tuple[bool, ...] = (True,)                    # dense CRF on and/or off (when [crf] enabled)
    crf_min_gain: float = 0.0            # keep the CRF only if it beats the best no-CRF Jaccard by more than this
    offsets_px: tuple[int, ...] = (-4, -3, -2, -1, 0, 1, 2)   # the refined mask's boundary moved by this many pixels
                                         # at the working size (< 0: in), for masks drawn tighter or looser than the
                                         # prior's (PH2's: -2 or -3 at 256 px; ISIC's: none)
    offset_min_gain: float = 0.003       # move it only if that beats the best unmoved Jaccard by more than this


@dataclass(frozen=True)
class FineTuneConfig(_AtLeastSteps):
    """`wsm fit --from-bundle BUNDLE --fine-tune`: the source bundle's prior trained further on DATA's masks."""
    epochs: int = 30
    min_steps: int = 120            # at least this many optimiser steps, whatever the number of masks
    batch_size: int = 8
    lr: float = 3e-4                # a third of a fresh prior's: it starts from weights that already segment
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class FitConfig:
    splits: tuple[str, ...] = ("train", "val")   # official-mask splits fit may use (never "test")
    eval_fraction: float = 0.15                  # of those masks, kept out of everything for an honest report, when
                                                 # no --exclude is given and no split outside `splits` has masks
    num_workers: int = 0                         # DataLoader workers while training
    threads: int = 0                             # torch threads (0: leave torch's default)


@dataclass(frozen=True)
class Recipe:
    name: str
    method: str                                  # weak | cam-only | classic
    seed: int
    classes: dict                                # class name -> diagnosis patterns (wsm.learn.datasets.ClassMapping)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    classic: ClassicConfig = field(default_factory=ClassicConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)   # learnt by fit (wsm.stages.quality)
    box_prompt: BoxPromptConfig = field(default_factory=BoxPromptConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)   # small lesions segmented again in a crop
    framing: FramingConfig = field(default_factory=FramingConfig)   # predicted 0 where the map cannot be right
    image_types: ImageTypesConfig = field(default_factory=ImageTypesConfig)

    @property
    def uses_classifier(self) -> bool:
        return self.method == "cam-only" or (self.method == "weak" and self.classifier.enabled)

    @property
    def uses_prior(self) -> bool:
        return self.method == "weak" and self.prior.enabled


def _refine_config(table: dict) -> RefineConfig:
    crf = dict(table.get("crf", {}))
    crf_enabled = crf.pop("enabled", True)
    refine = dict(table.get("refine", {}))
    return RefineConfig(
        crf=stage_config(CrfConfig, crf, "crf") if crf_enabled else None,
        morphology=stage_config(MorphologyConfig, table.get("morphology"), "morphology"),
        **refine,
    )


def build_recipe(resolved: dict) -> Recipe:
    """Typed configs from a resolved pipeline (wsm.config.pipeline.load_pipeline); errors name the bad key."""
    method = resolved.get("method", "weak")
    if method not in METHODS:
        hint = "; MB-DCNN is a training recipe: `wsm train --pipeline mbdcnn`" if method == "mbdcnn" else ""
        raise PipelineError(f"method = {method!r}; `wsm fit` takes a pipeline whose method is one of "
                            f"{', '.join(METHODS)}{hint}")
    fusion = resolved.get("fusion", {})
    for name, weight in fusion.get("weights", {}).items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise PipelineError(f"[fusion.weights] {name} = {weight!r}: give a finite weight >= 0 (0 leaves the "
                                "map out)")
    return Recipe(
        name=str(resolved.get("name", "unnamed")),
        method=method,
        seed=int(resolved.get("seed", 0)),
        classes=dict(resolved.get("classes") or {}),
        preprocess=stage_config(PreprocessConfig, resolved.get("preprocess"), "preprocess"),
        classifier=stage_config(ClassifierConfig, resolved.get("classifier"), "classifier"),
        cam=stage_config(CamConfig, resolved.get("cam"), "cam"),
        prior=stage_config(PriorConfig, resolved.get("prior"), "prior"),
        fusion=FusionConfig(weights=dict(fusion.get("weights", {}))),
        refine=_refine_config(resolved),
        decision=stage_config(DecisionConfig, resolved.get("decision"), "decision"),
        classic=stage_config(ClassicConfig, resolved.get("classic"), "classic"),
        calibration=stage_config(CalibrationConfig, resolved.get("calibration"), "calibration"),
        fit=stage_config(FitConfig, resolved.get("fit"), "fit"),
        fine_tune=stage_config(FineTuneConfig, resolved.get("fine_tune"), "fine_tune"),
        quality=stage_config(QualityConfig, resolved.get("quality"), "quality"),
        box_prompt=stage_config(BoxPromptConfig, resolved.get("box_prompt"), "box_prompt"),
        cascade=stage_config(CascadeConfig, resolved.get("cascade"), "cascade"),
        framing=stage_config(FramingConfig, resolved.get("framing"), "framing"),
        image_types=stage_config(ImageTypesConfig, resolved.get("image_types"), "image_types"),
    )


def recipes_by_type(resolved: dict) -> dict[str, Recipe]:
    """The recipe of each image type the pipeline names in [image_types.overrides], and of every other type
    (key DEFAULT_TYPE): the pipeline with that type's sections merged over it."""
    base = build_recipe(resolved)
    recipes = {DEFAULT_TYPE: base}
    for image_type, table in base.image_types.overrides.items():
        recipes[image_type] = build_recipe(merge_tables(resolved, table))
    return recipes


def recipe_key(recipe: Recipe, image_type: str | None) -> str | None:
    """Which of :func:`recipes_by_type`'s recipes makes the map of an image of ``image_type`` (None: unknown);
    None when the type gets no map."""
    if image_type in recipe.image_types.skip:
        return None
    return image_type if image_type in recipe.image_types.overrides else DEFAULT_TYPE
