"""Small biopsies on much glass (issue 28 item 5): is a correct declaration ever flagged, and is the glass the cause?

Usage (from the repository root):
    python bench/biopsies.py [--phantoms 11,12,13,14,15,16] [--seeds 0,1,2] [--points 20]

Protocol:
* Phantom pairs: for each phantom seed, two fragments of 0.6 x 0.5 mm (1200 x 1000 px at 0.5 um/px, issue 28's
  layout) on 8192 px of glass (3.6% tissue), and the same tissue field without glass (3072 px square from the first
  fragment's corner: the fragments are cut from it). Each searched with the phantom model and the DEFAULT search
  at ``--points`` and each seed, with the nuclei's ruler (the default) and without it (the model's check alone).
  Paired, so that the glass is the only difference: signed error (grid steps), whether the 95% interval holds the
  truth, its width, the status.
* Real tissue: two fragments of the CMU-1 region (0.499 um/px, the packaged demo image) and of the InstanSeg core
  (0.5 um/px, ../shared/data) on 8192 px of glass, declared 0.5, the DEFAULT model and search, the same seeds.
  Both images trained the bundled model: not held out.
Phantom slides are written bare (no tissue detection shortcut); all real images are ~0.5 um/px scans.

Writes bench/results/biopsies.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "real_models"))
import common  # noqa: E402

import histoscale  # noqa: E402
from histoscale.phantom import PhantomSpec, render_region  # noqa: E402
from histoscale.slide import write_slide  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MPP, SIDE = 0.5, 8192
FRAGMENTS_AT = ((1500, 2000), (5000, 4800))
FRAGMENT_WH = (1200, 1000)
FIELD = 3072  # the glass-free control: the tissue field the first fragment is cut from


def on_glass(path: Path, fragments: list[np.ndarray]) -> Path:
    canvas = np.full((SIDE, SIDE, 3), 255, np.uint8)
    for (x, y), tissue in zip(FRAGMENTS_AT, fragments, strict=True):
        canvas[y : y + tissue.shape[0], x : x + tissue.shape[1]] = tissue
    return write_slide(path, canvas, mpp=MPP, fmt="svs")


def phantom_pair(work: Path, seed: int) -> tuple[Path, Path]:
    biopsy, field = work / f"biopsy-phantom{seed}.svs", work / f"field-phantom{seed}.svs"
    if not biopsy.exists():
        spec = PhantomSpec(width_um=SIDE * MPP, height_um=SIDE * MPP, seed=seed)
        on_glass(biopsy, [render_region(spec, x * MPP, y * MPP, FRAGMENT_WH, MPP) for x, y in FRAGMENTS_AT])
        x, y = FRAGMENTS_AT[0]
        write_slide(field, render_region(spec, x * MPP, y * MPP, (FIELD, FIELD), MPP), mpp=MPP, fmt="svs")
    return biopsy, field


def real_biopsy(work: Path) -> Path | None:
    path = work / "biopsy-real.svs"
    instanseg = common.DATA / "instanseg-he-example.tif"
    if path.exists() or not instanseg.exists():
        return path if path.exists() else None
    w, h = FRAGMENT_WH
    with histoscale.open_slide(Path(str(files("histoscale") / "assets" / "demo" / "cmu-1-small-region.svs"))) as a:
        first = a.read_level(0, (900, 1950), (w, h))
    with histoscale.open_slide(instanseg) as b:
        second = b.read_level(0, (100, 300), (w, h))
    return on_glass(path, [first, second])


def measure(path: Path, model: Any, seed: int, points: int, ruler: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = histoscale.find_scale(path, model, points=points, seed=seed, ruler=ruler)
    c = r.check
    lo, hi = c.implied_interval
    return {"slide": path.name, "seed": seed, "ruler": ruler, "status": c.status, "implied": c.implied_mpp,
            "steps": math.log2(c.implied_mpp / MPP) / 0.25, "inside": bool(lo <= MPP <= hi),
            "width_steps": math.log2(hi / lo) / 0.25, "reason": c.reason, "seconds": time.perf_counter() - t0}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    steps = np.array([r["steps"] for r in rows])
    return {"n": len(rows), "ok": sum(r["status"] == "OK" for r in rows),
            "mismatch": sum(r["status"] == "MISMATCH" for r in rows),
            "inconclusive": sum(r["status"] == "INCONCLUSIVE" for r in rows),
            "within_1_step": float(np.mean(np.abs(steps) <= 1)), "mean_steps": float(steps.mean()),
            "rms_steps": float(np.sqrt(np.mean(steps**2))), "coverage": float(np.mean([r["inside"] for r in rows])),
            "median_width_steps": float(np.median([r["width_steps"] for r in rows]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phantoms", default="11,12,13,14,15,16")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".work" / "biopsies")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    phantom = histoscale.load_model("phantom")
    rows: list[dict[str, Any]] = []
    for ps in (int(s) for s in args.phantoms.split(",")):
        biopsy, field = phantom_pair(args.workdir, ps)
        for seed in seeds:
            for ruler in (True, False):
                for kind, path in (("biopsy", biopsy), ("field", field)):
                    row = {"set": f"phantom {kind}", "phantom": ps, **measure(path, phantom, seed, args.points, ruler)}
                    rows.append(row)
                    print(f"{row['set']} {ps} seed {seed} ruler {ruler}: {row['steps']:+.2f} steps {row['status']}",
                          flush=True)
    real = real_biopsy(args.workdir)
    if real is not None:
        model = histoscale.load_model()
        for seed in seeds:
            for ruler in (True, False):
                row = {"set": "real biopsy", **measure(real, model, seed, args.points, ruler)}
                rows.append(row)
                print(f"real biopsy seed {seed} ruler {ruler}: {row['steps']:+.2f} steps {row['status']}", flush=True)
    groups = {f"{s}, ruler {'on' if on else 'off'}": summary([r for r in rows if r["set"] == s and r["ruler"] == on])
              for s in ("phantom biopsy", "phantom field", "real biopsy") for on in (True, False)
              if any(r["set"] == s and r["ruler"] == on for r in rows)}
    phantom_rows = [r for r in rows if r["set"].startswith("phantom")]  # biopsy, field, biopsy, field, ...
    paired = [b["steps"] - f["steps"] for b, f in zip(phantom_rows[0::2], phantom_rows[1::2], strict=True)
              if not b["ruler"]]
    prov = common.provenance()
    doc = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "provenance": prov,
           "seconds": time.perf_counter() - t0,
           "args": {k: common.shown_path(v) if isinstance(v, Path) else str(v) for k, v in vars(args).items()},
           "groups": groups, "paired_biopsy_minus_field_steps": {"mean": float(np.mean(paired)),
                                                                 "sd": float(np.std(paired))}, "rows": rows}
    lines = ["# Small biopsies on much glass", "",
             f"histoscale commit {prov.get('histoscale_commit')}, {doc['date']}; phantoms {args.phantoms}, seeds "
             f"{args.seeds}, {args.points} points, default search; {doc['seconds']:.0f} s.", "",
             "| set | searches | OK / MISMATCH / INCONCLUSIVE | within 1 step | mean / rms error (steps) | truth inside "
             "the 95% interval | median interval width (steps) |", "|---|---|---|---|---|---|---|"]
    for name, g in groups.items():
        lines.append(f"| {name} | {g['n']} | {g['ok']} / {g['mismatch']} / {g['inconclusive']} | "
                     f"{g['within_1_step']:.0%} | {g['mean_steps']:+.2f} / {g['rms_steps']:.2f} | {g['coverage']:.0%} | "
                     f"{g['median_width_steps']:.1f} |")
    lines += ["", f"Paired (ruler off), biopsy minus its glass-free field: {np.mean(paired):+.2f} +- "
              f"{np.std(paired):.2f} steps over {len(paired)} pairs.", "", "## Per search", "",
              "| set | phantom | seed | ruler | steps | status | interval width | reason |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r.get('phantom', '')} | {r['seed']} | {'on' if r['ruler'] else 'off'} | "
                     f"{r['steps']:+.2f} | {r['status']} | {r['width_steps']:.1f} | {(r['reason'] or '')[:90]} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "biopsies.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (RESULTS / "biopsies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(groups)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
