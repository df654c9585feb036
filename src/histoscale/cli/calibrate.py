"""``histoscale calibrate SLIDE... --out calibration.json``: measure where the model's margins peak on slides of
trusted um/px, so that later searches with it correct for it (``--calibration``, or the card's ``calibration``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from histoscale._files import atomic_write, check_writable, json_safe
from histoscale.calibration import require_slides, slope_shortfall
from histoscale.cli._common import add_model_options, add_search_options, model_from, search_config_from
from histoscale.cohort import calibrate_model
from histoscale.cohort.manifest import jobs_from
from histoscale.errors import ConfigError

RECOMMENDED_SLIDES = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="measure where the model's margins peak, on slides whose um/px is trusted",
        description="Search each slide as `histoscale search` would (calibration off) and fit where the model's "
        "margins peak against the slides' trusted um/px (their metadata, or a manifest's slide_mpp column). "
        "Writes the calibration JSON: pass it as --calibration to search/cohort/classify, or add it to the model "
        "card under \"calibration\". Use slides like those the model will meet (at least 3; 20 or more for an "
        "interval you can trust).",
    )
    p.add_argument("slides", nargs="*", help="slides whose metadata um/px is trusted")
    p.add_argument("--manifest", default=None, help="CSV with 'slide' and 'slide_mpp' (trusted um/px) columns")
    p.add_argument("--out", required=True, help="calibration JSON to write")
    add_model_options(p)
    add_search_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.slides) == bool(args.manifest):
        raise ConfigError("give the slides, or --manifest CSV with 'slide' and 'slide_mpp' columns (one of them)")
    if args.calibration is not None or not args.calibrated:
        flag = "--calibration" if args.calibration is not None else "--uncalibrated"
        raise ConfigError(f"{flag}: calibrate always measures the model without a calibration; drop the flag")
    if args.paper:
        raise ConfigError("--paper: the paper's Algorithm 1 is never calibrated, so there is nothing to measure for "
                          "it; calibrate the default search (drop --paper)")
    check_writable(Path(args.out).resolve().parent)
    jobs = jobs_from(args.manifest or args.slides)  # a bad manifest or too few slides fail before the model loads
    require_slides(len(jobs))
    run_ = calibrate_model(model_from(args), jobs, search_config_from(args), progress=sys.stderr.isatty())
    doc = {"calibration": run_.calibration.to_dict(), "slides": list(run_.rows)}
    atomic_write(args.out, json.dumps(json_safe(doc), indent=2) + "\n")
    print(run_.table())
    cal = run_.calibration
    shortfall = slope_shortfall([r["trusted_mpp"] for r in run_.rows if r["peak_mpp"] is not None])
    slope = f"following the scale with slope {cal.slope:.3f}" if shortfall is None else f"slope not fitted, 1: {shortfall}"
    what = "margins" if cal.scorer in (None, "margin", "paper") and cal.aggregation != "infomax" else (
        f"{cal.scorer} + {cal.aggregation} answers")
    print(f"{what} peak at {cal.margin_peak_mpp:.4g} um/px ({slope}; scatter {cal.sd_log2:.3f} octave over "
          f"{cal.slides} slides); written to {args.out}. 'steps': where each slide's {what} peaked against the model's "
          "training um/px, in grid steps of 2^(1/4) (positive: coarser)")
    if cal.slides < RECOMMENDED_SLIDES:
        print(f"note: {cal.slides} slides; the scatter (hence the interval's width) is uncertain below "
              f"{RECOMMENDED_SLIDES}", file=sys.stderr)
    return 0
