"""Run the scale search over a cohort of slides listed in a manifest, on a local process pool or on Dask.

The manifest is a CSV file with a ``slide`` column (paths; relative ones are resolved against the manifest's
folder) and optional ``mpp`` (um/px overriding what the file declares) and ``id`` (default: the slide file's
stem, made unique) columns. Each slide is one job: open it, :func:`~histoscale.search.find_scale`, write its
report into ``OUT/slides/<id>/`` and return one row of ``OUT/results.csv``.

Reliability rules:

- ``OUT/results.csv`` and ``OUT/index.html`` (the same rows as a page to review: sortable, filterable, MISMATCH
  and ERROR rows first, each linked to its slide's ``report.html``) are rewritten atomically (temporary file +
  ``os.replace``) after every finished slide, so an interrupted run loses at most the slides that were in flight.
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
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoscale._compat import renamed
from histoscale._files import atomic_write
from histoscale._progress import progress_bar
from histoscale.cohort._dask import run_dask
from histoscale.cohort._local import JobRunner, run_local
from histoscale.cohort.manifest import jobs_from
from histoscale.cohort.table import FINAL_FLAGS, FLAGS, ResultsTable
from histoscale.cohort.worker import MODEL_FAILED, WorkerConfig, report_dir, run_job
from histoscale.errors import ConfigError, ModelError
from histoscale.models import BUNDLED_MODELS
from histoscale.reports.cohort import write_cohort_index
from histoscale.search import SearchConfig

__all__ = ["CohortSummary", "run_cohort"]

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.csv"
SETTINGS_NAME = "cohort.json"


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


def _check_model_spec(model_spec: Any) -> str | None:
    if model_spec is None:
        return None
    if not isinstance(model_spec, (str, os.PathLike)):
        raise ConfigError(
            f"model_spec must be a path (model card, TorchScript, ONNX, ...) or None, not a {type(model_spec).__name__}: "
            "workers load the model themselves, so pass where it lives"
        )
    if isinstance(model_spec, str) and model_spec in BUNDLED_MODELS and not Path(model_spec).exists():
        return model_spec  # a bundled model's name: each worker finds it in its own installation
    return str(Path(model_spec).absolute())


def _settings(model_spec: str | None, model_options: Mapping[str, Any], search: SearchConfig, figures: bool) -> dict[str, Any]:
    return json.loads(json.dumps(
        {"model": model_spec, "model_options": dict(model_options), "search": search.to_dict(), "figures": figures},
        default=str,
    ))


def _settings_line(model_spec: str | None, model_options: Mapping[str, Any], search: SearchConfig) -> str:
    """How the slides were searched, in one line for the cohort page: a reader comparing implied um/px between
    runs must know whether a calibration moved them."""
    calibration = model_options.get("calibration")
    if not search.calibrated:
        applied = "not applied (--uncalibrated)"
    elif calibration:
        applied = f"from {Path(str(calibration)).name}"
    else:
        applied = "the model card's, if it has one"
    grid = "coarse to fine over the plausible range" if search.scales is None else f"scales {search.scales}"
    return (f"model: {model_spec or 'the bundled reference model'}; calibration: {applied}; search: {grid}, "
            f"{search.points} points, {search.scorer} + {search.aggregation}")


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
    search: SearchConfig | None = None,
    retries: int = 1,
    progress: bool = False,
    figures: bool = True,
    model_options: Mapping[str, Any] | None = None,
    job_runner: JobRunner = run_job,
    search_kwargs: Mapping[str, Any] | None = None,
) -> CohortSummary:
    """Run the scale search on every slide of a cohort; write ``out_dir/results.csv`` and per-slide reports.

    Args:
        manifest_or_rows: a manifest CSV path, or an iterable of slide paths, mappings
            (``{"slide": ..., "mpp": ..., "id": ...}``) or :class:`CohortJob`.
        model_spec: what :func:`histoscale.load_model` accepts as a path (model card, TorchScript, ONNX, ...),
            or None for the bundled reference model. Each worker process loads it once.
        out_dir: folder for ``results.csv``, ``index.html``, ``cohort.json`` and ``slides/<id>/``.
        workers: worker processes (local pool or ``scheduler="local"``); default: half the CPU cores, at least
            one, at most one per slide. Each gets ``cores // workers`` torch threads.
        scheduler: None for a local process pool; ``"local"`` for a Dask ``LocalCluster`` on loopback; a Dask
            scheduler address (``"tcp://host:8786"``, e.g. from dask-jobqueue) or a ``distributed.Client``.
        resume: keep the final rows of an existing ``results.csv`` and process only the rest.
        retry_errors: with ``resume``, also run the slides whose row is ``ERROR`` again.
        search: the :class:`~histoscale.search.SearchConfig` every slide is searched with (default: defaults);
            ``search_kwargs`` (its fields as a mapping) is the deprecated form.
        retries: how many times a slide whose worker died is tried again before it is recorded as ``ERROR``.
        progress: show a progress bar (slides done / total and the flag counts) on stderr.
        figures: write the per-slide figures (curves, votes, overview) beside result.json.
        model_options: keyword options for :func:`histoscale.load_model` (``device``, ``precision``, ...).
        job_runner: the function a worker runs per slide (default :func:`~histoscale.cohort.worker.run_job`);
            a picklable replacement wraps or instruments it (fault injection in histoscale's own tests).

    Worker processes are started with ``spawn`` (local pool and Dask LocalCluster): in a script, call this under
    ``if __name__ == "__main__":``.

    Raises:
        ModelError: the model file does not exist, or the workers cannot load it (the run stops).
        ConfigError: a bad manifest or option, an existing ``results.csv`` without ``resume``, or an
            unreachable Dask scheduler. Failures of single slides never raise: they are ``ERROR`` rows.
    """
    t0 = time.perf_counter()
    jobs = jobs_from(manifest_or_rows)
    if retries < 0:
        raise ConfigError(f"retries must be 0 or more (got {retries})")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1 (got {workers})")
    spec = _check_model_spec(model_spec)
    if spec is not None and scheduler in (None, "local") and spec not in BUNDLED_MODELS and not Path(spec).exists():
        raise ModelError(f"model {spec} does not exist: give a model card, TorchScript or ONNX file, the name of a "
                         f"bundled model ({', '.join(BUNDLED_MODELS)}), or omit --model")
    if search_kwargs is not None:
        search = SearchConfig.from_dict(renamed("run_cohort", "search_kwargs", "search", dict(search_kwargs), search))
    search = search or SearchConfig()
    options = dict(model_options or {})
    out = Path(out_dir)
    results_path = out / RESULTS_NAME
    settings = _settings(spec, options, search, figures)
    settings_line = _settings_line(spec, options, search)

    kept: dict[str, dict[str, Any]] = {}
    stale: dict[str, dict[str, Any]] = {}  # rows to redo: they stay in results.csv until their new row arrives
    extra: list[dict[str, Any]] = []
    previous_rows = ResultsTable.read(results_path) if results_path.exists() else []
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
    atomic_write(out / SETTINGS_NAME, json.dumps(settings, indent=2) + "\n")
    todo = [job for job in jobs if job.id not in kept]
    n_workers = max(1, min(workers or _cores() // 2, len(todo)))
    threads = max(1, _cores() // n_workers) if scheduler in (None, "local") else None
    config = WorkerConfig(spec, tuple(sorted(options.items())), str(out.absolute()), search, bool(figures), threads)
    done: dict[str, dict[str, Any]] = {**stale, **kept}
    order = [job.id for job in jobs]

    def current_rows() -> list[dict[str, Any]]:
        return [done[i] for i in order if i in done] + extra

    def counts() -> dict[str, int]:
        return dict(Counter(str(r["flag"]) for r in current_rows()))

    bar = _Bar(progress, len(jobs), len(kept), counts)

    def write_tables() -> None:
        rows = current_rows()
        ResultsTable.write(results_path, rows)
        folders = {r["id"]: report_dir(out, r["id"]) for r in rows}
        write_cohort_index(out, rows, total=len(jobs) + len(extra), report_dirs=folders, settings=settings_line)

    def on_row(row: dict[str, Any]) -> None:
        if row.pop(MODEL_FAILED, False):  # the same for every slide: a bad argument, not a bad slide
            raise ModelError(row["message"])
        done[row["id"]] = row
        write_tables()
        if row["flag"] == "ERROR":
            logger.warning("slide %s: ERROR: %s", row["id"], row["message"])
        else:
            logger.info("slide %s: %s", row["id"], row["flag"])
        bar.advance()

    write_tables()
    mode = "local" if scheduler is None else "dask-local" if scheduler == "local" else "dask"
    if todo:
        logger.info("cohort: %d slides to process (%d kept), %s mode", len(todo), len(kept), mode)
        with bar:
            if scheduler is None:
                run_local(todo, config, n_workers, retries, on_row, job_runner)
            else:
                run_dask(todo, config, scheduler, n_workers, retries, on_row, job_runner)
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
            self._progress = progress_bar(True, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self._label(), total=self.total, completed=self.already)
        return self

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=self._label())

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


