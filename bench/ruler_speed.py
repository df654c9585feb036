"""How long the model-free ruler (histoscale.measure_mpp) takes on a 100k x 100k px pyramid, against its target of
under 5 s per slide on 2 cores (issue 26), and whether its cost grows with the slide.

Usage (from the repository root):
    python bench/ruler_speed.py                        # writes the slide once (~3.5 min), then ~2 min of timings
    python bench/ruler_speed.py --work /scratch/rs --cold 3 --warm 5
    python bench/ruler_speed.py --side 20000 --suffix _20k   # a smaller slide, e.g. a quick check

Protocol:
* The slide (written once into ``--work``, reused while its file exists; ~3.5 min, ~2.8 GB): an Aperio SVS of
  ``--side`` px square at level 0, 0.5 um/px declared, 512 px JPEG tiles (quality 70, as Aperio writes), levels at
  downsample 4, 16 and 64, written with ``histoscale.slide.write_slide`` one strip of tiles at a time. Content: real H&E, the densest 1280 px square of
  the tissue of cmu-1-small-region.svs (0.499 um/px) mirror-tiled (no seams) inside a few large irregular blobs
  with soft edges, white glass elsewhere, glass stored as white JPEG tiles as scanners do (the library's direct
  tile reader serves only levels without missing tiles). Lower levels are the same picture area-averaged.
* The same measurements on cmu-1-small-region.svs itself (2220 x 2967 px, one level), side by side.
* Cold: a fresh Python process, the slide file first evicted from the OS page cache (fsync, then
  ``posix_fadvise(DONTNEED)``); the imports (histoscale and the libraries the ruler loads lazily) are timed apart.
  One process times ``open_slide`` + ``measure_mpp`` end to end; another, again from an evicted file, the parts.
  Warm: one more fresh process, after an untimed pass per file (imports done, files cached), each repeat on a freshly
  opened slide (the tissue mask and thumbnail are cached per open slide). Medians of ``--cold`` / ``--warm`` repeats; the two files alternate within each repeat
  so that a change of the machine's load shifts both alike.
* measure_mpp with its DEFAULT settings; its parts as it runs them (src/histoscale/slide/measure.py): the
  thumbnail (``slide.thumbnail(1024)``), the rest of the tissue mask (``tissue_mask(slide, use_mpp=False)`` on that
  thumbnail), ``sample_points``, the 24 level-0 reads of 320 px, and ``ruler_estimate`` on the reads.
* The thumbnail alone, were the pyramid to stop at a finer level (files written with fewer levels): each reduced
  level of the big slide read whole, in ``Slide.thumbnail``'s strips, and area-averaged to 1024 px, twice.
* Wall and CPU seconds (this process's CPU, all its threads) for each; the 1-minute load average with each run:
  the 2 cores are shared with other jobs, and CPU seconds move less with the load than wall seconds.
* Every process records a hash of the ruler's code as it loaded it (ruler.py, slide/measure.py, slide/tissue.py):
  src/ may change while the benchmark runs, and the report says when the runs mixed versions.
* Sanity: the estimate (um/px and 95% interval) against the declared 0.5 (the tissue's own scale is 0.499).

Writes bench/results/ruler_speed{suffix}.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "real_models"))
import common  # noqa: E402

RESULTS = common.REPO / "bench" / "results"
SMALL = common.DATA / "cmu-1-small-region.svs"
TARGET_S = 5.0
DECLARED_MPP = 0.5
CROP_XYWH = (560, 1680, 1280, 1280)  # 73% tissue: the densest 1280 px square of the small region's tissue
CELL = 64  # level-0 px per cell of the blob mask
# the parts in the order measure_mpp runs them; "mask" is the tissue mask less its thumbnail
PARTS = ("thumbnail", "mask", "points", "reads", "estimate")
STEPS = ("imports", "open", "measure_mpp", *PARTS)  # timed steps: [wall s, CPU s] each
LAZY_IMPORTS = ("cv2", "openslide", "tifffile", "scipy.ndimage", "skimage.color", "skimage.filters",
                "skimage.morphology")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shown(path: Path) -> str:
    """Inside the repository: its relative path; elsewhere only the file name (no folder of one machine)."""
    s = common.shown_path(path)
    return Path(path).name if Path(s).is_absolute() else s


# ----------------------------------------------------------------------------------------------- the big slide


def blob_mask(cells: int, coverage: float, seed: int, blobs: int = 5) -> np.ndarray:
    """(cells, cells) float32 in [0, 1]: ``blobs`` irregular blobs (a radius wobbling with the angle) covering
    ``coverage`` of the area, edges softened over ~2 cells (tissue fades into glass, as cut edges do)."""
    import cv2

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (blobs, 2)) * cells
    radii = rng.uniform(0.6, 1.0, blobs)
    harmonics = [(rng.uniform(0.02, 0.08, 5), rng.uniform(0, 2 * np.pi, 5)) for _ in range(blobs)]
    yy, xx = np.mgrid[0:cells, 0:cells].astype(np.float32) + 0.5
    # per cell, the smallest distance to a blob's centre over that blob's radius there: a blob size keeps the
    # cells below it, so the size that gives the coverage asked for is a quantile
    reach = np.full((cells, cells), np.inf, np.float32)
    for (cx, cy), r, (amp, phase) in zip(centres, radii, harmonics):
        theta = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + sum(a * np.cos((j + 2) * theta + p) for j, (a, p) in enumerate(zip(amp, phase)))
        reach = np.minimum(reach, np.hypot(xx - cx, yy - cy) / (r * wobble * cells))
    inside = reach < np.quantile(reach, coverage)
    soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 1.0)
    soft[soft > 0.999] = 1.0  # exact 0 and 1 let whole tiles skip the blend
    soft[soft < 0.001] = 0.0
    return soft


def tissue_source(tissue: np.ndarray, mask: np.ndarray, downsamples: list[int]) -> Callable[..., np.ndarray]:
    """``write_slide``'s RegionSource: ``tissue`` mirror-tiled, blended with white glass by ``mask`` (one value per
    ``CELL`` level-0 px), at each level its area average."""
    import cv2

    top = np.concatenate([tissue, tissue[:, ::-1]], axis=1)
    period0 = np.concatenate([top, top[::-1]], axis=0)  # mirrored: continuous across the period's edges
    ph, pw = period0.shape[:2]
    textures = {d: cv2.resize(period0, (pw // d, ph // d), interpolation=cv2.INTER_AREA) for d in downsamples}
    cells = mask.shape[0]
    coarse: dict[int, np.ndarray] = {}

    def level_mask(d: int, y: int, h: int) -> np.ndarray:
        """Rows ``y .. y + h`` of the mask at the level of downsample ``d`` (every column)."""
        if d >= CELL:  # a small level: the whole mask, area-averaged, once
            if d not in coarse:
                side = cells * CELL // d
                coarse[d] = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)
            return coarse[d][y : y + h]
        f = CELL // d  # level px per cell: linear interpolation, rows here, columns by cv2
        ry = np.clip((y + np.arange(h) + 0.5) / f - 0.5, 0, cells - 1)
        i0 = np.floor(ry).astype(int)
        i1 = np.minimum(i0 + 1, cells - 1)
        fr = (ry - i0)[:, None].astype(np.float32)
        rows = (1 - fr) * mask[i0] + fr * mask[i1]
        return cv2.resize(rows, (cells * f, h), interpolation=cv2.INTER_LINEAR)

    def source(x: int, y: int, w: int, h: int, d: int) -> np.ndarray:
        tex = textures[d]
        out = tex[(y + np.arange(h)) % tex.shape[0]][:, (x + np.arange(w)) % tex.shape[1]]
        m = level_mask(d, y, h)[:, x : x + w]
        step = 512
        for c0 in range(0, w, step):  # most chunks are all glass or all tissue: only the edges are blended
            mc = m[:, c0 : c0 + step]
            if mc.max() == 0:
                out[:, c0 : c0 + step] = 255
            elif mc.min() < 1:
                part = out[:, c0 : c0 + step].astype(np.float32)
                out[:, c0 : c0 + step] = np.rint(255 - mc[..., None] * (255 - part)).astype(np.uint8)
        return out

    return source


def write_big(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The big slide, written once into ``args.work`` (the name carries every setting; written atomically, so a
    file that exists is complete)."""
    import histoscale
    from histoscale.slide import write_slide

    ds = [1, *args.downsamples]
    name = (f"ruler_speed_{args.side}px_t{args.tile}_q{args.quality}_ds{'-'.join(map(str, ds))}"
            f"_c{round(100 * args.coverage)}_s{args.seed}.svs")
    path = args.work / name
    cells = math.ceil(args.side / CELL)
    mask = blob_mask(cells, args.coverage, args.seed)
    info: dict[str, Any] = {"file": name, "side_px": args.side, "tile_px": args.tile, "jpeg_quality": args.quality,
                            "downsamples": ds, "declared_mpp": DECLARED_MPP, "blob_coverage": float(mask.mean())}
    x, y, w, h = CROP_XYWH
    with histoscale.open_slide(SMALL) as small:
        tissue = small.read_level(0, (x, y), (w, h))
    # share of the slide that is tissue: the blobs times the crop's own tissue share (its glass gaps stay)
    info["tissue_share"] = float(mask.mean() * (tissue.mean(axis=2) < 220).mean())
    if path.exists():
        log(f"reusing {path}")
        info["written_s"] = None
    else:
        bad = [d for d in ds if (2 * w) % d or (2 * h) % d]
        if bad:
            raise SystemExit(f"downsamples {bad} do not divide the tissue period {2 * w} px")
        args.work.mkdir(parents=True, exist_ok=True)
        free = os.statvfs(args.work).f_bavail * os.statvfs(args.work).f_frsize
        if free < 8 * 2**30:
            raise SystemExit(f"{args.work} has {free / 2**30:.1f} GiB free; the slide needs a few GiB")
        log(f"writing {path} ({args.side} px square, levels {ds}) ...")
        t0 = time.perf_counter()
        write_slide(path, tissue_source(tissue, mask, ds), (args.side, args.side), mpp=DECLARED_MPP, fmt="svs",
                    tile=args.tile, quality=args.quality, downsamples=ds)
        info["written_s"] = time.perf_counter() - t0
        log(f"written in {info['written_s']:.0f} s")
    info["bytes"] = path.stat().st_size
    return path, info


