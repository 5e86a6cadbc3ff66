"""`wsm fit`: train what a recipe needs on a DATA folder and write a BUNDLE.

1. a classifier on the image-level diagnosis labels of the manifest (recipe [classes]);
2. where the fitting splits have official masks, a segmentation prior on most of them;
3. calibration of fusion weight, mask threshold and decision margin on the rest (see wsm.fit.calibrate).
Images listed in ``exclude_ids`` (a held-out fold) are used for nothing. Training resumes from the
checkpoints in BUNDLE/work/ if a run was interrupted.
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
from tqdm import tqdm

from archive_client.layout import DataLayout
from wsm.config.pipeline import load_pipeline, pipeline_hash
from wsm.config.recipe import INFERENCE_ONLY, Recipe, build_recipe
from wsm.fit import bundle as B
from wsm.io.atomic import write_json
from wsm.io.hashing import sha256_file
from wsm.io.provenance import versions
from wsm.selection import DataError, read_manifest, read_truth, warn_unknown_ids, with_truth

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


@dataclass
class FitSummary:
    bundle: Path
    seconds: dict = field(default_factory=dict)
    classifier_images: int = 0
    prior_images: int = 0
    calibration: object = None

    def lines(self) -> list[str]:
        counts = [f"classifier images {self.classifier_images}"] if self.classifier_images else []
        counts.append(f"prior masks {self.prior_images}")
        out = [f"bundle written to {self.bundle}", ", ".join(counts)]
        if self.calibration is not None:
            c = self.calibration
            weight = "no prior" if c.prior_weight is None else f"prior weight {c.prior_weight}"
            weight += ", dense CRF" if c.crf else ", no CRF"
            out.append(f"calibrated on {c.n_images} held-out fitting-split masks: {weight}, "
                       f"threshold {c.mask_threshold}, Jaccard {c.jaccard:.3f}, certain pixels "
                       f"{c.certain_fraction:.1%} at accuracy {c.certain_accuracy:.3f}")
            if c.n_images < 10:
                out.append(f"warning: calibration saw only {c.n_images} masks; its choice is a guess (import or "
                           "download more official masks, or set [fusion.weights] yourself)")
        out.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        work = B.BundleFolder(self.bundle).work
        if work.is_dir():
            megabytes = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 1e6
            out.append(f"{work} ({megabytes:.0f} MB) keeps the training checkpoints, to resume or refit with other "
                       "settings; the bundle does not need it")
        return out


def in_holdout(isic_id: str, fraction: float, seed: int) -> bool:
    """Deterministic, order-free choice of the calibration images."""
    digest = hashlib.sha256(f"{seed}:{isic_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def work_dir(work: Path, stage: str, cfg, recipe: Recipe, extra: dict | None = None) -> Path:
    """Checkpoints of one stage, keyed by everything that shapes its model: a changed setting starts afresh
    instead of resuming a checkpoint trained differently."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in INFERENCE_ONLY}
    key = json.dumps({"cfg": settings, "seed": recipe.seed, **(extra or {})}, sort_keys=True)
    return work / f"{stage}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _train_config(cfg, recipe: Recipe, device: str):
    """The training loop's settings for one network of the recipe (classifier or prior)."""
    from wsm.train.loop import TrainConfig

    return TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       num_workers=recipe.fit.num_workers, seed=recipe.seed, device=device)


def _train_classifier(recipe: Recipe, data: Path, rows: pd.DataFrame, work: Path, device: str, progress: bool):
    import torch

    from wsm.models.classifier import create_classifier
    from wsm.train.datasets import ClassifierDataset, ClassMapping
    from wsm.train.loop import classification_loss, train

    mapping = ClassMapping.from_table(recipe.classes)
    cfg = recipe.classifier
    dataset = ClassifierDataset(data, rows, cfg.size, mapping, augment=True, seed=recipe.seed)
    if len(dataset) == 0:
        raise DataError(
            "no image in DATA has a diagnosis that the recipe's [classes] table maps to a class; add labels with "
            "`wsm import --labels CSV`, or use the no-learning pipeline: --pipeline classic")
    torch.manual_seed(recipe.seed)
    model = create_classifier(cfg.arch, mapping.num_classes, pretrained=cfg.pretrained,
                              weights_file=cfg.weights_file or None)
    folder = work_dir(work, "classifier", cfg, recipe, {"classes": recipe.classes})
    result = train(model, dataset, classification_loss(dataset.class_counts()), _train_config(cfg, recipe, device),
                   folder, progress=progress)
    counts = dict(zip(mapping.classes, dataset.class_counts().tolist()))
    return model, result, list(mapping.classes), counts


def _train_prior(recipe: Recipe, data: Path, rows: pd.DataFrame, work: Path, device: str, progress: bool):
    import torch

    from wsm.models.segmentation import create_segmenter
    from wsm.train.augment import SEGMENTER_AUGMENT
    from wsm.train.datasets import SegmentationDataset
    from wsm.train.loop import train
    from wsm.train.losses import BCEDice

    cfg = recipe.prior
    augment_cfg = dataclasses.replace(SEGMENTER_AUGMENT, scale=cfg.augment_scale, stretch=cfg.augment_stretch)
    dataset = SegmentationDataset(data, rows, cfg.size, augment=True, seed=recipe.seed, augment_cfg=augment_cfg)
    torch.manual_seed(recipe.seed)
    model = create_segmenter(cfg.arch, cfg.encoder, pretrained=cfg.pretrained,
                             weights_file=cfg.weights_file or None)
    folder = work_dir(work, "prior", cfg, recipe, {"size": recipe.preprocess.working_size})
    return model, train(model, dataset, BCEDice(), _train_config(cfg, recipe, device), folder, progress=progress)


