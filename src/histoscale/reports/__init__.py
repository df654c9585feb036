"""What users read: per-search, per-classification and per-evaluation reports, written atomically."""

from histoscale.reports._provenance import machine, versions
from histoscale.reports.classify import write_classify_report
from histoscale.reports.cohort import write_cohort_index
from histoscale.reports.evaluate import write_evaluate_report
from histoscale.reports.search import write_search_report

__all__ = [
    "machine", "versions", "write_classify_report", "write_cohort_index", "write_evaluate_report", "write_search_report",
]