# ------------------------------------------------------------------------------------------------------ timing


def evict(path: Path) -> None:
    """Drop the file's pages from the OS page cache (what a first look at a slide just copied meets)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


def end_to_end(path: Path) -> dict[str, Any]:
    import histoscale

    slide, w_open, c_open = timed(lambda: histoscale.open_slide(path))
    with slide:
        est, w, c = timed(lambda: histoscale.measure_mpp(slide))
    return {"open": [w_open, c_open], "measure_mpp": [w, c], "result": est.to_dict()}


def in_parts(path: Path) -> dict[str, Any]:
    """measure_mpp's steps one by one, as it runs them with its defaults."""
    import histoscale
    from histoscale.ruler import ruler_estimate
    from histoscale.sampling import sample_points
    from histoscale.slide.measure import RULER_REGION_PX, RULER_REGIONS
    from histoscale.slide.tissue import tissue_mask

    px = RULER_REGION_PX
    row: dict[str, Any] = {}
    slide, *row["open"] = timed(lambda: histoscale.open_slide(path))
    with slide:
        thumb, *row["thumbnail"] = timed(lambda: slide.thumbnail(1024))
        mask, *row["mask"] = timed(lambda: tissue_mask(slide, use_mpp=False))
        xy, *row["points"] = timed(lambda: sample_points(slide.dimensions, RULER_REGIONS, seed=0, mask=mask,
                                                         margin_px=px / 2, where=str(slide.path)))
        reads, *row["reads"] = timed(lambda: [slide.read_level(0, (x - px / 2, y - px / 2), (px, px))
                                              for x, y in np.asarray(xy)])
        est, *row["estimate"] = timed(lambda: ruler_estimate(reads, seed=0))
        row["thumbnail_px"] = list(thumb[0].shape[:2][::-1])
        level = slide.best_level(thumb[1])
        row["thumbnail_level"] = [level, list(slide.level_dimensions[level])]
        row["tissue_fraction"] = mask.fraction
        row["estimate_mpp"] = est.mpp
    return row


