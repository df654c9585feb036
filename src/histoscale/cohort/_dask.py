"""Running the cohort on Dask: a LocalCluster on this machine, or any scheduler (dask-jobqueue, a Client)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from histoscale.cohort._local import JobRunner
from histoscale.cohort.manifest import CohortJob
from histoscale.cohort.table import ResultsTable
from histoscale.cohort.worker import WorkerConfig, died_row
from histoscale.errors import ConfigError

__all__ = ["run_dask"]


def run_dask(
    jobs: Sequence[CohortJob], config: WorkerConfig, scheduler: Any, workers: int, retries: int,
    on_row: Callable[[dict[str, Any]], None], runner: JobRunner,
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
            fut = client.submit(runner, job, config, pure=False, key=f"histoscale-cohort-{run}-{job.id}")
            futures[fut] = (job, time.perf_counter())
        for fut in as_completed(list(futures)):
            job, started = futures.pop(fut)
            try:
                row = fut.result()
            except KilledWorker as err:
                deaths = getattr(err, "allowed_failures", retries) + 1
                row = died_row(job, deaths, time.perf_counter() - started)
            except Exception as err:  # noqa: BLE001 - e.g. histoscale not importable on the workers
                row = ResultsTable.error_row(job, f"{type(err).__name__}: {err} (Dask, while processing {job.slide})",
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


