"""``histoscale classify SLIDE``: a sliding-window class map at one scale (GeoJSON, PNG, npz).

With ``--from-search`` the scale, the model and the slide's um/px come from a ``histoscale search`` result:

- the model is the one the search ran with (its ``--model`` as recorded, or the file ``model_info`` names); one
  that cannot be found is refused, naming it. An explicit ``--model`` is accepted only when it is that model (same
  name, format, classes, input size, width and training um/px: e.g. the same file moved) and refused otherwise: the
  scale the search found belongs to the model it searched with.
- the model reads level 0 at the downsample the search found (its continuous estimate), whatever the slide
  declares: the content's answer is in level-0 px.
- the slide's um/px (that of the scale's label and of every area in mm^2) is the declared one, unless the search
  found it wrong (MISMATCH): then classify refuses, unless told ``--trust-content`` (use the um/px the content
  implies) or ``--slide-mpp`` (a value of your own). A replaced um/px is said on stderr, in the report's headline
  and in classify.json (``declared_mpp``, ``slide_mpp``, ``slide_mpp_source``, ``slide_mpp_replaced``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoscale.classify import classify_slide
from histoscale.cli._common import (
    add_model_options,
    add_slide_options,
    model_from,
    open_chosen,
    positive_float,
    slide_choice,
)
from histoscale.errors import ConfigError
from histoscale.models import SplitModel
from histoscale.models.registry import BUNDLED_MODELS, DEFAULT_MODEL
from histoscale.reports.classify import read_search_scale, write_classify_report
from histoscale.slide.resolution import as_positive

logger = logging.getLogger(__name__)

# What makes two loaded models the same model for a search's scale (fields of SplitModel.describe()).
_IDENTITY = ("name", "format", "class_names", "input_size", "M", "C", "cells", "mpp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="sliding-window class map of a slide at one scale (GeoJSON, PNG, npz)")
    p.add_argument("slide")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mpp", type=positive_float, default=None, help="apply the model at this um/px")
    g.add_argument("--downsample", type=positive_float, default=None, help="... or at this level-0 downsample")
    g.add_argument("--from-search", default=None, metavar="RESULT_JSON",
                   help="apply the search's model at the level-0 downsample it found (`histoscale search` result.json "
                   "or its --out folder); --model only to name the same model elsewhere")
    p.add_argument("--trust-content", action="store_true",
                   help="with --from-search: use the um/px the search implies for the slide instead of the declared "
                   "one (needed after a MISMATCH; said in the report and classify.json)")
    p.add_argument("--stride", type=int, default=None, help="window step in model px (default: half the patch)")
    add_slide_options(p, old_mpp=False)
    p.add_argument("--all-windows", action="store_true", help="classify background too (no tissue mask)")
    p.add_argument("--batch", type=int, default=None, help="windows per model call (default: the model's batch size)")
    p.add_argument("--out", required=True, help="folder for classmap.png, probabilities.npz, classes.geojson, classify.json")
    add_model_options(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class _Plan:
    """Where to apply the model, with which slide um/px, and what the search said (for classify.json)."""

    mpp: float | None
    downsample: float | None
    slide_mpp: float | None
    slide_mpp_source: str | None
    search: dict[str, Any]


def _plan_from_search(args: argparse.Namespace) -> tuple[_Plan, dict[str, Any]]:
    """The scale and slide um/px a search result gives, under the rules of this module's docstring."""
    path = args.from_search
    scale, units, doc = read_search_scale(path)
    if doc.get("slide") and Path(str(doc["slide"])).name != Path(args.slide).name:
        logger.warning("search result %s was made for %s, not %s", path, doc["slide"], args.slide)
    check = doc.get("check") if isinstance(doc.get("check"), dict) else {}
    searched_args = doc.get("arguments") if isinstance(doc.get("arguments"), dict) else {}
    status, reason = check.get("status"), check.get("reason")
    estimate = as_positive(doc.get("estimate")) or scale  # the continuous answer, as the summary gives it
    # "implied_estimate": the continuous value's name in results written before it became implied_mpp
    implied = as_positive(check.get("implied_estimate")) or as_positive(check.get("implied_mpp"))
    # "mpp": the name the override had in results written before slide_mpp
    searched_declared = as_positive(check.get("declared_mpp")) or as_positive(
        searched_args.get("slide_mpp", searched_args.get("mpp")))
    search = {"result": str(path), "status": status, "reason": reason, "declared_mpp": searched_declared,
              "implied_mpp": implied, "units": units, "estimate": estimate}
    if units == "downsample":
        if args.trust_content:
            raise ConfigError(f"--trust-content: the search {path} ran in downsample units (--relative) and implies "
                              "no um/px for the slide; drop --trust-content, or give --slide-mpp")
        search["level0_downsample"] = estimate
        source = "--slide-mpp" if args.slide_mpp is not None else None
        return _Plan(None, estimate, args.slide_mpp, source, search), doc
    if searched_declared is None:  # a result without its check: its um/px are the slide's own
        return _Plan(estimate, None, args.slide_mpp, "--slide-mpp" if args.slide_mpp else None, search), doc
    ds = estimate / searched_declared  # level-0 px per model px: what the content decided
    search["level0_downsample"] = ds
    slide = args.slide
    if args.slide_mpp is not None:
        used, source = args.slide_mpp, "--slide-mpp"
    elif args.trust_content:
        if implied is None:
            raise ConfigError(f"--trust-content: the search {path} implies no um/px for {slide} (status {status}: the "
                              "model's training um/px is unknown); drop --trust-content, or give --slide-mpp")
        used, source = implied, f"implied by the slide's content (search {status}; --trust-content)"
        print(f"histoscale: NOT using {slide}'s declared {searched_declared:.4g} um/px: --trust-content replaces it "
              f"with the {implied:.4g} um/px the search implies (status {status}) for the scale and every area; "
              f"the model reads level 0 at downsample {ds:.4g}", file=sys.stderr)
    elif status == "MISMATCH":
        raise ConfigError(
            f"the search {path} found {slide}'s declared {searched_declared:.4g} um/px wrong (MISMATCH: {reason}); "
            f"classify does not replace it silently: pass --trust-content to read level 0 at downsample {ds:.4g} "
            f"and measure areas with the implied {implied:.4g} um/px, or --slide-mpp UM_PX with the value you trust"
        )
    else:
        # the search's own override, if it had one, placed its um/px: keep it
        used = searched_declared if searched_args.get("slide_mpp", searched_args.get("mpp")) else None
        source = "the search's --slide-mpp" if used is not None else None
        if status not in (None, "OK"):
            print(f"histoscale: the search could not confirm {slide}'s declared um/px ({status}"
                  f"{': ' + reason if reason else ''}); classifying at level-0 downsample {ds:.4g} with the declared "
                  f"{searched_declared:.4g} um/px", file=sys.stderr)
    return _Plan(ds * (searched_declared if used is None else used), None, used, source, search), doc


