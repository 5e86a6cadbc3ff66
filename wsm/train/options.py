"""`wsm train`'s options and summary, and the error its bad options raise."""
from __future__ import annotations

import contextlib
import shlex
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsm.errors import WsmError

LABEL_CHOICES = ("official", "both")   # or a folder of label maps
NO_EVAL = "none"                       # --eval-split none: no evaluation


WEAK_AUGMENT_CHOICES = ("same", "strong")   # keys of wsm.learn.augment.WEAK_AUGMENTS
AUGMENT_STRENGTH_CHOICES = ("standard", "strong")   # keys of wsm.learn.augment.AUGMENT_STRENGTHS


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
    augment_strength: str = "standard"   # the recipe on every image: the segmenter's, or "strong" (WEAK_MAP_AUGMENT)
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
        if self.augment_strength not in AUGMENT_STRENGTH_CHOICES:
            raise TrainError(f"augment_strength must be one of {', '.join(AUGMENT_STRENGTH_CHOICES)}, "
                             f"got {self.augment_strength!r}")

    def augmentation(self) -> dict:
        """wsm.learn.datasets.LabelMapDataset's augmentation arguments: whether, the recipe of the official masks'
        images, that of the weak maps' images."""
        from wsm.learn.augment import AUGMENT_STRENGTHS, WEAK_AUGMENTS

        return {"augment": self.augment, "augment_cfg": AUGMENT_STRENGTHS[self.augment_strength],
                "weak_augment_cfg": WEAK_AUGMENTS[self.weak_augment]}

    def resolved_loss(self) -> str:
        return self.loss or ("bce+dice" if self.num_classes == 1 else "ce")

    def label_flags(self) -> list[str]:
        """--labels (and --maps) as the command line spells them."""
        if self.labels in LABEL_CHOICES:
            return ["--labels", self.labels] + (["--maps", str(self.wsm)] if self.wsm is not None else [])
        return ["--labels", "weak", "--maps", self.labels]

    def flag_values(self) -> dict[str, object]:
        """Every flag of the command line, in its order, with its value: True for a switch that is given, None for
        a flag left out (it has its default)."""
        labels = self.label_flags()
        return {
            "--data": self.data,
            "--out": self.out,
            "--labels": labels[1],
            "--maps": labels[3] if len(labels) > 2 else None,
            "--min-confidence": self.min_confidence,
            "--min-predicted-jaccard": self.min_predicted_jaccard,
            "--arch": self.arch,
            "--encoder": self.encoder,
            "--num-classes": self.num_classes,
            "--loss": self.resolved_loss(),
            "--train-split": self.split_train,
            "--eval-split": self.eval_split,
            "--epochs": self.epochs,
            "--size": self.size,
            "--batch-size": self.batch_size,
            "--lr": self.lr,
            "--weight-decay": self.weight_decay,
            "--seed": self.seed,
            "--device": self.device,
            "--no-augment": True if not self.augment else None,
            "--augment-strength": self.augment_strength if self.augment_strength != "standard" else None,
            "--weak-augment": self.weak_augment if self.weak_augment != "same" else None,
            "--accumulate": self.accumulate if self.accumulate != 1 else None,
            "--no-pretrained": True if not self.pretrained else None,
            "--weights": self.weights_file or None,
            "--init": self.init or None,
            "--threshold": self.threshold if self.threshold != 0.5 else None,
        }

    def command(self, *, lead: Sequence[str] = (), drop: Collection[str] = (),
                after: Mapping[str, Sequence[str]] | None = None, tail: Sequence[str] = ()) -> str:
        """The `wsm train` command line that reproduces these options (every value spelled out).

        A variant of it: ``lead`` words right after ``wsm train`` (e.g. ``--task attributes``), the flags named in
        ``drop`` left out, ``after[flag]`` words in that flag's place, after it (whether the flag is spelled out,
        left out or dropped), and ``tail`` words at the end."""
        after = dict(after or {})
        values = self.flag_values()
        unknown = (set(drop) | set(after)) - set(values)
        if unknown:
            raise ValueError(f"no such `wsm train` flag: {', '.join(sorted(unknown))}")
        args = ["wsm", "train", *lead]
        for flag, value in values.items():
            if flag not in drop and value is not None:
                args += [flag] if value is True else [flag, str(value)]
            args += after.get(flag, ())
        return shlex.join([*args, *tail])


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
