"""``histoscale model-info MODEL``: what histoscale found about a model, and where each value came from."""

from __future__ import annotations

import argparse
import json

from histoscale.cli._common import add_model_options, model_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-info", help="format, head, M, C, class names, input size, mean/std, um/px, and their sources"
    )
    add_model_options(p)
    p.add_argument("model_path", nargs="?", metavar="MODEL", help="as --model (default: the bundled reference)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _fmt(values: list[float] | None) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _calibration(cal: dict | None) -> str:
    if cal is None:
        return "none (histoscale calibrate measures where the margins peak)"
    slope = f", slope {cal['slope']:.3f}" if "slope" in cal else ""
    measured = f" (measured with {cal['scorer']} + {cal['aggregation']})" if cal.get("scorer") else ""
    return (f"margins peak at {cal['margin_peak_mpp']:.4g} um/px{slope}, scatter {cal['sd_log2']:.2f} octave, "
            f"{cal['slides']} slides{measured}")


def _domain(stats: dict | None) -> str:
    if stats is None:
        return "none (the card records no training feature statistics: out-of-domain slides are not detected)"
    return (f"training feature statistics of {stats['patches']} patches (99th percentile distance "
            f"{stats['quantiles']['q99']:.3g})")


def run(args: argparse.Namespace) -> int:
    args.model = args.model_path or args.model
    info = model_from(args).describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    src = info["sources"]
    pre = (
        f"function {info['preprocess_function']}" if info["preprocess_function"]
        else f"mean {_fmt(info['mean'])}, std {_fmt(info['std'])}"
    )
    mpp = "unknown" if info["mpp"] is None else f"{info['mpp']:.4g} um/px"
    rows = [
        ("model", info["name"], None),
        ("file", info["file"] or "-", None),
        ("format", info["format"], None),
        ("card", info["card"] or "none", None),
        ("head layer", info["head"] or "-", src["head"]),
        ("M (features)", info["M"], None),
        ("C (classes)", info["C"], None),
        ("class names", ", ".join(info["class_names"]), src["class_names"]),
        ("input size", f"{info['input_size']} px", src["input_size"]),
        ("preprocessing", pre, src["preprocessing"]),
        ("training um/px", mpp, src["mpp"]),
        ("calibration", _calibration(info["calibration"]), src["calibration"]),
        ("domain check", _domain(info["feature_stats"]), src["feature_stats"]),
        ("scorers", ", ".join(info["scorers"]), None),
    ]
    for key, value, source in rows:
        print(f"{key:>15}: {value}" + (f"  [{source}]" if source else ""))
    if info["missing"]:
        print(f"{'MISSING':>15}: {', '.join(info['missing'])}: defaults assumed; write a model card (README)")
    return 0
