"""Options shared by the commands, and the one mapping from parsed arguments to library objects."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from histoscale.aggregate import AGGREGATIONS
from histoscale.calibration import read_calibration
from histoscale.errors import ConfigError
from histoscale.models import BUNDLED_MODELS, DEFAULT_MODEL, SplitModel, load_model
from histoscale.sampling import SAMPLING_MODES
from histoscale.scoring import SCORERS
from histoscale.search import DEFAULT_AGGREGATION, DEFAULT_SCORER, SearchConfig
from histoscale.slide import Slide, open_slide

__all__ = [
    "add_model_options", "add_search_options", "add_slide_options", "model_from", "model_options_from",
    "open_chosen", "positive_float", "search_config_from", "size", "slide_choice",
]


def size(text: str) -> tuple[int, int]:
    """``"16000x12000"`` (or ``"16000"``) -> (width, height) px."""
    try:
        w, _, h = text.lower().partition("x")
        return int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 16000x16000, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


class _RemovedMpp(argparse.Action):
    """``--mpp``, the old name of ``--slide-mpp`` here, refused naming it: ``classify --mpp`` means "apply at"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"--mpp {values} is no longer accepted here: to override the slide's um/px, use --slide-mpp "
                     f"{values} (--mpp means the scale to apply a model at, in `histoscale classify`)")


def _index(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number from 0, got {text!r}")
    return value


def add_slide_options(p: argparse.ArgumentParser, *, old_mpp: bool = True) -> None:
    """``--slide-mpp``: the slide's level-0 um/px, overriding its metadata (``--mpp``, its old name, is an error
    naming it, unless ``old_mpp`` is False: ``classify`` gives ``--mpp`` its own meaning); ``--plane`` and
    ``--region``: which image of a TIFF stack, which scanned region of a Leica SCN (:func:`histoscale.open_slide`'s
    ``plane`` and ``region``)."""
    p.add_argument("--slide-mpp", type=positive_float, default=None, help="override the slide's um/px")
    if old_mpp:
        p.add_argument("--mpp", action=_RemovedMpp, help=argparse.SUPPRESS)
    p.add_argument("--plane", type=_index, default=None,
                   help="the image of a TIFF stack to read, from 0 (focal plane, time point; default: the first)")
    p.add_argument("--region", type=_index, default=None,
                   help="the scanned region of a Leica SCN to read alone, from 0 (default: every region on the "
                        "glass, or the largest when they differ in resolution)")


def slide_choice(args: argparse.Namespace) -> dict[str, int]:
    """The ``plane`` / ``region`` keywords of :func:`histoscale.open_slide` the options name."""
    return {k: v for k in ("plane", "region") if (v := getattr(args, k, None)) is not None}


def open_chosen(path: str | Path, slide_mpp: float | None, choice: dict[str, int]) -> Slide:
    """:func:`histoscale.open_slide` with ``choice`` (:func:`slide_choice`); an error about the plane or the
    region names its flag."""
    try:
        return open_slide(path, slide_mpp=slide_mpp, **choice)
    except ConfigError as err:
        if err.keyword not in ("plane", "region"):
            raise
        raise _under_flag(err) from None


def _under_flag(err: ConfigError) -> ConfigError:
    """``err``, about a Python keyword, reported under the command-line flag that sets it."""
    return ConfigError(f"--{str(err.keyword).replace('_', '-')}: {err}")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None,
        help="model file (.onnx, .pt, .keras, .safetensors; a card beside it is found: <stem>.json, "
        "<stem>.card.json, config.json), a card or WSInfer / timm config.json, a folder, or a bundled model's name: "
        "reference-he (the default: real H&E), phantom, phantom-onnx",
    )
    p.add_argument("--factory", default=None, help="module:callable building the architecture of a state dict")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled torch checkpoints (runs code!)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--calibration", default=None, metavar="JSON",
                   help="the model's scale calibration, as `histoscale calibrate --out` writes it (overrides its card's)")


