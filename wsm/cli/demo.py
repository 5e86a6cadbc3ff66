"""`wsm demo`: everything, offline, on the embedded sample."""
from __future__ import annotations

import sys
from pathlib import Path

from wsm.cli.common import HelpFormatter


def register(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole flow offline on the embedded sample",
        description="Serve the embedded sample (40 ISIC 2018 images, CC-0) with the local archive emulator, "
        "download it, fetch its official masks, and run the later stages on it. Offline, a few minutes on a "
        "laptop CPU.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("-o", "--out", type=Path, default=Path("out/demo"), help="where everything is written")
    demo.set_defaults(run=run)


def run(args) -> int:
    from wsm.demo import run_demo

    run_demo(args.out, echo=lambda line: print(line, file=sys.stderr), progress=not args.quiet)
    return 0
