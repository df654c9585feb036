"""How fast the scale search runs, where its time goes, what it adds on top of the model, and that its memory does
not grow with the slide.

Usage:
    python bench/speed.py [--quick] [--points 100] [--dn-points 100] [--threads N] [--workdir bench/.work]
                          [--skip-stages] [--stage-points 100] [--skip-memory | --memory-only]
    python bench/speed.py --gpu          # (a) and (d) only, on CUDA (skipped with a message where there is none)

(a) End-to-end patches/s of ``find_scale`` (the default coarse-to-fine search: its scan, then P points x N=9 fine
    scales; early_stop=False, widen=False) on a 16000 x 16000 phantom SVS at 0.25 um/px, for DenseNet121 (random
    weights, 224 px, ``load_model(DenseNet121().eval(), input_size=224, mpp=0.5)``) and the bundled reference model,
    against the model alone on ready uint8 batches of as many patches, handed over 72 at a time as the search does,
    side by side: search, model, search, model (means used).
(b) A naive pipeline on the same slide, points and fine scales: one OpenSlide ``read_region`` per point per scale at
    level 0, PIL bilinear resize per patch, batch size 1, fp32. Speed-up = find_scale patches/s / naive patches/s.
(c) Peak memory of a search (reference model) on a large phantom vs the 16000 px one, each case in a fresh
    subprocess: tracemalloc peak (Python/NumPy allocations during the search) and the process's peak RSS (VmHWM;
    ru_maxrss is recorded in the JSON too, but Linux carries the parent's peak into a child's ru_maxrss),
    against a baseline process that only loads the model. The large slide is 64000 px: a 4 x 4 mosaic of the
    16000 px phantom's own pyramid levels, written once and cached (rendering 64000 px afresh would take ~20 min on
    2 cores; a search's memory depends on the slide's size and pyramid, not on which tissue repeats).
(d) One default search (``--stage-points`` points, early stop and widening on) and its report as the CLI writes
    them, stage by stage (bench/_stages.py): wall and CPU seconds (every thread of the process) per stage, reads
    on the calling thread (prefetch=0) so that they can be attributed; then the same search with the default
    prefetch (wall only) and the model alone on as many patches. CPU seconds hardly move with the machine's load;
    wall seconds do.
``--quick``: P=30 for the reference model and 20 points for DenseNet121. ``--threads``: torch threads (on a
machine shared with other jobs, 2 threads on 2 cores stall in each other's barriers: see BENCHMARKS.md).
Writes bench/results/speed.json and bench/results/speed.md (speed_gpu.* with --gpu).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from histoscale.reports import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SLIDE_MPP = 0.25
SMALL_SIDE = 16000
BIG_SIDE = 64000


def phantom_svs(workdir: Path, side: int) -> tuple[Path, float | None]:
    """The cached phantom SVS of ``side`` px (written if absent) and how long writing it took (None if cached
    without a record). Sides above :data:`SMALL_SIDE` are mosaics of the small phantom (:func:`mosaic_source`)."""
    from histoscale.phantom import write_phantom
    from histoscale.slide import open_slide, write_slide

    folder = workdir / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"phantom_{side}.svs"
    record = folder / f"phantom_{side}.write.json"
    if not path.is_file():
        t = time.perf_counter()
        if side > SMALL_SIDE:
            small, _ = phantom_svs(workdir, SMALL_SIDE)
            print(f"writing {path} ({side} x {side} px, a mosaic of {small.name}) ...", flush=True)
            with open_slide(small) as tile_slide:
                write_slide(path, mosaic_source(tile_slide), (side, side), mpp=SLIDE_MPP, fmt="svs")
        else:
            print(f"writing {path} ({side} x {side} px at {SLIDE_MPP} um/px) ...", flush=True)
            write_phantom(path, mpp=SLIDE_MPP, size_px_wh=(side, side), seed=7, fmt="svs", workers=2)
        record.write_text(json.dumps({"seconds": time.perf_counter() - t, "side": side}))
    seconds = json.loads(record.read_text())["seconds"] if record.is_file() else None
    return path, seconds


def mosaic_source(tile_slide: Any) -> Any:
    """A ``write_slide`` source repeating ``tile_slide`` (a Slide) in both directions, level by level: level pixels
    come from the tile's level of the same downsample (its whole level, shrunk, where it has none), so the mosaic
    has a real pyramid without resampling the large level 0."""
    import cv2

    side = tile_slide.dimensions[0]
    shrunk: dict[int, np.ndarray] = {}

    def rows_of(d: int, y0: int, h: int) -> np.ndarray:
        period = side // d
        if d in tile_slide.level_downsamples:
            level = tile_slide.level_downsamples.index(d)
            parts, y = [], y0
            while y < y0 + h:  # one read per run of rows inside one period
                start, n = y % period, min(y0 + h - y, period - y % period)
                parts.append(tile_slide.read_level(level, (0, start * d), (period, n)))
                y += n
            return np.concatenate(parts)
        if d not in shrunk:
            coarsest = len(tile_slide.level_downsamples) - 1
            whole = tile_slide.read_level(coarsest, (0, 0), tile_slide.level_dimensions[coarsest])
            shrunk[d] = cv2.resize(whole, (period, period), interpolation=cv2.INTER_AREA)
        return shrunk[d][np.arange(y0, y0 + h) % period]

    def source(x: int, y: int, w: int, h: int, d: int) -> np.ndarray:
        rows = rows_of(int(d), y, h)
        return np.ascontiguousarray(rows[:, np.arange(x, x + w) % rows.shape[1]])

    return source


# ------------------------------------------------------------------------------------------------ (a), (b)
def model_rate(model: Any, batch: np.ndarray, chunk: int = 72) -> float:
    """Seconds for model.features on a ready uint8 batch, handed over ``chunk`` patches at a time as the search does
    (8 points x 9 scales)."""
    t = time.perf_counter()
    for start in range(0, len(batch), chunk):
        model.features(batch[start : start + chunk])
    return time.perf_counter() - t


def naive_search(path: Path, model: Any, xy: np.ndarray, downsamples: np.ndarray) -> tuple[float, int]:
    """The paper's pipeline, literally: per point per scale one level-0 read_region, PIL bilinear resize, batch 1.
    Returns (seconds, winning scale index by the paper's score)."""
    import openslide
    from PIL import Image

    size = int(model.input_size)
    W = np.asarray(model.W)
    norms = np.linalg.norm(W, axis=0)
    t = time.perf_counter()
    osr = openslide.OpenSlide(str(path))
    best = []
    for cx, cy in xy:
        scores = []
        for ds in downsamples:
            side = max(1, round(size * ds))
            img = osr.read_region((round(cx - side / 2), round(cy - side / 2)), 0, (side, side)).convert("RGB")
            patch = np.asarray(img.resize((size, size), Image.BILINEAR))
            f = model.features(patch[None])
            scores.append(float(((f @ W) / norms).max()))
        best.append(int(np.argmax(scores)))
    osr.close()
    winner = int(np.bincount(best, minlength=len(downsamples)).argmax())
    return time.perf_counter() - t, winner


def e2e(name: str, slide_path: Path, model: Any, naive_model: Any | None, points: int) -> dict[str, Any]:
    from histoscale.search import find_scale
    from histoscale.slide import open_slide

    s = int(model.input_size)
    rng = np.random.default_rng(0)
    with open_slide(slide_path) as slide:
        # search, model alone on as many patches (the default search scores a scan, then points x 9 fine
        # scales), search again, model alone again: side by side, so the load shifts both alike
        t_searches, t_models = [], []
        load = [os.getloadavg()[0]]
        for _ in range(2):
            t = time.perf_counter()
            res = find_scale(slide, model, points=points, seed=0, early_stop=False, widen=False)
            t_searches.append(time.perf_counter() - t)
            n_patches = res.patches_scored
            t_models.append(model_rate(model, rng.integers(0, 256, (n_patches, s, s, 3), dtype=np.uint8)))
        downsamples = res.scales * slide.downsample_for(1.0)
    t_total, t_model = float(np.mean(t_searches)), float(np.mean(t_models))
    load.append(os.getloadavg()[0])
    row: dict[str, Any] = {
        "model": name,
        "input_px": s,
        "points": res.points_used,
        "scales": len(res.scales),
        "patches": n_patches,
        "device": str(getattr(model, "device", "cpu")),
        "precision": getattr(model, "precision", "?"),
        "find_scale_s": t_total,
        "find_scale_patches_per_s": n_patches / t_total,
        "model_only_s": t_model,
        "find_scale_s_runs": t_searches,
        "load_average_1min_before_after": load,
        "model_only_s_runs": t_models,
        "model_only_patches_per_s": n_patches / t_model,
        "overhead": 1 - t_model / t_total,
        "end_to_end_share_of_model_only": t_model / t_total,
        "find_scale_timings": res.timings,
        "answer_um_per_px": float(res.chosen_scale),
    }
    if naive_model is not None:
        # the naive pipeline on the same points and fine grid (no scan: it has no way to place a grid)
        t_naive, naive_winner = naive_search(slide_path, naive_model, res.points_xy, downsamples)
        naive_patches = len(res.points_xy) * len(downsamples)
        row.update(
            naive_s=t_naive,
            naive_patches=naive_patches,
            naive_patches_per_s=naive_patches / t_naive,
            speedup_vs_naive=(n_patches / t_total) / (naive_patches / t_naive),
            naive_answer_um_per_px=float(res.scales[naive_winner]),
        )
    print(
        f"  {name}: find_scale {row['find_scale_patches_per_s']:.1f} patches/s ({n_patches} patches, {t_total:.1f} s), model alone "
        f"{row['model_only_patches_per_s']:.1f} patches/s, find_scale at {row['end_to_end_share_of_model_only']:.0%} of it"
        + (f", naive {row['naive_patches_per_s']:.1f} patches/s -> speed-up x{row['speedup_vs_naive']:.2f}"
           if naive_model is not None else ""),
        flush=True,
    )
    return row


def speed_rows(args: argparse.Namespace, device: str, naive: bool) -> list[dict[str, Any]]:
    import torch

    from histoscale.models import load_model
    from histoscale.models.architectures import DenseNet121

    slide_path, _ = phantom_svs(args.workdir, SMALL_SIDE)
    rows = []
    torch.manual_seed(0)
    net = DenseNet121().eval()
    naive_net = copy.deepcopy(net)
    dn = load_model(net, input_size=224, mpp=0.5, device=device)
    dn_naive = load_model(naive_net, input_size=224, mpp=0.5, device=device, precision="fp32") if naive else None
    rows.append(e2e("DenseNet121 (random weights)", slide_path, dn, dn_naive, args.dn_points))
    ref = load_model(None, device=device)
    ref_naive = load_model(None, device=device, precision="fp32") if naive else None
    rows.append(e2e(f"reference ({ref.name})", slide_path, ref, ref_naive, args.points))
    return rows


# ------------------------------------------------------------------------------------------------ (c)
def peak_rss_mb() -> float:
    """Peak resident set of THIS process image, MB: VmHWM from /proc (Linux). ru_maxrss is not used for the
    comparison: Linux carries the parent's peak across fork+exec into the child's ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_case(path: str, points: int) -> None:
    """Run in a fresh subprocess: print one JSON line with the peaks."""
    import tracemalloc

    from histoscale.models import load_model
    from histoscale.search import find_scale

    model = load_model(None)
    model.features(np.zeros((64, model.input_size, model.input_size, 3), np.uint8))
    out: dict[str, Any] = {
        "case": Path(path).name,  # the file name: absolute paths of one machine mean nothing elsewhere
        "peak_rss_after_model_load_mb": peak_rss_mb(),
        "ru_maxrss_after_model_load_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    tracemalloc.start()
    t = time.perf_counter()
    if path != "baseline":
        res = find_scale(path, model, points=points, seed=0, early_stop=False, widen=False)
        out["points_used"] = res.points_used
    out["seconds"] = time.perf_counter() - t
    out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["peak_rss_mb"] = peak_rss_mb()
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("MEMORY " + json.dumps(out))


def memory_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    notes = []
    small, _ = phantom_svs(args.workdir, SMALL_SIDE)
    big_side = args.big_side or BIG_SIDE
    big, t_big = phantom_svs(args.workdir, big_side)
    if t_big is not None:
        notes.append(f"writing the {big_side} px mosaic SVS took {t_big:.0f} s (cached for re-runs)")
    rows = []
    for label, case in (("baseline (model loaded, no search)", "baseline"), (f"{SMALL_SIDE} px", str(small)),
                        (f"{big_side} px", str(big))):
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-case", case, "--points", str(args.points)],
            capture_output=True, text=True, check=False,
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"memory case {case} failed:\n{proc.stdout}\n{proc.stderr}")
        row = {"slide": label, **json.loads(line[len("MEMORY "):])}
        rows.append(row)
        print(
            f"  {label}: tracemalloc peak {row['tracemalloc_peak_mb']:.1f} MB, peak RSS {row['peak_rss_mb']:.0f} MB "
            f"({row['seconds']:.1f} s)", flush=True,
        )
    return rows, notes


# ------------------------------------------------------------------------------------------------ (d)
STAGE_ORDER = (
    "open slide", "tissue mask", "sampling", "read (decode tiles)", "crops", "resample", "model", "scoring",
    "curve analysis", "vote + bootstrap", "engine (rest)", "report (thumbnail, figures, html, json)",
)


def stage_profile(name: str, slide_path: Path, model: Any, points: int, workdir: Path) -> dict[str, Any]:
    """One default search (``find_scale`` with its defaults but ``points`` and ``prefetch=0``) and its report, as
    the CLI runs them, timed stage by stage (bench/_stages.py); then the same search with the default prefetch,
    wall time only, and the model alone on as many patches."""
    from _stages import StageClock  # bench/ is on sys.path when this script runs

    import histoscale.patches as patches
    import histoscale.search.engine as engine
    from histoscale.reports.search import write_search_report
    from histoscale.slide import Slide, open_slide

    clock = StageClock()
    targets = [
        (engine, "open_slide", "open slide", True),
        (engine, "tissue_mask", "tissue mask", True),
        (engine, "sample_points", "sampling", False),
        (Slide, "read_level", "read (decode tiles)", False),
        (patches, "read_multiscale", "crops", False),
        (engine, "read_multiscale", "crops", False),
        (patches, "resample", "resample", False),
        (model, "features", "model", False),
        (engine, "score_points", "scoring", False),
        (engine, "analyse_curves", "curve analysis", False),
        (engine, "vote", "vote + bootstrap", False),
    ]
    report_dir = workdir / "speed" / f"report_{model.input_size}"
    load = [os.getloadavg()[0]]
    w0, c0 = time.perf_counter(), time.process_time()
    with clock.patched(targets):
        res = clock.wrap("engine (rest)", engine.find_scale)(str(slide_path), model, points=points, prefetch=0)

        def report() -> None:
            with open_slide(slide_path) as slide:
                write_search_report(res, report_dir, thumbnail=slide.thumbnail())

        clock.wrap("report (thumbnail, figures, html, json)", report, opaque=True)()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    t = time.perf_counter()
    res_default = engine.find_scale(str(slide_path), model, points=points)
    t_default = time.perf_counter() - t
    batch = np.random.default_rng(0).integers(0, 256, (res.patches_scored, model.input_size, model.input_size, 3), dtype=np.uint8)
    chunk = 72  # what the search hands the model: 8 points x 9 scales
    t = time.perf_counter()
    for start in range(0, len(batch), chunk):
        model.features(batch[start : start + chunk])
    t_model = time.perf_counter() - t
    row = {
        "model": name,
        "input_px": int(model.input_size),
        "points_used": res.points_used,
        "patches": res.patches_scored,
        "answer": float(res.chosen_scale),
        "same_answer_with_prefetch": bool(res_default.chosen_scale == res.chosen_scale),
        "stages_wall_s": {k: clock.wall.get(k, 0.0) for k in STAGE_ORDER},
        "stages_cpu_s": {k: clock.cpu.get(k, 0.0) for k in STAGE_ORDER},
        "stages_calls": {k: clock.calls.get(k, 0) for k in STAGE_ORDER},
        "serial_wall_s": wall,
        "serial_cpu_s": cpu,
        "search_default_wall_s": t_default,
        "model_only_wall_s": t_model,
        "load_average_1min_before_after": [*load, os.getloadavg()[0]],
    }
    print(f"  {name}: {res.patches_scored} patches, serial search + report {wall:.1f} s wall / {cpu:.1f} s CPU; "
          f"default search {t_default:.1f} s; model alone {t_model:.1f} s", flush=True)
    return row


def stages_rows(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    import torch

    from histoscale.models import load_model
    from histoscale.models.architectures import DenseNet121

    slide_path, _ = phantom_svs(args.workdir, SMALL_SIDE)
    torch.manual_seed(0)
    dn = load_model(DenseNet121().eval(), input_size=224, mpp=0.5, device=device)
    ref = load_model(None, device=device)
    rows = []
    for name, model, points in (("reference SmallCNN", ref, args.stage_points),
                                ("DenseNet121 (random weights)", dn, args.dn_points)):
        model.features(np.zeros((8, model.input_size, model.input_size, 3), np.uint8))  # warm-up
        rows.append(stage_profile(name, slide_path, model, points, args.workdir))
    return rows


# ------------------------------------------------------------------------------------------------ output
def speed_table(rows: list[dict[str, Any]]) -> str:
    naive = "naive_s" in rows[0]
    head = ("| model | device / precision | points x scales (+ scan patches) | find_scale patches/s | model alone patches/s "
            "(s, runs) | model alone / find_scale |")
    sep = "|---|---|---|---|---|---|"
    if naive:
        head += " naive patches/s | find_scale speed-up vs naive (patches/s) |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        line = (
            f"| {r['model']} {r['input_px']} px | {r['device']} / {r['precision']} | {r['points']} x {r['scales']} "
            f"(+{r['patches'] - r['points'] * r['scales']}) | "
            f"{r['find_scale_patches_per_s']:.1f} ({' / '.join(f'{v:.1f}' for v in r['find_scale_s_runs'])} s) | {r['model_only_patches_per_s']:.1f} "
            f"({' / '.join(f'{v:.1f}' for v in r['model_only_s_runs'])}) | "
            f"{r['end_to_end_share_of_model_only']:.0%} |"
        )
        if naive:
            line += f" {r['naive_patches_per_s']:.1f} ({r['naive_s']:.1f} s) | x{r['speedup_vs_naive']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def stage_table(rows: list[dict[str, Any]]) -> str:
    head = "| stage | " + " | ".join(f"{r['model']} {r['input_px']} px: wall s | CPU s | CPU share" for r in rows) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(rows)]
    for stage in STAGE_ORDER:
        cells = []
        for r in rows:
            cpu_total = sum(r["stages_cpu_s"].values())
            cells.append(f"{r['stages_wall_s'][stage]:.2f} | {r['stages_cpu_s'][stage]:.2f} | "
                         f"{r['stages_cpu_s'][stage] / cpu_total:.0%}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"**{r['serial_wall_s']:.2f}** | **{r['serial_cpu_s']:.2f}** | {r['patches']} patches, "
             f"{r['points_used']} points" for r in rows]
    lines.append("| total (serial: prefetch=0) | " + " | ".join(cells) + " |")
    cells = [f"{r['search_default_wall_s']:.2f} | | default prefetch, search only" for r in rows]
    lines.append("| the same search, default prefetch | " + " | ".join(cells) + " |")
    cells = [f"{r['model_only_wall_s']:.2f} | | same patches, batches of 72" for r in rows]
    lines.append("| model alone | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| slide (phantom SVS, 0.25 um/px) | points | tracemalloc peak during search (MB) | peak RSS of the process, "
        "VmHWM (MB) | of which after model load (MB) | search s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['slide']} | {r.get('points_used', '-')} | {r['tracemalloc_peak_mb']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_after_model_load_mb']:.0f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="P=30 (reference) and 20 points (DenseNet121)")
    ap.add_argument("--points", type=int, default=None, help="points for the reference model (default 100)")
    ap.add_argument("--dn-points", type=int, default=None, help="points for DenseNet121 (default 100)")
    ap.add_argument("--workdir", type=Path, default=HERE / ".work")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only (c); writes speed_memory.json/.md")
    ap.add_argument("--skip-stages", action="store_true")
    ap.add_argument("--stage-points", type=int, default=100, help="points of the default searches profiled in (d)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--big-side", type=int, default=None, help="force the large slide's side (px)")
    ap.add_argument("--gpu", action="store_true", help="only (a), on CUDA")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.points = args.points or (30 if args.quick else 100)
    args.dn_points = args.dn_points or (20 if args.quick else 100)
    if args.memory_case:
        memory_case(args.memory_case, args.points)
        return

    import torch

    from histoscale.models.torch_adapter import bf16_supported, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)

    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()
    notes: list[str] = []
    if args.gpu:
        if not torch.cuda.is_available():
            print("--gpu: SKIPPED - CUDA is not available on this machine (torch.cuda.is_available() is False)")
            return
        device = "cuda"
        where = torch.cuda.get_device_name(0)
    else:
        device = "cpu"
        where = f"{machine()}, {torch.get_num_threads()} torch threads"
    notes.append(
        f"precision 'auto' on {device}: {resolve_precision('auto', torch.device(device))} "
        f"(bf16 accelerated: {bf16_supported(device)}); the naive pipeline always runs fp32, batch 1"
    )
    print(f"{where}; torch {torch.__version__}; {notes[-1]}")
    if not args.memory_only:
        print("(a)+(b) end-to-end vs model alone vs naive:" if not args.gpu else "(a) end-to-end vs model alone:")
    rows = [] if args.memory_only else speed_rows(args, device, naive=not args.gpu)
    stage_rows: list[dict[str, Any]] = []
    if not (args.skip_stages or args.memory_only):  # on CUDA too: the stages of a GPU search
        print(f"(d) one default search ({args.stage_points} points) and its report, stage by stage:")
        stage_rows = stages_rows(args, device)
    mem_rows: list[dict[str, Any]] = []
    if not args.gpu and not args.skip_memory:
        print("(c) peak memory, fresh subprocess per case, reference model:")
        mem_rows, mem_notes = memory_rows(args)
        notes += mem_notes
    elapsed = time.perf_counter() - t_start
    tables = [speed_table(rows)] if rows else []
    if stage_rows:
        tables.append(stage_table(stage_rows))
    if mem_rows:
        tables.append(memory_table(mem_rows))
    text = "\n\n".join(tables)
    print("\n" + text + "\n\n" + "\n".join(notes) + f"\ntotal {elapsed:.0f} s")
    doc = {
        "command": command,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": where,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "speed": rows,
        "stages": stage_rows,
        "memory": mem_rows,
        "notes": notes,
        "elapsed_s": elapsed,
    }
    stem = "speed_gpu" if args.gpu else "speed_memory" if args.memory_only else "speed"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    md = [f"Command: `{command}` ({doc['date']}, {where}, {elapsed:.0f} s)", "", text, "", *[f"- {n}" for n in notes]]
    (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
