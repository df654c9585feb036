#!/usr/bin/env python
"""Calibrate the bundled reference model's scale search and store it in its cards (``calibration``).

One command, CPU, deterministic, ~5 minutes::

    python scripts/calibrate_reference.py [--slides 80] [--workdir bench/.work]

Development phantoms (seeds 7000, 7001, ...: never the tests' seeds below 100 nor the benchmarks' 9000+), true
level-0 um/px log-uniform in [0.2, 1.0], 3072 x 3072 px, written without metadata; their true um/px is given as
the trusted value. ``histoscale.calibrate_model`` runs the DEFAULT search on each (what a user runs) and fits where
the margins peak. The result goes into ``reference.json`` and ``reference-onnx.json`` and the card inside
``reference.onnx`` (the same network); the per-slide table into ``bench/results/reference_calibration.md``.
Run it again after ``scripts/train_reference.py`` (a retrained model peaks elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histoscale import calibrate_model, load_card, load_model  # noqa: E402
from histoscale.models.onnx_adapter import embed_card  # noqa: E402
from histoscale.phantom import write_phantom  # noqa: E402

ASSETS = ROOT / "src" / "histoscale" / "assets"
SEED0 = 7000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=80)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    args = ap.parse_args()
    folder = args.workdir / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    truths = np.exp(np.random.default_rng(SEED0).uniform(math.log(0.2), math.log(1.0), args.slides))
    jobs = []
    for i, truth in enumerate(truths):
        path = folder / f"phantom_{SEED0 + i}.tif"
        if not path.is_file():
            write_phantom(path, mpp=float(truth), size_px_wh=(3072, 3072), seed=SEED0 + i, fmt="bare", workers=1)
        jobs.append({"slide": str(path), "mpp": float(truth), "id": path.stem})
    model = load_model(card=ASSETS / "reference.json", calibration=None)
    run = calibrate_model(model, jobs, progress=True)
    cal = run.calibration
    print(run.table())
    print(f"margins peak at {cal.margin_peak_mpp:.4g} um/px, slope {cal.slope:.3f}, scatter {cal.sd_log2:.3f} octave, "
          f"{cal.slides} slides")
    stored = dict(cal.to_dict(), source=(
        f"scripts/calibrate_reference.py: default search on {cal.slides} phantoms (seeds {SEED0}-{SEED0 + cal.slides - 1},"
        " true 0.2-1.0 um/px)"
    ))
    for name in ("reference.json", "reference-onnx.json"):
        card_path = ASSETS / name
        data = json.loads(card_path.read_text())
        data["calibration"] = stored
        card_path.write_text(json.dumps(data, indent=2) + "\n")
    embed_card(ASSETS / "reference.onnx", load_card(ASSETS / "reference-onnx.json"))
    lines = [
        f"Command: `python scripts/calibrate_reference.py --slides {args.slides}`; the reference model's margins peak "
        f"at **{cal.margin_peak_mpp:.4g} um/px** (trained at 0.5) on a slide scanned at that um/px, following the "
        f"scale with slope **{cal.slope:.3f}** (1: no pull towards the slide's own pixels), scatter around that line "
        f"{cal.sd_log2:.3f} octave ({cal.slides} slides).", "", "| slide | true um/px | peak um/px | steps from 0.5 um/px |", "|---|---|---|---|",
    ]
    lines += [f"| {r['id']} | {r['trusted_mpp']:.3f} | {r['peak_mpp']:.3f} | {r['steps_from_model_mpp']:+.2f} |"
              for r in run.rows if r["peak_mpp"] is not None]
    lines += [f"| {r['id']} | skipped: {r['skipped']} | | |" for r in run.rows if r["skipped"]]
    (ROOT / "bench" / "results" / "reference_calibration.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
