"""``histoscale demo``: hide the um/px of a real H&E image (or, with ``--phantom``, of a phantom) and find it again
with the bundled model."""

from __future__ import annotations

import argparse
import math
import tempfile
from importlib.resources import files
from pathlib import Path

import numpy as np

from histoscale.cli._common import add_model_options, add_search_options, positive_float, size
from histoscale.cli.search import search_and_report
from histoscale.patches import resample
from histoscale.phantom import write_phantom
from histoscale.slide import open_slide
from histoscale.units import steps_between

# The CMU-1 small region (OpenSlide test data, CC0; assets/demo/NOTICE.txt): H&E skin at 0.499 um/px.
DEMO_SLIDE = "cmu-1-small-region.svs"
DEMO_MPP = 0.499
SHRINK = (1.0, 2.4)  # the hidden um/px is 0.499 x a random factor in this range (area-averaged shrink)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="hide a real H&E image's um/px and find it again with the bundled model")
    p.add_argument("--phantom", action="store_true",
                   help="use a generated phantom and the bundled phantom model instead of real tissue")
    p.add_argument("--true-mpp", type=positive_float, default=None,
                   help=f"the hidden um/px (default: random; real tissue {DEMO_MPP * SHRINK[0]:g}-"
                        f"{DEMO_MPP * SHRINK[1]:.3g}, a phantom 0.2-1.0)")
    p.add_argument("--size", type=size, default=(4096, 4096), help="phantom size WIDTHxHEIGHT in px (--phantom)")
    p.add_argument("--out", default=None, help="keep the slide and the report here")
    add_model_options(p)
    add_search_options(p)
    p.set_defaults(func=run, seed=None)


def _real_slide(folder: Path, true_mpp: float) -> Path:
    """The demo image shrunk to ``true_mpp`` (area averaging, as a coarser scan), as a tiled TIFF without metadata."""
    import tifffile

    if not DEMO_MPP * 0.999 <= true_mpp:
        raise SystemExit(f"histoscale demo: --true-mpp must be at least {DEMO_MPP} um/px (the demo image's own scan)")
    with open_slide(Path(str(files("histoscale") / "assets" / "demo" / DEMO_SLIDE))) as slide:
        w, h = slide.dimensions
        rgb = slide.read_level(0, (0, 0), (w, h))
    f = true_mpp / DEMO_MPP
    small = resample(rgb, (round(w / f), round(h / f)))
    path = folder / f"cmu-1-hidden-{true_mpp:.3f}.tif"
    tifffile.imwrite(path, small, tile=(256, 256), photometric="rgb", compression="zlib")
    return path


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 10_000)
    rng = np.random.default_rng(seed)
    lo_mpp, hi_mpp = (0.2, 1.0) if args.phantom else (DEMO_MPP * SHRINK[0], DEMO_MPP * SHRINK[1])
    true_mpp = float(args.true_mpp or math.exp(rng.uniform(math.log(lo_mpp), math.log(hi_mpp))))
    if args.phantom and args.model is None:
        args.model = "phantom"
    with tempfile.TemporaryDirectory(prefix="histoscale-demo-") as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        args.seed = seed
        if args.phantom:
            print(f"demo seed {seed}: rendering a {args.size[0]}x{args.size[1]} phantom at a hidden um/px, metadata stripped")
            path = write_phantom(folder / f"phantom-{seed}.tiff", mpp=true_mpp, size_px_wh=args.size, seed=seed,
                                 fmt="bare").slide_path
        else:
            print(f"demo seed {seed}: real H&E (CMU-1, CC0) shrunk to a hidden um/px, metadata stripped")
            path = _real_slide(folder, true_mpp)
        result = search_and_report(args, path, None)
    print(result.summary())
    # the check decides on the continuous estimate; its interval says how far to trust it
    estimate = result.check.implied_mpp
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
    again = " --phantom" if args.phantom else ""
    print(f"the same slide again: histoscale demo{again} --seed {seed}"
          + (f" --true-mpp {args.true_mpp:g}" if args.true_mpp else ""))
    return 0
