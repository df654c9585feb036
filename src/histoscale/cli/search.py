"""``histoscale search SLIDE``: find the scale at which the model should see the slide."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histoscale._files import check_writable
from histoscale.cli._common import (
    add_model_options,
    add_search_options,
    add_slide_options,
    model_from,
    open_chosen,
    search_config_from,
    slide_choice,
)
from histoscale.reports.search import write_search_report
from histoscale.search import ScaleResult, find_scale


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the scale at which the model should see the slide")
    p.add_argument("slide")
    add_slide_options(p)
    p.add_argument("--out", default=None, help="folder for result.json, points.csv and figures")
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    add_search_options(p)
    p.set_defaults(func=run)


def search_and_report(args: argparse.Namespace, slide_path: str | Path, slide_mpp: float | None) -> ScaleResult:
    """Run the search the arguments describe on one slide; write the report when ``--out`` is given."""
    config = search_config_from(args)
    # cheap checks first: an unusable --out folder or slide fails before the model loads and the search runs
    if args.out:
        check_writable(args.out)
    with open_chosen(slide_path, slide_mpp, slide_choice(args)) as slide:
        # a bar on a terminal; --json stays quiet (scripts read its stdout, often with stderr on the same screen)
        progress = sys.stderr.isatty() and not getattr(args, "json", False)
        result = find_scale(slide, model_from(args), config, progress=progress)
        if args.out:
            arguments = {k: v for k, v in vars(args).items() if k != "func"}
            write_search_report(result, args.out, thumbnail=slide.thumbnail(), arguments=arguments)
    return result


def run(args: argparse.Namespace) -> int:
    result = search_and_report(args, args.slide, args.slide_mpp)
    if args.json:
        print(result.to_json(per_point=False))
    else:
        print(result.summary())
        if args.out:
            print(f"report written to {args.out}")
    return 0
