"""Fuzz ``open_slide`` + reads on mutated TIFF / SVS bytes.

Seed files are small synthetic slides (Aperio SVS, generic pyramidal TIFF, bare TIFF, a stripped TIFF) written
with :func:`histoscale.slide.write.write_slide` / tifffile. Each case applies a few seeded mutations (bit flips,
IFD field overwrites with boundary values, truncation, chunk deletion / duplication, ImageDescription edits)
and then runs, in-process and catching everything: ``open_slide`` -> ``slide_info`` -> ``read_region_at`` at two
downsamples -> ``read_level`` on the coarsest level -> ``thumbnail`` -> ``tissue_mask``.

Outcomes per case: ``ok`` (opened and read), ``HistoscaleError:<class>`` (refused with a clear error: the
expected answer for a damaged file) or ``BUG:<exception type>`` (anything else escaping: a bug to fix).
To catch hard crashes (segfaults, aborts in OpenSlide / libtiff / libjpeg) and hangs, cases run in batches in a
worker subprocess that logs each case before running it; a worker that dies or stalls names the case, which is
saved for reproduction, and the next worker resumes after it.

Usage::

    python bench/fuzz_open.py --seconds 60            # summary on stdout, crashing inputs under --save-dir
    python bench/fuzz_open.py --replay 17:42          # re-run batch seed 17, case 42 in-process with a traceback

Every case is reproducible from ``(batch seed, index)``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

SEED_NAMES = ("svs", "tiff", "bare", "stripped")
INTERESTING_U32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


# --------------------------------------------------------------------------------------------------- seeds


def make_seeds(folder: Path) -> dict[str, Path]:
    """Small seed slides (a few tens of kB each) with textures so every tile holds real JPEG data."""
    import numpy as np
    import tifffile

    from histoscale.slide.write import write_slide

    rng = np.random.default_rng(0)
    img = np.full((400, 560, 3), 255, np.uint8)
    img[60:340, 80:480] = (220, 140, 190)
    img[100:300, 120:440] = rng.integers(60, 200, (200, 320, 3), dtype=np.uint8)
    seeds = {
        "svs": write_slide(folder / "seed.svs", img, mpp=0.5, fmt="svs", tile=128, downsamples=[1, 4]),
        "tiff": write_slide(folder / "seed.tif", img, mpp=0.5, fmt="tiff", tile=128, downsamples=[1, 4]),
        "bare": write_slide(folder / "seed_bare.tif", img, mpp=None, fmt="bare", tile=128, downsamples=[1, 2]),
    }
    stripped = folder / "seed_stripped.tif"
    tifffile.imwrite(stripped, img[:200, :280], photometric="rgb", rowsperstrip=16, resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER", metadata=None)
    seeds["stripped"] = stripped
    return seeds


def ifd_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte spans of each IFD (entry table) of a classic little-endian TIFF."""
    data = path.read_bytes()
    spans = []
    offset = struct.unpack_from("<I", data, 4)[0]
    seen = set()
    while 0 < offset < len(data) - 2 and offset not in seen:
        seen.add(offset)
        n = struct.unpack_from("<H", data, offset)[0]
        end = offset + 2 + 12 * n
        spans.append((offset, end))
        if end + 4 > len(data):
            break
        offset = struct.unpack_from("<I", data, end)[0]
    return spans


# ------------------------------------------------------------------------------------------------ mutation


