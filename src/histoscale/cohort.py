"""Run the scale search over a cohort of slides listed in a manifest, on a local process pool or on Dask.

The manifest is a CSV file with a ``slide`` column (paths; relative ones are resolved against the manifest's
folder) and optional ``mpp`` (um/px overriding what the file declares) and ``id`` (default: the slide file's
stem, made unique) columns. Each slide is one job: open it, :func:`~histoscale.search.find_scale`, write its
report into ``OUT/slides/<id>/`` and return one row of ``OUT/results.csv``.

Reliability rules:

- ``OUT/results.csv`` is rewritten atomically (temporary file + ``os.replace``) after every finished slide, so
  an interrupted run loses at most the slides that were in flight.
- One bad slide never stops the others: any exception in a job (a :class:`~histoscale.errors.HistoscaleError`
  or anything else) becomes a row with flag ``ERROR`` and the reason in ``message``.
- A worker process that dies mid-slide (segfault, ``os._exit``, out-of-memory kill) is replaced and the slide
  retried up to ``retries`` times, then recorded as ``ERROR`` ("worker died while processing ..."). In local
  mode a death only counts against a slide when it can be attributed to it: when several slides were in flight
  the survivors of the broken pool are re-run one at a time on a fresh pool, where a death is unambiguous, so an
  innocent slide is never charged for its neighbour's crash. With ``scheduler="local"`` (a Dask LocalCluster)
  the scheduler's ``allowed-failures`` is set to ``retries`` and each worker holds one task at a time; with an
  external scheduler its own ``distributed.scheduler.allowed-failures`` setting (default 3) decides when Dask
  gives up (``KilledWorker``), and the slide is then recorded as ``ERROR``.
- ``resume=True`` keeps every row of an existing ``results.csv`` whose flag is final (``OK``, ``MISMATCH``,
  ``MISSING-METADATA``, ``UNKNOWN-MODEL-MPP``) and skips those slides; ``ERROR`` rows are kept as they are unless
  ``retry_errors=True``, which runs those slides again. A slide whose path changed in the manifest is redone.
  Resuming with other model or search options than the first run is refused (``OUT/cohort.json`` records them).

Workers load the model once per process (cached by its spec); only the spec (a path or None) crosses process
boundaries, never a torch model.

Test hook: when the environment variable ``HISTOSCALE_TEST_CRASH_ON`` is set to a non-empty string, a worker
whose slide path contains it exits at once with ``os._exit(1)``, simulating a worker killed mid-slide. It exists
only for histoscale's own tests of the worker-death handling; it is never set in normal use.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histoscale.errors import ConfigError, HistoscaleError, ModelError

__all__ = [
    "COLUMNS",
    "FINAL_FLAGS",
    "FLAGS",
    "CohortJob",
    "CohortSummary",
    "read_manifest",
    "read_results",
    "register_cli",
    "run_cohort",
]

logger = logging.getLogger(__name__)

COLUMNS = (
    "id", "slide", "declared_mpp", "mpp_source", "estimated_mpp", "ci_low", "ci_high", "chosen_scale", "units",
    "disagreement_steps", "flag", "message", "points_used", "seconds", "finished_at",
)
FLAGS = ("OK", "MISMATCH", "MISSING-METADATA", "UNKNOWN-MODEL-MPP", "ERROR")
FINAL_FLAGS = frozenset(FLAGS) - {"ERROR"}
CRASH_HOOK_ENV = "HISTOSCALE_TEST_CRASH_ON"
_MODEL_FAILED = "_model_failed"  # key of a row whose worker could not load the model: the run stops
RESULTS_NAME = "results.csv"
SETTINGS_NAME = "cohort.json"
_FLOAT_COLUMNS = ("declared_mpp", "estimated_mpp", "ci_low", "ci_high", "chosen_scale", "disagreement_steps", "seconds")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ----------------------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortJob:
    """One slide of the cohort: its unique ``id``, absolute ``slide`` path, optional um/px override ``mpp``,
    and where it came from (``line`` of the manifest, 0 when given in code)."""

    id: str
    slide: str
    mpp: float | None = None
    line: int = 0


def _parse_mpp(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: mpp {value!r} is not a number; give um/px (e.g. 0.25) or leave it empty") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ConfigError(f"{where}: mpp {value!r} must be a positive number of um/px, or empty")
    return mpp


def _default_id(slide: str) -> str:
    name = Path(slide).name
    stem = Path(name).stem
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).lstrip("._-")
    return stem or "slide"


def _make_jobs(entries: Sequence[tuple[str, Any, str | None, int]], source: str) -> list[CohortJob]:
    """(slide, mpp, id or None, line) -> jobs with unique ids; explicit ids must be unique and file-name safe."""
    explicit: dict[str, int] = {}
    for _, _, given, line in entries:
        if given is None:
            continue
        where = f"{source} line {line}" if line else source
        if not _SAFE_ID.match(given) or given in (".", ".."):
            raise ConfigError(
                f"{where}: id {given!r} cannot name a report folder; use letters, digits and . _ + - only"
            )
        if given in explicit:
            raise ConfigError(
                f"{where}: id {given!r} already used on line {explicit[given]}; ids must be unique (fix or remove "
                "the id column to use file names)"
            )
        explicit[given] = line
    taken = set(explicit)
    jobs = []
    for slide, mpp, given, line in entries:
        where = f"{source} line {line}" if line else f"{source} slide {slide}"
        job_id = given
        if job_id is None:
            base = _default_id(slide)
            job_id, n = base, 1
            while job_id in taken:
                n += 1
                job_id = f"{base}-{n}"
            taken.add(job_id)
        jobs.append(CohortJob(job_id, slide, _parse_mpp(mpp, where), line))
    return jobs


def read_manifest(path: str | os.PathLike[str]) -> list[CohortJob]:
    """Read a manifest CSV (columns ``slide``, optional ``mpp`` and ``id``) into jobs.

    Relative slide paths are resolved against the manifest's folder. Slide files are not opened here: a missing
    or unreadable slide becomes an ``ERROR`` row of the run, not a refusal of the whole manifest.

    Raises:
        ConfigError: the manifest is missing or unreadable, has no ``slide`` column, no rows, an empty slide
            cell, a bad ``mpp`` value or a duplicate ``id``; the message names the file, the line and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"manifest {p} does not exist: give a CSV file with a 'slide' column")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"manifest {p} cannot be read as UTF-8 CSV: {err}") from err
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"manifest {p} is empty: its first line must name the columns, e.g. 'slide,mpp,id'")
    names = [h.strip().lower() for h in header]
    if "slide" not in names:
        raise ConfigError(
            f"manifest {p} has no 'slide' column (columns: {', '.join(h.strip() for h in header) or 'none'}); "
            "its first line must name the columns, e.g. 'slide,mpp,id'"
        )
    for name in ("slide", "mpp", "id"):
        if names.count(name) > 1:
            raise ConfigError(f"manifest {p} has two '{name}' columns: keep one")
    col = {name: names.index(name) for name in ("slide", "mpp", "id") if name in names}
    entries = []
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        cells = cells + [""] * (len(names) - len(cells))
        slide = cells[col["slide"]].strip()
        if not slide:
            raise ConfigError(f"manifest {p} line {line}: the slide cell is empty; give a slide path or delete the row")
        resolved = Path(os.path.expanduser(slide))
        if not resolved.is_absolute():
            resolved = p.parent.resolve() / resolved
        given = cells[col["id"]].strip() if "id" in col else ""
        entries.append((str(resolved), cells[col["mpp"]] if "mpp" in col else None, given or None, line))
    if not entries:
        raise ConfigError(f"manifest {p} lists no slides: add one row per slide under the header")
    return _make_jobs(entries, f"manifest {p}")


