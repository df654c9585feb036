"""The verdict's false alarms and detection on held-out phantoms, declared 1/16..16x the truth (issue 29).

Usage (from the repository root):
    python bench/verdict_phantoms.py [--slides 20] [--seed0 9200] [--points 32,100]

Protocol: ``--slides`` phantoms with seeds from ``--seed0`` (held out: the tests use seeds below 100, the search's
development 7000+, earlier benchmarks 9000-9129), true um/px log-uniform in [0.2, 1.0], 3072 px, written bare
(``bench/scale_range.py``'s generator). Each is searched once per point count with the bundled phantom model and
the DEFAULT search with the nuclei's ruler off (``ruler=False``: the phantom's nuclei are not real-sized, and the
ruler reads phantoms 1.5-1.7 steps fine; bench/ruler.py), declaring the truth; every other declaration
(1/16..16x) replays the library's ``metadata_check`` on that answer (``bench/real_default.py``'s ``derived``:
domain, edge, rivals). Reported: OK / MISMATCH (false alarm) / INCONCLUSIVE at the truth, MISMATCH / INCONCLUSIVE
at the wrong declarations, per point count.

Writes bench/results/verdict_phantoms.json and .md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "real_models"))
import common  # noqa: E402
from real_default import derived, search  # noqa: E402
from scale_range import RATIOS, phantoms  # noqa: E402

import histoscale  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--seed0", type=int, default=9200)
    ap.add_argument("--points", default="32,100")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".work")
    args = ap.parse_args()
    prov = common.provenance()
    t0 = time.perf_counter()
    model = histoscale.load_model("phantom")
    slides = phantoms(args.workdir, args.slides, args.seed0)
    rows = []
    for points in (int(p) for p in args.points.split(",")):
        for path, truth in slides:
            at_truth = search(path, model, truth, 0, points, ruler=False)
            for ratio in RATIOS:
                out = at_truth if ratio == 1 else derived(at_truth, truth * ratio)
                rows.append({"points": points, "slide": path.name, "truth": truth, "ratio": ratio,
                             "status": out["status"], "reason": out["reason"], "implied": out["implied"]})
            print(f"{points} points {path.name} truth {truth:.3f}: implied {at_truth['implied']:.3f} "
                  f"{at_truth['status']}", flush=True)
    summary = {}
    for points in sorted({r["points"] for r in rows}):
        right = collections.Counter(r["status"] for r in rows if r["points"] == points and r["ratio"] == 1)
        wrong = collections.Counter(r["status"] for r in rows if r["points"] == points and r["ratio"] != 1)
        summary[points] = {"truth": dict(right), "wrong": dict(wrong)}
    doc = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "provenance": prov,
           "seconds": time.perf_counter() - t0, "args": {k: common.shown_path(v) if isinstance(v, Path) else str(v)
                    for k, v in vars(args).items()},
           "summary": summary, "rows": rows}
    lines = ["# The verdict on held-out phantoms", "",
             f"histoscale commit {prov.get('histoscale_commit')}, {doc['date']}; {args.slides} phantoms, seeds "
             f"{args.seed0}-{args.seed0 + args.slides - 1}, the bundled phantom model, default search, ruler off; "
             f"{doc['seconds']:.0f} s.", "",
             "| points | at the truth: OK / MISMATCH / INCONCLUSIVE | at 1/16..1/2 and 2..16x: MISMATCH / INCONCLUSIVE |",
             "|---|---|---|"]
    for points, s in summary.items():
        t, w = s["truth"], s["wrong"]
        nt, nw = sum(t.values()), sum(w.values())
        lines.append(f"| {points} | {t.get('OK', 0)} / {t.get('MISMATCH', 0)} / {t.get('INCONCLUSIVE', 0)} of {nt} | "
                     f"{w.get('MISMATCH', 0)} / {w.get('INCONCLUSIVE', 0)} of {nw} |")
    reasons = collections.Counter((r["points"], r["ratio"] == 1, (r["reason"] or "")[:70]) for r in rows
                                  if r["status"] == "INCONCLUSIVE")
    lines += ["", "INCONCLUSIVE, why (points, at the truth?, reason):", ""]
    lines += [f"- {n} x {k}" for k, n in reasons.most_common()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "verdict_phantoms.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (RESULTS / "verdict_phantoms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