def add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", type=int, default=100, help="number of points P (default 100)")
    p.add_argument("--scales", default=None,
                   help="'paper', or comma-separated ascending scales (um/px or downsample); a fixed grid with "
                   "--no-widen, else widened past an end where the margins still rise there")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER,
                   help="margin: top-1 minus top-2 hyperplane distance (default); paper: the bias-free projection; "
                   "bn-stats: agreement of the points' BatchNorm inputs with the statistics stored in training "
                   "(torch classifiers); feature-stats: closeness to the training features the model card records; "
                   "stability: agreement of each patch's prediction with its transpose's (2 model calls a patch); "
                   "`histoscale model-info` lists those that apply to a model")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=DEFAULT_AGGREGATION,
                   help="pooled: argmax of the points' mean curve (default); vote: the paper's majority vote; "
                   "infomax: argmax of the information between point and predicted class, H(mean p) - mean H(p): "
                   "confident AND diverse predictions (no focus)")
    p.add_argument("--sampling", choices=SAMPLING_MODES, default="tissue")
    p.add_argument("--relative", action="store_true", help="search in downsample units even if the slide has um/px")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false")
    p.add_argument("--no-widen", dest="widen", action="store_false")
    p.add_argument("--no-focus", dest="focus", action="store_false",
                   help="read every point at every fine scale (default: later points only near the settled answer)")
    p.add_argument("--uncalibrated", dest="calibrated", action="store_false",
                   help="ignore the model's scale calibration: answer where its margins peak")
    p.add_argument("--no-ruler", dest="ruler", action="store_false",
                   help="skip the model-free second opinion (the um/px the nuclei's size implies, ~2 s per slide)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's Algorithm 1 exactly: its 9 magnifications, bias-free projection, majority vote, "
                   "uniform points, no early stop or widening (--points and --seed still apply)")


_SEARCH_FLAGS = (
    "points", "scales", "seed", "scorer", "aggregation", "sampling", "relative", "early_stop", "widen", "focus",
    "calibrated", "ruler",
)


def search_config_from(args: argparse.Namespace) -> SearchConfig:
    """The :class:`SearchConfig` the search options describe (the only place that maps them); an invalid value
    is reported under its flag."""
    try:
        if getattr(args, "paper", False):
            defaults = {"scorer": DEFAULT_SCORER, "aggregation": DEFAULT_AGGREGATION}
            chosen = [f"--{k}" for k, default in defaults.items() if getattr(args, k) != default]
            if chosen:
                raise ConfigError(f"--paper fixes the scorer and the aggregation (the paper's): drop {' and '.join(chosen)}")
            return SearchConfig.paper(points=args.points, seed=args.seed, relative=args.relative)
        return SearchConfig(**{k: getattr(args, k) for k in _SEARCH_FLAGS})
    except ConfigError as err:
        if err.keyword is None:
            raise
        raise _under_flag(err) from None


def model_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :func:`histoscale.load_model` the model options set (defaults left out)."""
    options: dict[str, Any] = {"device": args.device, "factory": args.factory}
    if args.allow_pickle:
        options["allow_pickle"] = True
    if args.precision != "auto":
        options["precision"] = args.precision
    if args.calibration is not None:
        if not getattr(args, "calibrated", True) or getattr(args, "paper", False):
            raise ConfigError("--calibration with --uncalibrated or --paper: the calibration would not be applied; "
                              "drop one of them")
        try:
            read_calibration(args.calibration)  # a bad file fails here, before any slide is read
        except ConfigError as err:
            raise ConfigError(f"--calibration: {err}") from None
        options["calibration"] = str(Path(args.calibration).resolve())  # a path: workers read it, records name it
    return {k: v for k, v in options.items() if v is not None}


def model_from(args: argparse.Namespace) -> SplitModel:
    """Load the model the model options name, saying on stderr which card describes it and what had to be
    assumed (:func:`histoscale.load_model` logs the details as a warning)."""
    model = load_model(args.model, **model_options_from(args))
    unknown = f"; UNKNOWN: {', '.join(model.missing)} (defaults assumed)" if model.missing else ""
    calibration = f"; calibration from {args.calibration}" if args.calibration is not None else ""
    # A bundled model is asked for by its short name: say it, since the card calls the model otherwise.
    asked = DEFAULT_MODEL if args.model is None else args.model
    bundled = f" (bundled as {asked!r})" if asked in BUNDLED_MODELS else ""
    print(f"histoscale: model {model.name!r}{bundled}: {model.card or 'no model card'}{calibration}{unknown}",
          file=sys.stderr)
    return model
