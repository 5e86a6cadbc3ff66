"""Flags and help formatting several command groups share."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except for on/off flags and options with no default worth showing (None, an
    empty list or string), and where the help already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = action.nargs == 0           # store_true / store_false / count-like switches
        if flag or action.default is None or action.default in ([], "") or "default" in text:
            return text
        return super()._get_help_string(action)


def add_set_flag(parser, what: str = "pipeline", note: str = "") -> None:
    """--set SECTION.KEY=VALUE (repeatable): override one value of the recipe."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help=f"override a {what} value, e.g. --set classifier.epochs=3 (repeatable){note}")
