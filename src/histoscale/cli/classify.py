"""``histoscale classify SLIDE``: a sliding-window class map at one scale (GeoJSON, PNG, npz)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from histoscale.classify import classify_slide
from histoscale.cli._common import add_model_options, model_from, positive_float
from histoscale.reports.classify import read_search_scale, write_classify_report
from histoscale.slide import open_slide

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="sliding-window class map of a slide at one scale (GeoJSON, PNG, npz)")
    p.add_argument("slide")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mpp", type=positive_float, default=None, help="apply the model at this um/px")
    g.add_argument("--downsample", type=positive_float, default=None, help="... or at this level-0 downsample")
    g.add_argument("--from-search", default=None, metavar="RESULT_JSON",
                   help="use the scale chosen by `histoscale search` (its result.json or --out folder)")
    p.add_argument("--stride", type=int, default=None, help="window step in model px (default: half the patch)")
    p.add_argument("--slide-mpp", type=positive_float, default=None, help="override the slide's um/px")
    p.add_argument("--all-windows", action="store_true", help="classify background too (no tissue mask)")
    p.add_argument("--batch", type=int, default=None, help="windows per model call (default: the model's batch size)")
    p.add_argument("--out", required=True, help="folder for classmap.png, probabilities.npz, classes.geojson, classify.json")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mpp, downsample, slide_mpp = args.mpp, args.downsample, args.slide_mpp
    if args.from_search is not None:
        scale, units, doc = read_search_scale(args.from_search)
        mpp, downsample = (scale, None) if units == "um/px" else (None, scale)
        if doc.get("slide") and Path(str(doc["slide"])).name != Path(args.slide).name:
            logger.warning("search result %s was made for %s, not %s", args.from_search, doc["slide"], args.slide)
        searched_args = doc.get("arguments") if isinstance(doc.get("arguments"), dict) else {}
        # "mpp": the name this override had in reports written before slide_mpp
        searched_mpp = searched_args.get("slide_mpp", searched_args.get("mpp"))
        if slide_mpp is None and units == "um/px" and searched_mpp:
            slide_mpp = float(searched_mpp)  # the search placed its um/px with this override: keep it
            logger.info("using the slide um/px override %g the search ran with", slide_mpp)
        check = doc.get("check") if isinstance(doc.get("check"), dict) else {}
        implied_mpp = check.get("implied_mpp")
        if check.get("implied_estimate") and doc.get("estimate"):
            # The pair the summary gives: the continuous estimate's downsample and the um/px it implies.
            scale, implied_mpp = float(doc["estimate"]), check["implied_estimate"]
        if args.slide_mpp is None and check.get("status") == "MISMATCH" and implied_mpp:
            # The declared um/px is wrong: the search's level-0 answer stands, and areas need the implied um/px.
            implied = float(implied_mpp)
            downsample_found = scale / float(check["declared_mpp"]) if units == "um/px" else scale
            slide_mpp, mpp, downsample = implied, downsample_found * implied, None
            print(f"histoscale: the search found {args.slide}'s declared {check['declared_mpp']:.3g} um/px wrong "
                  f"(MISMATCH): classifying with the implied {implied:.3g} um/px (--slide-mpp overrides)",
                  file=sys.stderr)
    model = model_from(args)
    with open_slide(args.slide, slide_mpp=slide_mpp) as slide:
        cmap = classify_slide(
            slide, model, mpp=mpp, downsample=downsample, stride=args.stride, mask=not args.all_windows,
            batch=args.batch, progress=sys.stderr.isatty(),
        )
        arguments = {k: v for k, v in vars(args).items() if k != "func"}
        write_classify_report(cmap, args.out, thumbnail=slide.thumbnail(), arguments=arguments)
    unit = "um/px" if cmap.units == "um/px" else "x downsample"
    print(f"classified {cmap.windows} windows at {cmap.scale:.4g} {unit} ({cmap.shape[0]}x{cmap.shape[1]} grid)")
    for name, a in cmap.class_areas().items():
        area = f"{a['area_mm2']:.4g} mm^2" if a["area_mm2"] is not None else f"{a['area_px2']:.4g} px^2"
        print(f"  {name:>8}: {area} ({a['fraction']:.1%})")
    print(f"report written to {args.out}")
    return 0
