"""`wsm report`: score label maps against the official masks and write REPORT/ (html, json, csv)."""
from __future__ import annotations

from pathlib import Path

from wsm.cli.common import HelpFormatter, UsageError, add_renamed, print_summary

REPORT_SPLITS = ("all", "labeled", "train", "val", "test")


def register(commands) -> None:
    report = commands.add_parser(
        "report",
        help="score maps against the official masks: report.html, metrics.json, per_image.csv",
        description="For every image of a split of DATA that has an official mask and a map: the official "
        "ISIC metrics (isic-challenge-scoring 5.6.0), the uncertain pixels (255) scored both as background and "
        "left out; breakdowns by diagnosis, image type, lesion size and source; the confidence score's "
        "calibration; galleries of the best and worst maps. The maps are a WSM folder from `wsm generate`, or any "
        "folder of maps made elsewhere: ISIC_x.png (ISIC_WSM: 0 background, 1 lesion, 255 uncertain) or "
        "ISIC_x_segmentation.png (challenge: 0/255). The headline leaves out images whose mask fit used (the WSM "
        "manifest's mask_used_in_fit, and --fitted-ids) and official masks copied as maps; without a WSM manifest "
        "nothing says which masks were fitted, and the report says so. Images with a mask but no map are listed, "
        "never dropped.",
        epilog="example: wsm report --maps WSM --data DATA --split test --out REPORT, then open REPORT/report.html",
        formatter_class=HelpFormatter,
    )
    report.add_argument("-m", "--maps", type=Path, metavar="WSM",
                        help="the maps to score (required, unless --attributes): the folder `wsm generate` wrote, "
                             "or a folder of ISIC_x.png (0/1/255) or ISIC_x_segmentation.png (0/255) maps made "
                             "elsewhere")
    add_renamed(report, "--pred", "--maps")
    report.add_argument("--attributes", type=Path, metavar="DIR",
                        help="instead of --maps: dermoscopic-attribute maps (ISIC_x_attribute_<name>.png, 0/255, "
                             "e.g. RUN/predictions of `wsm train --task attributes`) scored against DATA's attribute "
                             "masks as ISIC 2018 Task 2 was (per attribute over the whole set, and their mean); "
                             "a report section per attribute with a gallery")
    report.add_argument("-d", "--data", required=True, type=Path, metavar="DATA",
                        help="from `wsm download` or `wsm import`, with the official masks")
    report.add_argument("--split", default="all", choices=REPORT_SPLITS,
                        help="which official masks to score against (the held-out test split for honest numbers)")
    report.add_argument("--only", type=Path, metavar="IDS", help="only these isic_ids (one per line, or a CSV)")
    report.add_argument("--fitted-ids", type=Path, metavar="FILE",
                        help="isic_ids whose official masks were used to make the maps (one per line, or a CSV "
                             "with an isic_id column): scored, but kept out of the headline; adds to the WSM "
                             "manifest's mask_used_in_fit, and for maps without one it is the only record")
    report.add_argument("-o", "--out", required=True, type=Path, metavar="REPORT",
                        help="folder for report.html, metrics.json and per_image.csv")
    report.set_defaults(run=run_report)


def run_report(args) -> int:
    from wsm.report.driver import build_report, report_command
    from wsm.selection import read_id_list

    if args.attributes is not None:
        return _attribute_report(args)
    if args.maps is None:
        raise UsageError("wsm report needs the maps to score: -m/--maps WSM (the folder `wsm generate` wrote, or a "
                         "folder of ISIC_x.png or ISIC_x_segmentation.png maps), or --attributes DIR for "
                         "attribute maps")
    command = report_command(args.maps, args.data, args.out, args.split, str(args.only) if args.only else None,
                             str(args.fitted_ids) if args.fitted_ids else None)
    summary = build_report(args.maps, args.data, args.out, split=args.split, only_ids=read_id_list(args.only),
                           command=command, fitted_ids=read_id_list(args.fitted_ids))
    code = print_summary(summary)
    print(summary.html)
    return code


def _attribute_report(args) -> int:
    import shlex

    from wsm.report.attributes import build_attribute_report
    from wsm.selection import read_id_list

    if args.maps is not None or args.fitted_ids is not None:
        raise UsageError("--attributes scores attribute maps alone: leave out --maps and --fitted-ids")
    command = shlex.join(["wsm", "report", "--attributes", str(args.attributes), "--data", str(args.data),
                          "--split", args.split, "--out", str(args.out)]
                         + (["--only", str(args.only)] if args.only else []))
    summary = build_attribute_report(args.attributes, args.data, args.out, split=args.split,
                                     only_ids=read_id_list(args.only) if args.only else None, command=command,
                                     progress=not args.quiet)
    code = print_summary(summary)
    print(summary.html)
    return code