def mutate(data: bytes, spans: list[tuple[int, int]], rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        kind = rng.choice(("bitflip", "bitflip", "ifd_field", "ifd_field", "ifd_field", "ifd_bytes", "truncate",
                           "delete", "duplicate", "description", "header"))
        if not buf:
            break
        if kind == "bitflip":
            for _ in range(rng.randint(1, 16)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        elif kind in ("ifd_field", "ifd_bytes") and spans:
            start, end = rng.choice(spans)
            if end > len(buf) or end - start < 14:
                continue
            entry = start + 2 + 12 * rng.randrange((end - start - 2) // 12)
            if kind == "ifd_field":
                # tag (2) type (2) count (4) value/offset (4): hit count or value with a boundary value
                field = rng.choice((2, 4, 8))
                if field == 2:
                    struct.pack_into("<H", buf, entry + 2, rng.choice((0, 1, 2, 3, 4, 5, 7, 12, 16, 17, 0xFFFF)))
                else:
                    value = rng.choice(INTERESTING_U32 + (len(buf), len(buf) - 1, len(buf) + 1))
                    struct.pack_into("<I", buf, entry + field, value & 0xFFFFFFFF)
            else:
                for _ in range(rng.randint(1, 6)):
                    buf[rng.randrange(start, end)] = rng.randrange(256)
        elif kind == "truncate":
            del buf[rng.randrange(8, len(buf)) :]
        elif kind == "delete":
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 4096)]
        elif kind == "duplicate":
            i = rng.randrange(len(buf))
            chunk = buf[i : i + rng.randint(1, 4096)]
            j = rng.randrange(len(buf))
            buf[j:j] = chunk
        elif kind == "description":
            for token, junk in ((b"MPP = ", (b"nan", b"-1", b"0", b"1e308", b"abc", b"")), (b"AppMag = ", (b"0", b"x"))):
                k = bytes(buf).find(token)
                if k >= 0:
                    buf[k + len(token) : k + len(token) + 3] = rng.choice(junk)
                    break
        elif kind == "header":
            # IFD offset in the header
            struct.pack_into("<I", buf, 4, rng.choice(INTERESTING_U32 + (len(buf), len(buf) - 2)) & 0xFFFFFFFF)
    return bytes(buf)


def case_bytes(seeds: dict[str, bytes], spans: dict[str, list], batch: int, index: int) -> tuple[str, bytes]:
    rng = random.Random(f"{batch}:{index}")
    name = rng.choice(SEED_NAMES)
    return name, mutate(seeds[name], spans[name], rng)


# ---------------------------------------------------------------------------------------------------- case


def exercise(path: Path) -> str:
    """open + info + reads; returns 'ok' or 'HistoscaleError:<class>'; anything else propagates."""
    from histoscale.errors import HistoscaleError
    from histoscale.slide import open_slide, slide_info, tissue_mask

    try:
        with open_slide(path) as s:
            slide_info(s)
            w, h = s.dimensions
            for d in (1.0, 4.0):
                out = s.read_region_at((w / 2, h / 2), 64, downsample=d)
                assert out.shape == (64, 64, 3), out.shape
            last = s.level_count - 1
            s.read_level(last, (0, 0), (min(256, s.level_dimensions[last][0]), min(256, s.level_dimensions[last][1])))
            s.thumbnail(128)
            tissue_mask(s, max_side=128)
            if s.mpp is not None:
                s.read_region_at((w / 2, h / 2), 16, mpp=s.mpp * 2)
        return "ok"
    except HistoscaleError as err:
        return f"HistoscaleError:{type(err).__name__}"


def worker(batch: int, first: int, count: int, seed_dir: Path, log_path: Path) -> None:
    """Run cases [first, first+count) of ``batch``, logging 'start' before and the outcome after each."""
    # a quiet application: histoscale's own checks must not depend on the caller's logging configuration
    logging.getLogger().setLevel(logging.CRITICAL)
    import resource
    import warnings

    # a mutated header can declare a gigapixel page: make such an allocation fail (MemoryError) instead of
    # swapping the machine
    limit = 6 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    warnings.simplefilter("ignore")
    seeds = {n: (seed_dir / n).read_bytes() for n in SEED_NAMES}
    spans = {n: json.loads((seed_dir / f"{n}.spans.json").read_text()) for n in SEED_NAMES}
    with open(log_path, "a", buffering=1) as log, tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for index in range(first, first + count):
            name, data = case_bytes(seeds, spans, batch, index)
            path = Path(tmp) / f"case{'.svs' if name == 'svs' else '.tif'}"
            path.write_bytes(data)
            log.write(json.dumps({"event": "start", "batch": batch, "index": index, "seed": name}) + "\n")
            t0 = time.perf_counter()
            try:
                outcome, detail = exercise(path), None
            except Exception as err:  # noqa: BLE001 - this is what we are looking for
                outcome = f"BUG:{type(err).__name__}"
                detail = "".join(traceback.format_exception_only(type(err), err)).strip()[:300]
            log.write(json.dumps({"event": "end", "batch": batch, "index": index, "seed": name, "outcome": outcome,
                                  "detail": detail, "s": round(time.perf_counter() - t0, 3)}) + "\n")


# -------------------------------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="total fuzzing time budget (default 60)")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--first-batch", type=int, default=0, help="batch seed to start from (explore new cases)")
    ap.add_argument("--case-timeout", type=float, default=30.0, help="a worker silent this long is a hang")
    ap.add_argument("--save-dir", type=Path, default=Path("bench/fuzz_findings"), help="crashing/buggy inputs")
    ap.add_argument("--replay", default=None, help="BATCH:INDEX: run one case in-process, with its traceback")
    ap.add_argument("--worker", nargs=5, metavar=("BATCH", "FIRST", "COUNT", "SEED_DIR", "LOG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        b, f, c, sd, lg = args.worker
        worker(int(b), int(f), int(c), Path(sd), Path(lg))
        return 0

    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        seed_dir = Path(tmp)
        for name, path in make_seeds(seed_dir).items():
            (seed_dir / name).write_bytes(path.read_bytes())
            (seed_dir / f"{name}.spans.json").write_text(json.dumps(ifd_spans(path)))
        if args.replay:
            batch, index = (int(v) for v in args.replay.split(":"))
            seeds = {n: (seed_dir / n).read_bytes() for n in SEED_NAMES}
            spans = {n: json.loads((seed_dir / f"{n}.spans.json").read_text()) for n in SEED_NAMES}
            name, data = case_bytes(seeds, spans, batch, index)
            path = seed_dir / f"replay{'.svs' if name == 'svs' else '.tif'}"
            path.write_bytes(data)
            print(f"case {batch}:{index} from seed {name}: {len(data)} bytes at {path}")
            print(exercise(path))
            return 0
        return drive(args, seed_dir)


def drive(args: argparse.Namespace, seed_dir: Path) -> int:
    seeds = {n: (seed_dir / n).read_bytes() for n in SEED_NAMES}
    spans = {n: json.loads((seed_dir / f"{n}.spans.json").read_text()) for n in SEED_NAMES}
    outcomes: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    deaths: list[dict] = []
    workers = 0
    t_end = time.monotonic() + args.seconds
    batch, first = args.first_batch, 0
    log_path = seed_dir / "log.jsonl"
    while time.monotonic() < t_end:
        log_path.write_text("")
        cmd = [sys.executable, __file__, "--worker", str(batch), str(first), str(args.batch_size), str(seed_dir),
               str(log_path)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        workers += 1
        last_size, last_change, stalled = 0, time.monotonic(), False
        while proc.poll() is None:
            time.sleep(0.05)
            size = log_path.stat().st_size
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > args.case_timeout:
                stalled = True
                proc.kill()
                proc.wait()
                break
            if time.monotonic() > t_end + args.case_timeout:
                proc.kill()
                proc.wait()
                break
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        events = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        ended = {e["index"] for e in events if e["event"] == "end"}
        for e in events:
            if e["event"] == "end":
                outcomes[e["outcome"]] += 1
                if e["outcome"].startswith("BUG") and len(examples[e["outcome"]]) < 5:
                    examples[e["outcome"]].append(f"{e['batch']}:{e['index']} ({e['seed']}): {e['detail']}")
                    save(args.save_dir, seeds, spans, e["batch"], e["index"])
        started = [e for e in events if e["event"] == "start" and e["index"] not in ended]
        if started and (proc.returncode != 0 or stalled):
            e = started[-1]
            kind = "HANG" if stalled else f"DIED rc={proc.returncode}"
            outcomes[kind.split()[0]] += 1
            deaths.append({"case": f"{e['batch']}:{e['index']}", "seed": e["seed"], "how": kind,
                           "stderr": stderr.strip()[-300:],
                           "saved": str(save(args.save_dir, seeds, spans, e["batch"], e["index"]))})
            first = e["index"] + 1  # resume after the culprit
            continue
        if proc.returncode not in (0, None) and not started:
            deaths.append({"case": f"{batch}:after {first}", "how": f"worker rc={proc.returncode}",
                           "stderr": stderr.strip()[-300:]})
        last = max(ended) if ended else first - 1
        if last >= first + args.batch_size - 1:
            batch, first = batch + 1, 0
        else:
            first = last + 1  # time ran out or the worker stopped: resume where it was
    total = sum(outcomes.values())
    summary = {
        "seconds": args.seconds,
        "cases": total,
        "workers": workers,
        "opened_and_read_ok": outcomes.get("ok", 0),
        "histoscale_errors": {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("HistoscaleError")},
        "bugs": {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("BUG")},
        "bug_examples": dict(examples),
        "hard_deaths": deaths,
    }
    print(json.dumps(summary, indent=2))
    return 1 if summary["bugs"] or deaths else 0


def save(folder: Path, seeds: dict[str, bytes], spans: dict[str, list], batch: int, index: int) -> Path:
    name, data = case_bytes(seeds, spans, batch, index)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"case-{batch}-{index}{'.svs' if name == 'svs' else '.tif'}"
    path.write_bytes(data)
    return path


if __name__ == "__main__":
    sys.exit(main())
