"""Cohort throughput: slides/min of ``run_cohort`` on the local process pool with 1 and 2 workers, side by side.

Usage: python bench/cohort_speed.py [--slides 6] [--side 4000] [--rounds 2] [--one-thread-only] [--dask]
                                   [--out bench/results]

Phantom SVS slides (cached) are searched with the default settings and the bundled reference model, figures on,
as ``histoscale cohort`` runs them; each worker process gets ``cores // workers`` torch threads (run_cohort's rule,
so the model's threads are shared, never more than the cores). A control runs 1 worker with 1 torch thread (as if
the machine had 1 core): on a machine shared with other jobs, 2 threads on 2 cores stall each other. ``--dask``
adds the same 1 and 2 workers on a Dask LocalCluster (``scheduler="local"``: one process per worker, the same
thread rule). Rounds alternate the setups so that a change of the machine's load shifts them alike; the load
average is recorded with each run. Writes bench/results/cohort_speed.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import histoscale.cohort.run as cohort_run
from histoscale.cohort import run_cohort
from histoscale.phantom import write_phantom
from histoscale.reports import machine

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one-thread-only", action="store_true", help="skip 1 worker x all cores' threads")
    ap.add_argument("--dask", action="store_true", help="also 1 and 2 workers on a Dask LocalCluster")
    ap.add_argument("--workdir", type=Path, default=HERE / ".work")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    folder = args.workdir / "cohort"
    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for i in range(args.slides):
        path = folder / f"phantom_{args.side}_{i}.svs"
        if not path.is_file():
            write_phantom(path, mpp=(0.25, 0.35, 0.5)[i % 3], size_px_wh=(args.side, args.side), seed=100 + i, fmt="svs")
        slides.append(str(path))
    cores = len(os.sched_getaffinity(0))
    pool = [("pool", 1, cores), ("pool", 2, max(1, cores // 2)), ("pool", 1, 1)]  # (scheduler, workers, threads each)
    setups = pool[1:] if args.one_thread_only else pool
    if args.dask:
        setups += [("dask", 1, cores), ("dask", 2, max(1, cores // 2))]
    real_cores = cohort_run._cores
    runs = []
    for r in range(args.rounds):
        for scheduler, workers, threads in setups:
            out = folder / f"out_{scheduler}_w{workers}_t{threads}"
            shutil.rmtree(out, ignore_errors=True)
            load = os.getloadavg()
            # run_cohort gives each worker cores // workers threads: the control pretends there is one core
            cohort_run._cores = (lambda: workers * threads) if threads != cores // workers else real_cores  # type: ignore[assignment]
            t = time.perf_counter()
            try:
                summary = run_cohort(slides, out_dir=out, workers=workers,
                                     scheduler="local" if scheduler == "dask" else None)
            finally:
                cohort_run._cores = real_cores  # type: ignore[assignment]
            wall = time.perf_counter() - t
            ok = summary.counts.get("ERROR", 0) == 0
            runs.append({"round": r, "scheduler": scheduler, "workers": workers, "threads": threads, "wall_s": wall,
                         "slides_per_min": 60 * len(slides) / wall, "load_before": load,
                         "load_after": os.getloadavg(), "no_errors": ok})
            print(f"round {r} {scheduler} workers {workers} x {threads} threads: {wall:.1f} s, {runs[-1]['slides_per_min']:.1f} "
                  f"slides/min (load {load[0]:.1f} -> {runs[-1]['load_after'][0]:.1f}){'' if ok else ' ERRORS'}",
                  flush=True)
    def key(x: dict) -> tuple[str, int, int]:
        return x["scheduler"], x["workers"], x["threads"]

    per = {f"{s} {w}x{t}": float(np.median([x["slides_per_min"] for x in runs if key(x) == (s, w, t)]))
           for s, w, t in setups}
    by_round = [{key(x): x["slides_per_min"] for x in runs if x["round"] == r} for r in range(args.rounds)]
    half = max(1, cores // 2)
    pairs = (("2 workers / 1 worker", ("pool", 1, cores), ("pool", 2, half)),
             ("2 workers / 1 worker at 1 thread", ("pool", 1, 1), ("pool", 2, half)),
             ("Dask: 2 workers / 1 worker", ("dask", 1, cores), ("dask", 2, half)),
             ("Dask / local pool, 2 workers", ("pool", 2, half), ("dask", 2, half)))
    ratios = {name: [rr[b] / rr[a] for rr in by_round] for name, a, b in pairs if a in setups and b in setups}
    text = (
        f"| scheduler | workers | torch threads each | slides/min (median of {args.rounds}) |\n|---|---|---|---|\n"
        + "".join(f"| {'Dask LocalCluster' if s == 'dask' else 'local process pool'} | {w} | {t} | "
                  f"{per[f'{s} {w}x{t}']:.1f} |\n" for s, w, t in setups)
        + "\n" + "; ".join(f"{name}, per round: {', '.join(f'x{q:.2f}' for q in qs)}" for name, qs in ratios.items())
    )
    print(text)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    doc = {"command": command, "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "slides": len(slides), "side_px": args.side, "runs": runs, "median_slides_per_min": per, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cohort_speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "cohort_speed.md").write_text(f"Command: `{command}` ({doc['date']}, {machine()})\n\n{text}\n")


if __name__ == "__main__":
    main()
