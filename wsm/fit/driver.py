"""`wsm fit`: train what a recipe needs on a DATA folder and write a BUNDLE.

1. a classifier on the image-level diagnosis labels of the manifest (recipe [classes]);
2. where the fitting splits have official masks, a segmentation prior on most of them ([prior] members > 1: that
   many, with consecutive seeds, one after another; generate averages their probabilities);
3. calibration of fusion weight, mask threshold and decision margin on the rest (see wsm.fit.calibrate).
Images listed in ``exclude_ids`` (a held-out fold) are used for nothing. Training resumes from the
checkpoints in BUNDLE/work/ if a run was interrupted. Given networks train nothing and only calibrate: a `wsm train`
RUN as the prior (wsm.fit.prior_run), or every network of a fitted bundle (wsm.fit.source_bundle), whose prior
``fine_tune`` trains further on DATA's masks, which then also calibrate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from archive_client.layout import DataLayout
from wsm.config.pipeline import PipelineError, load_pipeline, pipeline_hash
from wsm.config.recipe import DEFAULT_TYPE, INFERENCE_ONLY, Recipe, build_recipe, recipe_key, recipes_by_type
from wsm.folders import bundle as B
from wsm.fit.prior_run import load_prior, prior_run_settings
from wsm.fit.source_bundle import SourceBundle, SourceBundleError, open_source
from wsm.io.atomic import write_json
from wsm.io.hashing import ids_sha256, sha256_file
from wsm.io.lock import locks_output
from wsm.io.progress import announce
from wsm.io.progress import progress as progress_bar
from wsm.io.provenance import versions
from wsm.selection import DataError, read_manifest, read_truth, warn_unknown_ids, with_truth
from wsm.stages.quality import FAIL_BELOW, MIN_IMAGES
from wsm.stages.quality import as_table as quality_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    data: Path
    out: Path
    pipeline: str = "default"
    device: str = "cpu"
    overrides: tuple[str, ...] = ()
    exclude_ids: frozenset[str] = frozenset()    # used for nothing (a held-out fold)
    progress: bool = True
    prior_run: Path | None = None                # a `wsm train` RUN as the prior instead of training one
    from_bundle: Path | None = None              # a fitted BUNDLE whose networks are kept; only calibration reruns
    fine_tune: bool = False                      # with from_bundle: its prior trains further on DATA's masks first


@dataclass
class FitSummary:
    bundle: Path
    seconds: dict = field(default_factory=dict)
    classifier_images: int = 0
    prior_images: int = 0
    calibration: object = None
    quality: object = None         # wsm.stages.quality.QualityConfig learnt on the calibration masks
    held_out: int = 0               # masked images kept out of everything, for an honest report
    data: Path | None = None
    prior_steps: int = 0            # the prior's optimiser steps
    prior_members: int = 1          # priors trained and averaged ([prior] members)
    prior_run: Path | None = None   # the `wsm train` run used as the prior
    from_bundle: Path | None = None  # the bundle whose networks were kept
    fine_tuned: int = 0             # the masks of DATA its prior was fine-tuned on (0: none)

    def lines(self) -> list[str]:
        counts = [f"classifier images {self.classifier_images}"] if self.classifier_images else []
        if self.from_bundle is not None and self.fine_tuned:
            counts = [f"the prior of {self.from_bundle} fine-tuned on {self.fine_tuned} masks of {self.data}, its "
                      "other networks unchanged"]
        elif self.from_bundle is not None:
            counts = [f"the networks of {self.from_bundle}, unchanged (no training)"]
        if self.prior_images and not self.fine_tuned:
            members = f" ({self.prior_members} priors, averaged)" if self.prior_members > 1 else ""
            counts.append(f"prior masks {self.prior_images}{members}")
        if self.held_out:
            counts.append(f"{self.held_out} masked images held out for the report")
        out = [f"bundle written to {self.bundle}", ", ".join(counts) or "no network to train (a no-learning pipeline)"]
        if self.calibration is not None:
            c = self.calibration
            weight = "no prior" if c.prior_weight is None else f"prior weight {c.prior_weight}"
            weight += ", dense CRF" if c.crf else ", no CRF"
            which = f"masks of {self.data}" if self.from_bundle is not None else "held-out fitting-split masks"
            boundary = f", boundary moved {c.offset_px:+d} px" if c.offset_px else ""
            out.append(f"calibrated on {c.n_images} {which}: {weight}, threshold {c.mask_threshold}{boundary}, "
                       f"Jaccard {c.jaccard:.3f}, certain pixels "
                       f"{c.certain_fraction:.1%} at accuracy {c.certain_accuracy:.3f}")
            out += self.warnings()
            if self.quality is not None:
                rough = (f"; only {self.quality.n_images} masks make it a rough guide (some {MIN_IMAGES} or more "
                         "make it useful)") if self.quality.n_images < MIN_IMAGES else ""
                tuned = (", which the prior learnt from: it has not seen the prior fail on new images, so expect it "
                         "to be optimistic") if self.fine_tuned else ""
                out.append(f"quality model learnt on the same {self.quality.n_images} masks{tuned}: every map gets a "
                           f"predicted Jaccard, and those predicted below {FAIL_BELOW} are flagged (manifest columns "
                           f"predicted_jaccard, predicted_fail){rough}")
        elif self.prior_run is not None:
            out.append(f"warning: every mask in the fitting splits fed {self.prior_run} (or is held out): nothing was "
                       "left to calibrate on, so the pipeline's default thresholds apply")
        if self.seconds:
            out.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        work = B.BundleFolder(self.bundle).work
        if work.is_dir():
            megabytes = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 1e6
            out.append(f"{work} ({megabytes:.0f} MB) keeps the training checkpoints, to resume or refit with other "
                       "settings; the bundle does not need it")
        data = self.data if self.data is not None else "DATA"
        out.append(f"next: wsm generate --data {data} --bundle {self.bundle} --split all --out WSM")
        return out

    def warnings(self) -> list[str]:
        """A verdict when the calibration numbers say the maps will be poor, with the likely reasons."""
        c, out = self.calibration, []
        if c.n_images < 10:
            out.append(f"warning: calibration saw only {c.n_images} masks; its choice is a guess (import or download "
                       "more official masks, or set [fusion.weights] yourself)")
        if c.jaccard >= POOR_JACCARD and c.certain_fraction >= POOR_CERTAIN:
            return out
        reasons = []
        if self.prior_images < FEW_MASKS:
            reasons.append(f"the prior learnt from {self.prior_images} masks (a few hundred make a good one: "
                           "`wsm download --challenge isic2018`)")
        if self.prior_steps and self.prior_steps < FEW_STEPS:
            reasons.append(f"the prior trained {self.prior_steps} optimiser steps (--set prior.epochs=... or "
                           "prior.min_steps=...)")
        out.append(f"warning: these maps will be poor (calibration Jaccard {c.jaccard:.2f}, {c.certain_fraction:.0%} "
                   "of pixels certain)" + (": " + "; ".join(reasons) if reasons else ""))
        return out


POOR_JACCARD = 0.6     # below this calibration Jaccard, or
POOR_CERTAIN = 0.5     # below this share of certain pixels, fit warns that the maps will be poor
FEW_MASKS = 200
FEW_STEPS = 60


def _unit_hash(text: str) -> float:
    """A number in [0, 1) drawn from ``text``: the same on every machine and in any order."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def in_holdout(isic_id: str, fraction: float, seed: int) -> bool:
    """Deterministic, order-free choice of the calibration images."""
    return _unit_hash(f"{seed}:{isic_id}") < fraction


