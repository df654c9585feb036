"""How often the scale search finds the right scale: a phantom cohort with known um/px, and real tissue.

Usage:
    python bench/recovery.py [--slides 30] [--points 100] [--extras 10] [--verify 3] [--real-seeds 3]
                             [--workdir bench/.work] [--no-real] [--model CARD]

Protocol (all numbers come from one run, on the same slides and points):

* Cohort: ``--slides`` phantom slides (seeds 1000, 1001, ...), true level-0 um/px drawn log-uniformly in
  [0.2, 1.0], written WITHOUT resolution metadata (``fmt="bare"``), ``--size`` px square (default 3072). They are
  cached in ``<workdir>/recovery/`` so that a re-run skips rendering.
* Model: the bundled reference model (``load_model(None)``: SmallCNN, trained at 0.5 um/px, 128 px input).
* Search in relative units (the slides have no um/px): the implied level-0 um/px is
  ``model_mpp / downsample`` (as in ``ScaleResult.check.implied_grid_mpp``); per point the same formula is applied to
  the point's voted downsample.
* Scorers: ``find_scale`` is run ONCE per slide with early_stop=False, widen=False on a fixed wide grid
  (downsample 2^(k/4), k=-6..8: implied 0.125..1.41 um/px); the model features it computes are recorded (a thin
  wrapper around the model) and re-scored with every scorer through ``scoring.score_points``,
  ``aggregate.analyse_curves`` and ``aggregate.vote``. For the default scorer this reproduces ``find_scale``'s
  own answer (checked).
* Early stopping (all slides): early_stop=True vs the fixed-P run on the wide grid (widen off), replayed on the
  recorded features with the library's analyse_curves / vote / is_settled per block of batch_points, and checked
  against a real find_scale(early_stop=True) on the first --verify slides.
* On the first --extras slides (real find_scale runs): sampling tissue vs uniform (default scorer, same grid and
  settings); widening on the library's default grid (9 scales around downsample 1: implied 0.25..1.0 um/px, so the
  finest truths lie outside it): the library default (early stop and widening on) vs the same with widen=False.
* Real tissue: ../shared/data/cmu-1-small-region.svs beside the repository, or $HISTOSCALE_DATA (0.499 um/px declared) shrunk with area averaging
  (``histoscale.patches.resample``) by 1, sqrt(2) and 2 (only coarser: upsampling invents no detail), written bare
  with ``histoscale.slide.write.write_slide``; same protocol with ``--real-seeds`` seeds per version.

Point votes are counted two ways: strictly (|log2 error| <= k steps) and as the paper counts them (within k grid
steps of the grid scale nearest the truth, i.e. |log2 error| < k + 1/2 steps; the paper: 56% / 85% for k = 1 / 2).
Accuracy: one grid step is 2^(1/4) (+-19%); "within one step" is |log2(implied / true)| <= 1/4, "within half a
step" <= 1/8 (the best a grid answer can always do is half a step, since the truth is continuous).
Writes bench/results/recovery.json and bench/results/recovery.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from histoscale.aggregate import AGGREGATIONS, analyse_curves, is_settled, vote
from histoscale.models import load_model
from histoscale.models.torch_adapter import bf16_supported
from histoscale.patches import resample
from histoscale.phantom import write_phantom
from histoscale.reports import machine
from histoscale.scoring import SCORERS, score_points
from histoscale.search import DEFAULT_AGGREGATION, DEFAULT_SCORER, find_scale
from histoscale.slide import open_slide
from histoscale.slide.write import write_slide
from histoscale.units import STEPS_PER_OCTAVE

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The project's read-only real samples live beside the repository (../shared/data); HISTOSCALE_DATA overrides.
REAL_SLIDE = Path(os.environ.get("HISTOSCALE_DATA", HERE.parent.parent / "shared" / "data")) / "cmu-1-small-region.svs"
# One row per scorer and slide-level aggregation ("pooled" curve or the paper's "vote").
ROWS: dict[str, tuple[str, str]] = {
    f"{scorer} + {method}": (scorer, method) for scorer in SCORERS for method in AGGREGATIONS
}
DEFAULT_ROW = f"{DEFAULT_SCORER} + {DEFAULT_AGGREGATION}"
WIDE_GRID = tuple(float(2.0 ** (k / STEPS_PER_OCTAVE)) for k in range(-6, 9))  # downsamples 0.354 .. 4.0
STEP = 1.0 / STEPS_PER_OCTAVE  # one grid step in log2
EPS = 1e-6


class Recorder:
    """The model, unchanged, except that every ``features`` output is kept (to re-score without recomputing)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.chunks: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def features(self, batch: np.ndarray) -> np.ndarray:
        out = self._model.features(batch)
        self.chunks.append(np.asarray(out))
        return out

    def take(self, p: int, n: int) -> np.ndarray:
        feats = np.concatenate(self.chunks).reshape(p, n, -1)
        self.chunks = []
        return feats


