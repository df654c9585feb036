"""Real models on real tissue: per-scale accuracy on labelled regions, equivariance and absolute recovery.

Usage (from the repository root, with the benchmark-only packages of bench/real_models/README.md installed):
    python bench/real.py [--points N] [--per-class 24] [--models lite0-head,capricorn,shell] [--workdir bench/.work]

Only histoscale's public API is used (open_slide, load_model, load_labels, evaluate_scales, find_scale,
SearchConfig, resample, write_search_report), so the benchmark runs unchanged when the default search changes.
Data: ``../shared/data`` beside the repository, or ``$HISTOSCALE_DATA``.

Models (bench/real_models): ``lite0-head`` = frozen ImageNet EfficientNet-Lite0 + a linear head trained on real
H&E at 0.5 um/px (train_lite0_head.py); ``capricorn`` = Capricorn 0.1 (DenseNet121 + Dense(24), PathMNIST /
DermaMNIST / BloodMNIST) as shipped, input /255, nominal training scale 0.5 um/px (PathMNIST 224 = NCT-CRC-HE);
both have 224 px inputs. ``shell`` = the lavlab SHELL segmenter (ONNX SegResNet, a 1x1-convolution head with
lumen / epithelium / other channels) as its package applies it: 1.0 um/px, stain-derived input channels with
stain parameters estimated once per image, here fed 256 px patches.

1. Accuracy per scale (the paper's Table 1 for real models): ``evaluate_scales`` on the TEST regions of each
   labelled slide (``bench/real_models/regions/<slide>.test.geojson``; never used to train the head),
   ``--per-class`` positions per class, the same positions at every scale, at 2^(k/4) * 0.5 um/px,
   k = -2..6 (0.35 .. 1.41 um/px, 9 scales). Capricorn's outputs are mapped to the region classes (bench/real_models/
   common.py: EPI -> TUM, STR -> STR, LYM -> LYM, BACK -> BACK, ADI -> ADI); any other of its 24 outputs counts
   as an error. SHELL's answer is the mean of its cells' logits over the patch; the regions are relabelled to its
   classes (EPI -> EPI, every other class -> OTHER; its LUM channel counts as an error).
2. Equivariance (needs no training scale): each image is shrunk by f = 2^(k/4), k = 0..6, with area averaging
   (``histoscale.resample``) and written as a bare tiled TIFF (tifffile, no resolution: the search runs in
   level-0 downsample units, as for any slide without metadata); the search runs with the DEFAULT settings (only
   ``--points`` changes them, and the output says so). The implied level-0 um/px is model_mpp / estimate (the
   continuous estimate); ideal: it scales with f. Reported: the slope of log2(implied) against log2(f) (ideal 1)
   and the share of the shrunk versions (k = 1..6) whose ratio implied_k / implied_0 is within one grid step
   (2^(1/4)) of f.
3. Absolute recovery (k = 0, and every k for the labelled slides, whose true um/px is known): the implied slide
   um/px against the truth (what the paper assumes: the optimum is the training scale), and the scale the search
   chose (truth x downsample, in um/px) against the scale of best measured accuracy in 1.
4. Figures: curves.png and votes.png of each model on the InstanSeg core (k = 0), and per model and labelled
   slide the accuracy per scale beside the search's pooled curve, in bench/results/ (a ``--suffix`` run adds
   the suffix to their names, so it never replaces the main run's).

Writes bench/results/real.json and bench/results/real.md; the bare TIFFs and each search's per-point class
scores (for re-scoring without re-running the models) go to ``<workdir>/real/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "real_models"))
import common  # noqa: E402

import histoscale  # noqa: E402

RESULTS = common.REPO / "bench" / "results"
STEP = 0.25  # one grid step in log2
EPS = 1e-9
ACC_SCALES = tuple(round(0.5 * 2 ** (k / 4), 4) for k in range(-2, 7))  # 0.3536 .. 1.4142, quarter octaves
SHRINK_STEPS = tuple(range(7))
FIGURE_IMAGE = "instanseg-he-example.tif"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# what a reader of the results needs to know about a model or image, said when it was run
MODEL_NOTES = (
    ("capricorn", "Capricorn mapping: EPI -> TUM (adenocarcinoma epithelium; CMU-1's epithelium is benign squamous "
                  "epidermis, outside its training domain), STR -> STR, LYM -> LYM, BACK -> BACK, ADI -> ADI"),
    ("shell", "SHELL mapping: EPI -> its epithelium channel ('outer'), every other region class -> its third channel "
              "(neither lumen nor epithelium: stroma and glass); trained on prostate, so both slides are outside its "
              "training domain; nominal training scale 1.0 um/px (what its package applies it at)"),
    ("tcga-cr-7395-01a-01-ts1.svs", "the TCGA slide has no resolution metadata: equivariance only"),
)


# ---------------------------------------------------------------------------------------------- 1. accuracy
def accuracy_tables(names: list[str], images: list[str], per_class: int, seed: int, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mname in names:
        for sname in [n for n in common.LABELLED if n in images]:
            t0 = time.perf_counter()
            model = common.MODELS[mname](common.DATA / sname)
            labels = common.REGIONS / f"{sname.split('.')[0]}.test.geojson"
            if mname in common.REGION_MAPS:
                labels = common.relabelled_regions(labels, common.REGION_MAPS[mname],
                                                   workdir / "real" / f"{labels.stem}.{mname}.geojson")
            acc = histoscale.evaluate_scales(common.DATA / sname, model, labels, list(ACC_SCALES),
                                             points_per_class=per_class, seed=seed)
            d = acc.to_dict()
            present = [c for c, n in zip(acc.class_names, acc.counts) if n]
            row = {
                "scales": [float(s) for s in acc.scales],
                "classes": present,
                "per_class": {c: [float(acc.accuracy[i, acc.class_names.index(c)]) for i in range(len(acc.scales))]
                              for c in present},
                "per_class_true_prob": {c: [float(acc.true_prob[i, acc.class_names.index(c)])
                                            for i in range(len(acc.scales))] for c in present},
                "mean": [float(v) for v in acc.mean],
                "mean_true_prob": [float(v) for v in acc.mean_true_prob],
                "tissue_mean": [float(np.nanmean([acc.accuracy[i, acc.class_names.index(c)]
                                                  for c in present if c != "BACK"])) for i in range(len(acc.scales))],
                "best_scales": d["best_scales"],
                "positions_per_class": {c: int(acc.counts[acc.class_names.index(c)]) for c in present},
                "seconds": round(time.perf_counter() - t0, 1),
            }
            tissue = np.array(row["tissue_mean"])
            row["best_tissue_scales"] = [float(s) for s, v in zip(acc.scales, tissue) if v >= tissue.max() - 1e-12]
            # accuracy saturates over a range of scales; the mean true-class probability still has one maximum
            row["best_prob_scale"] = float(acc.scales[int(np.nanargmax(acc.mean_true_prob))])
            out[f"{mname}|{sname}"] = row
            log(f"accuracy {mname} on {sname}: mean {np.round(acc.mean, 2).tolist()} ({row['seconds']} s)")
    return out


# ------------------------------------------------------------------------------------------ 2. equivariance
def shrunk_versions(workdir: Path, name: str) -> list[tuple[int, float, Path]]:
    """(k, exact shrink factor, bare tiled TIFF) for k in SHRINK_STEPS; written once, reused."""
    import tifffile

    folder = workdir / "real"
    folder.mkdir(parents=True, exist_ok=True)
    out, image = [], None
    with histoscale.open_slide(common.DATA / name) as slide:
        w, h = slide.dimensions
        for k in SHRINK_STEPS:
            f = 2 ** (k / 4)
            nw, nh = round(w / f), round(h / f)
            path = folder / f"{name.split('.')[0]}_k{k}.tif"
            if not path.is_file():
                if image is None:
                    image = slide.read_level(0, (0, 0), (w, h))
                small = image if k == 0 else histoscale.resample(image, (nw, nh))
                tmp = path.with_suffix(".part.tif")
                tifffile.imwrite(tmp, small, tile=(256, 256), photometric="rgb", compression="zlib")
                tmp.replace(path)
            out.append((k, math.sqrt((w / nw) * (h / nh)), path))
    return out


def run_search(path: Path, model: Any, config: histoscale.SearchConfig, save: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = histoscale.find_scale(path, model, config)
    seconds = time.perf_counter() - t0
    np.savez_compressed(save, class_scores=r.class_scores, curves=r.curves, scales=r.scales, points_xy=r.points_xy)
    mpp = float(model.mpp)
    return {
        "units": r.units,
        "scales": [float(s) for s in r.scales],
        "chosen_downsample": float(r.chosen_scale),
        "estimate_downsample": float(r.estimate),
        "interval_downsample": [float(v) for v in r.interval],
        "implied_mpp": mpp / float(r.estimate),
        "implied_mpp_grid": mpp / float(r.chosen_scale),
        "confidence": float(r.confidence),
        "points_used": int(r.points_used),
        "points_informative": int(r.points_informative),
        "stopped_early": bool(r.stopped_early),
        "widenings": list(r.widenings),
        "votes": [int(v) for v in r.votes],
        "seconds": round(seconds, 1),
        "_result": r,
    }


def slope(factors: np.ndarray, implied: np.ndarray) -> float:
    x, y = np.log2(factors), np.log2(implied)
    return float(np.polyfit(x, y, 1)[0])


def equivariance(names: list[str], images: list[str], workdir: Path, config: histoscale.SearchConfig,
                 figures: dict[str, Any], variant: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    versions = {name: shrunk_versions(workdir, name) for name in images}
    for mname in names:
        for name, vers in versions.items():
            rows = []
            for k, f, path in vers:
                model = common.MODELS[mname](path)
                row = run_search(path, model, config, workdir / "real" / f"{mname}_{path.stem}{variant}.npz")
                result = row.pop("_result")
                if k == 0 and name == FIGURE_IMAGE:
                    figures[mname] = result
                rows.append({"k": k, "factor": f, **row})
                log(f"search {mname} on {path.name}: downsample {row['estimate_downsample']:.3f} "
                    f"(grid {row['chosen_downsample']:.3f}), implied {row['implied_mpp']:.3f} um/px, "
                    f"{row['points_used']} points, {row['seconds']} s")
            f = np.array([r["factor"] for r in rows])
            implied = np.array([r["implied_mpp"] for r in rows])
            ratio_err = np.log2(implied[1:] / implied[0] / f[1:]) / STEP  # in grid steps
            entry: dict[str, Any] = {
                "versions": rows,
                "slope": slope(f, implied),
                "within_one_step": float(np.mean(np.abs(ratio_err) <= 1 + EPS)),
                "ratio_error_steps": [float(v) for v in ratio_err],
            }
            truth0 = common.SLIDES[name]
            if truth0 is not None:
                err = np.log2(implied / (truth0 * f)) / STEP
                entry["implied_vs_truth_steps"] = [float(v) for v in err]
                entry["chosen_mpp"] = [truth0 * r["factor"] * r["estimate_downsample"] for r in rows]
            out[f"{mname}|{name}"] = entry
            log(f"equivariance {mname} on {name}: slope {entry['slope']:.2f}, within one step "
                f"{entry['within_one_step']:.0%}")
    return out


# ----------------------------------------------------------------------------------------------- figures
def write_figures(figures: dict[str, Any], workdir: Path, accuracy: dict[str, Any], equi: dict[str, Any],
                  variant: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for mname, result in figures.items():
        folder = workdir / "real" / f"report_{mname}"
        files = histoscale.write_search_report(result, folder)
        for key in ("curves.png", "votes.png"):
            dest = RESULTS / f"real_{mname}_{FIGURE_IMAGE.split('.')[0]}_{key}".replace(".png", f"{variant}.png")
            shutil.copyfile(files[key], dest)
            written.append(dest.name)
    for key, acc in accuracy.items():
        mname, sname = key.split("|")
        fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=90)
        scales = np.array(acc["scales"])
        for c, vals in acc["per_class"].items():
            ax.plot(scales, vals, "o-", lw=1, ms=3, label=f"accuracy {c}")
        ax.plot(scales, acc["mean"], "k-", lw=2.5, label="mean accuracy")
        ax.plot(scales, acc["mean_true_prob"], "k:", lw=2, label="mean P(true class)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("scale presented (um/px)")
        ax.set_ylabel("accuracy (test regions)")
        ax.set_ylim(-0.02, 1.02)
        eq = equi.get(f"{mname}|{sname}")
        if eq is not None:
            v0 = eq["versions"][0]
            ax2 = ax.twinx()
            npz = np.load(workdir / "real" / f"{mname}_{sname.split('.')[0]}_k0{variant}.npz")
            curves = npz["curves"]
            ax2.plot(np.array(v0["scales"]) * common.SLIDES[sname], np.nanmean(curves, 0), "r--", lw=2,
                     label="search: pooled margin curve")
            ax2.set_ylabel("pooled margin (mean over points)", color="r")
            ax.axvline(v0["estimate_downsample"] * common.SLIDES[sname], color="r", lw=1, ls=":")
        ax.set_title(f"{mname} on {sname.split('.')[0]}", fontsize=9)
        ax.legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        dest = RESULTS / f"real_{mname}_{sname.split('.')[0]}_accuracy{variant}.png"  # a suffixed run keeps its own
        fig.savefig(dest)
        plt.close(fig)
        written.append(dest.name)
    return written


# ------------------------------------------------------------------------------------------ 3. absolute
NEAR_BEST = 0.05  # mean accuracies within this of the best are ties: 24 positions a class resolve no finer


def absolute_rows(accuracy: dict[str, Any], equi: dict[str, Any]) -> list[dict[str, Any]]:
    """k = 0 of each labelled slide: implied um/px vs truth, chosen scale vs the scales of (near-)best accuracy."""
    rows = []
    for key, eq in equi.items():
        mname, sname = key.split("|")
        acc = accuracy.get(key)
        if acc is None:
            continue
        chosen = eq["chosen_mpp"][0]
        mean = np.array(acc["mean"])
        near = [s for s, v in zip(acc["scales"], mean) if v >= mean.max() - NEAR_BEST]
        lo, hi = min(near), max(near)
        rows.append({
            "model": mname, "slide": sname, "truth": common.SLIDES[sname],
            "implied": eq["versions"][0]["implied_mpp"], "implied_steps": eq["implied_vs_truth_steps"][0],
            "chosen_mpp": chosen, "best_scales": acc["best_scales"],
            "chosen_vs_best_steps": min((math.log2(chosen / s) / STEP for s in acc["best_scales"]), key=abs),
            "near_best_range": [lo, hi],
            "chosen_vs_near_best_steps": 0.0 if lo <= chosen <= hi else (
                math.log2(chosen / lo) / STEP if chosen < lo else math.log2(chosen / hi) / STEP),
            "best_prob_scale": acc["best_prob_scale"],
            "chosen_vs_best_prob_steps": math.log2(chosen / acc["best_prob_scale"]) / STEP,
        })
    return rows


# ------------------------------------------------------------------------------------------------ report
def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Real models on real tissue", "",
             f"histoscale commit {doc['provenance']['histoscale_commit']}, {doc['date']}, {doc['machine']}. "
             f"Search settings: {doc['search_settings']}. Run time {doc['seconds'] / 60:.1f} min.", ""]
    lines += ["## Accuracy per scale on the test regions (mean over classes; the paper's Table 1)", ""]
    scales = list(ACC_SCALES)
    lines.append("| model | slide | classes (positions each) | " + " | ".join(f"{s:.2f}" for s in scales)
                 + " | best (um/px) |")
    lines.append("|---|---|---|" + "---|" * len(scales) + "---|")
    for key, acc in doc["accuracy"].items():
        mname, sname = key.split("|")
        best = ", ".join(f"{s:.2f}" for s in acc["best_scales"])
        cls = ", ".join(acc["classes"]) + f" ({next(iter(acc['positions_per_class'].values()))})"
        lines.append(f"| {mname} | {sname} | {cls} | " + " | ".join(f"{v:.2f}" for v in acc["mean"])
                     + f" | {best} |")
        lines.append("|  |  | mean P(true class) | " + " | ".join(f"{v:.2f}" for v in acc["mean_true_prob"])
                     + f" | {acc['best_prob_scale']:.2f} |")
        for c, vals in acc["per_class"].items():
            lines.append(f"|  |  | {c} | " + " | ".join(f"{v:.2f}" for v in vals) + " |  |")
    lines += ["", "## Equivariance and absolute recovery (default search on bare TIFFs shrunk by 2^(k/4))", "",
              "Implied level-0 um/px = model training um/px (0.5; SHELL 1.0) / the search's continuous estimate (downsample). "
              "'ratio err' = log2((implied_k / implied_0) / f_k) in grid steps; 'vs truth' = log2(implied / true "
              "um/px) in grid steps; 'chosen' = the scale the search applies the model at, in um/px "
              "(true um/px x downsample).", ""]
    lines.append("| model | image | slope | within 1 step (k=1..6) | k: implied um/px (ratio err; vs truth; chosen) |")
    lines.append("|---|---|---|---|---|")
    for key, eq in doc["equivariance"].items():
        mname, sname = key.split("|")
        cells = []
        for i, v in enumerate(eq["versions"]):
            parts = [f"{v['implied_mpp']:.3f}"]
            parts.append("-" if i == 0 else f"{eq['ratio_error_steps'][i - 1]:+.1f}")
            if "implied_vs_truth_steps" in eq:
                parts.append(f"{eq['implied_vs_truth_steps'][i]:+.1f}")
                parts.append(f"{eq['chosen_mpp'][i]:.2f}")
            cells.append(f"{v['k']}: " + "; ".join(parts))
        lines.append(f"| {mname} | {sname} | {eq['slope']:.2f} | {eq['within_one_step']:.0%} | "
                     + "<br>".join(cells) + " |")
    lines += ["", "## Absolute recovery against the measured optimum (labelled slides, k = 0)", "",
              f"'Near-best': mean accuracy within {NEAR_BEST} of the best (24 positions a class resolve no finer); "
              "steps to that range are 0 inside it.", "",
              "| model | slide | true um/px | implied (from the nominal training um/px) | steps off | chosen scale (um/px) "
              "| best measured accuracy at (um/px) | chosen vs nearest best (steps) | near-best range | chosen vs it "
              "| best mean P(true) at | chosen vs it (steps) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["absolute"]:
        lines.append(f"| {row['model']} | {row['slide']} | {row['truth']:.3f} | {row['implied']:.3f} | "
                     f"{row['implied_steps']:+.1f} | {row['chosen_mpp']:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in row['best_scales'])} | {row['chosen_vs_best_steps']:+.1f} | "
                     f"{row['near_best_range'][0]:.2f}-{row['near_best_range'][1]:.2f} | "
                     f"{row['chosen_vs_near_best_steps']:+.1f} | "
                     f"{row['best_prob_scale']:.2f} | {row['chosen_vs_best_prob_steps']:+.1f} |")
    lines += ["", "Notes:", *[f"- {n}" for n in doc["notes"]], ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=None,
                    help="cap the search's points (default: the library default, what a user runs)")
    ap.add_argument("--per-class", type=int, default=24, help="labelled positions per class for the accuracy table")
    ap.add_argument("--models", default="lite0-head,capricorn,shell")
    ap.add_argument("--images", default=",".join(common.SLIDES), help="a subset of the real images (smoke runs)")
    ap.add_argument("--workdir", type=Path, default=common.REPO / "bench" / ".work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--half-step-grid", action="store_true",
                    help="diagnosis, not the default: search on downsamples 2^((j + 1/2)/4), j = -5..4, a grid with "
                         "no integer downsample (whose patches are the only unresampled or exactly binned ones); "
                         "reuses the accuracy tables of real.json and writes real_halfstep.json/.md")
    ap.add_argument("--suffix", default="",
                    help="write real<suffix>.json/.md (and <suffix>-tagged searches), reusing real.json's accuracy "
                         "tables (measuring those of models real.json lacks): for extra runs beside the main one")
    ap.add_argument("--rewrite-report", action="store_true",
                    help="recompute the derived tables and real.md from real.json (no model is run)")
    args = ap.parse_args()
    if args.rewrite_report:
        for path in sorted(RESULTS.glob("real*.json")):
            if path.stem in ("real_rescore", "real_sharpness"):
                continue
            if path.is_file():
                doc = json.loads(path.read_text())
                doc["absolute"] = absolute_rows(doc["accuracy"], doc["equivariance"])
                path.write_text(json.dumps(doc, indent=1) + "\n")
                path.with_suffix(".md").write_text(markdown(doc))
        return 0
    missing = [n for n in common.SLIDES if not (common.DATA / n).exists()]
    if missing:
        print(f"real data missing in {common.DATA}: {missing} (set HISTOSCALE_DATA)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)  # one process, one core: the machine is shared
    t0 = time.perf_counter()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    config = histoscale.SearchConfig() if args.points is None else histoscale.SearchConfig(points=args.points)
    notes = []
    variant = args.suffix
    if args.half_step_grid:
        variant = args.suffix or "_halfstep"
        config = config.replace(scales=tuple(2 ** ((j + 0.5) / 4) for j in range(-5, 5)), relative=True)
        notes.append("DIAGNOSIS RUN, not the default search: grid offset by half a step (no integer downsample)")
    if args.points is not None:
        notes.append(f"search points capped at {args.points} (library default {histoscale.SearchConfig().points}) "
                     "to fit the CPU budget; every other search setting is the library default")
    images = [n.strip() for n in args.images.split(",") if n.strip()]
    reused = json.loads((RESULTS / "real.json").read_text())["accuracy"] if variant else {}
    have = {key.split("|")[0] for key in reused}
    new = [m for m in names if m not in have]  # models measured afresh: their tables and figures are written
    accuracy = {key: row for key, row in reused.items() if key.split("|")[0] in names}
    accuracy.update(accuracy_tables(new, images, args.per_class, args.seed, args.workdir))
    figures: dict[str, Any] = {}
    equi = equivariance(names, images, args.workdir, config, figures, variant)
    absolute = absolute_rows(accuracy, equi)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"real{variant}.json").write_text(json.dumps({"accuracy": accuracy, "equivariance": equi}, indent=1,
                                                            default=str) + "\n")  # kept if a figure fails
    written = write_figures({m: r for m, r in figures.items() if m in new}, args.workdir,
                            {k: v for k, v in accuracy.items() if k.split("|")[0] in new}, equi, variant)
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_version()}, 1 torch thread",
        "search_settings": config.to_dict(),
        "accuracy_scales": list(ACC_SCALES),
        "accuracy": accuracy,
        "equivariance": equi,
        "absolute": absolute,
        "figures": written,
        "notes": notes + [
            "accuracy: test regions only (drawn by eye by a non-pathologist, bench/real_models/regions/README.md); "
            "BACK is glass; the mean is over the classes present on that slide",
        ] + [note for model_or_image, note in MODEL_NOTES if model_or_image in names + images],
        "provenance": common.provenance(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (RESULTS / f"real{variant}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS / f"real{variant}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
