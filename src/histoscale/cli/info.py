"""``histoscale info SLIDE``: levels, um/px and where it came from."""

from __future__ import annotations

import argparse
import json

from histoscale.cli._common import add_slide_mpp_option
from histoscale.slide import open_slide, slide_info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="levels, um/px and its provenance, vendor")
    p.add_argument("slide")
    add_slide_mpp_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_slide(args.slide, slide_mpp=args.slide_mpp) as slide:
        info = slide_info(slide, tissue=True)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key == "levels":
            for level in value:
                print(f"{'level ' + str(level['level']):>18}: {level['width']}x{level['height']} px, "
                      f"downsample {level['downsample']:.4g}")
        else:
            print(f"{key:>18}: {value}")
    return 0
