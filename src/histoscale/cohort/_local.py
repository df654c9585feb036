"""A local process pool that survives dying workers and charges a death only to the slide that caused it."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from histoscale.cohort.manifest import CohortJob
from histoscale.cohort.table import ResultsTable
from histoscale.cohort.worker import WorkerConfig, died_row, init_worker

__all__ = ["JobRunner", "run_local"]

logger = logging.getLogger(__name__)

JobRunner = Callable[[CohortJob, WorkerConfig], dict[str, Any]]


def _new_pool(workers: int, threads: int | None) -> ProcessPoolExecutor:
    # spawn: no fork of a parent that may hold torch / OpenSlide / threads
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(threads,))


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued and terminate its processes (interrupt or broken pool)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def run_local(
    jobs: Sequence[CohortJob], config: WorkerConfig, workers: int, retries: int,
    on_row: Callable[[dict[str, Any]], None], runner: JobRunner,
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
                        in_flight[pool.submit(runner, job, config)] = (job, time.perf_counter())
                else:
                    while queue and len(in_flight) < workers:
                        job = queue.popleft()
                        try:
                            in_flight[pool.submit(runner, job, config)] = (job, time.perf_counter())
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
                        on_row(died_row(job, deaths[job.id], time.perf_counter() - started))
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
        row = ResultsTable.error_row(job, f"{type(err).__name__}: {err} (while processing {job.slide})",
                         time.perf_counter() - started)
    on_row(row)
    return False


