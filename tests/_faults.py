"""Fault injection for the cohort tests: job runners that worker processes import by name (spawn, Dask)."""

from __future__ import annotations

import os
from typing import Any

from histoscale.cohort import CohortJob, WorkerConfig, run_job


def die_on_crashme(job: CohortJob, config: WorkerConfig) -> dict[str, Any]:
    """The real job, except that a worker given a slide named ``crashme`` dies at once, as if killed mid-slide."""
    if "crashme" in job.slide:
        os._exit(1)
    return run_job(job, config)
