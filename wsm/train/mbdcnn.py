"""MB-DCNN (Xie et al., IEEE TMI 2020): coarse segmentation -> mask-guided classifier -> CAM-enhanced segmentation.

The recipe is ``pipelines/mbdcnn.toml`` (its comments say what each stage does); ``wsm train --pipeline mbdcnn``
runs :func:`train_mbdcnn`, which takes the same options as a single-network ``wsm train`` (labels, splits, device,
seed, resume, DDP under torchrun) and writes into RUN/::

    config.json, train_ids.txt, eval_ids.txt, metrics.json, per_image.csv    as `wsm train` (the enhanced network)
    coarse/          the coarse network's training folder (checkpoint.pt, model.safetensors, ...)
    coarse_maps/     ISIC_x.png: its lesion probability x 255 at the working size, for every image used
    classifier/      the mask-guided classifier's training folder
    cams/            ISIC_x.png: the classifier's class activation map x 255 at the working size
    enhanced/        the enhanced network's training folder

Modules: :class:`ELayer` (1x1 conv + BN + ReLU from the CAM to an encoder level's channels) and
:class:`EnhancedSegmenter` (any registered segmentation network whose encoder features are summed with the
E-layer outputs before the decoder; input = image + CAM as a 4th channel). The mask-guided classifier is
``wsm.models.classifier.create_classifier(..., in_chans=4)``, whose 4th input channel starts as the mean of the RGB
filters (``expand_first_conv_to_4ch``).

Choices made here: the CAM is *added* to the encoder features at every level (after average-pooling it to the
level's size), so any decoder works unchanged; the coarse maps given to the classifier for training images are the
coarse network's predictions on them (as the paper trains mask-CN on coarse-SN outputs); a map folder is reused by
a rerun only when it is complete for the same images (a ``.complete`` file records them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wsm._compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from wsm.config.pipeline import PipelineError, load_pipeline, stage_config  # noqa: E402
from wsm.config.recipe import CamConfig, ClassifierConfig, SegmenterConfig  # noqa: E402
from wsm.io.atomic import write_text_atomic  # noqa: E402
from wsm.io.hashing import ids_sha256  # noqa: E402
from wsm.io.lock import locks_output  # noqa: E402
from wsm.selection import DataError  # noqa: E402
from wsm.train.distributed import barrier  # noqa: E402
from wsm.train.driver import Evaluation, Plan, Trained, execute, plan_run  # noqa: E402
from wsm.train.evaluate import batched_predictions, evaluate_binary  # noqa: E402
from wsm.train.options import TrainOptions, TrainSummary, as_train_error  # noqa: E402
from wsm.train.run_folder import run_identity  # noqa: E402

__all__ = [
    "ELayer",
    "EnhancedSegmenter",
    "MbdcnnRecipe",
    "create_enhanced_segmenter",
    "load_mbdcnn_recipe",
    "train_mbdcnn",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- recipe

@dataclass(frozen=True)
class MbdcnnRecipe:
    name: str
    size: int                                    # working size of all three networks (multiple of 32)
    loss: str                                    # segmentation loss of both segmentation networks
    classes: dict                                # diagnosis -> class table (wsm.learn.datasets.ClassMapping)
    coarse: SegmenterConfig = field(default_factory=SegmenterConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    enhanced: SegmenterConfig = field(default_factory=SegmenterConfig)


_TOP_KEYS = {"name", "method", "size", "loss", "classes", "coarse", "classifier", "cam", "enhanced",
             "device_profile"}


def load_mbdcnn_recipe(pipeline: str | Path = "mbdcnn", device: str = "cpu", overrides: tuple[str, ...] = (),
                       given: dict | None = None) -> tuple[MbdcnnRecipe, dict]:
    """The typed recipe and the resolved table: the file, its [device.cuda] tables on CUDA, ``--set`` overrides,
    then the flags the user gave (``given``: arch/encoder/epochs/batch_size/lr/pretrained for every network, size,
    loss)."""
    resolved = load_pipeline(pipeline, "cuda" if device.startswith("cuda") else "cpu", list(overrides))
    if resolved.get("method") != "mbdcnn":
        raise PipelineError(f"pipeline {pipeline!r} has method = {resolved.get('method')!r}; `wsm train --pipeline` "
                            "takes an MB-DCNN recipe (method = \"mbdcnn\"), e.g. pipelines/mbdcnn.toml")
    unknown = sorted(set(resolved) - _TOP_KEYS)
    if unknown:
        raise PipelineError(f"unknown key(s) {unknown} in {pipeline!r}; valid: {', '.join(sorted(_TOP_KEYS))}")
    given = dict(given or {})
    for key in ("size", "loss"):
        if key in given:
            resolved[key] = given[key]
    size = resolved.setdefault("size", 192)
    for stage in ("coarse", "classifier", "enhanced"):
        table = resolved.setdefault(stage, {})
        for key in ("epochs", "batch_size", "lr", "pretrained"):
            if key in given:
                table[key] = given[key]
        if table.setdefault("size", size) != size:
            raise PipelineError(f"[{stage}] size = {table['size']}: the three MB-DCNN networks share the top-level "
                                "size; set that instead")
        if stage != "classifier":
            for key in ("arch", "encoder"):
                if key in given:
                    table[key] = given[key]
    recipe = MbdcnnRecipe(
        name=str(resolved.get("name", "mbdcnn")),
        size=int(size),
        loss=str(resolved.get("loss", "hybrid")),
        classes=dict(resolved.get("classes") or {}),
        coarse=stage_config(SegmenterConfig, resolved.get("coarse"), "coarse"),
        classifier=stage_config(ClassifierConfig, resolved.get("classifier"), "classifier"),
        cam=stage_config(CamConfig, resolved.get("cam"), "cam"),
        enhanced=stage_config(SegmenterConfig, resolved.get("enhanced"), "enhanced"),
    )
    if recipe.size % 32:
        raise PipelineError(f"size must be a multiple of 32, got {recipe.size}")
    if not recipe.classes:
        raise PipelineError(f"pipeline {pipeline!r} has no [classes] table: the mask-guided classifier needs one")
    return recipe, resolved


# --------------------------------------------------------------------------------------------------- modules

class ELayer(nn.Sequential):
    """MB-DCNN's E-layer: a class activation map (B, 1, h, w) -> (B, channels, h, w) by 1x1 conv + BN + ReLU."""

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(1, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class EnhancedSegmenter(nn.Module):
    """A segmentation network whose encoder features are summed with E-layer outputs of a CAM before the decoder.

    Args:
        base: a :class:`wsm.models.segmentation.SegmentationModel` (any registered architecture); its encoder,
            decoder and head are used as they are, with one E-layer per encoder level the decoder reads
            (``decoder.used_features`` when it has one, else every level).

    Shape:
        input (B, in_chans + 1, H, W): the normalised image and, last, the class activation map in [0, 1];
        H and W multiples of :attr:`reduction` -> logits (B, num_classes, H, W).
    """

    def __init__(self, base):
        super().__init__()
        self.base = base
        channels = base.encoder.feature_info.channels()
        # one E-layer per encoder level the decoder reads (DeepLabV3+ reads two; an unused E-layer would never be
        # trained, and DDP refuses parameters that get no gradient)
        used = getattr(base.decoder, "used_features", range(len(channels)))
        self.e_layers = nn.ModuleDict({str(i): ELayer(channels[i]) for i in used})
        self.in_chans = base.in_chans + 1
        self.num_classes = base.num_classes
        self.reduction = base.reduction

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected the image and its class activation map, (B, {self.in_chans}, H, W) with the "
                             f"map last, got {tuple(x.shape)}")
        image, cam = x[:, :-1], x[:, -1:]
        self.base.check_input_shape(image)
        features = self.base.encoder(image)
        for key, e_layer in self.e_layers.items():
            f = features[int(key)]
            features[int(key)] = f + e_layer(F.adaptive_avg_pool2d(cam, f.shape[-2:]))
        logits = self.base.head(self.base.decoder(features))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def create_enhanced_segmenter(arch: str, encoder: str, num_classes: int = 1, pretrained: bool = False,
                              weights_file: str | None = None) -> EnhancedSegmenter:
    """An :class:`EnhancedSegmenter` around ``create_segmenter(arch, encoder, ...)`` (RGB in, CAM as 4th channel)."""
    from wsm.models.segmentation import create_segmenter

    return EnhancedSegmenter(create_segmenter(arch, encoder, num_classes=num_classes, pretrained=pretrained,
                                              weights_file=weights_file))


