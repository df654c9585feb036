"""Why the search goes wrong on real models, and what would change it: re-score the searches of bench/real.py.

Usage (after bench/real.py; no model is run again, ~10 s):
    python bench/real_models/rescore.py [--workdir bench/.work]

Each search of bench/real.py saved its per-point class scores (the default scorer's signed distances to the
class hyperplanes, (P, N, C)); the logits are those times ||w_c||, so every logit-based scorer (margin, distance,
softmax, entropy) and every aggregation can be replayed on exactly the same patches. Candidates:

* ``margin + pooled`` (the library default: reproduces bench/real.py's answer), ``margin + vote`` (the paper's),
  ``distance / softmax / entropy + pooled``;
* ``margin + pooled, peaked points only``: points whose curve rises to the coarsest (or falls to the finest)
  scale of the grid are left out of the pool; a point whose margin only grows with the field of view says "more
  context, more confidence", not "this is my scale";
* ``margin + pooled, no glass``: points classed BACK at most scales left out;
* ``margin + pooled, downsample-1 column interpolated``: the only patches the search does not resample are those
  at downsample 1 (the slide's own pixels); their scores are replaced by the mean of the two neighbouring grid
  scales, a proxy for a patch pipeline that filters every scale alike (see sharpness.py);
* ``margin + pooled, tissue classes only``: Capricorn's margin over its 9 PathMNIST (tissue) outputs only, not
  the 15 DermaMNIST / BloodMNIST ones that never apply to these slides (Lite0: unchanged);
* ``margin + mean of raw curves``: the mean of the unstandardised curves (flat, noisy points weigh little).

Per candidate: the equivariance slope and share within one step per model and image, and on the labelled slides
the chosen scale against the best measured accuracy of bench/results/real.json. Also the diagnosis per search:
share of rising / falling / peaked curves and the class the points are given at the chosen scale.
Writes bench/results/real_rescore.md and .json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from histoscale.aggregate import analyse_curves, vote  # noqa: E402
from histoscale.scoring import softmax  # noqa: E402

STEP = 0.25


def curves_for(scorer: str, d: np.ndarray, norms: np.ndarray) -> np.ndarray:
    if scorer == "margin":
        top2 = np.sort(d, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]
    if scorer == "distance":
        return d.max(axis=-1)
    probs = softmax(d * norms)
    if scorer == "softmax":
        return probs.max(axis=-1)
    return (probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)


def answer(curves: np.ndarray, log2s: np.ndarray, method: str, keep: np.ndarray | None = None) -> float:
    """log2 of the chosen downsample (continuous estimate)."""
    if keep is not None and keep.sum() >= 3:
        curves = curves[keep]
    pa = analyse_curves(curves, log2s)
    return vote(pa, log2s, curves=curves, method=method, n_boot=1).log2_estimate


CANDIDATES = ("margin + pooled", "margin + vote", "distance + pooled", "softmax + pooled", "entropy + pooled",
              "margin + pooled, peaked points only", "margin + pooled, no glass",
              "margin + pooled, downsample-1 column interpolated", "margin + pooled, tissue classes only",
              "margin + mean of raw curves")


def evaluate_candidate(name: str, d: np.ndarray, log2s: np.ndarray, norms: np.ndarray, back: int | None) -> float:
    scorer, _, rest = name.partition(" + ")
    method = rest.split(",")[0]
    if "tissue classes only" in name:
        # Capricorn: its 9 PathMNIST outputs (tissue), not the 15 DermaMNIST / BloodMNIST ones; Lite0: all 5
        d, norms = d[..., :9], norms[:9]
    curves = curves_for(scorer, d, norms)
    if method == "mean of raw curves":
        # no per-point standardisation: flat, noisy curves weigh little; a parabola through the mean curve
        mean = curves.mean(axis=0)
        i = int(np.argmax(mean))
        if 0 < i < len(mean) - 1:
            from histoscale.aggregate import _parabola_vertex

            return float(_parabola_vertex(log2s[i - 1:i + 2][None], mean[i - 1:i + 2][None])[0])
        return float(log2s[i])
    keep = None
    if "peaked" in name:
        best = curves.argmax(axis=1)
        keep = (best > 0) & (best < curves.shape[1] - 1)
    if "glass" in name and back is not None:
        keep = (d.argmax(axis=-1) == back).mean(axis=1) < 0.5
    if "interpolated" in name:
        # the slide's own pixels (downsample 1) are the only patches not resampled: replace their scores by the
        # mean of the two neighbouring grid scales (a proxy for a pipeline that filters every scale alike)
        i1 = int(np.argmin(np.abs(log2s)))
        if abs(log2s[i1]) < 1e-6 and 0 < i1 < len(log2s) - 1:
            curves = curves.copy()
            curves[:, i1] = 0.5 * (curves[:, i1 - 1] + curves[:, i1 + 1])
    return answer(curves, log2s, method, keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=common.REPO / "bench" / ".work")
    args = ap.parse_args()
    real = json.loads((common.REPO / "bench" / "results" / "real.json").read_text())
    models = {}
    for key in real["equivariance"]:
        mname = key.split("|")[0]
        if mname not in models:
            models[mname] = common.MODELS[mname]()
    out: dict[str, Any] = {"candidates": {}, "diagnosis": {}}
    for key, eq in real["equivariance"].items():
        mname, sname = key.split("|")
        model = models[mname]
        norms = np.linalg.norm(np.asarray(model.W), axis=0)
        back = list(model.class_names).index("BACK")
        stem = sname.split(".")[0]
        f = np.array([v["factor"] for v in eq["versions"]])
        per_cand: dict[str, list[float]] = {c: [] for c in CANDIDATES}
        diag = []
        for v in eq["versions"]:
            npz = np.load(args.workdir / "real" / f"{mname}_{stem}_k{v['k']}.npz")
            d = npz["class_scores"].astype(np.float64)
            log2s = np.log2(npz["scales"])
            for c in CANDIDATES:
                per_cand[c].append(evaluate_candidate(c, d, log2s, norms, back))
            margin = curves_for("margin", d, norms)
            best = margin.argmax(axis=1)
            n = margin.shape[1]
            chosen = int(np.argmin(np.abs(log2s - math.log2(v["estimate_downsample"]))))
            classes = d[:, chosen].argmax(axis=-1)
            names, counts = np.unique(np.array(model.class_names)[classes], return_counts=True)
            diag.append({"k": v["k"], "rising": float(np.mean(best == n - 1)), "falling": float(np.mean(best == 0)),
                         "peaked": float(np.mean((best > 0) & (best < n - 1))),
                         "classes_at_chosen": {str(a): int(b) for a, b in zip(names, counts)},
                         "grid_downsample": [float(npz["scales"][0]), float(npz["scales"][-1])]})
        out["diagnosis"][key] = diag
        acc = real["accuracy"].get(key)
        for c, log2_est in per_cand.items():
            implied = model.mpp / 2 ** np.array(log2_est)
            err = np.log2(implied[1:] / implied[0] / f[1:]) / STEP
            row: dict[str, Any] = {"slope": float(np.polyfit(np.log2(f), np.log2(implied), 1)[0]),
                                   "within_one_step": float(np.mean(np.abs(err) <= 1 + 1e-9)),
                                   "implied_k0": float(implied[0])}
            if acc is not None:
                truth = common.SLIDES[sname]
                chosen = truth * f * 2 ** np.array(log2_est)  # um/px the model is applied at, each version
                row["chosen_mpp"] = [float(x) for x in chosen]
                row["vs_best_prob_steps"] = [float(math.log2(x / acc["best_prob_scale"]) / STEP) for x in chosen]
                row["vs_best_acc_steps"] = [float(min((math.log2(x / s) / STEP for s in acc["best_scales"]),
                                                      key=abs)) for x in chosen]
            out["candidates"].setdefault(c, {})[key] = row
    lines = ["# Re-scoring the real searches (same patches, other scorers and aggregations)", "",
             "Per model and image: equivariance slope / share of k = 1..6 within one step; on the labelled slides "
             "also the median over k of |chosen - nearest best-accuracy scale| and |chosen - best mean P(true)| "
             "in grid steps.", ""]
    keys = list(real["equivariance"])
    lines.append("| candidate | " + " | ".join(k.replace("|", " on ").replace(".svs", "").replace(".tif", "")
                                             for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for c in CANDIDATES:
        cells = []
        for k in keys:
            r = out["candidates"][c][k]
            cell = f"{r['slope']:.2f} / {r['within_one_step']:.0%}"
            if "vs_best_acc_steps" in r:
                cell += (f"; acc {np.median(np.abs(r['vs_best_acc_steps'])):.1f}, "
                         f"P {np.median(np.abs(r['vs_best_prob_steps'])):.1f}")
            cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Diagnosis: shape of the per-point margin curves, classes at the chosen scale", "",
              "| model on image | k | rising | falling | peaked | grid (downsample) | classes at the chosen scale |",
              "|---|---|---|---|---|---|---|"]
    for key, diag in out["diagnosis"].items():
        for dg in diag:
            lines.append(f"| {key.replace('|', ' on ')} | {dg['k']} | {dg['rising']:.0%} | {dg['falling']:.0%} | "
                         f"{dg['peaked']:.0%} | {dg['grid_downsample'][0]:.2f}-{dg['grid_downsample'][1]:.2f} | "
                         + ", ".join(f"{a} {b}" for a, b in dg["classes_at_chosen"].items()) + " |")
    md = "\n".join(lines) + "\n"
    results = common.REPO / "bench" / "results"
    (results / "real_rescore.json").write_text(json.dumps(out, indent=1) + "\n")
    (results / "real_rescore.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