def _calibrate(recipe: Recipe, data: Path, rows: pd.DataFrame, models, progress: bool):
    from wsm.fit.calibrate import Sample, calibrate
    from wsm.generate.maps import prepare, truth_at

    size = recipe.preprocess.working_size
    rows = rows.head(recipe.calibration.max_images)
    samples, batch = [], 16
    bar = tqdm(total=2 * len(rows), desc="calibrate", unit="img", disable=not progress)
    for start in range(0, len(rows), batch):
        chunk = rows.iloc[start:start + batch]
        pres = [prepare(data / f, recipe.preprocess) for f in chunk["file"]]
        maps = models.evidence([p.image for p in pres])
        samples += [Sample(p, m, truth_at(data / mf, size)) for p, m, mf in zip(pres, maps, chunk["mask_file"])]
        bar.update(len(chunk))
    result = calibrate(samples, recipe, progress=bar)
    bar.close()
    return result


def _start_replacing(out: Path, requested: str) -> None:
    """Take the bundle in ``out`` out of use until this fit writes its provenance last: a fit killed half-way
    leaves a bundle that `generate` refuses, never new weights beside an old calibration."""
    old = B.BundleFolder(out).provenance
    if not old.exists():
        return
    before = json.loads(old.read_text(encoding="utf8")).get("requested_pipeline_sha256")
    if before not in (None, requested):
        log.warning("%s holds a bundle fitted with other settings; this fit replaces it (checkpoints under "
                    "work/ are kept)", out)
    old.unlink()


def fit(opts: FitOptions) -> FitSummary:
    """Train, calibrate and write the bundle; see the module doc."""
    import torch

    from wsm.generate.maps import MapModels
    from wsm.models.weights import weight_source

    resolved = load_pipeline(opts.pipeline, "cuda" if opts.device.startswith("cuda") else "cpu", opts.overrides)
    recipe = build_recipe(resolved)
    if recipe.fit.threads:
        torch.set_num_threads(recipe.fit.threads)
    out, data = Path(opts.out), Path(opts.data)
    out.mkdir(parents=True, exist_ok=True)
    requested = pipeline_hash(resolved)
    _start_replacing(out, requested)
    folder = B.BundleFolder(out)
    summary = FitSummary(out)
    rows = with_truth(read_manifest(data), read_truth(data))
    warn_unknown_ids("--exclude", opts.exclude_ids, rows["isic_id"], data)
    rows = rows[~rows["isic_id"].isin(opts.exclude_ids)].reset_index(drop=True)
    masked = rows[rows["mask_file"].notna() & rows["split"].isin(recipe.fit.splits)]
    holdout = masked["isic_id"].map(lambda i: in_holdout(i, recipe.calibration.holdout_fraction, recipe.seed))
    prior_rows, calibration_rows = masked[~holdout], masked[holdout]
    if not recipe.uses_prior or not recipe.calibration.enabled:
        prior_rows = masked if recipe.uses_prior else masked.iloc[:0]
    models = MapModels(recipe, device=opts.device)
    provenance = {"recipe": recipe.name, "method": recipe.method, "seed": recipe.seed, "device": opts.device,
                  "requested_pipeline_sha256": requested,
                  "data": str(data.resolve()), "versions": versions(), "excluded_ids": len(opts.exclude_ids),
                  "data_manifest_sha256": sha256_file(DataLayout(data).manifest)}

    if recipe.uses_classifier:
        started = time.perf_counter()
        models.classifier, result, classes, counts = _train_classifier(recipe, data, rows, folder.work, opts.device,
                                                                       opts.progress)
        B.save_weights_file(models.classifier, folder.classifier)
        models.classifier.eval()
        provenance.update(classes=classes, class_counts=counts, classifier_losses=result.epoch_losses)
        provenance.setdefault("initial_weights", {})["classifier"] = weight_source(models.classifier)
        summary.classifier_images = sum(counts.values())
        summary.seconds["classifier"] = time.perf_counter() - started
    if recipe.uses_prior and len(prior_rows):
        started = time.perf_counter()
        models.prior, result = _train_prior(recipe, data, prior_rows, folder.work, opts.device, opts.progress)
        B.save_weights_file(models.prior, folder.prior)
        models.prior.eval()
        provenance.update(prior_losses=result.epoch_losses)
        provenance.setdefault("initial_weights", {})["prior"] = weight_source(models.prior)
        summary.prior_images = len(prior_rows)
        summary.seconds["prior"] = time.perf_counter() - started
    if recipe.calibration.enabled and len(calibration_rows) and recipe.method != "classic":
        started = time.perf_counter()
        summary.calibration = _calibrate(recipe, data, calibration_rows, models, opts.progress)
        resolved = summary.calibration.apply(resolved)
        write_json(folder.calibration, {**summary.calibration.__dict__,
                                           "isic_ids": calibration_rows["isic_id"].tolist()[:recipe.calibration.max_images]})
        summary.seconds["calibration"] = time.perf_counter() - started

    provenance["fit_mask_ids"] = sorted(set(prior_rows["isic_id"]) | set(calibration_rows["isic_id"]))
    provenance["seconds"] = summary.seconds
    B.write_pipeline(folder, resolved)
    write_json(folder.provenance, provenance)
    return summary