def _differences(recorded: dict[str, Any], model: SplitModel) -> list[str]:
    mine = model.describe()
    return [f"{k} {recorded[k]!r} vs {mine[k]!r}" for k in _IDENTITY if k in recorded and recorded[k] != mine[k]]


def _search_model(args: argparse.Namespace, doc: dict[str, Any]) -> SplitModel:
    """The model the search ran with (refused, naming it, when it cannot be found), or ``--model`` when it is the
    same model."""
    path = args.from_search
    info = doc.get("model_info") if isinstance(doc.get("model_info"), dict) else {}
    searched_args = doc.get("arguments") if isinstance(doc.get("arguments"), dict) else {}
    named = f"{info.get('name', doc.get('model', '?'))!r}" + (f" (file {info['file']})" if info.get("file") else "")
    if args.model is None:
        if "model" in searched_args:
            spec = searched_args["model"] or DEFAULT_MODEL
            tried = [str(spec)] + ([str(info["file"])] if info.get("file") else [])
            found = next((s for s in tried if s in BUNDLED_MODELS or Path(s).exists()), None)
        else:  # written by the Python API, without the command's arguments
            tried, found = [str(info["file"])] if info.get("file") else [], None
        if found is None:
            raise ConfigError(
                f"the search {path} ran with model {named}, which cannot be found from here (tried "
                f"{', '.join(tried) or 'nothing: the result does not record its model file'}): pass --model with "
                "that model's path (it is checked to be the same model)"
            )
        args.model = found
        if args.factory is None and found == searched_args.get("model"):
            args.factory = searched_args.get("factory")
        logger.info("using the model of the search %s: %s", path, found)
    model = model_from(args)
    differs = _differences(info, model)
    if differs:
        raise ConfigError(
            f"--model {args.model} is not the model the search {path} chose its scale for ({named}; "
            f"{'; '.join(differs)}): the scale belongs to the model. Drop --model to use the search's model, or "
            "apply this one at a scale of your choosing with --mpp or --downsample"
        )
    if not info:
        print(f"histoscale: the search {path} does not record its model: cannot check that {model.name!r} is it",
              file=sys.stderr)
    return model


