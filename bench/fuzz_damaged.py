"""Fuzz the search and the cohort over slides with damaged and missing tiles (issue 28, item 3).

Two seed phantoms (SVS and generic pyramidal TIFF, 1536 x 1536 px at 0.5 um/px, 128 px JPEG tiles: 144 at level 0,
downsamples 1 and 4) are copied ``--slides`` times; each copy gets seeded random faults: level-0 tiles damaged
(``zeros``, ``noise`` over the scan data, or ``cut`` short: a few, a few tens, or most of the tissue), tiles made
missing (offset and byte count 0), sometimes a damaged level-1 tile (the thumbnail's level). Each slide is opened
through a random backend and searched (phantom model, ``--points`` points, no ruler), then all of them form one
cohort.

Outcomes per slide: ``ok`` (answered; how many points were skipped), ``HistoscaleError:<class>`` (refused with a
clear error: a slide whose reads or points mostly fail must say it is damaged) or ``BUG:<type>`` (anything else
escaping).
Slides run in a worker subprocess that logs each one before running it, so that a hard crash (a segfault in a
decoder) names the slide and the next worker resumes after it. The cohort must hold one row per slide (none lost);
for slides searched through the default backend (the cohort's), ERROR exactly where the search refused.

Usage::

    python bench/fuzz_damaged.py --slides 24            # summary on stdout
    python bench/fuzz_damaged.py --replay 7             # re-run slide 7 in-process, with its traceback
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# the tests' own writers of damaged and missing tiles (tifffile, in place)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

SIZE, TILE = 1536, 128
GRID = SIZE // TILE  # 12 x 12 level-0 tiles
BACKENDS = (None, "openslide", "tiffslide", "tifffile")


def make_seeds(folder: Path) -> dict[str, Path]:
    from histoscale.phantom import write_phantom

    return {fmt: write_phantom(folder / f"seed.{'svs' if fmt == 'svs' else 'tif'}", mpp=0.5, size_px_wh=(SIZE, SIZE),
                               fmt=fmt, tile=TILE, downsamples=(1, 4), seed=5, workers=1).slide_path
            for fmt in ("svs", "tiff")}


def make_case(seeds: dict[str, Path], folder: Path, index: int) -> tuple[Path, dict[str, object]]:
    """Slide ``index``: a copy of a seed with its seeded faults; returns the path and what was done to it."""
    from _wsi_files import damage_tiles, drop_tiles

    rng = random.Random(index)
    fmt = rng.choice(sorted(seeds))
    path = folder / f"case{index:03d}{seeds[fmt].suffix}"
    shutil.copyfile(seeds[fmt], path)
    inner = [i for i in range(GRID * GRID) if 0 < i % GRID < GRID - 1 and 0 < i // GRID < GRID - 1]
    count = rng.choice([rng.randint(1, 5), rng.randint(6, 30), rng.randint(60, len(inner))])
    damaged = sorted(rng.sample(inner, count))
    ways = collections.defaultdict(list)
    for tile in damaged:
        ways[rng.choice(("zeros", "noise", "cut"))].append(tile)
    for how, tiles in ways.items():
        damage_tiles(path, 0, tiles, how, seed=index)
    healthy = sorted(set(range(GRID * GRID)) - set(damaged))
    missing = sorted(rng.sample(healthy, rng.randint(0, 40)))
    if missing:
        drop_tiles(path, 0, missing)
    level1 = rng.random() < 0.2
    if level1:
        damage_tiles(path, 1, [4], "zeros")  # the middle tile of the 3 x 3 level-1 grid
    case = {"fmt": fmt, "damaged": len(damaged), "ways": {k: len(v) for k, v in ways.items()},
            "missing": len(missing), "level1_damaged": level1, "backend": rng.choice(BACKENDS)}
    return path, case


def exercise(path: Path, backend: str | None, model: object, points: int) -> str:
    """Open and search one slide; the outcome as one short string."""
    from histoscale import find_scale, open_slide
    from histoscale.errors import HistoscaleError

    try:
        with open_slide(path, backend=backend) as slide:
            result = find_scale(slide, model, points=points, ruler=False)
        return f"ok (skipped {result.points_damaged}, used {result.points_used}, {result.check.status})"
    except HistoscaleError as err:
        return f"HistoscaleError:{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    except Exception as err:  # the fuzz's finding: anything but a clear error is a bug
        return f"BUG:{type(err).__name__}: {err}\n{traceback.format_exc()}"


def worker(folder: Path, first: int, count: int, points: int, log: Path) -> None:
    from histoscale import load_model

    model = load_model("phantom")
    cases = json.loads((folder / "cases.json").read_text())
    with log.open("a") as fh:
        for index in range(first, count):
            case = cases[str(index)]
            print(json.dumps({"start": index}), file=fh, flush=True)
            outcome = exercise(Path(case["path"]), case["backend"], model, points)
            print(json.dumps({"done": index, "outcome": outcome}), file=fh, flush=True)


def run_slides(folder: Path, count: int, points: int) -> dict[int, str]:
    """Every slide through worker subprocesses; a worker that dies leaves its slide as ``CRASH``."""
    log = folder / "log.jsonl"
    outcomes: dict[int, str] = {}
    first = 0
    while first < count:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(folder), str(first), str(count), str(points),
                               str(log)], capture_output=True, text=True)
        started = None
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if "start" in entry:
                started = entry["start"]
            else:
                outcomes[entry["done"]] = entry["outcome"]
        if proc.returncode == 0:
            break
        crashed = started if started is not None and started not in outcomes else first
        outcomes[crashed] = f"CRASH: worker exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        first = crashed + 1
    return outcomes


def run_cohort_over(folder: Path, cases: dict[str, dict], points: int) -> dict[str, dict]:
    from histoscale import SearchConfig, run_cohort

    rows = [{"slide": case["path"], "id": f"case{index}"} for index, case in cases.items()]
    summary = run_cohort(rows, model_spec="phantom", out_dir=folder / "cohort", workers=2, figures=False,
                         search=SearchConfig(points=points, ruler=False))
    return {row["id"]: row for row in summary.rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=24)
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--replay", type=int, default=None, help="run slide INDEX in-process, with its traceback")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        folder, first, count, points, log = args.worker
        worker(Path(folder), int(first), int(count), int(points), Path(log))
        return 0
    with tempfile.TemporaryDirectory(prefix="histoscale-fuzz-damaged-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        seeds = make_seeds(folder)
        if args.replay is not None:
            from histoscale import load_model

            path, case = make_case(seeds, folder, args.replay)
            print(case)
            print(exercise(path, case["backend"], load_model("phantom"), args.points))  # type: ignore[arg-type]
            return 0
        cases = {}
        for index in range(args.slides):
            path, case = make_case(seeds, folder, index)
            cases[str(index)] = {**case, "path": str(path)}
        (folder / "cases.json").write_text(json.dumps(cases))
        outcomes = run_slides(folder, args.slides, args.points)
        rows = run_cohort_over(folder, cases, args.points)
        seconds = time.perf_counter() - start
    kinds = collections.Counter(o.split(" ")[0].split(":")[0] if o.startswith("ok") else ":".join(o.split(":")[:2])
                                for o in outcomes.values())
    crashes = sum(1 for o in outcomes.values() if o.startswith(("BUG", "CRASH")))
    lost = [f"case{i}" for i in range(args.slides) if f"case{i}" not in rows]
    # the cohort reads through the default backend: the same slides searched so must end the same way
    disagree = [f"case{i}" for i in range(args.slides) if f"case{i}" in rows and cases[str(i)]["backend"] is None
                and (rows[f"case{i}"]["flag"] == "ERROR") != outcomes.get(i, "").startswith("HistoscaleError")]
    for index in range(args.slides):
        case = cases[str(index)]
        row = rows.get(f"case{index}", {})
        print(f"case{index:<3} {case['fmt']:4} backend={case['backend'] or 'default':9} damaged={case['damaged']:<3} "
              f"{case['ways']} missing={case['missing']:<2} level1={int(case['level1_damaged'])}: "
              f"{outcomes.get(index, 'NO OUTCOME').splitlines()[0]} | cohort {row.get('flag', 'LOST')}")
    for outcome in outcomes.values():
        if outcome.startswith(("BUG", "CRASH")):
            print(outcome)
    print(f"{args.slides} slides in {seconds:.0f} s: {dict(kinds)}; crashes {crashes}; cohort rows {len(rows)}, "
          f"lost {len(lost)}; default-backend slides whose cohort row disagrees with their search: {len(disagree)} {disagree}")
    return 1 if crashes or lost or disagree else 0


if __name__ == "__main__":
    sys.exit(main())