def calibration_sample(rows: pd.DataFrame, most: int, seed: int) -> pd.DataFrame:
    """At most ``most`` of ``rows``, in their order, drawn by a hash of the id: the first ones of a manifest sorted
    by id would be the archive's oldest images (on the dev data the first 120 scored 0.87 Jaccard, all 410 0.83)."""
    if len(rows) <= most:
        return rows
    draws = rows["isic_id"].map(lambda i: _unit_hash(f"calibration:{seed}:{i}"))
    return rows[draws.rank(method="first") <= most]


def work_dir(work: Path, stage: str, cfg, recipe: Recipe, extra: dict | None = None) -> Path:
    """Checkpoints of one stage, keyed by everything that shapes its model (settings, seed, and in ``extra`` the
    images it trains on): a changed setting or another set of images starts afresh instead of resuming a
    checkpoint trained differently (another --exclude fold must never reuse a prior that saw its images). A prior's
    ``members`` is left out: each member is keyed by its own seed, so the first is the prior a one-member fit trains."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in INFERENCE_ONLY and k != "members"}
    key = json.dumps({"cfg": settings, "seed": recipe.seed, **(extra or {})}, sort_keys=True)
    return work / f"{stage}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def training_pixels(recipe: Recipe):
    """The preprocessing the networks' training images go through: the recipe's, when it alters pixels (colour
    constancy, hair removal), so that they learn on images like those generate shows them; else None (resized
    files)."""
    from wsm.stages.preprocess import changes_pixels

    return recipe.preprocess if changes_pixels(recipe.preprocess) else None


def pixels_key(recipe: Recipe) -> dict:
    """What the training preprocessing adds to a checkpoint folder's key (nothing when it leaves pixels alone)."""
    pixels = training_pixels(recipe)
    return {"pixels": dataclasses.asdict(pixels)} if pixels is not None else {}


def _train_config(cfg, recipe: Recipe, device: str, epochs: int | None = None):
    """The training loop's settings for one network of the recipe (classifier or prior)."""
    from wsm.learn.loop import TrainConfig

    return TrainConfig(epochs=epochs or cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       num_workers=recipe.fit.num_workers, seed=recipe.seed, device=device,
                       encoder_lr_scale=getattr(cfg, "encoder_lr_scale", 1.0),
                       warmup_fraction=getattr(cfg, "warmup_fraction", 0.0))


