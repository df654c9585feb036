"""Command line: ``histoscale info | phantom | search | demo | classify | evaluate | cohort``.

Every command reports a bad input as one line on stderr naming the file and the fix, with exit code 2;
unexpected failures keep their traceback (they are bugs to report).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from histoscale.errors import ConfigError, HistoscaleError

__all__ = ["main"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, _, h = text.lower().partition("x")
        return int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 16000x16000, got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model card JSON, TorchScript, ONNX, .keras (default: bundled reference)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled torch checkpoints (runs code!)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    from histoscale.aggregate import AGGREGATIONS
    from histoscale.scoring import SCORERS
    from histoscale.search import DEFAULT_AGGREGATION, DEFAULT_SCORER

    p.add_argument("--points", type=int, default=100, help="number of points P (default 100)")
    p.add_argument("--scales", default=None, help="'paper', or comma-separated ascending scales (um/px or downsample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER)
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=DEFAULT_AGGREGATION,
                   help="pooled: argmax of the mean standardised curve (default); vote: the paper's majority vote")
    p.add_argument("--sampling", choices=("tissue", "uniform"), default="tissue")
    p.add_argument("--relative", action="store_true", help="search in downsample units even if the slide has um/px")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false")
    p.add_argument("--no-widen", dest="widen", action="store_false")


def _load_model(args: argparse.Namespace):  # noqa: ANN202 - returns the models module's SplitModel
    from histoscale.models import load_model

    return load_model(args.model, allow_pickle=args.allow_pickle, device=args.device, precision=args.precision)


def cmd_info(args: argparse.Namespace) -> int:
    from histoscale.slide import open_slide, slide_info

    with open_slide(args.slide, mpp=args.mpp) as slide:
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


def cmd_phantom(args: argparse.Namespace) -> int:
    from histoscale.phantom import write_phantom

    info = write_phantom(args.out, mpp=args.mpp, size_px_wh=args.size, seed=args.seed, fmt=args.format)
    print(f"wrote {info.slide_path} ({args.size[0]}x{args.size[1]} px at {args.mpp} um/px, format {args.format})")
    return 0


def _run_search(args: argparse.Namespace, slide_path: str | Path, mpp: float | None) -> "object":
    from histoscale.report import check_writable, write_search_report
    from histoscale.search import find_scale
    from histoscale.slide import open_slide

    # cheap checks first: an unusable --out folder or slide fails before the model loads and the search runs
    if args.out:
        check_writable(args.out)
    with open_slide(slide_path, mpp=mpp) as slide:
        model = _load_model(args)
        result = find_scale(
            slide, model, points=args.points, scales=args.scales, seed=args.seed, scorer=args.scorer,
            aggregation=args.aggregation,
            sampling=args.sampling, relative=args.relative, early_stop=args.early_stop, widen=args.widen,
            progress=sys.stderr.isatty(),
        )
        if args.out:
            arguments = {k: v for k, v in vars(args).items() if k != "func"}
            write_search_report(result, args.out, thumbnail=slide.thumbnail(), arguments=arguments)
    return result


def cmd_search(args: argparse.Namespace) -> int:
    result = _run_search(args, args.slide, args.mpp)
    if args.json:
        print(result.to_json(per_point=False))
    else:
        print(result.summary())
        if args.out:
            print(f"report written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from histoscale.phantom import write_phantom

    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 10_000)
    rng = np.random.default_rng(seed)
    true_mpp = float(args.true_mpp or np.exp(rng.uniform(np.log(0.2), np.log(1.0))))
    with tempfile.TemporaryDirectory(prefix="histoscale-demo-") as tmp:
        folder = Path(args.out or tmp)
        print(f"demo seed {seed}: rendering a {args.size[0]}x{args.size[1]} phantom at a hidden um/px, metadata stripped")
        info = write_phantom(folder / f"phantom-{seed}.tiff", mpp=true_mpp, size_px_wh=args.size, seed=seed, fmt="bare")
        args.seed = seed
        result = _run_search(args, info.slide_path, None)
    print(result.summary())
    implied = result.check.implied_mpp
    steps = math.log2(implied / true_mpp) * 4 if implied else float("nan")
    verdict = "within one grid step" if abs(steps) <= 1 else "OFF by more than one grid step"
    continuous = result.check.implied_estimate
    print(
        f"truth: {true_mpp:.3f} um/px; estimate: {implied:.3f} um/px ({steps:+.2f} grid steps; continuous "
        f"{continuous:.3f}, {100 * (continuous / true_mpp - 1):+.1f}%) -> {verdict}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from histoscale import __version__

    parser = argparse.ArgumentParser(
        prog="histoscale",
        description="Find the scale (um/px) at which a trained patch classifier should see a whole-slide image.",
    )
    parser.add_argument("--version", action="version", version=f"histoscale {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="levels, um/px and its provenance, vendor")
    p.add_argument("slide")
    p.add_argument("--mpp", type=_positive_float, default=None, help="override the slide's um/px")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("phantom", help="write a phantom H&E-like slide with known um/px")
    p.add_argument("out")
    p.add_argument("--mpp", type=_positive_float, default=0.25)
    p.add_argument("--size", type=_size, default=(16000, 16000))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("svs", "tiff", "bare"), default="svs")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("search", help="find the scale at which the model should see the slide")
    p.add_argument("slide")
    p.add_argument("--mpp", type=_positive_float, default=None, help="override the slide's um/px")
    p.add_argument("--out", default=None, help="folder for result.json, points.csv and figures")
    p.add_argument("--json", action="store_true")
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="hide a phantom's um/px and find it again with the reference model")
    p.add_argument("--true-mpp", type=_positive_float, default=None, help="default: random in [0.2, 1.0]")
    p.add_argument("--size", type=_size, default=(4096, 4096))
    p.add_argument("--out", default=None, help="keep the phantom and the report here")
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_demo, seed=None)

    # Commands that live beside their stage; they register their own options.
    from histoscale import classify, cohort, evaluate

    for module in (classify, evaluate, cohort):
        module.register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "points", 1) < 1:
            raise ConfigError(f"--points must be at least 1 (got {args.points})")
        return int(args.func(args) or 0)
    except HistoscaleError as err:
        print(f"histoscale {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
