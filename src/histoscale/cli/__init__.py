"""Command line: ``histoscale info | model-info | phantom | search | demo | classify | evaluate | cohort | calibrate``, one module
each.

Every command reports a bad input as one line on stderr naming the file and the fix, with exit code 2;
unexpected failures keep their traceback (they are bugs to report). Nothing outside this package imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from histoscale import __version__
from histoscale.cli import calibrate, classify, cohort, demo, evaluate, info, model_info, phantom, search
from histoscale.errors import HistoscaleError

__all__ = ["build_parser", "main"]

_COMMANDS = (info, model_info, phantom, search, demo, classify, evaluate, cohort, calibrate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histoscale",
        description="Find the scale (um/px) at which a trained patch classifier should see a whole-slide image.",
    )
    parser.add_argument("--version", action="version", version=f"histoscale {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except HistoscaleError as err:
        print(f"histoscale {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
