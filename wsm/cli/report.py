"""`wsm report`: score ISIC_WSM maps against the official masks and write REPORT/ (html, json, csv)."""
from __future__ import annotations

from pathlib import Path

from wsm.cli.common import HelpFormatter, print_summary

REPORT_SPLITS = ("all", "labeled", "train", "val", "test")


def register(commands) -> None:
    report = commands.add_parser(
        "report",
        help="score the weak maps against the official masks: report.html, metrics.json, per_image.csv",
        description="For every image of a split of DATA that has an official mask and a map in WSM: the official "
        "ISIC metrics (isic-challenge-scoring 5.6.0), the uncertain pixels (255) scored both as background and "
        "left out; breakdowns by diagnosis, image type, lesion size and source; the confidence score's "
        "calibration; galleries of the best and worst maps. The headline leaves out images whose mask fit used "
        "and official masks copied as maps; images with a mask but no map are listed, never dropped.",
        formatter_class=HelpFormatter,
    )
    report.add_argument("--pred", required=True, type=Path, metavar="WSM", help="from `wsm generate`")
    report.add_argument("--data", required=True, type=Path, metavar="DATA", help="with the official masks")
    report.add_argument("--split", default="all", choices=REPORT_SPLITS,
                        help="which official masks to score against (the held-out test split for honest numbers)")
    report.add_argument("--only", type=Path, metavar="IDS", help="only these isic_ids (one per line, or a CSV)")
    report.add_argument("--out", required=True, type=Path, metavar="REPORT",
                        help="folder for report.html, metrics.json and per_image.csv")
    report.set_defaults(run=run_report)


def run_report(args) -> int:
    from wsm.report.driver import build_report, report_command
    from wsm.selection import read_id_list

    command = report_command(args.pred, args.data, args.out, args.split, str(args.only) if args.only else None)
    summary = build_report(args.pred, args.data, args.out, split=args.split, only_ids=read_id_list(args.only),
                           command=command)
    code = print_summary(summary)
    print(summary.html)
    return code
