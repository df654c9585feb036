"""``histoscale evaluate SLIDE``: per-class accuracy per scale against known labels (the paper's Table 1)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from histoscale.cli._common import add_model_options, model_from, positive_float
from histoscale.evaluate import evaluate_scales
from histoscale.labels import load_labels
from histoscale.reports.evaluate import rich_table, write_evaluate_report
from histoscale.scoring import SCORERS
from histoscale.search import DEFAULT_SCORER, SearchConfig, find_scale
from histoscale.slide import open_slide


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-class accuracy per scale against known labels (the paper's Table 1)")
    p.add_argument("slide")
    p.add_argument("--labels", default=None,
                   help="phantom .phantom.json, class-index mask image, or GeoJSON (default: phantom truth beside the slide)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels-mpp", type=positive_float, default=None, help="um/px of a mask image")
    g.add_argument("--labels-downsample", type=positive_float, default=None, help="level-0 px per mask px")
    p.add_argument("--scales", default=None,
                   help="comma-separated scales, or 'paper' (default: 9 scales of ratio 2^(1/4) around the model's um/px)")
    p.add_argument("--points-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relative", action="store_true", help="scales are level-0 downsamples even if the slide has um/px")
    p.add_argument("--slide-mpp", type=positive_float, default=None, help="override the slide's um/px")
    p.add_argument("--search", action="store_true", help="also run the scale search and mark its choice")
    p.add_argument("--search-points", type=int, default=100, help="points for --search (default 100)")
    p.add_argument("--search-scales", default=None, help="grid for --search (default: the search's own)")
    p.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER, help="scorer for --search")
    p.add_argument("--out", default=None, help="folder for accuracy.csv, accuracy.png, evaluate.json")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = model_from(args)
    searched = None
    with open_slide(args.slide, slide_mpp=args.slide_mpp) as slide:
        labels = load_labels(args.labels, slide=slide, class_names=model.class_names, labels_mpp=args.labels_mpp,
                             labels_downsample=args.labels_downsample)
        if args.search:
            config = SearchConfig(points=args.search_points, scales=args.search_scales, seed=args.seed,
                                  scorer=args.scorer, relative=args.relative)
            found = find_scale(slide, model, config, progress=sys.stderr.isatty())
            searched = found.chosen_scale
        result = evaluate_scales(
            slide, model, labels, args.scales, points_per_class=args.points_per_class, seed=args.seed,
            relative=args.relative, searched_scale=searched, progress=sys.stderr.isatty(),
        )
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(rich_table(result))
    if searched is not None:
        i, b = result.searched_index, result.best_index
        verdict = "an accuracy-optimal scale" if i in result.best_rows else (
            f"{100 * (result.mean[b] - result.mean[i]):.1f} points below the best ({result.scale_label(b)})")
        console.print(f"search chose {result.scale_label(i)}: mean accuracy {100 * result.mean[i]:.1f}%, {verdict}")
    if args.out:
        arguments = {k: v for k, v in vars(args).items() if k != "func"}
        write_evaluate_report(result, args.out, arguments=arguments)
        console.print(f"accuracy.csv, accuracy.png, evaluate.json written to {args.out}")
    return 0