def thumbnail_from_levels(path: Path, max_side: int = 1024) -> list[dict[str, Any]]:
    """What the thumbnail would cost were each reduced level the pyramid's coarsest (files written with fewer
    levels): the whole level read in strips of the size ``Slide.thumbnail`` reads and area-averaged to the
    thumbnail, as it does. Level 0 is left out (30 GB of pixels)."""
    import histoscale

    rows_out = []
    with histoscale.open_slide(path) as slide:
        w0, h0 = slide.dimensions
        for level in range(1, slide.level_count):
            lw, lh = slide.level_dimensions[level]
            scale = max(1.0, max(w0, h0) / max_side, max(w0, h0) / max(lw, lh))
            tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
            strip = max(1, (64 * 2**20) // (4 * lw))  # Slide's strips: 64 MiB of RGBA rows

            def read(level: int = level, lw: int = lw, lh: int = lh, tw: int = tw, th: int = th,
                     strip: int = strip) -> None:
                out_rows = max(1, int(strip * th / lh))
                for r0 in range(0, th, out_rows):
                    r1 = min(th, r0 + out_rows)
                    y0, y1 = round(r0 * lh / th), round(r1 * lh / th)
                    block = slide.read_level(level, (0, y0 * slide.level_downsamples[level]), (lw, max(1, y1 - y0)))
                    histoscale.resample(block, (tw, r1 - r0))

            first = timed(read)[1:]  # the level's tiles were never read before: from disk
            again = timed(read)[1:]
            rows_out.append({"level": level, "downsample": slide.level_downsamples[level], "size": [lw, lh],
                             "seconds_first": list(first), "seconds": list(again)})
    return rows_out


def code_version() -> str:
    """A hash of the ruler's code as this process loaded it (src/ may change while the benchmark runs)."""
    import hashlib

    import histoscale.ruler
    import histoscale.slide.measure
    import histoscale.slide.tissue

    digest = hashlib.sha256()
    for module in (histoscale.ruler, histoscale.slide.measure, histoscale.slide.tissue):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


def with_load(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    load = os.getloadavg()[0]
    row = fn()
    row["load_1min"] = [load, os.getloadavg()[0]]
    return row


def child(mode: str, paths: list[Path], repeats: int) -> dict[str, Any]:
    """Runs in a fresh process, the imports timed first. "e2e" / "parts": one cold run on ``paths[0]``. "warm":
    one untimed pass per file, then ``repeats`` rounds over the files, each file end to end, then in parts."""
    import importlib

    def imports() -> None:
        importlib.import_module("histoscale")
        for name in LAZY_IMPORTS:
            importlib.import_module(name)

    _, w, c = timed(imports)
    code = code_version()
    if mode == "levels":
        return {"levels": thumbnail_from_levels(paths[0]), "code": code}
    if mode != "warm":
        row = with_load(lambda: end_to_end(paths[0]) if mode == "e2e" else in_parts(paths[0]))
        return {**row, "imports": [w, c], "code": code}
    for path in paths:
        end_to_end(path)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(p): {"e2e": [], "parts": []} for p in paths}
    for _ in range(repeats):
        for path in paths:  # alternating: a change of the machine's load shifts both files alike
            runs[str(path)]["e2e"].append({**with_load(lambda: end_to_end(path)), "code": code})
            runs[str(path)]["parts"].append({**with_load(lambda: in_parts(path)), "code": code})
    return {"runs": runs, "code": code}


def spawn(mode: str, paths: list[Path], repeats: int = 0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(repeats), *map(str, paths)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the {mode} run on {[p.name for p in paths]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(rows: list[dict[str, Any]], key: str) -> list[float] | None:
    vals = [r[key] for r in rows if key in r]
    return [float(np.median([v[0] for v in vals])), float(np.median([v[1] for v in vals]))] if vals else None


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per file and temperature: median [wall, CPU] s of each step."""
    out: dict[str, Any] = {}
    for label, temps in runs.items():
        out[label] = {}
        for temp in ("cold", "warm"):
            e2e, parts = temps[f"{temp}_e2e"], temps[f"{temp}_parts"]
            s = {"open": median(e2e, "open"), "measure_mpp": median(e2e, "measure_mpp"),
                 **{p: median(parts, p) for p in PARTS}}
            s["tissue_mask"] = [s["thumbnail"][0] + s["mask"][0], s["thumbnail"][1] + s["mask"][1]]
            s["parts_sum"] = [sum(s[p][i] for p in PARTS) for i in (0, 1)]
            if temp == "cold":
                s["imports"] = median(e2e + parts, "imports")
            out[label][temp] = s
    return out


# ----------------------------------------------------------------------------------------------------- reports

ROWS = [("imports", "imports (once per process)"), ("open", "open_slide"),
        ("measure_mpp", "**measure_mpp, end to end**"), ("tissue_mask", "tissue mask"),
        ("thumbnail", "  of which the thumbnail read"), ("mask", "  of which the mask itself"),
        ("points", "sample_points"), ("reads", "24 level-0 reads of 320 px"), ("estimate", "ruler_estimate"),
        ("parts_sum", "parts, summed")]


def _cell(v: list[float] | None) -> str:
    return "-" if v is None else f"{v[0]:.3f} ({v[1]:.3f})"


def markdown(doc: dict[str, Any]) -> str:
    s, sl = doc["summary"], doc["slides"]
    big, small = sl["big"], sl["small"]
    lines = [
        "# The model-free ruler's speed on a 100k x 100k px pyramid", "",
        f"Command: `{doc['command']}` (histoscale commit {doc['provenance']['histoscale_commit']}"
        f"{', src modified' if doc['provenance']['histoscale_src_dirty'] else ''}; {doc['date']}; {doc['machine']}).",
        "",
        f"* big: `{big['file']}`, {big['side_px']} x {big['side_px']} px at level 0, {big['bytes'] / 2**30:.2f} GiB, "
        f"SVS, {big['tile_px']} px JPEG tiles (q{big['jpeg_quality']}), downsamples {big['downsamples']}; tissue "
        f"blobs over {big['blob_coverage']:.0%} of the area, {big['tissue_share']:.0%} of it tissue (CMU-1 H&E, "
        "glass stored as white tiles)"
        + (f"; written in {big['written_s']:.0f} s." if big.get("written_s") else "."),
        f"* small: `{small['file']}`, {small['side_px'][0]} x {small['side_px'][1]} px, one level.",
        f"* medians of {doc['repeats']['cold']} cold / {doc['repeats']['warm']} warm repeats; wall s (CPU s of the "
        "process, all threads). Cold: fresh process, file evicted from the page cache, imports timed apart. Warm: one "
        "fresh process after an untimed pass per file, files cached, a freshly opened slide each repeat.",
        f"* 1-minute load average: {doc['load']['start'][0]:.2f} at the start, {doc['load']['end'][0]:.2f} at the "
        f"end, {doc['load']['min']:.2f}-{doc['load']['max']:.2f} over the runs (2 cores shared with other jobs).",
        "* ruler code as loaded (sha256 of ruler.py, slide/measure.py, slide/tissue.py): "
        + (f"{doc['code_versions'][0]} in every run." if len(doc["code_versions"]) == 1 else
           f"{len(doc['code_versions'])} VERSIONS, {', '.join(doc['code_versions'])}: src/ changed during the runs."),
        "",
        "| step | big cold | big warm | small cold | small warm | big / small, warm wall |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in ROWS:
        bc, bw = s["big"]["cold"].get(key), s["big"]["warm"].get(key)
        sc, sw = s["small"]["cold"].get(key), s["small"]["warm"].get(key)
        ratio = f"x{bw[0] / sw[0]:.2f}" if bw and sw and sw[0] > 0 else ""
        lines.append(f"| {name} | {_cell(bc)} | {_cell(bw)} | {_cell(sc)} | {_cell(sw)} | {ratio} |")
    lines += ["", "## Reading", ""]
    for label in ("big", "small"):
        info = sl[label]
        th = info["thumbnail_level"]
        lines.append(f"* {label}: the thumbnail ({info['thumbnail_px'][0]} x {info['thumbnail_px'][1]} px) is read from "
                     f"level {th[0]} ({th[1][0]} x {th[1][1]} px); tissue mask fraction {info['mask_fraction']:.0%}.")
    verdict = []
    for temp in ("cold", "warm"):
        v = s["big"][temp]["measure_mpp"][0]
        verdict.append(f"{temp} {v:.2f} s ({'under' if v < TARGET_S else 'OVER'} the {TARGET_S:.0f} s target)")
    worst = max(PARTS, key=lambda p: s["big"]["cold"][p][0])
    lines.append(f"* measure_mpp on the big slide: {', '.join(verdict)}; its costliest part cold: {worst} "
                 f"({s['big']['cold'][worst][0]:.2f} s of {s['big']['cold']['parts_sum'][0]:.2f} s).")
    ratio = {t: s["big"][t]["measure_mpp"][0] / s["small"][t]["measure_mpp"][0] for t in ("cold", "warm")}
    lines.append(f"* measure_mpp, big / small: x{ratio['cold']:.2f} cold, x{ratio['warm']:.2f} warm (the big slide has "
                 f"{big['side_px'] ** 2 / (small['side_px'][0] * small['side_px'][1]):.0f}x the level-0 pixels).")
    lines.append(f"* cold adds to that, once per process, {s['big']['cold']['imports'][0]:.2f} s of imports and "
                 f"{s['big']['cold']['open'][0]:.2f} s to open the big slide.")
    if doc["thumbnail_from_levels"]:
        lines.append("* the thumbnail alone, were the big slide's pyramid to stop at a finer level (the whole level "
                     "read and averaged; wall s first read / again, CPU s again): " + "; ".join(
                         f"downsample {r['downsample']:g} ({r['size'][0]} px square) {r['seconds_first'][0]:.2f} / "
                         f"{r['seconds'][0]:.2f} s ({r['seconds'][1]:.2f} s CPU)" for r in doc["thumbnail_from_levels"])
                     + ".")
    for label, truth in (("big", DECLARED_MPP), ("small", 0.499)):
        e = sl[label]["estimate"]
        if e["mpp"] is None:
            lines.append(f"* estimate, {label}: none ({e['reason']})")
        else:
            lo, hi = e["interval"]
            lines.append(f"* estimate, {label}: {e['mpp']:.3f} um/px (95% interval {lo:.3f}-{hi:.3f}; {e['count']} "
                         f"nuclei in {e['regions']} regions), x{e['mpp'] / truth:.3f} the declared {truth}; "
                         f"the same in every run: {sl[label]['estimate_stable']}.")
    return "\n".join(lines) + "\n"


def provenance() -> dict[str, Any]:
    """The commit and whether src/ differs from it (common.provenance also needs the real models' packages)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(common.REPO), *cmd], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return {"histoscale_commit": git("rev-parse", "HEAD"),
                "histoscale_src_dirty": bool(git("status", "--porcelain", "src"))}
    except (OSError, subprocess.CalledProcessError):
        return {"histoscale_commit": None, "histoscale_src_dirty": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "histoscale-ruler-speed",
                    help="folder for the big slide (kept and reused)")
    ap.add_argument("--side", type=int, default=100_000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--quality", type=int, default=70, help="JPEG quality (Aperio writes 70)")
    ap.add_argument("--downsamples", default="4,16,64", help="the reduced levels")
    ap.add_argument("--coverage", type=float, default=0.42, help="share of the area inside the tissue blobs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--suffix", default="")
    ap.add_argument("--no-levels", dest="levels", action="store_false",
                    help="skip timing the thumbnail from each reduced level of the big slide")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # MODE REPEATS PATH...: a run in a fresh process
    args = ap.parse_args()
    if args.child:  # one cold run in a fresh process: the parent reads the last line
        print(json.dumps(child(args.child[0], [Path(p) for p in args.child[2:]], int(args.child[1])), default=float))
        return
    args.downsamples = [int(v) for v in args.downsamples.split(",")]
    command = " ".join(["python bench/ruler_speed.py", *sys.argv[1:]])
    load_start = os.getloadavg()
    big, info = write_big(args)
    files = {"big": big, "small": SMALL}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        label: {k: [] for k in ("cold_e2e", "cold_parts", "warm_e2e", "warm_parts")} for label in files}
    load_timing = os.getloadavg()
    for rep in range(args.cold):
        for label, path in files.items():  # alternating: a change of load shifts both files alike
            for mode in ("e2e", "parts"):
                evict(path)
                runs[label][f"cold_{mode}"].append(row := spawn(mode, [path]))
                log(f"cold {rep} {label} {mode}: " + ", ".join(f"{k} {row[k][0]:.2f}" for k in STEPS if k in row))
    warm = spawn("warm", list(files.values()), args.warm)["runs"]
    for label, path in files.items():
        runs[label]["warm_e2e"], runs[label]["warm_parts"] = warm[str(path)]["e2e"], warm[str(path)]["parts"]
        log(f"warm {label}: measure_mpp " + ", ".join(f"{r['measure_mpp'][0]:.2f}" for r in runs[label]["warm_e2e"]))
    levels = spawn("levels", [big])["levels"] if args.levels else []
    for row in levels:
        log(f"thumbnail from level {row['level']} ({row['size'][0]} px): {row['seconds'][0]:.2f} s")
    load_end = os.getloadavg()

    slides: dict[str, dict[str, Any]] = {"big": info}
    import histoscale
    from histoscale.reports import machine

    with histoscale.open_slide(SMALL) as s:
        slides["small"] = {"file": shown(SMALL), "side_px": list(s.dimensions), "declared_mpp": s.mpp}
    for label in files:
        e2e = runs[label]["cold_e2e"] + runs[label]["warm_e2e"]
        first = runs[label]["warm_parts"][0]
        slides[label].update(
            estimate=e2e[0]["result"],
            estimate_stable=len({json.dumps(r["result"]) for r in e2e}) == 1
            and all(r["estimate_mpp"] == e2e[0]["result"]["mpp"] for r in runs[label]["warm_parts"]),
            thumbnail_px=first["thumbnail_px"], thumbnail_level=first["thumbnail_level"],
            mask_fraction=first["tissue_fraction"])
    codes = sorted({r["code"] for temps in runs.values() for rows in temps.values() for r in rows})
    loads = [v for temps in runs.values() for rows in temps.values() for r in rows for v in r["load_1min"]]
    doc = {
        "command": command, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "provenance": provenance(),
        "target_s": TARGET_S, "repeats": {"cold": args.cold, "warm": args.warm},
        "load": {"start": load_start, "timing_start": load_timing, "end": load_end, "min": min(loads),
                 "max": max(loads)},
        "code_versions": codes, "thumbnail_from_levels": levels, "slides": slides, "summary": summarise(runs), "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json, out_md = RESULTS / f"ruler_speed{args.suffix}.json", RESULTS / f"ruler_speed{args.suffix}.md"
    out_json.write_text(json.dumps(doc, indent=2, default=float))
    out_md.write_text(markdown(doc))
    print(markdown(doc))
    log(f"wrote {common.shown_path(out_json)} and {common.shown_path(out_md)}")


if __name__ == "__main__":
    main()
