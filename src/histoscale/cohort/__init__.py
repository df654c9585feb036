"""Cohorts: the scale search over every slide of a manifest, on a local process pool or on Dask.

``manifest`` (the input CSV) -> ``worker`` (one slide) -> ``table`` (``results.csv``), run by ``run_cohort``
on ``_local`` (a process pool) or ``_dask``; ``calibrate`` measures where a model's margins peak on slides of
trusted um/px.
"""

from histoscale.cohort.calibrate import CalibrationRun, calibrate_model
from histoscale.cohort.manifest import CohortJob, read_manifest
from histoscale.cohort.run import CohortSummary, run_cohort
from histoscale.cohort.table import COLUMNS, FINAL_FLAGS, FLAGS, ResultsTable, read_results
from histoscale.cohort.worker import WorkerConfig, run_job

__all__ = [
    "COLUMNS",
    "CalibrationRun",
    "FINAL_FLAGS",
    "FLAGS",
    "CohortJob",
    "CohortSummary",
    "ResultsTable",
    "WorkerConfig",
    "calibrate_model",
    "read_manifest",
    "read_results",
    "run_cohort",
    "run_job",
]
