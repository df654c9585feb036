"""The job run in worker processes: open one slide, search, write its report, return its results row.

Workers load the model once per process (cached by its spec); only the spec (a path or None) and small
settings cross process boundaries, never a torch model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoscale.cohort.manifest import CohortJob
from histoscale.cohort.table import ResultsTable
from histoscale.errors import HistoscaleError
from histoscale.models import load_model
from histoscale.reports.search import write_search_report
from histoscale.search import SearchConfig, find_scale
from histoscale.slide import open_slide

__all__ = ["MODEL_FAILED", "WorkerConfig", "died_row", "init_worker", "report_dir", "run_job"]

logger = logging.getLogger(__name__)

MODEL_FAILED = "_model_failed"  # key of a row whose worker could not load the model: the run stops


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs besides the job; small and picklable (a model *spec*, never a model)."""

    model_spec: str | None
    model_options: tuple[tuple[str, Any], ...]
    out_dir: str
    search: SearchConfig
    figures: bool
    threads: int | None


_MODELS: dict[tuple[str | None, tuple[tuple[str, Any], ...]], Any] = {}
_THREADS_SET: list[int] = []


def _cached_model(spec: str | None, options: tuple[tuple[str, Any], ...]) -> Any:
    key = (spec, options)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, **dict(options))
    return _MODELS[key]


def _set_threads(threads: int | None) -> None:
    if threads and not _THREADS_SET:
        import torch

        torch.set_num_threads(int(threads))
        _THREADS_SET.append(int(threads))


def init_worker(threads: int | None) -> None:
    logging.getLogger("histoscale").setLevel(logging.WARNING)
    _set_threads(threads)


def report_dir(out_dir: str | Path, slide_id: str) -> Path:
    """The folder of one slide's search report in a cohort's output folder."""
    return Path(out_dir) / "slides" / slide_id


def run_job(job: CohortJob, config: WorkerConfig) -> dict[str, Any]:
    """Process one slide and return its results row; never raises (a failure is an ``ERROR`` row)."""
    t0 = time.perf_counter()
    resolution = None
    try:
        _set_threads(config.threads)
        try:
            model = _cached_model(config.model_spec, config.model_options)
        except Exception as err:  # noqa: BLE001 - reported to the parent, which stops the run
            row = ResultsTable.error_row(job, f"cannot load the model {config.model_spec or '(bundled reference)'}: {err}",
                             time.perf_counter() - t0)
            row[MODEL_FAILED] = True
            return row
        with open_slide(job.slide, slide_mpp=job.mpp) as slide:
            resolution = slide.resolution
            result = find_scale(slide, model, config.search)
            arguments = {"slide": job.slide, "id": job.id, "slide_mpp": job.mpp, "model": config.model_spec,
                         **config.search.to_dict()}
            thumbnail = slide.thumbnail() if config.figures else None
            write_search_report(result, report_dir(config.out_dir, job.id), thumbnail=thumbnail,
                                arguments=arguments, figures=config.figures)
        return ResultsTable.result_row(job, result, time.perf_counter() - t0)
    except HistoscaleError as err:
        return ResultsTable.error_row(job, str(err), time.perf_counter() - t0, resolution)
    except Exception as err:  # noqa: BLE001 - one bad slide must never stop the cohort
        logger.debug("slide %s failed", job.slide, exc_info=True)
        return ResultsTable.error_row(
            job, f"{type(err).__name__}: {err} (while processing {job.slide})", time.perf_counter() - t0, resolution
        )


def died_row(job: CohortJob, deaths: int, seconds: float) -> dict[str, Any]:
    return ResultsTable.error_row(
        job,
        f"worker died while processing {job.slide} ({deaths} time{'s' if deaths != 1 else ''}: a crash in a "
        "reader or library, or killed for memory?); try the slide alone with `histoscale search`",
        seconds,
    )

