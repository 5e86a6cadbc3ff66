"""`wsm download` and `wsm import`: get images, metadata and official masks into a DATA folder."""
from __future__ import annotations

import sys
from pathlib import Path

from archive_client.api import DEFAULT_API_URL
from archive_client.challenges import ATTRIBUTE_CATALOG, ATTRIBUTES, CATALOG, DEFAULT_CHALLENGE_URL, SPLITS, TASKS
from archive_client.errors import printable
from archive_client.ids import comma_choices
from wsm.cli.common import HelpFormatter, UsageError, add_image_type_flag, add_renamed, print_summary


def register(commands) -> None:
    download = commands.add_parser(
        "download",
        help="download archive images and metadata, or official challenge masks",
        description="Download images and their metadata from the ISIC archive API v2 into DATA "
        "(images/, metadata.csv, attribution.txt, licenses/, manifest.parquet), concurrently, verified and "
        "resumable: rerun the same command after an interruption and only what is missing is fetched. "
        "With --challenge, download the official lesion masks of an ISIC challenge instead, or with --challenge "
        "isic2018 --task attributes its Task 2 dermoscopic attribute masks.",
        formatter_class=HelpFormatter,
    )
    download.add_argument("-o", "--out", required=True, type=Path, metavar="DATA", help="the DATA folder to fill")
    download.add_argument("--api-url", default=DEFAULT_API_URL, help="ISIC API v2 base URL")
    download.add_argument("--search", default="", metavar="QUERY",
                          help="archive search DSL, e.g. 'diagnosis_3:\"Melanoma Invasive\" AND age_approx:[20 TO 40]'")
    download.add_argument("--collections", default="", help="comma-separated collection ids, e.g. 1,2")
    download.add_argument("--limit", type=int, default=0, help="at most N images (0: every match)")
    download.add_argument("--connections", type=int, default=32, help="concurrent HTTP transfers")
    add_renamed(download, "--workers", "--connections")
    download.add_argument("--verify", action="store_true",
                          help="re-hash and decode files already listed in the manifest")
    download.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="HOST[:PORT]",
                          help="also fetch image files from this host (repeatable); by default only the archive's "
                               "own host (and its sibling hosts, e.g. content.isic-archive.com) is trusted")
    download.add_argument("--min-rate", type=float, default=16.0, metavar="KB/S",
                          help="give up on a file (it resumes on the next run) that averages less than this many "
                               "kB/s after a grace of two minutes, retries included; 0: never (default 16)")
    download.add_argument("--challenge", choices=sorted(CATALOG), help="download this challenge's official masks")
    download.add_argument("--splits", type=comma_choices(SPLITS, "split(s)"),
                          help=f"with --challenge: which splits, comma-separated (default: {','.join(SPLITS)})")
    download.add_argument("--task", choices=TASKS, default="lesion",
                          help="with --challenge: lesion (Task 1 lesion masks, into DATA/masks/) or attributes (the "
                               f"ISIC 2018 Task 2 masks of {', '.join(ATTRIBUTES)}, into DATA/attributes/; "
                               f"challenges: {', '.join(ATTRIBUTE_CATALOG)}); default lesion")
    download.add_argument("--inputs", action="store_true", help="with --challenge: the input images too")
    download.add_argument("--challenge-url", default=DEFAULT_CHALLENGE_URL,
                          help="base URL of the challenge zips (env WSM_CHALLENGE_URL)")
    download.set_defaults(run=run_download)

    imp = commands.add_parser(
        "import",
        help="build a DATA folder from your own images and masks (challenge data, PH2, a clinic's own)",
        description="Build the DATA layout from folders you already have: extracted challenge zips (ISIC_ddddddd.jpg, "
        "ISIC_ddddddd_segmentation.png, ISIC 2018 Task 2 ISIC_ddddddd_attribute_<name>.png) or any lesion dataset "
        "(IMD002.bmp with IMD002_lesion.bmp, AMM1_orig.jpg with AMM1_contour.png, ...: the file name is the image "
        "id, kept as given), with an optional labels CSV or .xlsx of diagnoses. Masks may be 1-bit, 8-bit 0/1 or "
        "0/255, a grey palette or 16-bit, in PNG, BMP, TIFF or GIF; they are stored as 0/255 PNG. A folder in "
        "PH2's own layout imports as it is.",
        formatter_class=HelpFormatter,
    )
    imp.add_argument("-i", "--images", type=Path, metavar="DIR",
                     help="a folder (searched recursively) of images: <id>.jpg, .jpeg, .png, .bmp or .tif (an "
                          "image's _orig suffix is dropped from its id); optional when --labels names the files")
    imp.add_argument("--masks", type=Path, metavar="DIR",
                     help="a folder of lesion masks <id>_segmentation, _lesion, _contour or _mask (.png, .bmp, "
                          ".tif, .gif); may be the same folder as --images")
    imp.add_argument("--attributes", type=Path, metavar="DIR",
                     help="a folder of ISIC 2018 Task 2 attribute masks, ISIC_xxxxxxx_attribute_<name>.png with name "
                          f"{', '.join(ATTRIBUTES)}: all five of an image or none, its image in --images or in DATA")
    imp.add_argument("--labels", type=Path, metavar="FILE",
                     help="a CSV or .xlsx with one row per image: an id column (isic_id, image_id or Image Name) "
                          "and diagnoses (the archive's diagnosis_1..5, a plain diagnosis column, one X-marked "
                          "column per diagnosis, or the ISIC 2017 melanoma / seborrheic_keratosis columns), "
                          "image_type, other metadata; image and mask columns (paths relative to the file) name "
                          "the files when --images is not given")
    imp.add_argument("--challenge", default="local", metavar="NAME",
                     help="the dataset's name: masks go to DATA/masks/NAME/ and reports name it (isic2018, ph2, "
                          "mine; default local)")
    imp.add_argument("--assign-split", default="auto", choices=["auto", *SPLITS],
                     help="the split the imported masks are put in; auto: their official split for ISIC "
                          "challenges (an error where wsm's reference list does not know it), train for a dataset "
                          "of your own (wsm fit holds out some of them by itself)")
    add_renamed(imp, "--split", "--assign-split")
    add_image_type_flag(imp, "dermoscopic", "the images whose labels give none")
    imp.add_argument("--link", action="store_true", help="hard-link instead of copying where possible")
    imp.add_argument("-o", "--out", required=True, type=Path, metavar="DATA", help="the DATA folder to fill")
    imp.set_defaults(run=run_import)