def _jobs_from(manifest_or_rows: Any) -> list[CohortJob]:
    if isinstance(manifest_or_rows, (str, os.PathLike)):
        return read_manifest(manifest_or_rows)
    entries = []
    for i, item in enumerate(manifest_or_rows, start=1):
        if isinstance(item, CohortJob):
            entries.append((str(Path(item.slide).absolute()), item.mpp, item.id, item.line))
        elif isinstance(item, Mapping):
            if not item.get("slide"):
                raise ConfigError(f"cohort row {i} has no 'slide': give {{'slide': path, 'mpp': ..., 'id': ...}}")
            given = item.get("id")
            entries.append((str(Path(item["slide"]).absolute()), item.get("mpp"), str(given) if given else None, 0))
        elif isinstance(item, (str, os.PathLike)):
            entries.append((str(Path(item).absolute()), None, None, 0))
        else:
            raise ConfigError(f"cohort row {i} is a {type(item).__name__}: give a path, a mapping or a CohortJob")
    if not entries:
        raise ConfigError("the cohort lists no slides")
    return _make_jobs(entries, "cohort")


# ----------------------------------------------------------------------------------------------------------
# rows and results.csv
# ----------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_row(job: CohortJob, message: str, seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(id=job.id, slide=job.slide, declared_mpp=job.mpp, mpp_source="override" if job.mpp else None,
               flag="ERROR", message=_one_line(message), seconds=round(seconds, 3), finished_at=_now())
    return row


