"""Flags several command groups share."""
from __future__ import annotations


def add_set_flag(parser, what: str = "pipeline") -> None:
    """--set SECTION.KEY=VALUE (repeatable): override one value of the recipe."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help=f"override a {what} value, e.g. --set classifier.epochs=3 (repeatable)")