def _flags_of_the_other_mode(args) -> str | None:
    """An error naming the flags given that the chosen mode (archive images, or --challenge masks) ignores."""
    if args.challenge:
        unused = [flag for flag, given in (("--search", args.search), ("--collections", args.collections),
                                           ("--limit", args.limit), ("--verify", args.verify),
                                           ("--allow-host", args.allow_hosts)) if given]
        return f"{', '.join(unused)}: archive image options, not used with --challenge" if unused else None
    unused = [flag for flag, given in (("--splits", args.splits is not None), ("--inputs", args.inputs),
                                       ("--task", args.task != "lesion")) if given]
    if args.task == "attributes":
        return "--task attributes needs --challenge isic2018 (the ISIC 2018 Task 2 attribute masks)"
    return f"{', '.join(unused)}: only used with --challenge NAME" if unused else None


def run_download(args) -> int:
    from archive_client.transfer import RetryPolicy

    conflict = _flags_of_the_other_mode(args)
    if conflict:
        raise UsageError(conflict)
    if not args.min_rate >= 0:
        raise UsageError(f"--min-rate {args.min_rate:g}: give a rate in kB/s, or 0 for no limit")
    policy = RetryPolicy(min_rate_bps=args.min_rate * 1000)
    if args.challenge:
        from archive_client.challenge_data import download_challenge

        summary = download_challenge(args.out, args.challenge, splits=args.splits or SPLITS, inputs=args.inputs,
                                     base_url=args.challenge_url, progress=not args.quiet, task=args.task,
                                     policy=policy)
    else:
        from archive_client.download import DownloadOptions, download_images

        opts = DownloadOptions(api_url=args.api_url, query=args.search, collections=args.collections,
                               limit=args.limit, workers=args.connections, verify=args.verify, progress=not args.quiet,
                               allow_hosts=tuple(args.allow_hosts), policy=policy)
        summary = download_images(args.out, opts)
    return _closing(summary, args.out)


def run_import(args) -> int:
    from archive_client.importer import import_folders

    summary = import_folders(args.out, images=args.images, masks=args.masks, labels=args.labels,
                             challenge=args.challenge, split=args.assign_split, link=args.link, progress=not args.quiet,
                             attributes=args.attributes, image_type=args.image_type)
    return _closing(summary, args.out)


def _closing(summary, data) -> int:
    """The command's summary, then what DATA now holds and the next command."""
    from archive_client.manifest import data_overview

    code = print_summary(summary)
    for line in data_overview(data):
        print(printable(line), file=sys.stderr)
    return code