# --------------------------------------------------------------------------------------------------- data

def _guided_classifier_dataset(data: Path, rows: pd.DataFrame, size: int, mapping, seed: int):
    """Training images with their diagnosis class and the coarse map as a 4th input channel (augmented together)."""
    import torch

    from wsm.io.images import read_mask
    from wsm.learn.augment import augment
    from wsm.models.inputs import image_tensor, resize_square
    from wsm.learn.datasets import ClassifierDataset

    class GuidedClassifierDataset(ClassifierDataset):
        def __init__(self):
            super().__init__(data, rows, size, mapping, augment=True, seed=seed)
            guide_of = dict(zip(rows["isic_id"], rows["guide_file"]))
            self.guide_files = [guide_of[i] for i in self.isic_ids]

        def __getitem__(self, index: int):
            image = self._read_image(self.files[index])
            guide = resize_square(read_mask(self.data_root / self.guide_files[index]), self.size)
            if self.augment:
                image, guide = augment(self._rng(index), image, guide, cfg=self.augment_cfg)
            x = image_tensor(image, guide)
            return x, torch.tensor(self.labels[index], dtype=torch.int64)

    return GuidedClassifierDataset()


def _write_maps(predict, data: Path, rows: pd.DataFrame, size: int, batch_size: int, folder: Path,
                guide_files: list[str] | None = None, progress: bool = False) -> None:
    """``folder/ISIC_x.png`` = round(255 x predict(image)) for every row, unless the folder is complete already."""
    from wsm.io.images import write_label_png
    from wsm.io.progress import progress as progress_bar

    marker = folder / ".complete"
    digest = ids_sha256(rows["isic_id"])
    if marker.exists() and marker.read_text(encoding="utf8").strip() == digest:
        log.info("%s is complete: reusing it", folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    maps = batched_predictions(predict, data, rows["file"].tolist(), size, batch_size, guide_files)
    for isic_id, prob in progress_bar(zip(rows["isic_id"], maps), total=len(rows), desc=folder.name, unit="img",
                                      enabled=progress):
        write_label_png(folder / f"{isic_id}.png", np.clip(np.rint(np.asarray(prob) * 255), 0, 255).astype(np.uint8))
    write_text_atomic(marker, digest + "\n")


# --------------------------------------------------------------------------------------------------- driver

# The single-network flags an MB-DCNN command line leaves out: the recipe holds the networks' settings, and the
# flags the user gave follow --device as given.
_NOT_MBDCNN_FLAGS = ("--arch", "--encoder", "--num-classes", "--loss", "--epochs", "--size", "--batch-size", "--lr",
                     "--weight-decay", "--no-pretrained", "--weights", "--init")


def _given_words(key: str, value) -> list[str]:
    """A flag the user gave, spelled as the command line takes it (a switch as --name or --no-name)."""
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", str(value)]


def _command(opts: TrainOptions, pipeline, overrides, given: dict | None) -> str:
    """The `wsm train --pipeline` command line of this run: the run's options, the flags given, the overrides."""
    given_words = [word for key, value in sorted((given or {}).items()) for word in _given_words(key, value)]
    return opts.command(drop=_NOT_MBDCNN_FLAGS,
                        after={"--maps": ["--pipeline", str(pipeline)], "--device": given_words}, tail=[word for override in overrides for word in ("--set", override)])


@locks_output("opts.out", torchrun=True)
def train_mbdcnn(opts: TrainOptions, pipeline: str | Path = "mbdcnn", overrides: tuple[str, ...] = (),
                 given: dict | None = None) -> TrainSummary | None:
    """Train the three networks in turn and evaluate the enhanced one (and the coarse one) on the official masks
    of ``opts.eval_split``; see the module doc. Returns the summary on rank 0, None on the other ranks."""
    from wsm.selection import read_manifest
    from wsm.learn.datasets import ClassMapping

    if opts.num_classes != 1:
        raise DataError("--pipeline mbdcnn segments lesions (one class); --num-classes must be 1")
    recipe, resolved = load_mbdcnn_recipe(pipeline, opts.device, overrides, given)
    plan = plan_run(opts, run_identity(opts, recipe=dataclasses.asdict(recipe)),
                    _command(opts, pipeline, overrides, given))
    mapping = ClassMapping.from_table(recipe.classes)
    manifest = read_manifest(opts.data)
    labelled = plan.train_rows.merge(manifest[["isic_id", *[c for c in mapping.fields if c in manifest.columns]]],
                                     on="isic_id", how="left")
    n_classified = sum(mapping.label(r) is not None for r in labelled.to_dict("records"))
    if n_classified == 0:
        raise DataError("no training image has a diagnosis that the [classes] table maps to a class; the "
                        "mask-guided classifier needs image-level labels (`wsm import --labels CSV`)")
    plan.extra_counts = {"n_classifier": n_classified}
    own_config = {"pipeline": str(pipeline), "overrides": list(overrides), "recipe": dataclasses.asdict(recipe),
                  "resolved": resolved}

    def train_networks(device: str, rank: int, world: int, start) -> Trained:
        start(own_config)
        return _train_three(plan, recipe, mapping, labelled, device, rank, world)

    return execute(plan, train_networks)


def _train_three(plan: Plan, recipe: MbdcnnRecipe, mapping, labelled: pd.DataFrame, device: str, rank: int,
                 world: int) -> Trained:
    """The three networks in turn (each map folder between them written by rank 0), timed stage by stage."""
    from wsm.learn.losses import create_loss

    run = _MbdcnnRun(plan, recipe, device, rank, world)
    with as_train_error():
        seg_loss = create_loss(recipe.loss, 1)
    all_rows = pd.concat([plan.train_rows[["isic_id", "file"]], plan.test_rows[["isic_id", "file"]]]).drop_duplicates(
        "isic_id").reset_index(drop=True)
    seconds: dict[str, float] = {}
    with _timed(seconds, "coarse"):
        coarse, coarse_result = _train_coarse(run, seg_loss)
        _write_coarse_maps(run, coarse, all_rows)
    with _timed(seconds, "classifier"):
        classifier, cls_result = _train_guided_classifier(run, mapping, labelled)
    with _timed(seconds, "cam"):
        _write_cams(run, classifier, all_rows)
    with _timed(seconds, "enhanced"):
        enhanced, enh_result = _train_enhanced(run, seg_loss)
    losses = {"coarse": coarse_result.epoch_losses, "classifier": cls_result.epoch_losses,
              "enhanced": enh_result.epoch_losses}
    return Trained(enh_result.epoch_losses, seconds, _evaluation(run, coarse, enhanced),
                   extra={"train_losses": losses, "coarse_metrics": {}})


@dataclass(frozen=True)
class _MbdcnnRun:
    """What the stages of one MB-DCNN run share: its plan and recipe, and this process's device, rank and world."""
    plan: Plan
    recipe: MbdcnnRecipe
    device: str
    rank: int
    world: int

    @property
    def opts(self) -> TrainOptions:
        return self.plan.opts

    @property
    def out(self) -> Path:
        return self.plan.folder.root

    @property
    def data(self) -> Path:
        return Path(self.plan.opts.data)

    def train(self, model, dataset, loss, stage, folder: str):
        """Train one network with its stage's settings (``stage``: a recipe table), its checkpoints in RUN/folder."""
        from wsm.learn.loop import TrainConfig, train

        opts = self.opts
        cfg = TrainConfig(epochs=stage.epochs, batch_size=stage.batch_size, lr=stage.lr,
                          weight_decay=stage.weight_decay, num_workers=opts.workers, seed=opts.seed,
                          device=self.device, amp=opts.amp, accumulate=opts.accumulate)
        return train(model, dataset, loss, cfg, self.out / folder, progress=opts.progress)

    def maps_of(self, folder: str, ids) -> list[str]:
        """The files of RUN/folder's map of each id."""
        return [str((self.out / folder / f"{i}.png").resolve()) for i in ids]


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """``seconds[stage]``: how long the block took."""
    started = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - started


def _train_coarse(run: _MbdcnnRun, seg_loss):
    """1. The coarse segmentation network on the training labels; the network (on the device) and its result."""
    import torch

    from wsm.learn.datasets import LabelMapDataset
    from wsm.models.segmentation import create_segmenter

    opts, cfg = run.opts, run.recipe.coarse
    with as_train_error():
        torch.manual_seed(opts.seed)
        coarse = create_segmenter(cfg.arch, cfg.encoder, pretrained=cfg.pretrained,
                                  weights_file=cfg.weights_file or None)
    dataset = LabelMapDataset(run.data, run.plan.train_rows, run.recipe.size, seed=opts.seed,
                              **opts.augmentation())
    result = run.train(coarse, dataset, seg_loss, cfg, "coarse")
    coarse.to(run.device)
    return coarse, result


def _write_coarse_maps(run: _MbdcnnRun, coarse, all_rows: pd.DataFrame) -> None:
    """RUN/coarse_maps/: the coarse network's map of every image used (rank 0 writes, the others wait)."""
    from wsm.models.segmentation import predict_prob

    if run.rank == 0:
        _write_maps(lambda x: predict_prob(coarse, x), run.data, all_rows, run.recipe.size,
                    run.recipe.coarse.batch_size, run.out / "coarse_maps", progress=run.opts.progress)
    barrier(run.world)


def _train_guided_classifier(run: _MbdcnnRun, mapping, labelled: pd.DataFrame):
    """2. The mask-guided classifier on the labelled training images and their coarse maps; the network (on the
    device, in eval mode) and its result."""
    import torch

    from wsm.learn.loop import classification_loss
    from wsm.models.classifier import create_classifier

    opts, cfg = run.opts, run.recipe.classifier
    dataset = _guided_classifier_dataset(
        run.data, labelled.assign(guide_file=run.maps_of("coarse_maps", labelled["isic_id"])),
        run.recipe.size, mapping, opts.seed)
    with as_train_error():
        torch.manual_seed(opts.seed)
        classifier = create_classifier(cfg.arch, mapping.num_classes, in_chans=4, pretrained=cfg.pretrained,
                                       weights_file=cfg.weights_file or None)
    result = run.train(classifier, dataset, classification_loss(dataset.class_counts()), cfg, "classifier")
    classifier.to(run.device).eval()
    return classifier, result


def _write_cams(run: _MbdcnnRun, classifier, all_rows: pd.DataFrame) -> None:
    """3. RUN/cams/: the mask-guided classifier's class activation map of every image used (rank 0 writes, the
    others wait)."""
    from wsm.models.cam import cam_maps

    recipe = run.recipe
    if run.rank == 0:
        _write_maps(lambda x: cam_maps(classifier, x, method=recipe.cam.method, flip_tta=recipe.cam.flip_tta),
                    run.data, all_rows, recipe.size, recipe.classifier.batch_size, run.out / "cams",
                    guide_files=run.maps_of("coarse_maps", all_rows["isic_id"]), progress=run.opts.progress)
    barrier(run.world)


def _train_enhanced(run: _MbdcnnRun, seg_loss):
    """4. The enhanced segmentation network on the training labels, the CAM through the E-layers; the network and
    its result."""
    import torch

    from wsm.learn.datasets import LabelMapDataset

    opts, cfg, train_rows = run.opts, run.recipe.enhanced, run.plan.train_rows
    with as_train_error():
        torch.manual_seed(opts.seed)
        enhanced = create_enhanced_segmenter(cfg.arch, cfg.encoder, pretrained=cfg.pretrained,
                                             weights_file=cfg.weights_file or None)
    dataset = LabelMapDataset(run.data, train_rows.assign(guide_file=run.maps_of("cams", train_rows["isic_id"])),
                              run.recipe.size, seed=opts.seed, guides=True, **opts.augmentation())
    return enhanced, run.train(enhanced, dataset, seg_loss, cfg, "enhanced")


def _evaluation(run: _MbdcnnRun, coarse, enhanced) -> Callable[[str], Evaluation]:
    """How the run is evaluated on a device: the enhanced network on the eval images' official masks (and their
    CAMs), with the coarse network's Jaccard beside it."""
    from wsm.models.segmentation import predict_prob

    opts, recipe, data, test_rows = run.opts, run.recipe, run.data, run.plan.test_rows

    def evaluate(device: str) -> Evaluation:
        enhanced.to(device)
        means, per_image = evaluate_binary(
            lambda x: predict_prob(enhanced, x), data, test_rows, recipe.size, recipe.enhanced.batch_size,
            opts.threshold, guide_files=run.maps_of("cams", test_rows["isic_id"]),
            predictions_dir=run.plan.folder.predictions if opts.save_predictions else None, progress=opts.progress)
        coarse_means, coarse_per_image = evaluate_binary(lambda x: predict_prob(coarse, x), data, test_rows,
                                                         recipe.size, recipe.coarse.batch_size, opts.threshold)
        per = pd.DataFrame(per_image)
        per["coarse_jaccard"] = [r["jaccard"] for r in coarse_per_image]
        notes = [f"coarse network alone: jaccard {coarse_means['jaccard']:.4f}, threshold_jaccard "
                 f"{coarse_means['threshold_jaccard']:.4f}"] if coarse_means else []
        return Evaluation(means, per, extra={"coarse_metrics": coarse_means}, notes=notes)

    return evaluate
