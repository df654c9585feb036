"""Does a scale calibration measured on one real image carry to another? (leave one image out, real models)

Usage (after ``python bench/real.py``, whose equivariance searches it reads; no model runs again):
    python bench/real_models/calibration_transfer.py [--results real.json]

For each real model and each ordered pair of labelled images (fit, test): the calibration is fitted with
``histoscale.fit_calibration`` on the fit image's seven shrunk versions (trusted um/px = truth x shrink factor; the
um/px where the margins peaked = that x the search's estimated downsample), then applied to the test image's
versions as the search applies it (the scale where the margins peaked x ``calibration.factor(0.5)``, the models'
nominal training um/px). Reported per test version: the um/px at which the model would be applied, calibrated and
not, against the scale of best measured accuracy on the test image's held-out regions (``real.json`` "absolute").
Two images are a thin basis: this says whether the correction transfers between two scanners, not how often.

Writes bench/results/real_calibration.md.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

import histoscale

RESULTS = Path(__file__).resolve().parents[1] / "results"
STEP = 0.25
NOMINAL_MPP = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="real.json", help="a bench/real.py result in bench/results/")
    args = ap.parse_args()
    doc = json.loads((RESULTS / args.results).read_text())
    best = {(r["model"], r["slide"]): r for r in doc["absolute"]}
    truth = {slide: r["truth"] for (_, slide), r in best.items()}
    peaks: dict[tuple[str, str], list[float]] = {}
    for key, eq in doc["equivariance"].items():
        model, slide = key.split("|")
        if slide in truth:
            peaks[model, slide] = [truth[slide] * v["factor"] * v["estimate_downsample"] for v in eq["versions"]]
    lines = [
        f"From `bench/results/{args.results}` ({doc['date']}, the searches with {doc['search_settings']['points']} "
        "points): "
        "a calibration fitted on one image's seven shrunk versions, applied to the other image's seven.",
        "",
        "| model | fit on | margins peak at (fit) | test image | best accuracy at | applied, uncalibrated (steps from best) "
        "| applied, calibrated (steps from best) | within 1 step: uncalibrated / calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, fit_slide), fit_peaks in sorted(peaks.items()):
        cal = histoscale.fit_calibration(fit_peaks, source=f"{fit_slide}, 7 shrunk versions")
        for (other_model, test_slide), test_peaks in sorted(peaks.items()):
            if other_model != model or test_slide == fit_slide:
                continue
            scales = best[model, test_slide]["best_scales"]

            def steps(mpp: float, scales: list[float] = scales) -> float:
                return min((math.log2(mpp / s) / STEP for s in scales), key=abs)

            raw = np.array(test_peaks)
            applied = raw * cal.factor(NOMINAL_MPP)
            raw_steps = [steps(v) for v in raw]
            cal_steps = [steps(v) for v in applied]
            lines.append(
                f"| {model} | {fit_slide} | {cal.margin_peak_mpp:.3f} um/px (scatter {cal.sd_log2:.2f} octave) | "
                f"{test_slide} | {', '.join(f'{s:.2f}' for s in scales)} | "
                + ", ".join(f"{v:.2f} ({s:+.1f})" for v, s in zip(raw, raw_steps)) + " | "
                + ", ".join(f"{v:.2f} ({s:+.1f})" for v, s in zip(applied, cal_steps)) + " | "
                f"{np.mean(np.abs(raw_steps) <= 1):.0%} / {np.mean(np.abs(cal_steps) <= 1):.0%} |"
            )
    (RESULTS / "real_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