def _message(check: Any, result: Any) -> str:
    unit = "um/px" if result.units == "um/px" else "x downsample"
    apply = f"apply at {result.chosen_scale:.3g} {unit}"
    implied = check.implied_estimate
    if check.status == "UNKNOWN-MODEL-MPP":
        return f"{apply}; the model's training um/px is unknown, so the slide's um/px cannot be checked"
    lo, hi = check.implied_interval
    content = f"content implies {implied:.3g} um/px (95% CI {lo:.3g}-{hi:.3g})"
    if check.status == "MISSING-METADATA":
        return f"{apply}; no declared um/px, {content}"
    verdict = "agrees" if check.status == "OK" else "DISAGREES: check the scanner metadata or the mpp override"
    return (
        f"{apply}; declared {check.declared_mpp:.3g} um/px ({check.declared_source}), {content}, "
        f"{check.disagreement_steps:+.1f} grid steps: {verdict}"
    )


def _result_row(job: CohortJob, result: Any, seconds: float) -> dict[str, Any]:
    check = result.check
    interval = check.implied_interval or (None, None)
    return {
        "id": job.id,
        "slide": job.slide,
        "declared_mpp": check.declared_mpp,
        "mpp_source": check.declared_source,
        "estimated_mpp": check.implied_estimate,
        "ci_low": interval[0],
        "ci_high": interval[1],
        "chosen_scale": result.chosen_scale,
        "units": result.units,
        "disagreement_steps": check.disagreement_steps,
        "flag": check.status,
        "message": _one_line(_message(check, result)),
        "points_used": result.points_used,
        "seconds": round(seconds, 3),
        "finished_at": _now(),
    }


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def _results_text(rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _parse_cell(column: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    if column in _FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return None
    if column == "points_used":
        try:
            return int(float(text))
        except ValueError:
            return None
    return text


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a cohort's ``results.csv`` back into rows (numbers as float/int, empty cells as None).

    Raises:
        ConfigError: the file is not a histoscale cohort table.
    """
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "id" not in fields or "flag" not in fields:
                raise ConfigError(
                    f"{p} is not a histoscale cohort table (no 'id' and 'flag' columns): choose another --out folder"
                )
            return [{c: _parse_cell(c, r.get(c)) for c in COLUMNS} for r in reader]
    except OSError as err:
        raise ConfigError(f"cannot read {p}: {err.strerror or err}") from err


# ----------------------------------------------------------------------------------------------------------
# the job, run in worker processes
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WorkerConfig:
    """Everything a worker needs besides the job; small and picklable (a model *spec*, never a model)."""

    model_spec: str | None
    model_options: tuple[tuple[str, Any], ...]
    out_dir: str
    search_kwargs: tuple[tuple[str, Any], ...]
    figures: bool
    threads: int | None


_MODELS: dict[tuple[str | None, tuple[tuple[str, Any], ...]], Any] = {}
_THREADS_SET: list[int] = []


def _cached_model(spec: str | None, options: tuple[tuple[str, Any], ...]) -> Any:
    key = (spec, options)
    if key not in _MODELS:
        from histoscale.models import load_model

        _MODELS[key] = load_model(spec, **dict(options))
    return _MODELS[key]


def _set_threads(threads: int | None) -> None:
    if threads and not _THREADS_SET:
        import torch

        torch.set_num_threads(int(threads))
        _THREADS_SET.append(int(threads))


def _init_worker(threads: int | None) -> None:
    logging.getLogger("histoscale").setLevel(logging.WARNING)
    _set_threads(threads)


def _run_job(job: CohortJob, config: _WorkerConfig) -> dict[str, Any]:
    """Process one slide and return its results row; never raises (a failure is an ``ERROR`` row)."""
    t0 = time.perf_counter()
    hook = os.environ.get(CRASH_HOOK_ENV)
    if hook and hook in job.slide:  # test hook only: simulate a worker killed mid-slide (see module docstring)
        os._exit(1)
    try:
        from histoscale.report import write_search_report
        from histoscale.search import find_scale
        from histoscale.slide import open_slide

        _set_threads(config.threads)
        try:
            model = _cached_model(config.model_spec, config.model_options)
        except Exception as err:  # noqa: BLE001 - reported to the parent, which stops the run
            row = _error_row(job, f"cannot load the model {config.model_spec or '(bundled reference)'}: {err}",
                             time.perf_counter() - t0)
            row[_MODEL_FAILED] = True
            return row
        search_kwargs = dict(config.search_kwargs)
        with open_slide(job.slide, mpp=job.mpp) as slide:
            result = find_scale(slide, model, **search_kwargs)
            arguments = {"slide": job.slide, "id": job.id, "mpp": job.mpp, "model": config.model_spec,
                         **search_kwargs}
            thumbnail = slide.thumbnail() if config.figures else None
            write_search_report(result, Path(config.out_dir) / "slides" / job.id, thumbnail=thumbnail,
                                arguments=arguments, figures=config.figures)
        return _result_row(job, result, time.perf_counter() - t0)
    except HistoscaleError as err:
        return _error_row(job, str(err), time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 - one bad slide must never stop the cohort
        logger.debug("slide %s failed", job.slide, exc_info=True)
        return _error_row(job, f"{type(err).__name__}: {err} (while processing {job.slide})", time.perf_counter() - t0)


def _died_row(job: CohortJob, deaths: int, seconds: float) -> dict[str, Any]:
    return _error_row(
        job,
        f"worker died while processing {job.slide} ({deaths} time{'s' if deaths != 1 else ''}: a crash in a "
        "reader or library, or killed for memory?); try the slide alone with `histoscale search`",
        seconds,
    )


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortSummary:
    """What a cohort run produced: every row of ``results.csv`` (manifest order), the count per flag,
    how many slides were processed now and how many were kept from a previous run, and the wall time (s)."""

    rows: tuple[dict[str, Any], ...]
    counts: dict[str, int]
    elapsed: float
    out_dir: Path
    results_csv: Path
    processed: int = 0
    resumed: int = 0
    mode: str = "local"
    workers: int = 1
    errors: tuple[str, ...] = field(default=(), repr=False)

    def table(self) -> str:
        """A small text table of the flags, for printing."""
        lines = [f"{'flag':<18}{'slides':>7}"]
        for flag in FLAGS:
            if self.counts.get(flag):
                lines.append(f"{flag:<18}{self.counts[flag]:>7}")
        lines.append(f"{'total':<18}{len(self.rows):>7}")
        rate = self.processed / self.elapsed * 60 if self.elapsed > 0 and self.processed else 0.0
        lines.append(
            f"{self.processed} processed ({rate:.1f} slides/min, {self.mode}, {self.workers} workers), "
            f"{self.resumed} kept from a previous run; results in {self.results_csv}"
        )
        return "\n".join(lines)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _search_kwargs(search_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    from histoscale.scoring import SCORERS
    from histoscale.search import find_scale, make_grid

    kwargs = dict(search_kwargs or {})
    allowed = set(inspect.signature(find_scale).parameters) - {"slide", "model", "mpp", "progress"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"unknown search option(s) {', '.join(unknown)}: choose from {', '.join(sorted(allowed))}")
    if int(kwargs.get("points", 1)) < 1:
        raise ConfigError(f"points must be at least 1 (got {kwargs['points']})")
    if "scorer" in kwargs and kwargs["scorer"] not in SCORERS:
        raise ConfigError(f"unknown scorer {kwargs['scorer']!r}: choose one of {', '.join(SCORERS)}")
    if kwargs.get("scales") is not None:
        make_grid(kwargs["scales"], center=1.0, units="um/px")  # raises ConfigError on a malformed list
        if not isinstance(kwargs["scales"], str):
            kwargs["scales"] = tuple(float(s) for s in kwargs["scales"])
    return kwargs


def _check_model_spec(model_spec: Any) -> str | None:
    if model_spec is None:
        return None
    if not isinstance(model_spec, (str, os.PathLike)):
        raise ConfigError(
            f"model_spec must be a path (model card, TorchScript, ONNX, ...) or None, not a {type(model_spec).__name__}: "
            "workers load the model themselves, so pass where it lives"
        )
    return str(Path(model_spec).absolute())


def _settings(model_spec: str | None, model_options: Mapping[str, Any], search: Mapping[str, Any], figures: bool) -> dict[str, Any]:
    return json.loads(json.dumps(
        {"model": model_spec, "model_options": dict(model_options), "search": dict(search), "figures": figures},
        default=str,
    ))


def _check_resume_settings(out: Path, settings: Mapping[str, Any]) -> None:
    path = out / SETTINGS_NAME
    if not path.is_file():
        logger.warning("%s is missing: cannot check that the resumed run uses the same options", path)
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("%s is unreadable: cannot check that the resumed run uses the same options", path)
        return
    differ = [k for k in ("model", "model_options", "search") if before.get(k) != settings.get(k)]
    if differ:
        details = "; ".join(f"{k}: was {before.get(k)}, now {settings.get(k)}" for k in differ)
        raise ConfigError(
            f"cannot resume {out}: the earlier run used other options ({details}); resume with the same options "
            "or choose a new --out folder"
        )


def run_cohort(
    manifest_or_rows: str | os.PathLike[str] | Iterable[Any],
    *,
    model_spec: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str],
    workers: int | None = None,
    scheduler: Any = None,
    resume: bool = False,
    retry_errors: bool = False,
    search_kwargs: Mapping[str, Any] | None = None,
    retries: int = 1,
    progress: bool = False,
    figures: bool = True,
    model_options: Mapping[str, Any] | None = None,
) -> CohortSummary:
    """Run the scale search on every slide of a cohort; write ``out_dir/results.csv`` and per-slide reports.

    Args:
        manifest_or_rows: a manifest CSV path, or an iterable of slide paths, mappings
            (``{"slide": ..., "mpp": ..., "id": ...}``) or :class:`CohortJob`.
        model_spec: what :func:`histoscale.load_model` accepts as a path (model card, TorchScript, ONNX, ...),
            or None for the bundled reference model. Each worker process loads it once.
        out_dir: folder for ``results.csv``, ``cohort.json`` and ``slides/<id>/``.
        workers: worker processes (local pool or ``scheduler="local"``); default: half the CPU cores, at least
            one, at most one per slide. Each gets ``cores // workers`` torch threads.
        scheduler: None for a local process pool; ``"local"`` for a Dask ``LocalCluster`` on loopback; a Dask
            scheduler address (``"tcp://host:8786"``, e.g. from dask-jobqueue) or a ``distributed.Client``.
        resume: keep the final rows of an existing ``results.csv`` and process only the rest.
        retry_errors: with ``resume``, also run the slides whose row is ``ERROR`` again.
        search_kwargs: options for :func:`~histoscale.search.find_scale` (points, scales, seed, scorer, ...).
        retries: how many times a slide whose worker died is tried again before it is recorded as ``ERROR``.
        progress: show a progress bar (slides done / total and the flag counts) on stderr.
        figures: write the per-slide figures (curves, votes, overview) beside result.json.
        model_options: keyword options for :func:`histoscale.load_model` (``device``, ``precision``, ...).

    Worker processes are started with ``spawn`` (local pool and Dask LocalCluster): in a script, call this under
    ``if __name__ == "__main__":``.

    Raises:
        ModelError: the model file does not exist, or the workers cannot load it (the run stops).
        ConfigError: a bad manifest or option, an existing ``results.csv`` without ``resume``, or an
            unreachable Dask scheduler. Failures of single slides never raise: they are ``ERROR`` rows.
    """
    t0 = time.perf_counter()
    jobs = _jobs_from(manifest_or_rows)
    if retries < 0:
        raise ConfigError(f"retries must be 0 or more (got {retries})")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1 (got {workers})")
    spec = _check_model_spec(model_spec)
    if spec is not None and scheduler in (None, "local") and not Path(spec).exists():
        raise ModelError(f"model {spec} does not exist: give a model card, TorchScript or ONNX file, or omit --model")
    search = _search_kwargs(search_kwargs)
    options = dict(model_options or {})
    out = Path(out_dir)
    results_path = out / RESULTS_NAME
    settings = _settings(spec, options, search, figures)

    kept: dict[str, dict[str, Any]] = {}
    stale: dict[str, dict[str, Any]] = {}  # rows to redo: they stay in results.csv until their new row arrives
    extra: list[dict[str, Any]] = []
    previous_rows = read_results(results_path) if results_path.exists() else []
    if previous_rows:
        if not resume:
            raise ConfigError(
                f"{results_path} already exists: pass --resume to continue that run, or choose a new --out folder"
            )
        _check_resume_settings(out, settings)
        by_id = {job.id: job for job in jobs}
        for row in previous_rows:
            job = by_id.get(row["id"])
            if job is None:
                extra.append(row)  # not in this manifest: kept, so that nothing is lost
            elif row["slide"] != job.slide:
                logger.warning("slide %s: its path changed since the earlier run (%s); processing it again",
                               job.id, row["slide"])
                stale[job.id] = row
            elif row["flag"] in FINAL_FLAGS or (row["flag"] == "ERROR" and not retry_errors):
                kept[job.id] = row
            else:
                stale[job.id] = row
    from histoscale.report import atomic_write

    atomic_write(out / SETTINGS_NAME, json.dumps(settings, indent=2) + "\n")
    todo = [job for job in jobs if job.id not in kept]
    n_workers = max(1, min(workers or _cores() // 2, len(todo)))
    threads = max(1, _cores() // n_workers) if scheduler in (None, "local") else None
    config = _WorkerConfig(spec, tuple(sorted(options.items())), str(out.absolute()), tuple(sorted(search.items())),
                           bool(figures), threads)
    done: dict[str, dict[str, Any]] = {**stale, **kept}
    order = [job.id for job in jobs]

    def current_rows() -> list[dict[str, Any]]:
        return [done[i] for i in order if i in done] + extra

    def counts() -> dict[str, int]:
        return dict(Counter(str(r["flag"]) for r in current_rows()))

    bar = _Bar(progress, len(jobs), len(kept), counts)

    def on_row(row: dict[str, Any]) -> None:
        if row.pop(_MODEL_FAILED, False):  # the same for every slide: a bad argument, not a bad slide
            raise ModelError(row["message"])
        done[row["id"]] = row
        atomic_write(results_path, _results_text(current_rows()))
        if row["flag"] == "ERROR":
            logger.warning("slide %s: ERROR: %s", row["id"], row["message"])
        else:
            logger.info("slide %s: %s", row["id"], row["flag"])
        bar.advance()

    atomic_write(results_path, _results_text(current_rows()))
    mode = "local" if scheduler is None else "dask-local" if scheduler == "local" else "dask"
    if todo:
        logger.info("cohort: %d slides to process (%d kept), %s mode", len(todo), len(kept), mode)
        with bar:
            if scheduler is None:
                _run_local(todo, config, n_workers, retries, on_row)
            else:
                _run_dask(todo, config, scheduler, n_workers, retries, on_row)
    rows = tuple(current_rows())
    return CohortSummary(
        rows=rows, counts=counts(), elapsed=time.perf_counter() - t0, out_dir=out, results_csv=results_path,
        processed=len(todo), resumed=len(kept), mode=mode, workers=n_workers if scheduler in (None, "local") else 0,
    )


class _Bar:
    """A rich progress bar of slides done / total with the flag counts, or nothing."""

    def __init__(self, enabled: bool, total: int, already: int, counts: Callable[[], dict[str, int]]) -> None:
        self.enabled, self.total, self.already, self.counts = enabled, total, already, counts
        self._progress: Any = None
        self._task: Any = None

    def _label(self) -> str:
        c = self.counts()
        return "cohort " + " ".join(f"{f} {c[f]}" for f in FLAGS if c.get(f))

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True))
            self._progress.__enter__()
            self._task = self._progress.add_task(self._label(), total=self.total, completed=self.already)
        return self

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=self._label())

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


# ----------------------------------------------------------------------------------------------------------
# local process pool
# ----------------------------------------------------------------------------------------------------------
def _new_pool(workers: int, threads: int | None) -> ProcessPoolExecutor:
    # spawn: no fork of a parent that may hold torch / OpenSlide / threads
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued and terminate its processes (interrupt or broken pool)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def _run_local(
    jobs: Sequence[CohortJob], config: _WorkerConfig, workers: int, retries: int,
    on_row: Callable[[dict[str, Any]], None],
) -> None:
    """At most ``workers`` slides in flight, so that every submitted slide is running. When a worker dies the pool
    breaks: its slides in flight are run again, one at a time on a fresh pool when several were in flight (then a
    death names its slide), and a slide that alone killed its worker more than ``retries`` times is an ERROR."""
    queue: deque[CohortJob] = deque(jobs)
    isolate: deque[CohortJob] = deque()  # survivors of a broken pool whose culprit is not known yet
    deaths: Counter[str] = Counter()
    in_flight: dict[Future[dict[str, Any]], tuple[CohortJob, float]] = {}
    pool: ProcessPoolExecutor | None = None
    try:
        while queue or isolate or in_flight:
            if pool is None:
                pool = _new_pool(workers, config.threads)
            broken = False
            try:
                if isolate:
                    if not in_flight:
                        job = isolate.popleft()
                        in_flight[pool.submit(_run_job, job, config)] = (job, time.perf_counter())
                else:
                    while queue and len(in_flight) < workers:
                        job = queue.popleft()
                        try:
                            in_flight[pool.submit(_run_job, job, config)] = (job, time.perf_counter())
                        except BrokenProcessPool:
                            queue.appendleft(job)
                            raise
            except BrokenProcessPool:
                broken = True
            crashed: list[tuple[CohortJob, float]] = []
            if not broken:
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            else:
                finished = set()
            for fut in list(finished):
                broken |= _collect(fut, in_flight.pop(fut), on_row, crashed)
            if broken:  # the pool is dead: every other slide in flight fails with it (or had just finished)
                for fut in list(in_flight):
                    _collect(fut, in_flight.pop(fut), on_row, crashed)
                _kill_pool(pool)
                pool = None
                if not crashed:  # broke between two slides: nothing to charge
                    continue
                if len(crashed) == 1:
                    job, started = crashed[0]
                    deaths[job.id] += 1
                    if deaths[job.id] > retries:
                        on_row(_died_row(job, deaths[job.id], time.perf_counter() - started))
                    else:
                        logger.warning("worker died while processing %s; trying again (%d of %d)", job.slide,
                                       deaths[job.id], retries)
                        isolate.append(job)
                else:
                    logger.warning("a worker died with %d slides in flight; running them again one at a time",
                                   len(crashed))
                    isolate.extend(job for job, _ in crashed)
    except BaseException:
        if pool is not None:
            _kill_pool(pool)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _collect(
    fut: Future[dict[str, Any]], entry: tuple[CohortJob, float], on_row: Callable[[dict[str, Any]], None],
    crashed: list[tuple[CohortJob, float]],
) -> bool:
    """Record a finished future's row; return True when its worker (and so the pool) died."""
    job, started = entry
    try:
        row = fut.result()
    except BrokenProcessPool:
        crashed.append(entry)
        return True
    except Exception as err:  # noqa: BLE001 - e.g. a result that cannot be unpickled
        row = _error_row(job, f"{type(err).__name__}: {err} (while processing {job.slide})",
                         time.perf_counter() - started)
    on_row(row)
    return False


# ----------------------------------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------------------------------
def _run_dask(
    jobs: Sequence[CohortJob], config: _WorkerConfig, scheduler: Any, workers: int, retries: int,
    on_row: Callable[[dict[str, Any]], None],
) -> None:
    try:
        import dask
        from distributed import Client, KilledWorker, LocalCluster, as_completed
    except ImportError as err:
        raise ConfigError(
            "Dask mode needs dask.distributed: pip install 'histoscale[dask]' (or run without --scheduler/--dask)"
        ) from err

    cluster = None
    own_client = False
    if hasattr(scheduler, "submit"):
        client = scheduler
    elif scheduler == "local":
        # One task per worker at a time (worker-saturation 1.0), so a dying worker names its slide, and the
        # scheduler gives up on a slide after `retries` deaths (allowed-failures).
        # As in the local pool, torch threads are set per worker (cores // workers) and other libraries keep their
        # defaults: Dask's OMP/MKL/OPENBLAS_NUM_THREADS=1 made the search ~25% slower in our measurement. The
        # worker's sampling profiler (every 10 ms, holding the GIL) is off.
        with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 65536},
                              "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   scheduler_kwargs={"dashboard": False}, silence_logs=logging.WARNING)
            client = Client(cluster)
        own_client = True
    elif isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler}: {err}; start it (dask scheduler, dask-jobqueue) "
                "or check the address (tcp://host:8786)"
            ) from err
        own_client = True
    else:
        raise ConfigError(f"scheduler must be None, 'local', an address like tcp://host:8786 or a Client, not {scheduler!r}")

    run = uuid.uuid4().hex[:8]
    futures: dict[Any, tuple[CohortJob, float]] = {}
    try:
        for job in jobs:
            fut = client.submit(_run_job, job, config, pure=False, key=f"histoscale-cohort-{run}-{job.id}")
            futures[fut] = (job, time.perf_counter())
        for fut in as_completed(list(futures)):
            job, started = futures.pop(fut)
            try:
                row = fut.result()
            except KilledWorker as err:
                deaths = getattr(err, "allowed_failures", retries) + 1
                row = _died_row(job, deaths, time.perf_counter() - started)
            except Exception as err:  # noqa: BLE001 - e.g. histoscale not importable on the workers
                row = _error_row(job, f"{type(err).__name__}: {err} (Dask, while processing {job.slide})",
                                 time.perf_counter() - started)
            fut.release()
            on_row(row)
    except BaseException:
        if futures:
            client.cancel(list(futures))
        raise
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_cohort(args: argparse.Namespace) -> int:
    """``histoscale cohort``: run the search over a manifest; exit 0 when the run completed (ERROR rows
    included); bad manifests or options raise :class:`~histoscale.errors.HistoscaleError` (exit 2)."""
    import sys

    names = ("points", "scales", "seed", "scorer", "aggregation", "sampling", "relative", "early_stop", "widen")
    search = {k: getattr(args, k) for k in names if hasattr(args, k)}
    options = {k: getattr(args, k) for k in ("allow_pickle", "device", "precision") if getattr(args, k, None) is not None}
    if not options.get("allow_pickle"):
        options.pop("allow_pickle", None)
    if options.get("precision") == "auto":
        options.pop("precision")
    scheduler = args.scheduler or ("local" if args.dask == "local" else None)
    previous = None
    try:  # SIGTERM (e.g. a batch system's kill) stops the run like Ctrl-C: workers stopped, results.csv intact
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        summary = run_cohort(
            args.manifest, model_spec=args.model, out_dir=args.out, workers=args.workers, scheduler=scheduler,
            resume=args.resume, retry_errors=args.retry_errors, search_kwargs=search, retries=args.retries,
            progress=sys.stderr.isatty(), figures=args.figures, model_options=options,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary.table())
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``histoscale cohort`` to the command line."""
    from histoscale.cli import _add_model_options, _add_search_options

    p = subparsers.add_parser(
        "cohort", help="run the search over a manifest of slides (process pool or Dask)",
        description="Run the scale search over every slide of a manifest CSV (columns: slide, optional mpp and id); "
        "writes OUT/results.csv (rewritten after every slide) and OUT/slides/<id>/ reports.",
    )
    p.add_argument("manifest", help="CSV with a 'slide' column; optional 'mpp' (um/px override) and 'id'")
    p.add_argument("--out", required=True, help="folder for results.csv and slides/<id>/ reports")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: half the CPU cores)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786 (dask-jobqueue)")
    where.add_argument("--dask", choices=("local",), default=None, help="run on a Dask LocalCluster on this machine")
    p.add_argument("--resume", action="store_true", help="keep finished rows of OUT/results.csv, process the rest")
    p.add_argument("--retry-errors", action="store_true", help="with --resume, also redo the slides that were ERROR")
    p.add_argument("--retries", type=int, default=1, help="retries of a slide whose worker died (default 1)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the per-slide PNG figures")
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_cohort)
