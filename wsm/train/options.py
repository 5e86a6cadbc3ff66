"""`wsm train`'s options and summary, and the error its bad options raise."""
from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wsm.errors import WsmError

LABEL_CHOICES = ("official", "both")   # or a folder of label maps
NO_EVAL = "none"                       # --eval-split none: no evaluation


WEAK_AUGMENT_CHOICES = ("same", "strong")   # keys of wsm.learn.augment.WEAK_AUGMENTS


class TrainError(WsmError, ValueError):
    """Options `wsm train` cannot run with (unknown architecture, encoder or loss, a bad combination)."""


@contextlib.contextmanager
def as_train_error() -> Iterator[None]:
    """Registry lookups raise ValueError listing the valid names: show them as a one-line CLI error."""
    try:
        yield
    except WsmError:
        raise
    except ValueError as err:
        raise TrainError(str(err)) from err


# The encoder each architecture starts with when none is named: segnet and convmixer build encoders of their own
# kind, the others take a timm CNN (this one's ImageNet weights ship with wsm).
DEFAULT_ENCODERS = {"segnet": "segnet_small", "convmixer": "convmixer_256_8"}
TIMM_DEFAULT_ENCODER = "tf_efficientnet_lite0"


def default_encoder(arch: str | None) -> str:
    return DEFAULT_ENCODERS.get(arch or "unet", TIMM_DEFAULT_ENCODER)


def has_imagenet_weights(encoder: str) -> bool:
    """Whether ImageNet weights exist for an encoder: not for wsm's own ConvMixers nor its small SegNets (only
    segnet_vgg16 takes VGG-16-BN's); timm's names have them (packaged, or from the hub)."""
    if encoder.startswith("convmixer_"):
        return False
    if encoder.startswith("segnet_"):
        return encoder == "segnet_vgg16"
    return True


@dataclass(frozen=True)
class TrainOptions:
    data: Path                           # the DATA folder (images, manifests, official masks)
    out: Path                            # RUN folder
    labels: str = "official"             # official | both | a folder of label maps (WSM)
    wsm: Path | None = None              # the weak maps for labels = both
    min_confidence: float | None = None  # train only on weak maps whose manifest confidence is at least this
    min_predicted_jaccard: float | None = None   # ... whose manifest predicted_jaccard is at least this
    arch: str = "unet"                   # a key of wsm.models.segmentation.ARCHITECTURES
    encoder: str = "tf_efficientnet_lite0"   # a timm model name
    num_classes: int = 1                 # 1: lesion map (sigmoid); K > 1: class-index maps (softmax)
    loss: str = ""                       # a key of wsm.learn.losses.LOSSES; "": bce+dice for 1 class, ce for K
    split_train: str = "train"           # DATA split whose images train (see the module doc)
    eval_split: str = "val"              # DATA split whose official masks evaluate; "none": no evaluation
    epochs: int = 20
    size: int = 192                      # square working side in pixels (a multiple of 32)
    batch_size: int = 16                 # images per optimiser step (over all processes)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True                 # the DeepHealth recipe (wsm.learn.augment)
    weak_augment: str = "same"           # on the weak maps' images: "same" recipe, or "strong" (WEAK_MAP_AUGMENT)
    seed: int = 0
    device: str = "cpu"
    workers: int = 0                     # DataLoader worker processes
    amp: bool = True                     # float16 mixed precision on CUDA
    accumulate: int = 1                  # gradient accumulation chunks per batch
    pretrained: bool = True              # ImageNet encoder weights (wsm.models.weights); False: random
    weights_file: str = ""               # or from a local timm weights file
    init: str = ""                       # start from an earlier RUN's whole network (fine-tuning), see check_init
    resume: bool = True                  # continue a checkpoint in RUN made with the same settings (False: refuse)
    threshold: float = 0.5               # lesion where the probability is above this
    save_predictions: bool = False       # write RUN/predictions/ISIC_x_segmentation.png (0/255)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.weak_augment not in WEAK_AUGMENT_CHOICES:
            raise TrainError(f"weak_augment must be one of {', '.join(WEAK_AUGMENT_CHOICES)}, "
                             f"got {self.weak_augment!r}")

    def resolved_loss(self) -> str:
        return self.loss or ("bce+dice" if self.num_classes == 1 else "ce")

    def label_flags(self) -> list[str]:
        """--labels (and --maps) as the command line spells them."""
        if self.labels in LABEL_CHOICES:
            return ["--labels", self.labels] + (["--maps", str(self.wsm)] if self.wsm is not None else [])
        return ["--labels", "weak", "--maps", self.labels]

    def command(self) -> str:
        """The `wsm train` command line that reproduces these options (every value spelled out)."""
        args = ["wsm", "train", "--data", str(self.data), "--out", str(self.out), *self.label_flags()]
        if self.min_confidence is not None:
            args += ["--min-confidence", str(self.min_confidence)]
        if self.min_predicted_jaccard is not None:
            args += ["--min-predicted-jaccard", str(self.min_predicted_jaccard)]
        args += ["--arch", self.arch, "--encoder", self.encoder, "--num-classes", str(self.num_classes),
                 "--loss", self.resolved_loss(), "--train-split", self.split_train, "--eval-split", self.eval_split,
                 "--epochs", str(self.epochs), "--size", str(self.size), "--batch-size", str(self.batch_size),
                 "--lr", str(self.lr), "--weight-decay", str(self.weight_decay), "--seed", str(self.seed),
                 "--device", self.device]
        if not self.augment:
            args.append("--no-augment")
        if self.weak_augment != "same":
            args += ["--weak-augment", self.weak_augment]
        if self.accumulate != 1:
            args += ["--accumulate", str(self.accumulate)]
        if not self.pretrained:
            args.append("--no-pretrained")
        if self.weights_file:
            args += ["--weights", self.weights_file]
        if self.init:
            args += ["--init", self.init]
        if self.threshold != 0.5:
            args += ["--threshold", str(self.threshold)]
        return shlex.join(args)


@dataclass
class TrainSummary:
    out: Path
    metrics: dict = field(default_factory=dict)     # the mean metrics (empty without evaluation)
    n_train: int = 0
    n_eval: int = 0
    losses: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)       # further lines to show (e.g. MB-DCNN's coarse network)
    next_step: str = ""                             # what to run next ("" : fine-tune it with --init)

    def lines(self) -> list[str]:
        out = [f"trained on {self.n_train} images; run folder {self.out}"]
        if self.losses:
            out.append("epoch losses: " + ", ".join(f"{x:.4f}" for x in self.losses))
        if self.metrics:
            shown = {k: v for k, v in self.metrics.items() if isinstance(v, float)}
            out.append(f"eval on {self.n_eval} images: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        out += self.notes
        if self.seconds:
            out.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        out.append(f"outputs: {self.out / 'model.safetensors'} (the network), {self.out / 'metrics.json'}"
                   + (f", {self.out / 'per_image.csv'}" if self.metrics else "")
                   + "; " + (self.next_step or f"fine-tune it further with `wsm train --init {self.out} ...`"))
        return out
