"""Cohorts: the scale search over every slide of a manifest, on a local process pool or on Dask.

``manifest`` (the input CSV) -> ``worker`` (one slide) -> ``table`` (``results.csv``), run by ``run_cohort``
on ``_local`` (a process pool) or ``_dask``.
"""

from histoscale.cohort.manifest import CohortJob, read_manifest
from histoscale.cohort.run import CohortSummary, run_cohort
from histoscale.cohort.table import COLUMNS, FINAL_FLAGS, FLAGS, ResultsTable, read_results
from histoscale.cohort.worker import WorkerConfig, run_job

__all__ = [
    "COLUMNS",
    "FINAL_FLAGS",
    "FLAGS",
    "CohortJob",
    "CohortSummary",
    "ResultsTable",
    "WorkerConfig",
    "read_manifest",
    "read_results",
    "run_cohort",
    "run_job",
]
