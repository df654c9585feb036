"""``histoscale demo``: hide a phantom's um/px and find it again with the bundled reference model."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from histoscale.cli._common import add_model_options, add_search_options, positive_float, size
from histoscale.cli.search import search_and_report
from histoscale.phantom import write_phantom
from histoscale.units import steps_between


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="hide a phantom's um/px and find it again with the reference model")
    p.add_argument("--true-mpp", type=positive_float, default=None, help="default: random in [0.2, 1.0]")
    p.add_argument("--size", type=size, default=(4096, 4096), help="phantom size WIDTHxHEIGHT in px (default 4096x4096)")
    p.add_argument("--out", default=None, help="keep the phantom and the report here")
    add_model_options(p)
    add_search_options(p)
    p.set_defaults(func=run, seed=None)


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 10_000)
    rng = np.random.default_rng(seed)
    true_mpp = float(args.true_mpp or np.exp(rng.uniform(np.log(0.2), np.log(1.0))))
    with tempfile.TemporaryDirectory(prefix="histoscale-demo-") as tmp:
        folder = Path(args.out or tmp)
        print(f"demo seed {seed}: rendering a {args.size[0]}x{args.size[1]} phantom at a hidden um/px, metadata stripped")
        info = write_phantom(folder / f"phantom-{seed}.tiff", mpp=true_mpp, size_px_wh=args.size, seed=seed, fmt="bare")
        args.seed = seed
        result = search_and_report(args, info.slide_path, None)
    print(result.summary())
    # the check decides on the continuous estimate; its interval says how far to trust it
    estimate = result.check.implied_estimate
    lo, hi = result.check.implied_interval or (float("nan"), float("nan"))
    steps = steps_between(estimate, true_mpp) if estimate else float("nan")
    verdict = "within one grid step" if abs(steps) <= 1 else "OFF by more than one grid step"
    inside = "inside" if lo <= true_mpp <= hi else "OUTSIDE"
    print(
        # four decimals: with three, a truth just outside the interval printed as its bound ("0.300-0.410", OUTSIDE)
        f"truth: {true_mpp:.4f} um/px; estimate: {estimate:.4f} um/px ({steps:+.2f} grid steps, "
        f"{100 * (estimate / true_mpp - 1):+.1f}%; 95% CI {lo:.4f}-{hi:.4f}) -> {verdict}, the truth {inside} the "
        "95% interval"
    )
    print(f"the same slide again: histoscale demo --seed {seed}" + (f" --true-mpp {args.true_mpp:g}" if args.true_mpp else ""))
    return 0