# ------------------------------------------------------------------------------------------------ cohort
def cohort(workdir: Path, n: int, size: int) -> list[tuple[Path, float, int]]:
    """(slide path, true um/px, seed) for n phantoms, rendering only those not cached yet."""
    folder = workdir / "recovery"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20230301)
    truths = np.exp(rng.uniform(math.log(0.2), math.log(1.0), 1000))  # slide i always gets truths[i]
    out = []
    t0 = time.perf_counter()
    rendered = 0
    for i in range(n):
        seed, mpp = 1000 + i, float(truths[i])
        path = folder / f"phantom_{seed}_{size}.tif"
        meta = folder / f"phantom_{seed}_{size}.phantom.json"
        if not (path.is_file() and meta.is_file() and abs(json.loads(meta.read_text())["mpp"] - mpp) < 1e-12):
            write_phantom(path, mpp=mpp, size_px_wh=(size, size), seed=seed, fmt="bare", workers=1)
            rendered += 1
        out.append((path, mpp, seed))
    print(f"cohort: {n} phantom slides in {folder} ({rendered} rendered now, {time.perf_counter() - t0:.0f} s)")
    return out


def real_versions(workdir: Path) -> list[tuple[Path, float, str]]:
    """The CMU region shrunk by 1, sqrt(2), 2, written bare: (path, true um/px, label)."""
    folder = workdir / "real"
    folder.mkdir(parents=True, exist_ok=True)
    with open_slide(REAL_SLIDE) as s:
        declared = float(s.mpp)
        w, h = s.dimensions
        image = None
        out = []
        for label, factor in (("1x", 1.0), ("1.41x", math.sqrt(2.0)), ("2x", 2.0)):
            nw, nh = round(w / factor), round(h / factor)
            truth = declared * math.sqrt((w / nw) * (h / nh))  # the exact geometric-mean shrink factor
            path = folder / f"cmu1_{label.replace('.', 'p')}.tif"
            if not path.is_file():
                if image is None:
                    image = s.read_level(0, (0, 0), (w, h))
                write_slide(path, resample(image, (nw, nh)), mpp=None, fmt="bare")
            out.append((path, truth, label))
    return out


# ------------------------------------------------------------------------------------------------ scoring
def log2_err(implied: np.ndarray | float, truth: float) -> np.ndarray:
    return np.log2(np.asarray(implied, dtype=np.float64) / truth)


def rescore(
    feats: np.ndarray, model: Any, grid: np.ndarray, scorer: str, seed: int, method: str = DEFAULT_AGGREGATION,
    n_boot: int = 500,
) -> dict[str, Any]:
    """Slide answer and per-point answers of one scorer + aggregation on stored features (library functions only)."""
    log2_grid = np.log2(grid)
    curves = score_points(feats, model.W, model.b, scorer).curve
    answers = analyse_curves(curves, log2_grid)
    v = vote(answers, log2_grid, curves=curves, method=method, n_boot=n_boot, seed=seed)
    mpp = float(model.mpp)
    pts = answers.best_index[answers.informative]
    return {
        "winner": int(v.winner),
        "implied": mpp / float(grid[v.winner]) if v.winner >= 0 else float("nan"),
        "implied_continuous": mpp / 2.0**v.log2_estimate if v.winner >= 0 else float("nan"),
        "point_implied": (mpp / grid[pts]).tolist(),
        "n_points": int(len(answers.best_index)),
    }


BATCH_POINTS = int(inspect.signature(find_scale).parameters["batch_points"].default)


