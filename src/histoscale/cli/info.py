"""``histoscale info SLIDE``: levels, um/px, where it came from and every other pixel size the file carries."""

from __future__ import annotations

import argparse
import json
import math

from histoscale.cli._common import add_slide_options, open_chosen, slide_choice
from histoscale.slide import measure_mpp, slide_info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="levels, um/px and its provenance, vendor")
    p.add_argument("slide")
    add_slide_options(p)
    p.add_argument("--measure", action="store_true",
                   help="also measure the um/px from the size of the nuclei (no model, no metadata; ~2 s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_chosen(args.slide, args.slide_mpp, slide_choice(args)) as slide:
        info = slide_info(slide, tissue=True)
        ruler = measure_mpp(slide) if args.measure else None
    if ruler is not None:
        info["ruler"] = ruler.to_dict()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key == "levels":
            for level in value:
                print(f"{'level ' + str(level['level']):>18}: {level['width']}x{level['height']} px, "
                      f"downsample {level['downsample']:.4g}")
        elif key == "mpp_candidates":
            if not value:
                print(f"{key:>18}: none found")
            for c in value:
                value_txt = "no value" if c["mpp_x"] is None else f"{c['mpp_x']:.6g} x {c['mpp_y']:.6g} um/px"
                status = "CHOSEN" if c["chosen"] else "accepted" if c["accepted"] else f"rejected: {c['reason']}"
                note = f" ({c['note']})" if c["note"] else ""
                print(f"{'candidate':>18}: {c['source']}: {value_txt}, {status}{note}")
        elif key == "regions":
            for r in value:
                name = f" {r['name']!r}" if r["name"] else ""
                mpp = f"{r['mpp_x']:.4g}" if math.isclose(r["mpp_x"], r["mpp_y"], rel_tol=1e-3) else (
                    f"{r['mpp_x']:.4g} x {r['mpp_y']:.4g}")
                print(f"{'region ' + str(r['region']):>18}:{name} {r['width']}x{r['height']} px at {mpp} um/px, "
                      f"at ({r['offset_mm'][0]:.4g}, {r['offset_mm'][1]:.4g}) mm on the glass"
                      f"{'' if r['read'] else ', NOT READ'}")
        elif key == "region_read" and value is None:
            continue
        elif key == "ruler":
            assert ruler is not None
            stain = {"slide": "; the slide's own stain vectors", "reference": "; reference stain vectors"}.get(
                ruler.stain or "", "")
            print(f"{'measured':>18}: {ruler.describe()} (the size of the nuclei; no model, no metadata{stain})")
            if ruler.mpp is not None and info.get("mpp"):
                inside = "inside" if ruler.contains(float(info["mpp"])) else "OUTSIDE"
                print(f"{'':>18}  the declared {float(info['mpp']):.4g} um/px ({info.get('mpp_source')}) lies {inside}"
                      " its interval")
        else:
            print(f"{key:>18}: {value}")
    return 0
