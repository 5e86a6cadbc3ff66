"""`wsm generate`: write ISIC_WSM label maps with a bundle (fitting one first when none is given)."""
from __future__ import annotations

import sys
from pathlib import Path

from wsm.cli.common import HelpFormatter, UsageError, add_image_type_flag, add_workers_flag, number, print_summary
from wsm.cli.fit import add_pipeline_flags, fit_overrides
from wsm.selection import SPLIT_CHOICES


def register(commands) -> None:
    gen = commands.add_parser(
        "generate",
        help="write an ISIC_WSM label map for every image of a split",
        description="Write WSM/ISIC_x.png (0 background, 1 lesion, 255 uncertain; the image's size) and "
        "WSM/manifest.parquet for every image of a split of DATA, or of a folder of images. Resumable (rerun "
        "the same command), shardable (--shard i/n, or RANK/WORLD_SIZE, or a Slurm array), one bad image never "
        "stops the run. With --split all and no --bundle, fits one into WSM/bundle first.",
        formatter_class=HelpFormatter,
    )
    gen.add_argument("-d", "--data", type=Path, metavar="DATA", help="from `wsm download` or `wsm import`")
    gen.add_argument("-i", "--images", type=Path, metavar="DIR", help="any folder of images instead of DATA")
    gen.add_argument("--bundle", type=Path, metavar="BUNDLE", help="from `wsm fit`")
    gen.add_argument("--split", default="all", choices=SPLIT_CHOICES,
                     help="which DATA images: all, those with (labeled) or without (unlabeled) an official mask, or "
                          "an official split")
    gen.add_argument("-o", "--out", type=Path, required=True, metavar="WSM",
                     help="where the maps and manifest.parquet go; one folder holds the maps of one bundle")
    gen.add_argument("--shard", metavar="I/N", help="this machine's share (default: RANK/WORLD_SIZE, Slurm, or 0/1)")
    gen.add_argument("--merge", action="store_true", help="only join the shards' manifest parts in WSM")
    add_workers_flag(gen, "decode, refine and write the maps",
                     "every core, or half of them when a CAM or a flip-TTA prior runs on the CPU")
    gen.add_argument("-b", "--batch-size", type=number(int), default=16, help="images per network batch")
    gen.add_argument("--limit", type=number(int, 0), default=0, help="at most N images (0: all)")
    gen.add_argument("--only", type=Path, metavar="IDS", help="only these isic_ids (one per line, or a CSV)")
    gen.add_argument("--export-challenge", action="store_true",
                     help="also write WSM/challenge/ISIC_x_segmentation.png (0/255) for isic-challenge-scoring")
    add_image_type_flag(gen, None, "the images whose type DATA does not record (with --images: every image)")
    gen.add_argument("--prefer-official", action="store_true",
                     help="where an official mask exists, write it instead of a weak map (source=official)")
    add_pipeline_flags(gen, generating=True, note="; with --bundle only the inference settings prior.flip_tta and "
            "cam.flip_tta, e.g. --set prior.flip_tta=true (4 flipped views, ~2.5x the CPU time); without, the "
            "settings of the fit it runs")
    gen.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from wsm.folders.wsm_folder import check_out_folder, merge_parts
    from wsm.generate import GenerateOptions, generate
    from wsm.generate.plan import parse_shard
    from wsm.selection import read_id_list

    if args.merge:
        print(f"merged into {merge_parts(args.out)}", file=sys.stderr)
        return 0
    if args.data is not None and args.images is not None:
        raise UsageError("give --data DATA (with --split) or --images DIR, not both")
    check_out_folder(args.out, data=args.data, images=args.images, bundle=args.bundle)   # before a fit writes
    bundle = args.bundle
    if bundle is None:
        if args.split != "all" or args.data is None:
            raise UsageError("give --bundle BUNDLE (from `wsm fit`); only --split all on --data fits one itself")
        from wsm.fit import FitOptions, fit

        bundle = args.out / "bundle"
        print_summary(fit(FitOptions(data=args.data, out=bundle, pipeline=args.pipeline, device=args.device,
                              overrides=fit_overrides(args), progress=not args.quiet)))
    summary = generate(GenerateOptions(out=args.out, bundle=bundle, data=args.data, images=args.images,
                                       split=args.split, shard=parse_shard(args.shard), device=args.device,
                                       workers=args.workers, batch_size=args.batch_size, limit=args.limit,
                                       only_ids=read_id_list(args.only),
                                       export_challenge=args.export_challenge,
                                       prefer_official=args.prefer_official, progress=not args.quiet,
                                       image_type=args.image_type,
                                       overrides=tuple(args.overrides) if args.bundle else ()))
    return print_summary(summary)
