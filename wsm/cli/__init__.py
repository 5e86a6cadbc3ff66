"""The `wsm` command line: parses flags and calls the drivers; one module per command group.

Errors the user can fix are printed as one line (``wsm: error: ...``) with exit code 2; ``-v`` shows the log.
"""
from __future__ import annotations

import argparse
import logging
import sys

from archive_client.errors import printable
from wsm import __version__
from wsm.errors import UserError, disk_error

from . import demo, download, fit, generate, report, train
from .common import check_device, os_error_line

COMMAND_GROUPS = [download, fit, generate, report, train, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsm",
        description="Weak segmentation maps for the whole ISIC archive: download the archive and the official "
        "masks, fit a classifier, generate ISIC_WSM label maps, report and train.",
    )
    parser.add_argument("--version", action="version", version=f"wsm {__version__}")
    _add_output_flags(parser, default_verbose=0, default_quiet=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    for command in commands.choices.values():   # -q/-v after the command too: `wsm generate -q ...`
        _add_output_flags(command, default_verbose=argparse.SUPPRESS, default_quiet=argparse.SUPPRESS)
    return parser


def _add_output_flags(parser: argparse.ArgumentParser, default_verbose, default_quiet) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default_verbose,
                        help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default_quiet,
                        help="no progress bars, warnings only")


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: messages quote ids and answers from servers."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's naming
        return printable(super().formatMessage(record))


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet or not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:     # a usage error (code 2) or --help, already printed
        return done.code
    _configure_logging(args.verbose, args.quiet)
    try:
        check_device(getattr(args, "device", "cpu"))
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("wsm: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except FileExistsError as err:     # a folder asked for where a file is
        print(f"wsm: error: {printable(err.filename)} is a file; give a folder path (new or existing) instead",
              file=sys.stderr)
        return 2
    except (UserError, FileNotFoundError, NotADirectoryError) as err:
        print(f"wsm: error: {printable(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        disk = err if isinstance(err, PermissionError) else disk_error(err)  # full or read-only, however wrapped
        if disk is None:
            raise
        print(f"wsm: error: {printable(os_error_line(disk, getattr(args, 'out', None)))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