def replay_early_stop(feats: np.ndarray, model: Any, grid: np.ndarray, scorer: str, seed: int) -> dict[str, Any]:
    """find_scale's early stop (widen off) replayed on the stored features of the fixed-P run (same points, same
    order): after each block of ``batch_points`` points, stop once the library's ``is_settled`` says so. Checked
    against a real early_stop=True run on the first slides (--verify)."""
    points, used = len(feats), 0
    log2_grid = np.log2(grid)
    while used < points:
        used += min(BATCH_POINTS, points - used)
        curves = score_points(feats[:used], model.W, model.b, scorer).curve
        answers = analyse_curves(curves, log2_grid)
        interim = vote(answers, log2_grid, curves=curves, method=DEFAULT_AGGREGATION, n_boot=100, seed=seed)
        if is_settled(interim, DEFAULT_AGGREGATION, points - used, min_points=4 * BATCH_POINTS):
            break
    return {**rescore(feats[:used], model, grid, scorer, seed), "points_used": used}


def result_answer(res: Any, model: Any) -> dict[str, Any]:
    """The same fields from a ScaleResult (relative units)."""
    pa = res.point_answers
    pts = pa.best_index[pa.informative]
    return {
        "winner": int(res.chosen_index),
        "implied": float(res.check.implied_grid_mpp),
        "implied_continuous": float(model.mpp) / float(res.estimate),
        "point_implied": (float(model.mpp) / res.scales[pts]).tolist(),
        "n_points": int(res.points_used),
        "points_used": int(res.points_used),
        "widened": len(res.widenings) > 0,
        "grid": res.scales.tolist(),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """rows: per slide {truth, implied, implied_continuous, point_implied}."""
    e = np.array([log2_err(r["implied"], r["truth"]) for r in rows])
    ec = np.array([log2_err(r["implied_continuous"], r["truth"]) for r in rows])
    pe = np.concatenate([log2_err(r["point_implied"], r["truth"]) for r in rows]) if rows else np.zeros(0)
    ok = np.isfinite(e)
    return {
        "slides": len(rows),
        "within_1_step": float(np.mean(np.abs(e) <= STEP + EPS)),
        "within_half_step": float(np.mean(np.abs(e) <= STEP / 2 + EPS)),
        "median_abs_log2_err": float(np.median(np.abs(e[ok]))) if ok.any() else float("nan"),
        "median_signed_steps": float(np.median(e[ok]) / STEP) if ok.any() else float("nan"),
        "median_abs_log2_err_continuous": float(np.nanmedian(np.abs(ec))) if ok.any() else float("nan"),
        "points": int(len(pe)),
        "points_within_1_step": float(np.mean(np.abs(pe) <= STEP + EPS)) if len(pe) else float("nan"),
        "points_within_2_steps": float(np.mean(np.abs(pe) <= 2 * STEP + EPS)) if len(pe) else float("nan"),
        # the paper's counting: grid steps from the grid scale NEAREST the truth (|err| < k + 1/2 steps)
        "points_paper_within_1": float(np.mean(np.abs(np.round(pe / STEP)) <= 1)) if len(pe) else float("nan"),
        "points_paper_within_2": float(np.mean(np.abs(np.round(pe / STEP)) <= 2)) if len(pe) else float("nan"),
        "no_answer": int((~ok).sum()),
    }


ACC_HEAD = (
    "| {label} | slides | slide within 1 step | within 1/2 step | median abs log2 err (grid / continuous) "
    "| median signed err (steps) | point votes within 1 step | within 2 steps | paper-style 1 / 2 steps |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def acc_row(name: str, s: dict[str, Any], mark: str = "") -> str:
    return (
        f"| {name}{mark} | {s['slides']} | {s['within_1_step']:.0%} | {s['within_half_step']:.0%} | "
        f"{s['median_abs_log2_err']:.3f} / {s['median_abs_log2_err_continuous']:.3f} | "
        f"{s['median_signed_steps']:+.1f} | {s['points_within_1_step']:.0%} | {s['points_within_2_steps']:.0%} | "
        f"{s['points_paper_within_1']:.0%} / {s['points_paper_within_2']:.0%} |"
    )


def best_scorer(summ: dict[str, dict[str, Any]]) -> str:
    """Most slides within one step; ties: more within half a step, then smaller median error, then point votes."""
    return max(
        summ,
        key=lambda k: (
            summ[k]["within_1_step"], summ[k]["within_half_step"], -summ[k]["median_abs_log2_err"],
            summ[k]["points_within_1_step"],
        ),
    )


# ------------------------------------------------------------------------------------------------ runs
def protocol(
    slides: list[tuple[Path, float, Any]], model: Any, points: int, *, extras: int, verify: int, tag: str
) -> dict[str, Any]:
    """extras: on the first ``extras`` slides also run uniform sampling and widen on/off (real find_scale runs);
    verify: on the first ``verify`` slides also run find_scale(early_stop=True) to check the replay."""
    grid = np.array(WIDE_GRID)
    rec = Recorder(model)
    per_scorer: dict[str, list[dict[str, Any]]] = {name: [] for name in ROWS}
    sampling: dict[str, list[dict[str, Any]]] = {"tissue": [], "uniform": []}
    early: dict[str, list[dict[str, Any]]] = {"fixed P": [], "early stop": []}
    widen: dict[str, list[dict[str, Any]]] = {"no widen": [], "library default": []}
    timings: dict[str, float] = {}
    mismatches: list[str] = []
    verified: list[str] = []

    def timed(key: str, fn: Any) -> Any:
        t = time.perf_counter()
        out = fn()
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t
        return out

    for k, (path, truth, label) in enumerate(slides):
        t_slide = time.perf_counter()
        seed = k
        common = dict(points=points, seed=seed, relative=True, scorer=DEFAULT_SCORER)
        with open_slide(path) as slide:
            res = timed("fixed", lambda: find_scale(slide, rec, scales=grid, early_stop=False, widen=False, **common))
            feats = rec.take(res.points_used, len(grid))
            base = {"slide": path.name, "label": label, "truth": truth, "seed": seed}
            for name, (scorer, method) in ROWS.items():
                ans = rescore(feats, model, grid, scorer, seed, method)
                per_scorer[name].append({**base, **ans})
            mine = per_scorer[DEFAULT_ROW][-1]
            if mine["winner"] != res.chosen_index or not math.isclose(mine["implied"], res.check.implied_grid_mpp):
                mismatches.append(f"{path.name}: rescored {mine['winner']} vs find_scale {res.chosen_index}")
            fixed = {**base, **result_answer(res, model)}
            early["fixed P"].append(fixed)
            replay = {**base, **replay_early_stop(feats, model, grid, DEFAULT_SCORER, seed)}
            early["early stop"].append(replay)
            if k < verify:
                r = timed("early", lambda: find_scale(slide, model, scales=grid, early_stop=True, widen=False, **common))
                if r.points_used != replay["points_used"] or r.chosen_index != replay["winner"]:
                    mismatches.append(
                        f"{path.name}: early-stop replay used {replay['points_used']} points -> index "
                        f"{replay['winner']}, find_scale(early_stop=True) {r.points_used} -> {r.chosen_index}"
                    )
                verified.append(path.name)
            if k < extras:
                sampling["tissue"].append(fixed)
                r = timed(
                    "uniform",
                    lambda: find_scale(slide, model, scales=grid, sampling="uniform", early_stop=False, widen=False,
                                       **common),
                )
                sampling["uniform"].append({**base, **result_answer(r, model)})
                r = timed("nowiden", lambda: find_scale(slide, model, widen=False, **common))
                widen["no widen"].append({**base, **result_answer(r, model)})
                r = timed("default", lambda: find_scale(slide, model, **common))
                widen["library default"].append({**base, **result_answer(r, model)})
        e = log2_err(mine["implied"], truth)
        print(
            f"  [{tag} {k + 1}/{len(slides)}] {path.name}: true {truth:.3f} um/px, implied {mine['implied']:.3f} "
            f"({float(e) / STEP:+.1f} steps, {DEFAULT_SCORER}); {time.perf_counter() - t_slide:.1f} s",
            flush=True,
        )
    return {
        "per_scorer": per_scorer, "sampling": sampling, "early": early, "widen": widen,
        "timings_s": timings, "rescore_mismatches": mismatches, "early_stop_replay_verified_on": verified,
    }


def decision_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Fraction of slides whose implied um/px differs (beyond rounding) between two settings."""
    return float(np.mean([not math.isclose(x["implied"], y["implied"], rel_tol=1e-6) for x, y in zip(a, b)]))


def tables(out: dict[str, Any], title: str) -> tuple[str, dict[str, Any]]:
    lines = [f"### {title}", ""]
    summ = {s: summarise(rows) for s, rows in out["per_scorer"].items()}
    best = best_scorer(summ)
    lines += [ACC_HEAD.format(label="scorer + aggregation (fixed wide grid, P fixed)")]
    for s in ROWS:
        mark = " **(best)**" if s == best else ""
        default = " (default)" if s == DEFAULT_ROW else ""
        lines.append(acc_row(s + default, summ[s], mark))
    lines += ["", f"Best here: **{best}** (most slides within one step; ties broken by half-step, then error)."]
    summary: dict[str, Any] = {"scorers": summ, "best_scorer": best}

    es = {m: summarise(rows) for m, rows in out["early"].items()}
    used = {m: [r["points_used"] for r in rows] for m, rows in out["early"].items()}
    lines += ["", ACC_HEAD.format(label=f"early stopping (wide grid, {DEFAULT_SCORER})")]
    lines += [acc_row(m, es[m]) for m in ("fixed P", "early stop")]
    diff = decision_diff(out["early"]["fixed P"], out["early"]["early stop"])
    ver = out["early_stop_replay_verified_on"]
    lines += [
        "",
        f"Points used: fixed P = {int(np.mean(used['fixed P']))}; early stop mean {np.mean(used['early stop']):.1f}, "
        f"median {np.median(used['early stop']):.0f}, min {min(used['early stop'])}, max {max(used['early stop'])}. "
        f"Decision differs from fixed P on {diff:.0%} of slides. (Early stop replayed on the fixed run's features with "
        f"the library's is_settled"
        + (f"; checked against find_scale(early_stop=True) on {len(ver)} slides: "
           + ("MISMATCH, see notes)." if any("replay" in m for m in out["rescore_mismatches"]) else "identical).")
           if ver else ".)")
    ]
    summary["early_stop"] = {**es, "points_used": used, "decision_differs": diff}

    n_extra = len(out["sampling"]["uniform"])
    if n_extra:
        samp = {m: summarise(rows) for m, rows in out["sampling"].items()}
        lines += ["", ACC_HEAD.format(label=f"sampling ({DEFAULT_SCORER}, first {n_extra} slides)")]
        lines += [acc_row(m, samp[m]) for m in ("tissue", "uniform")]
        diff_s = decision_diff(out["sampling"]["tissue"], out["sampling"]["uniform"])
        lines += ["", f"Decision differs tissue vs uniform on {diff_s:.0%} of these slides."]
        summary["sampling"] = {**samp, "decision_differs": diff_s}
        wd = {m: summarise(rows) for m, rows in out["widen"].items()}
        lines += ["", ACC_HEAD.format(
            label=f"range widening (default 9-scale grid, early stop on, {DEFAULT_SCORER}, first {n_extra} slides)")]
        lines += [acc_row(m, wd[m]) for m in ("no widen", "library default")]
        nw = sum(r["widened"] for r in out["widen"]["library default"])
        diff_w = decision_diff(out["widen"]["no widen"], out["widen"]["library default"])
        used_d = [r["points_used"] for r in out["widen"]["library default"]]
        used_n = [r["points_used"] for r in out["widen"]["no widen"]]
        outside = sum(r["truth"] < 0.25 / 2 ** (STEP / 2) for r in out["widen"]["no widen"])
        lines += [
            "",
            f"Default grid: implied 0.25..1.0 um/px; {outside} of these slides have a truth more than half a step finer "
            f"than its finest scale. Widening triggered on {nw} slides; decision differs widen on vs off on "
            f"{diff_w:.0%} of slides. Points used: library default (early stop + widen) mean {np.mean(used_d):.1f}, "
            f"widen off mean {np.mean(used_n):.1f} (of P={int(np.max(used['fixed P']))}).",
        ]
        summary["widen"] = {**wd, "widened_slides": nw, "decision_differs": diff_w, "default_points_used": used_d,
                            "nowiden_points_used": used_n}
    return "\n".join(lines), summary


def real_table(out: dict[str, Any]) -> str:
    lines = [
        "| version | true um/px | " + " | ".join(f"{s} implied (steps)" for s in ROWS) + " |",
        "|---|---|" + "---|" * len(ROWS),
    ]
    n = len(out["per_scorer"][DEFAULT_ROW])
    for i in range(n):
        r0 = out["per_scorer"][DEFAULT_ROW][i]
        cells = []
        for s in ROWS:
            r = out["per_scorer"][s][i]
            cells.append(f"{r['implied']:.3f} ({float(log2_err(r['implied'], r['truth'])) / STEP:+.1f})")
        lines.append(f"| {r0['label']} seed {r0['seed']} | {r0['truth']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _model_hash(spec: str | None) -> str | None:
    """sha256 of the bundled reference weights (which model produced the figures)."""
    import hashlib
    from importlib.resources import files

    if spec is not None:
        return None
    pt = Path(str(files("histoscale") / "assets" / "reference.pt"))
    return hashlib.sha256(pt.read_bytes()).hexdigest() if pt.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=30)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--size", type=int, default=3072, help="phantom side in px")
    ap.add_argument("--workdir", type=Path, default=HERE / ".work")
    ap.add_argument("--model", default=None, help="model card / file (default: the bundled reference model)")
    ap.add_argument("--extras", type=int, default=10,
                    help="slides (the first ones) that also get the uniform-sampling and widen on/off runs")
    ap.add_argument("--verify", type=int, default=3,
                    help="slides on which the early-stop replay is checked against find_scale(early_stop=True)")
    ap.add_argument("--no-real", action="store_true", help="skip the real-tissue run")
    ap.add_argument("--real-seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    t_start = time.perf_counter()
    command = "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    model = load_model(args.model, precision="fp32")
    print(f"model {model!r}")
    notes = []
    if bf16_supported("cpu"):
        notes.append("bf16: supported on this CPU but the fp32-vs-bf16 rows are not implemented in this run")
    else:
        notes.append(
            "fp32 vs bf16: SKIPPED - this CPU has no bf16 acceleration (histoscale.models.torch_adapter.bf16_supported('cpu') is "
            "False); emulated bf16 is ~400x slower than fp32 here. All rows are fp32."
        )
    print(notes[-1])

    slides = cohort(args.workdir, args.slides, args.size)
    out = protocol([(p, m, f"seed {s}") for p, m, s in slides], model, args.points, extras=args.extras,
                   verify=args.verify, tag="phantom")
    text, summary = tables(out, f"Phantom cohort: {args.slides} slides, P={args.points}")
    if out["rescore_mismatches"]:
        notes.append("MISMATCH (library vs bench replay): " + "; ".join(out["rescore_mismatches"]))
    print("\n" + text + "\n")

    real_text, real_summary, real_out = "", None, None
    if args.no_real:
        notes.append("real tissue: skipped (--no-real)")
    elif not REAL_SLIDE.is_file():
        notes.append(f"real tissue: SKIPPED - {REAL_SLIDE} is absent (the shared data folder is not on this machine)")
        print(notes[-1])
    else:
        versions = real_versions(args.workdir)
        runs = [(p, m, lab) for p, m, lab in versions for _ in range(args.real_seeds)]
        real_out = protocol(runs, model, args.points, extras=0, verify=0, tag="real")
        # protocol() uses the run index as seed: re-label rows with it
        for s in ROWS:
            for i, r in enumerate(real_out["per_scorer"][s]):
                r["seed"] = i
        real_text, real_summary = tables(
            real_out, f"Real tissue: CMU-1 small region, {len(versions)} versions x {args.real_seeds} seeds, P={args.points}"
        )
        real_text += "\n\n" + real_table(real_out)
        print("\n" + real_text + "\n")

    elapsed = time.perf_counter() - t_start
    print("\n".join(notes))
    print(f"total {elapsed:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": command,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{machine()}, "
        f"python {platform.python_version()}",
        "model": repr(model),
        "model_file_sha256": _model_hash(args.model),
        "grid_downsamples": list(WIDE_GRID),
        "phantom": {"summary": summary, "timings_s": out["timings_s"], "runs": out},
        "real": None if real_out is None else {"summary": real_summary, "runs": real_out},
        "notes": notes,
        "elapsed_s": elapsed,
    }
    (args.out / "recovery.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    md = [f"Command: `{command}` ({doc['date']}, {elapsed:.0f} s)", "", text]
    if real_text:
        md += ["", real_text]
    md += ["", *[f"- {n}" for n in notes]]
    (args.out / "recovery.md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out / 'recovery.json'} and {args.out / 'recovery.md'}")


if __name__ == "__main__":
    main()