def _searched_choice(args: argparse.Namespace, doc: dict[str, Any], given: dict[str, int]) -> dict[str, int]:
    """The plane and region the search read, which the classification must read too; a different one given on the
    command line is refused."""
    searched = doc.get("arguments") if isinstance(doc.get("arguments"), dict) else {}
    choice = dict(given)
    for key in ("plane", "region"):
        value = searched.get(key)
        if value is None:
            continue
        if key in given and given[key] != value:
            raise ConfigError(f"--{key} {given[key]} is not the {key} the search {args.from_search} read ({value}): "
                              f"drop --{key}, or search that {key} first")
        choice[key] = int(value)
    return choice


def run(args: argparse.Namespace) -> int:
    if args.trust_content and args.from_search is None:
        raise ConfigError("--trust-content needs --from-search RESULT_JSON (the search whose implied um/px to use)")
    choice = slide_choice(args)
    if args.from_search is not None:
        plan, doc = _plan_from_search(args)
        model = _search_model(args, doc)
        choice = _searched_choice(args, doc, choice)
    else:
        plan = _Plan(args.mpp, args.downsample, args.slide_mpp, "--slide-mpp" if args.slide_mpp else None, {})
        model = model_from(args)
    with open_chosen(args.slide, plan.slide_mpp, choice) as slide:
        cmap = classify_slide(
            slide, model, mpp=plan.mpp, downsample=plan.downsample, stride=args.stride, mask=not args.all_windows,
            batch=args.batch, slide_mpp_source=plan.slide_mpp_source, progress=sys.stderr.isatty(),
        )
        arguments = {k: v for k, v in vars(args).items() if k != "func"}
        write_classify_report(cmap, args.out, thumbnail=slide.thumbnail(), arguments=arguments,
                              search=plan.search or None)
    unit = "um/px" if cmap.units == "um/px" else "x downsample"
    print(f"classified {cmap.windows} windows at {cmap.scale:.4g} {unit} = level-0 downsample {cmap.downsample:.4g} "
          f"({cmap.shape[0]}x{cmap.shape[1]} grid)")
    if cmap.slide_mpp is not None:
        replaced = f", REPLACING the declared {cmap.declared_mpp:.4g}" if cmap.mpp_replaced and cmap.declared_mpp else ""
        print(f"  areas at {cmap.slide_mpp:.4g} um/px ({cmap.slide_mpp_source}{replaced})")
    for name, a in cmap.class_areas().items():
        area = f"{a['area_mm2']:.4g} mm^2" if a["area_mm2"] is not None else f"{a['area_px2']:.4g} px^2"
        print(f"  {name:>8}: {area} ({a['fraction']:.1%})")
    print(f"report written to {args.out}")
    return 0
