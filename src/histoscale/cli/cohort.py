"""``histoscale cohort MANIFEST --out DIR``: the search over every slide of a manifest (process pool or Dask)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from histoscale.cli._common import add_model_options, add_search_options, model_options_from, search_config_from
from histoscale.cohort import run_cohort


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cohort", help="run the search over a manifest of slides (process pool or Dask)",
        description="Run the scale search over every slide of a manifest CSV (columns: slide, optional slide_mpp and id); "
        "writes OUT/results.csv and OUT/index.html (rewritten after every slide) and OUT/slides/<id>/ reports.",
    )
    p.add_argument("manifest", help="CSV with a 'slide' column; optional 'slide_mpp' (um/px override) and 'id'")
    p.add_argument("--out", required=True, help="folder for results.csv and slides/<id>/ reports")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: half the CPU cores)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786 (dask-jobqueue)")
    where.add_argument("--dask", choices=("local",), default=None, help="run on a Dask LocalCluster on this machine")
    p.add_argument("--resume", action="store_true", help="keep finished rows of OUT/results.csv, process the rest")
    p.add_argument("--retry-errors", action="store_true", help="with --resume, also redo the slides that were ERROR")
    p.add_argument("--retries", type=int, default=1, help="retries of a slide whose worker died (default 1)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the per-slide PNG figures")
    add_model_options(p)
    add_search_options(p)
    p.set_defaults(func=run)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """``histoscale cohort``: run the search over a manifest; exit 0 when the run completed (ERROR rows
    included); bad manifests or options raise :class:`~histoscale.errors.HistoscaleError` (exit 2)."""
    search = search_config_from(args)
    options = model_options_from(args)
    scheduler = args.scheduler or ("local" if args.dask == "local" else None)
    previous = None
    try:  # SIGTERM (e.g. a batch system's kill) stops the run like Ctrl-C: workers stopped, results.csv intact
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        summary = run_cohort(
            args.manifest, model_spec=args.model, out_dir=args.out, workers=args.workers, scheduler=scheduler,
            resume=args.resume, retry_errors=args.retry_errors, search=search, retries=args.retries,
            progress=sys.stderr.isatty(), figures=args.figures, model_options=options,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary.table())
    return 0
