"""The scale search: :func:`find_scale` with a :class:`SearchConfig`, returning a :class:`ScaleResult`."""

from histoscale.search.config import DEFAULT_AGGREGATION, DEFAULT_SCORER, SearchConfig
from histoscale.search.engine import find_scale
from histoscale.search.result import MetadataCheck, ScaleResult, ScanSummary, metadata_check

__all__ = [
    "DEFAULT_AGGREGATION",
    "DEFAULT_SCORER",
    "MetadataCheck",
    "ScaleResult",
    "ScanSummary",
    "SearchConfig",
    "find_scale",
    "metadata_check",
]