@dataclass
class _Network:
    """One network fit trains: built (and its cost measured) before any training starts."""
    name: str
    model: object
    dataset: object
    loss: object
    cfg: object              # wsm.learn.loop.TrainConfig
    folder: Path             # its checkpoints, under BUNDLE/work/
    initial_weights: dict | None = None   # where its first weights came from, when not its encoder's (a bundle's)

    @property
    def file(self) -> str:
        """Its file in the bundle: classifier.safetensors, prior.safetensors, prior-2.safetensors, ..."""
        return f"{self.name}.safetensors"

    def train(self, progress: bool):
        from wsm.learn.loop import train

        return train(self.model, self.dataset, self.loss, self.cfg, self.folder, progress=progress,
                     phase=f"{self.name} ")

    def describe(self) -> str:
        """What it trains on, for the plan: "on 1656 images, 15 epochs (the first 12 at 128 px)"."""
        epochs, early = self.cfg.epochs, getattr(self.dataset, "early_epochs", 0)
        text = f"on {len(self.dataset)} images, {epochs} epoch{'s' * (epochs != 1)}"
        return text + (f" (the first {early} at {self.dataset.early_size} px)" if early else "")

    def estimate_s(self) -> float:
        """Seconds its whole training will take here, from one measured step at each input size (a resumed run
        takes less)."""
        from wsm.learn.loop import seconds_per_step

        steps_per_epoch = -(-len(self.dataset) // self.cfg.batch_size)
        early = min(getattr(self.dataset, "early_epochs", 0), self.cfg.epochs)
        seconds = 0.0
        for first_epoch, epochs in ((0, early), (early, self.cfg.epochs - early)):
            if epochs:
                self.dataset.set_epoch(first_epoch)
                seconds += epochs * steps_per_epoch * seconds_per_step(self.model, self.dataset, self.loss, self.cfg)
        self.dataset.set_epoch(0)
        return seconds


def _classifier_network(recipe: Recipe, data: Path, rows: pd.DataFrame, work: Path, device: str) -> _Network:
    import torch

    from wsm.models.classifier import create_classifier
    from wsm.learn.datasets import ClassifierDataset, ClassMapping
    from wsm.learn.loop import classification_loss

    mapping = ClassMapping.from_table(recipe.classes)
    cfg = recipe.classifier
    dataset = ClassifierDataset(data, rows, cfg.size, mapping, augment=True, seed=recipe.seed,
                                pixels=training_pixels(recipe))
    if len(dataset) == 0:
        raise DataError(
            "no image in DATA has a diagnosis that the recipe's [classes] table maps to a class; add labels with "
            "`wsm import --labels CSV`, or use the no-learning pipeline: --pipeline classic")
    torch.manual_seed(recipe.seed)
    model = create_classifier(cfg.arch, mapping.num_classes, pretrained=cfg.pretrained,
                              weights_file=cfg.weights_file or None)
    return _Network("classifier", model, dataset, classification_loss(dataset.class_counts()),
                    _train_config(cfg, recipe, device),
                    work_dir(work, "classifier", cfg, recipe,
                             {"classes": recipe.classes, "images": ids_sha256(rows["isic_id"])[:16],
                              **pixels_key(recipe)}))


def prior_augment_config(cfg):
    """The prior's training augmentation: the segmenter recipe with the ``[prior]`` zoom, stretch and colour."""
    from wsm.learn.augment import COLOUR_JITTER, SEGMENTER_AUGMENT

    return dataclasses.replace(SEGMENTER_AUGMENT, scale=cfg.augment_scale, stretch=cfg.augment_stretch,
                               **(COLOUR_JITTER if cfg.augment_colour else {}))


def _prior_dataset(recipe: Recipe, data: Path, rows: pd.DataFrame, early_epochs: int = 0):
    """The prior's training images: ``rows``' masks at the prior's size, with its augmentation and the recipe's
    pixels (the first ``early_epochs`` at [prior] early_size)."""
    from wsm.learn.datasets import SegmentationDataset

    cfg = recipe.prior
    return SegmentationDataset(data, rows, cfg.size, augment=True, seed=recipe.seed,
                               augment_cfg=prior_augment_config(cfg), early_size=cfg.early_size,
                               early_epochs=early_epochs, pixels=training_pixels(recipe))


def _member_name(member: int) -> str:
    """The name of the prior's ``member`` in the plan and the provenance: prior, prior-2, ... (its file's stem)."""
    return B.prior_file(member).removesuffix(".safetensors")


def _member_recipe(recipe: Recipe, member: int) -> Recipe:
    """The recipe the prior's ``member`` trains with: its seed is the recipe's plus ``member``."""
    return dataclasses.replace(recipe, seed=recipe.seed + member)


def _prior_network(recipe: Recipe, data: Path, rows: pd.DataFrame, work: Path, device: str,
                   member: int = 0) -> _Network:
    import torch

    from wsm.models.segmentation import create_segmenter
    from wsm.learn.losses import BCEDice

    recipe, cfg = _member_recipe(recipe, member), recipe.prior
    epochs = cfg.epochs_for(len(rows))
    dataset = _prior_dataset(recipe, data, rows, cfg.early_epochs(epochs))
    torch.manual_seed(recipe.seed)
    model = create_segmenter(cfg.arch, cfg.encoder, pretrained=cfg.pretrained,
                             weights_file=cfg.weights_file or None)
    return _Network(_member_name(member), model, dataset, BCEDice(),
                    _train_config(cfg, recipe, device, epochs=epochs),
                    work_dir(work, "prior", cfg, recipe,
                             {"size": recipe.preprocess.working_size, "images": ids_sha256(rows["isic_id"])[:16],
                              **pixels_key(recipe)}))


def _fine_tune_networks(recipe: Recipe, data: Path, rows: pd.DataFrame, work: Path, device: str, prior,
                        source: SourceBundle) -> list[_Network]:
    """Each member of the source bundle's prior, to train further on ``rows``' masks with [fine_tune]'s settings
    and the prior's own augmentation and input size (member k with the recipe's seed plus k)."""
    from wsm.models.segmentation import members_of

    if prior is None:
        raise SourceBundleError(f"--fine-tune: {source.bundle.folder} holds no prior to fine-tune (its pipeline "
                                "has none); recalibrate it without --fine-tune, or fit afresh on your masks")
    return [_fine_tune_network(recipe, data, rows, work, device, network, source, k)
            for k, network in enumerate(members_of(prior))]


def _fine_tune_network(recipe: Recipe, data: Path, rows: pd.DataFrame, work: Path, device: str, prior,
                       source: SourceBundle, member: int) -> _Network:
    from wsm.learn.losses import BCEDice

    recipe = _member_recipe(recipe, member)
    cfg, started_from = recipe.fine_tune, source.prior_weights(member)
    return _Network(_member_name(member), prior, _prior_dataset(recipe, data, rows), BCEDice(),
                    _train_config(cfg, recipe, device, epochs=cfg.epochs_for(len(rows))),
                    work_dir(work, "fine-tune", cfg, recipe,
                             {"from": started_from["sha256"], "images": ids_sha256(rows["isic_id"])[:16],
                              **pixels_key(recipe)}),
                    initial_weights={"fine_tuned_from": started_from, "masks": len(rows)})


def calibration_samples(recipes: dict[str, Recipe], data: Path, rows: pd.DataFrame, models, bar=None,
                        cascade: bool = True) -> list:
    """A wsm.fit.calibrate.Sample of each masked row of DATA whose image type gets a map: the image preprocessed,
    its evidence as generate makes it for its type (``recipes``: wsm.config.recipe.recipes_by_type; e.g. the box
    prompt for clinical close-ups, the cascade's crop round a small lesion) with ``models``
    (wsm.mapping.MapModels), the mask at the working size (of the crop, for a cascaded image). With ``cascade``
    false, every image whole."""
    from wsm.fit.calibrate import Sample
    from wsm.io.images import read_mask
    from wsm.mapping import prepare
    from wsm.models.inputs import mask_at
    from wsm.stages.cascade import mask_in, missed_lesion

    base = recipes[DEFAULT_TYPE]
    types = rows["image_type"] if "image_type" in rows.columns else pd.Series(None, index=rows.index, dtype=object)
    keys = pd.Series([recipe_key(base, t if isinstance(t, str) and t else None) for t in types], index=rows.index)
    rows, keys = rows[keys.notna()], keys[keys.notna()]        # a type that gets no map calibrates nothing
    size, samples, batch = base.preprocess.working_size, [], 16
    for start in range(0, len(rows), batch):
        chunk, chunk_keys = rows.iloc[start:start + batch], list(keys.iloc[start:start + batch])
        pres = [prepare(data / f, base.preprocess,
                        detail_side=recipes[k].cascade.detail_side_if_enabled if cascade else 0)   # 0: no crop
                for f, k in zip(chunk["file"], chunk_keys)]
        pres, maps = models.cascaded_evidence(pres, [recipes[k] for k in chunk_keys])
        masks = [read_mask(data / mf) for mf in chunk["mask_file"]]
        samples += [Sample(p, m, mask_at(mask_in(p, mask), size), i, k, missed_lesion(p, mask, size))
                    for p, m, mask, i, k in zip(pres, maps, masks, chunk["isic_id"], chunk_keys)]
        if bar is not None:
            bar.update(len(chunk))
    return samples


def _calibrate(recipes: dict[str, Recipe], data: Path, rows: pd.DataFrame, models, progress: bool):
    """The calibration, and the samples it was chosen on: the images whole, also where generate cascades (chosen
    on the cascade's crops, the thresholds did worse on held-out images: docs/RESULTS.md)."""
    from wsm.fit.calibrate import calibrate

    recipe = recipes[DEFAULT_TYPE]
    rows = calibration_sample(rows, recipe.calibration.max_images, recipe.seed)
    bar = progress_bar(total=2 * len(rows), desc="calibrate", unit="img", enabled=progress)
    samples = calibration_samples(recipes, data, rows, models, bar, cascade=False)
    if not samples:
        raise DataError(f"the {len(rows)} masks left for calibration are all of image types the pipeline makes no "
                        "map for ([image_types] skip): import masks of the types you generate maps for")
    result = calibrate(samples, recipe, progress=bar)
    bar.close()
    return result, samples


def _calibration_estimate_s(recipes: dict[str, Recipe], data: Path, rows: pd.DataFrame, models) -> float:
    """Seconds calibration will take here: every candidate setting on one image, measured, times the images."""
    from wsm.fit.calibrate import calibrate

    recipe = recipes[DEFAULT_TYPE]
    started = time.perf_counter()
    samples = calibration_samples(recipes, data, rows.head(1), models, cascade=False)
    if samples:                                 # none: a type that gets no map (fit then says so)
        calibrate(samples, recipe)
    return (time.perf_counter() - started) * min(len(rows), recipe.calibration.max_images)


def _start_replacing(out: Path, requested: str) -> None:
    """Take the bundle in ``out`` out of use until this fit writes its provenance last: a fit killed half-way
    leaves a bundle that `generate` refuses, never new weights beside an old calibration."""
    folder = B.BundleFolder(out)
    old = folder.provenance
    if not old.exists():
        return
    before = json.loads(old.read_text(encoding="utf8")).get("requested_pipeline_sha256")
    if before not in (None, requested):
        log.warning("%s holds a bundle fitted with other settings; this fit replaces it (checkpoints under "
                    "work/ are kept)", out)
    old.unlink()
    for stale in (folder.classifier, *folder.prior_files(), folder.calibration):   # a refit that trains less
        stale.unlink(missing_ok=True)                                    # must not leave old networks in use


def held_out_for_evaluation(rows: pd.DataFrame, masked: pd.DataFrame, recipe: Recipe,
                            excluded: frozenset[str]) -> frozenset[str]:
    """The masked images fit keeps out of everything so that `wsm report` can score their maps honestly.

    Only when nothing else would give an honest score: no ``--exclude`` and no official mask outside the fitting
    splits (``[fit] splits``); ``[fit] eval_fraction`` of the fitting masks, chosen by a hash of the id (stable
    whatever else DATA holds, and independent of the calibration choice)."""
    fraction = recipe.fit.eval_fraction
    masks_elsewhere = rows["mask_file"].notna() & ~rows["split"].isin(recipe.fit.splits)
    if fraction <= 0 or excluded or masks_elsewhere.any():
        return frozenset()
    return frozenset(i for i in masked["isic_id"] if in_holdout(f"evaluation:{i}", fraction, recipe.seed))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


@locks_output("opts.out")
def fit(opts: FitOptions) -> FitSummary:
    """Train, calibrate and write the bundle; see the module doc."""
    import torch

    source = _source(opts)
    resolved, teacher_ids = _requested_pipeline(opts, source)
    recipe = build_recipe(resolved)
    if recipe.fit.threads:
        torch.set_num_threads(recipe.fit.threads)
    out, data = Path(opts.out), Path(opts.data)
    images = _choose_images(opts, recipe, data, teacher_ids)
    if source is not None and not images.calibrating:
        raise _nothing_to_recalibrate(recipe, data, len(images.evaluation_ids))
    folder = B.BundleFolder(out)
    models, networks, prior_source = _build_networks(opts, recipe, data, images, source, folder)

    out.mkdir(parents=True, exist_ok=True)
    requested = pipeline_hash(resolved)
    _start_replacing(out, requested)
    summary = FitSummary(out, held_out=len(images.evaluation_ids), data=data, prior_run=opts.prior_run,
                         from_bundle=opts.from_bundle, fine_tuned=len(images.prior_rows) if opts.fine_tune else 0)
    provenance = _provenance(opts, recipe, data, requested, images.evaluation_ids)
    _keep_given_networks(opts, source, models, folder, prior_source, len(teacher_ids), provenance)
    calibration_rows = images.calibration_rows if images.calibrating else None
    phases = _Phases(_announce_plan(opts, recipes_by_type(resolved), data, networks, calibration_rows, models,
                                    images.evaluation_ids))
    _train_networks(networks, folder, phases, opts.progress, provenance, summary)
    _count_what_trained(networks, images, teacher_ids, models, provenance, summary)
    if images.calibrating:
        phases.begin()
        resolved = _calibrate_bundle(data, images.calibration_rows, models, resolved, folder, opts.progress,
                                     provenance, summary)
    _write_bundle(folder, resolved, images, teacher_ids, provenance, summary)
    return summary


@dataclass(frozen=True)
class _Images:
    """Which DATA images each part of a fit uses."""
    rows: pd.DataFrame                  # every image it may use (the classifier's): not excluded, not held out
    prior_rows: pd.DataFrame            # the masks the prior trains on
    calibration_rows: pd.DataFrame      # the masks calibration chooses on
    evaluation_ids: frozenset[str]      # masked images kept out of everything, for `wsm report`
    calibrating: bool                   # whether calibration runs (on calibration_rows)


def _choose_images(opts: FitOptions, recipe: Recipe, data: Path, teacher_ids: frozenset[str]) -> _Images:
    """Share DATA's images out between the networks, calibration and the report's held-out ones; ``teacher_ids``:
    the masks that given networks learnt from (used for nothing more)."""
    rows = with_truth(read_manifest(data), read_truth(data))    # a wrong --data fails here, before BUNDLE exists
    warn_unknown_ids("--exclude", opts.exclude_ids, rows["isic_id"], data)
    rows = rows[~rows["isic_id"].isin(opts.exclude_ids)].reset_index(drop=True)
    masked = rows[rows["mask_file"].notna() & rows["split"].isin(recipe.fit.splits)]
    masked = masked[~masked["isic_id"].isin(teacher_ids)]          # given networks learnt from these: fitted already
    evaluation_ids = held_out_for_evaluation(rows, masked, recipe, opts.exclude_ids)
    rows = rows[~rows["isic_id"].isin(evaluation_ids)].reset_index(drop=True)
    masked = masked[~masked["isic_id"].isin(evaluation_ids)]
    holdout = masked["isic_id"].map(lambda i: in_holdout(i, recipe.calibration.holdout_fraction, recipe.seed))
    holdout = holdout.astype(bool)      # also when empty: an empty object Series would select columns, not rows
    prior_rows, calibration_rows = masked[~holdout], masked[holdout]
    if not recipe.uses_prior or not recipe.calibration.enabled:
        prior_rows = masked if recipe.uses_prior else masked.iloc[:0]
    if opts.prior_run is not None or opts.from_bundle is not None:   # given networks: every mask they did not
        prior_rows, calibration_rows = masked.iloc[:0], masked          # learn from calibrates
    if opts.fine_tune:      # a user's few masks both fine-tune and calibrate: held out, they would starve either
        prior_rows = masked
    calibrating = bool(recipe.calibration.enabled and len(calibration_rows) and recipe.method != "classic")
    return _Images(rows, prior_rows, calibration_rows, evaluation_ids, calibrating)


def _build_networks(opts: FitOptions, recipe: Recipe, data: Path, images: _Images, source: SourceBundle | None,
                    folder: B.BundleFolder) -> tuple[object, list[_Network], dict | None]:
    """Every network the bundle will hold, built (a RUN's prior and a source bundle's networks loaded) before the
    old bundle is taken out of use: the wsm.mapping.MapModels, the networks to train, where a RUN's prior came
    from."""
    from wsm.mapping import MapModels
    from wsm.models.segmentation import averaged

    if opts.prior_run is not None and recipe.prior.members > 1:
        raise PipelineError(f"--prior-run gives one network as the prior; prior.members = {recipe.prior.members} "
                            "asks for several: leave it at 1 with --prior-run")
    models = MapModels(recipe, device=opts.device)
    networks, prior_source = [], None
    try:
        if opts.prior_run is not None:
            models.prior, prior_source = load_prior(opts.prior_run, recipe.prior.arch, recipe.prior.encoder)
            models.prior.to(opts.device)
        if source is not None:
            source.load_networks(models, opts.device)
            if opts.fine_tune:
                members = _fine_tune_networks(recipe, data, images.prior_rows, folder.work, opts.device,
                                              models.prior, source)
                networks += members
                models.prior = averaged([n.model for n in members])
        elif recipe.uses_classifier:
            networks.append(_classifier_network(recipe, data, images.rows, folder.work, opts.device))
            models.classifier = networks[-1].model
        if source is None and recipe.uses_prior and len(images.prior_rows):
            members = [_prior_network(recipe, data, images.prior_rows, folder.work, opts.device, k)
                       for k in range(recipe.prior.members)]
            networks += members
            models.prior = averaged([n.model for n in members])
    except ValueError as err:       # the registries' "unknown ...; valid ones: ..." for a --set arch or encoder
        raise PipelineError(f"pipeline {opts.pipeline!r}: {err}") from err
    if recipe.method != "classic" and models.prior is None and models.classifier is None:
        raise DataError(f"pipeline {opts.pipeline!r} has no network to fit: {data} has no official masks in the "
                        f"fitting splits ({', '.join(recipe.fit.splits)}) outside --exclude to train its prior on; "
                        "add masks (`wsm download --challenge isic2018`, `wsm import --masks DIR`), or use the "
                        "no-learning pipeline: --pipeline classic")
    return models, networks, prior_source


def _provenance(opts: FitOptions, recipe: Recipe, data: Path, requested: str, evaluation_ids: frozenset[str]) -> dict:
    """provenance.json as it starts: the recipe, the DATA it is fitted on, the software; the fit adds the rest."""
    return {"recipe": recipe.name, "method": recipe.method, "seed": recipe.seed, "device": opts.device,
            "requested_pipeline_sha256": requested,
            "data": str(data.resolve()), "versions": versions(), "excluded_ids": len(opts.exclude_ids),
            "data_manifest_sha256": sha256_file(DataLayout(data).manifest),
            "evaluation_ids": sorted(evaluation_ids)}


def _keep_given_networks(opts: FitOptions, source: SourceBundle | None, models, folder: B.BundleFolder,
                         prior_source: dict | None, n_teacher_ids: int, provenance: dict) -> None:
    """Write the networks this fit was given into the bundle (a RUN's prior, a source bundle's networks), and
    where they came from into the provenance."""
    if opts.prior_run is not None:
        from wsm.learn.loop import save_network

        save_network(models.prior, folder.prior)
        provenance.update(prior_run=str(Path(opts.prior_run).resolve()), prior_run_ids=n_teacher_ids)
        provenance.setdefault("initial_weights", {})["prior"] = prior_source
    if source is not None:
        source.copy_networks(folder, with_prior=not opts.fine_tune)
        provenance.update(source.provenance())


def _train_networks(networks: list[_Network], folder: B.BundleFolder, phases: _Phases, progress: bool,
                    provenance: dict, summary: FitSummary) -> None:
    """Train each network in turn and write it into the bundle; its losses and first weights go into the
    provenance, its seconds into the summary."""
    from wsm.learn.loop import save_network
    from wsm.models.weights import weight_source

    for network in networks:
        phases.begin()
        started = time.perf_counter()
        result = network.train(progress)
        save_network(network.model, folder.root / network.file)
        network.model.eval()
        provenance[f"{network.name}_losses"] = result.epoch_losses
        provenance.setdefault("initial_weights", {})[network.name] = (network.initial_weights
                                                                      or weight_source(network.model))
        summary.seconds[network.name] = time.perf_counter() - started


def _count_what_trained(networks: list[_Network], images: _Images, teacher_ids: frozenset[str], models,
                        provenance: dict, summary: FitSummary) -> None:
    """The classifier's classes and images, the prior's masks, members and optimiser steps (a given prior's masks
    too)."""
    from wsm.models.segmentation import members_of

    for classifier in (n for n in networks if n.name == "classifier"):
        classes, counts = classifier.dataset.mapping.classes, classifier.dataset.class_counts().tolist()
        provenance.update(classes=list(classes), class_counts=dict(zip(classes, counts)))
        summary.classifier_images = sum(counts)
    summary.prior_images = len(images.prior_rows) + len(teacher_ids) if models.prior is not None else 0
    for prior in (n for n in networks if n.name == "prior"):
        summary.prior_steps = prior.cfg.epochs * -(-len(prior.dataset) // prior.cfg.batch_size)
    summary.prior_members = len(members_of(models.prior)) if models.prior is not None else 1


def _calibrate_bundle(data: Path, rows: pd.DataFrame, models, resolved: dict,
                      folder: B.BundleFolder, progress: bool, provenance: dict, summary: FitSummary) -> dict:
    """Calibrate on the masks of ``rows`` and learn the quality model on the same samples; write calibration.json.
    The resolved recipe with both applied."""
    from wsm.fit.calibrate import learn_quality

    started = time.perf_counter()
    summary.calibration, samples = _calibrate(recipes_by_type(resolved), data, rows, models, progress)
    resolved = summary.calibration.apply(resolved)
    recipes = recipes_by_type(resolved)
    learnt_on = samples
    if any(recipe.cascade.enabled for recipe in recipes.values()):
        # learnt on the maps generate writes, and on a cascaded image's whole map too: beside its crop's, it shows
        # the model what the agreement of the two views (the agree_scale signal) says
        cascaded = calibration_samples(recipes, data, rows[rows["isic_id"].isin({s.isic_id for s in samples})],
                                       models)
        learnt_on = samples + [s for s in cascaded if s.pre.placement is not None]
    summary.quality = learn_quality(learnt_on, recipes)
    resolved["quality"] = quality_table(summary.quality)
    provenance["calibration_mask_ids"] = [s.isic_id for s in samples]
    write_json(folder.calibration, {**summary.calibration.__dict__, "isic_ids": provenance["calibration_mask_ids"]})
    summary.seconds["calibration"] = time.perf_counter() - started
    return resolved


def _write_bundle(folder: B.BundleFolder, resolved: dict, images: _Images, teacher_ids: frozenset[str],
                  provenance: dict, summary: FitSummary) -> None:
    """The bundle's pipeline.toml, then its provenance.json last (which puts the bundle back in use)."""
    provenance["fit_mask_ids"] = sorted(set(images.prior_rows["isic_id"]) | set(images.calibration_rows["isic_id"])
                                        | teacher_ids)
    provenance["seconds"] = summary.seconds
    B.write_pipeline(folder, resolved)
    write_json(folder.provenance, provenance)


def _source(opts: FitOptions) -> SourceBundle | None:
    """The bundle whose networks this fit keeps (--from-bundle), checked against the other options; None without."""
    if opts.from_bundle is None:
        if opts.fine_tune:
            raise SourceBundleError("--fine-tune trains further the prior of a fitted bundle: give it with "
                                    "--from-bundle BUNDLE")
        return None
    if opts.prior_run is not None:
        raise SourceBundleError("--from-bundle and --prior-run both give the networks: choose one")
    if opts.pipeline != "default":
        raise SourceBundleError(f"--from-bundle takes the source bundle's recipe: leave out --pipeline "
                                f"{opts.pipeline} (--set may change calibration settings)")
    return open_source(opts.from_bundle, opts.out)


def _requested_pipeline(opts: FitOptions, source: SourceBundle | None) -> tuple[dict, frozenset[str]]:
    """The resolved recipe this fit follows, and the ids whose masks given networks already learnt from (a RUN
    prior's lineage, a source bundle's fit_mask_ids): they are fitted, and never calibrate."""
    if source is not None:
        return source.resolved(tuple(opts.overrides)), source.fit_ids
    overrides, fitted = tuple(opts.overrides), frozenset()
    if opts.prior_run is not None:
        run_overrides, fitted = prior_run_settings(opts.prior_run)
        overrides += run_overrides
    return load_pipeline(opts.pipeline, "cuda" if opts.device.startswith("cuda") else "cpu", overrides), fitted


def _nothing_to_recalibrate(recipe: Recipe, data: Path, held_out: int) -> DataError:
    """Why a --from-bundle fit has no mask to calibrate on, and what to do."""
    if not recipe.calibration.enabled:
        return DataError("--from-bundle only recalibrates, and calibration.enabled=false turns that off: drop it")
    if held_out:
        return DataError(f"--from-bundle: every mask {data} has left for calibration was held out for the report "
                         f"({held_out}); import more masks, or use them all: --set fit.eval_fraction=0")
    return DataError(f"--from-bundle: {data} has no official masks in the fitting splits "
                     f"({', '.join(recipe.fit.splits)}) outside --exclude and the source bundle's own fit, so there "
                     "is nothing to calibrate to; import your masks with `wsm import --images DIR --masks DIR "
                     f"--out {data}` (a dataset of your own goes to the train split)")


def _announce_plan(opts: FitOptions, recipes: dict[str, Recipe], data: Path, networks: list, calibration_rows,
                   models, evaluation_ids: frozenset[str]) -> list[tuple[str, str, float]]:
    """Say up front what fit will do and how long it will take here (each cost measured on this machine); the
    phases (name, what, estimated seconds; none without progress output)."""
    if not opts.progress:
        return []
    estimates = [(n.name, n.describe(), n.estimate_s()) for n in networks]
    if calibration_rows is not None:
        most = recipes[DEFAULT_TYPE].calibration.max_images
        estimates.append(("calibration", f"on {min(len(calibration_rows), most)} masks",
                          _calibration_estimate_s(recipes, data, calibration_rows, models)))
    if evaluation_ids:
        announce(f"fit keeps {len(evaluation_ids)} masked images out of everything, so that `wsm report` can score "
                 "their maps honestly (--set fit.eval_fraction=0 uses every mask)")
    if estimates:
        announce(f"fit: about {_minutes(sum(s for *_, s in estimates))} on this machine (measured; interrupt and "
                 "rerun the same command to resume):")
        for step, (name, what, seconds) in enumerate(estimates, 1):
            announce(f"  {step}/{len(estimates)} {name} {what}: {_minutes(seconds)}")
    return estimates


class _Phases:
    """One line as each phase of the plan starts: which, and how long the whole fit has left."""

    def __init__(self, estimates: list[tuple[str, str, float]]):
        self.estimates, self.done, self.started = estimates, 0, time.perf_counter()

    def begin(self) -> None:
        if self.done < len(self.estimates):
            name = self.estimates[self.done][0]
            left = sum(seconds for *_, seconds in self.estimates[self.done:])
            announce(f"fit {self.done + 1}/{len(self.estimates)}: {name}; "
                     f"{_minutes(time.perf_counter() - self.started)} so far, about {_minutes(left)} left")
        self.done += 1
