"""The model-free ruler (histoscale.measure_mpp) on real tissue: how often is it right, and when does it refuse?

Usage (from the repository root):
    python bench/ruler.py                    # the full protocol (~3 min on 2 cores)
    python bench/ruler.py --factors 1,2 --phantoms 0

Protocol (issue 26):
* Real images with trusted um/px (CMU-1 0.499, InstanSeg 0.50008), shrunk with area averaging
  (``histoscale.resample``) by each factor of ``--factors`` (on and off the 2^(k/4) lattice, 1 to 2.8x) and written
  as tiled TIFFs lossless (zlib) and JPEG 90 / 60 (bench/real_default.py's ``write_copy``), plus the original file
  at factor 1. Each copy is measured with the DEFAULT settings at ``--seeds``; reported: within one grid step
  (+-19%) and two of the truth, and whether the declarations truth x 2, x 1/2 and x 10 fall outside the ruler's
  95% interval (flagged by the ruler alone) while the truth falls inside.
* Leave-one-image-out: the constant NUCLEAR_SIGMA_UM re-fitted on one image (factor 1, lossless) and applied to
  the other, the only honest figure for a new image (the shipped constant is the two images' geometric mean).
* The NCT-CRC-HE tiles, one per tissue class, each measured alone at 0.5 um/px: which classes the constant fits,
  and that ADI, BACK and MUC give no number.
* Phantom slides (bundled generator; their nuclei sizes are set by construction): a test of the code, not of the
  physics, reported apart.
All real images are ~0.5 um/px scans: coarser truths come from shrinking; no real 0.25 um/px scan was available,
so finer truths are not measured here.

Writes bench/results/ruler.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "real_models"))
import common  # noqa: E402
from real_default import STEP, TRUSTED, write_copy  # noqa: E402

import histoscale  # noqa: E402
from histoscale.phantom import write_phantom  # noqa: E402
from histoscale.ruler import NUCLEAR_SIGMA_UM, ruler_estimate  # noqa: E402

ENCODINGS = ("lossless", "jpeg90", "jpeg60")

RESULTS = common.REPO / "bench" / "results"
DECLARED = (2.0, 0.5, 10.0)


def steps_off(mpp: float, truth: float) -> float:
    """Signed: + reads coarser than the truth."""
    return math.log2(mpp / truth) / STEP


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def measure(path: Path, truth: float, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with histoscale.open_slide(path, slide_mpp=truth) as slide:
        r = histoscale.measure_mpp(slide, seed=seed)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {"mpp": r.mpp, "interval": r.interval, "sigma_px": r.sigma_px, "count": r.count,
                           "reason": r.reason, "seconds": seconds}
    if r.mpp is not None:
        row["steps"] = steps_off(r.mpp, truth)
        row["truth_inside"] = r.contains(truth)
        row["flagged"] = {str(k): not r.contains(truth * k) for k in DECLARED}
    return row


def real_cases(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    cases = []
    for image, truth0 in TRUSTED.items():
        src = common.DATA / image
        with histoscale.open_slide(src) as slide:
            w, h = slide.dimensions
            rgb = slide.read_level(0, (0, 0), (w, h))
        for f in args.factors:
            truth = truth0 * f
            small = rgb if f == 1 else histoscale.resample(rgb, (round(w / f), round(h / f)))
            copies = {enc: write_copy(small, work / f"{src.stem}_f{f}_{enc}.tif", truth, enc)
                      for enc in ENCODINGS}
            if f == 1:
                copies["original"] = src
            for enc, path in copies.items():
                for seed in args.seeds:
                    row = measure(path, truth, seed)
                    row.update(image=image, factor=f, truth=truth, encoding=enc, seed=seed)
                    cases.append(row)
                    log(f"{image} x{f} {enc} seed {seed}: {row['mpp']} ({row.get('steps')}) {row['reason'] or ''}")
    return cases


def leave_one_out(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # sigma (level-0 px) x truth is the image's own constant; the other image's constant predicts this one.
    own = {c["image"]: c["sigma_px"] * c["truth"] for c in cases
           if c["factor"] == 1 and c["encoding"] == "lossless" and c["seed"] == 0 and c["sigma_px"]}
    out = []
    for c in cases:
        others = [v for k, v in own.items() if k != c["image"]]
        if not others or not c["sigma_px"] or c["mpp"] is None:
            continue
        mpp = others[0] / c["sigma_px"]
        out.append({"image": c["image"], "factor": c["factor"], "encoding": c["encoding"], "seed": c["seed"],
                    "mpp": mpp, "steps": steps_off(mpp, c["truth"])})
    return out


def nct_cases() -> list[dict[str, Any]]:
    rows = []
    for path in sorted((common.DATA / "nct-crc-he-sample").glob("*.tif")):
        rgb = tifffile.imread(path)[..., :3]
        r = ruler_estimate([rgb])
        rows.append({"class": path.name.split("-")[0], "mpp": r.mpp, "reason": r.reason, "count": r.count,
                     "steps": steps_off(r.mpp, 0.5) if r.mpp else None})
        log(f"NCT {rows[-1]['class']}: {r.describe()}")
    return rows


def phantom_cases(n: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(7)
    for i in range(n):
        mpp = float(2 ** rng.uniform(math.log2(0.3), math.log2(1.2)))
        path = work / f"phantom_{i}.tiff"
        write_phantom(path, mpp=mpp, size_px_wh=(3000, 3000), seed=100 + i, fmt="bare", workers=1)
        row = measure(path, mpp, 0)
        row.update(truth=mpp, seed=100 + i)
        rows.append(row)
        log(f"phantom {i} at {mpp:.3f}: {row['mpp']} ({row.get('steps')})")
    return rows


def _share(values: list[bool]) -> float:
    return float(np.mean(values)) if values else math.nan


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [c for c in cases if c["mpp"] is not None]
    steps = [abs(c["steps"]) for c in measured]
    return {
        "cases": len(cases),
        "measured": len(measured),
        "within_1_step": _share([s <= 1.0 for s in steps]) * len(measured) / max(len(cases), 1),
        "within_2_steps": _share([s <= 2.0 for s in steps]) * len(measured) / max(len(cases), 1),
        "truth_inside_interval": _share([c["truth_inside"] for c in measured]),
        "wrong_declarations_flagged": _share([v for c in measured for v in c["flagged"].values()]),
        "median_seconds": float(np.median([c["seconds"] for c in cases])) if cases else math.nan,
    }


def markdown(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["provenance"]
    lines = [
        "# The model-free ruler on real tissue", "",
        f"histoscale commit {p.get('histoscale_commit')}, {doc['date']}, {doc['machine']}; constant "
        f"NUCLEAR_SIGMA_UM {NUCLEAR_SIGMA_UM} um; default settings (24 regions of 320 px at level 0).", "",
        "| cases | measured | within 1 step | within 2 steps | truth inside the 95% interval | x2, x1/2, x10 flagged "
        "| median s / slide |",
        "|---|---|---|---|---|---|---|",
        f"| {s['cases']} | {s['measured']} | {s['within_1_step']:.0%} | {s['within_2_steps']:.0%} | "
        f"{s['truth_inside_interval']:.0%} | {s['wrong_declarations_flagged']:.0%} | {s['median_seconds']:.2f} |",
        "", "Shares of all cases (a case the ruler cannot measure counts as a miss).", "",
        "## Per case", "",
        "| image | factor | truth | encoding | seed | ruler um/px | steps | truth inside | flagged x2 / x1/2 / x10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["real"]:
        if c["mpp"] is None:
            lines.append(f"| {c['image']} | {c['factor']} | {c['truth']:.3f} | {c['encoding']} | {c['seed']} | "
                         f"cannot: {c['reason']} | | | |")
            continue
        flags = " / ".join("yes" if c["flagged"][str(k)] else "no" for k in DECLARED)
        lines.append(f"| {c['image']} | {c['factor']} | {c['truth']:.3f} | {c['encoding']} | {c['seed']} | "
                     f"{c['mpp']:.3f} | {c['steps']:+.1f} | {'yes' if c['truth_inside'] else 'NO'} | {flags} |")
    loo = doc["leave_one_out"]
    if loo:
        within = np.mean([abs(r["steps"]) <= 1 for r in loo])
        within2 = np.mean([abs(r["steps"]) <= 2 for r in loo])
        worst = max(abs(r["steps"]) for r in loo)
        lines += ["", "## Leave one image out", "",
                  f"The constant fitted on the other image: {len(loo)} measured cases, {within:.0%} within one "
                  f"step, {within2:.0%} within two, worst {worst:.1f} steps."]
    lines += ["", "## NCT-CRC-HE tiles (0.5 um/px, one tile per class, measured alone)", "",
              "| class | ruler um/px | steps | nuclei | reason |", "|---|---|---|---|---|"]
    for r in doc["nct"]:
        mpp = f"{r['mpp']:.3f}" if r["mpp"] else "-"
        steps = f"{r['steps']:+.1f}" if r["steps"] is not None else ""
        lines.append(f"| {r['class']} | {mpp} | {steps} | {r['count']} | {r['reason'] or ''} |")
    if doc["phantoms"]:
        ps = summarise(doc["phantoms"])
        lines += ["", "## Phantom slides (nuclei sizes set by construction: a test of the code, not the physics)", "",
                  f"{ps['cases']} slides at random um/px 0.3-1.2: {ps['measured']} measured, "
                  f"{ps['within_1_step']:.0%} within one step, {ps['within_2_steps']:.0%} within two; "
                  "steps off: " + ", ".join(f"{c['steps']:+.1f}" if c["mpp"] else "-" for c in doc["phantoms"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factors", default="1,1.15,1.3,1.5,1.7,2,2.4,2.8")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--phantoms", type=int, default=8)
    ap.add_argument("--suffix", default="")
    args = ap.parse_args()
    args.factors = [float(v) if "." in v else int(v) for v in args.factors.split(",")]
    args.seeds = [int(v) for v in args.seeds.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        real = real_cases(args, work)
        phantoms = phantom_cases(args.phantoms, work)
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(), "provenance": common.provenance(), "seconds": time.perf_counter() - t0,
        "summary": summarise(real), "real": real, "leave_one_out": leave_one_out(real), "nct": nct_cases(),
        "phantoms": phantoms,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ruler{args.suffix}.json").write_text(json.dumps(doc, indent=2, default=float))
    (RESULTS / f"ruler{args.suffix}.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
