"""``histoscale phantom OUT``: a phantom H&E-like slide with known um/px (and its truth beside it)."""

from __future__ import annotations

import argparse

from histoscale.cli._common import positive_float, size
from histoscale.phantom import write_phantom


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a phantom H&E-like slide with known um/px")
    p.add_argument("out", help="slide file to write (.svs, .tif or .tiff)")
    p.add_argument("--mpp", type=positive_float, default=0.25, help="the phantom's level-0 um/px")
    p.add_argument("--size", type=size, default=(16000, 16000), help="level-0 size WIDTHxHEIGHT in px (default 16000x16000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tissue layout and stain (default 0)")
    p.add_argument("--format", choices=("svs", "tiff", "bare"), default="svs",
                   help="svs: Aperio pyramid with MPP; tiff: pyramidal TIFF with resolution tags; bare: no resolution")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = write_phantom(args.out, mpp=args.mpp, size_px_wh=args.size, seed=args.seed, fmt=args.format)
    print(f"wrote {info.slide_path} ({args.size[0]}x{args.size[1]} px at {args.mpp} um/px, format {args.format})")
    return 0
