"""histoscale: find the scale (um/px) at which a trained patch classifier should see a whole-slide image.

>>> import histoscale
>>> result = histoscale.find_scale("slide.svs")        # bundled reference model, 100 points
>>> result.chosen_scale, result.check.status
"""

from __future__ import annotations

from histoscale.errors import (
    ConfigError,
    HistoscaleError,
    MissingMppError,
    ModelError,
    ScaleSearchError,
    SlideError,
)
from histoscale.classify import ClassMap, classify_slide
from histoscale.cohort import CohortSummary, read_manifest, read_results, run_cohort
from histoscale.evaluate import LabelMap, ScaleAccuracy, evaluate_scales, load_labels
from histoscale.report import write_search_report
from histoscale.scoring import SCORERS, score_points
from histoscale.search import MetadataCheck, ScaleResult, find_scale, make_grid
from histoscale.slide import Resolution, Slide, TissueMask, open_slide, resample, slide_info, tissue_mask
from histoscale.slidewrite import write_slide

__version__ = "0.1.0"

# The model layer imports torch (~2 s): load it on first use so `histoscale info` and slide I/O stay quick.
_LAZY_FROM_MODELS = ("ModelCard", "Preprocessing", "SplitModel", "load_card", "load_model", "save_card")


def __getattr__(name: str) -> object:
    if name in _LAZY_FROM_MODELS:
        from histoscale import models

        return getattr(models, name)
    raise AttributeError(f"module 'histoscale' has no attribute {name!r}")


__all__ = [
    "__version__",
    "ClassMap",
    "CohortSummary",
    "LabelMap",
    "ScaleAccuracy",
    "classify_slide",
    "evaluate_scales",
    "load_labels",
    "read_manifest",
    "read_results",
    "run_cohort",
    "ConfigError",
    "HistoscaleError",
    "MetadataCheck",
    "MissingMppError",
    "ModelCard",
    "ModelError",
    "Preprocessing",
    "Resolution",
    "SCORERS",
    "ScaleResult",
    "ScaleSearchError",
    "Slide",
    "SlideError",
    "SplitModel",
    "TissueMask",
    "find_scale",
    "load_card",
    "load_model",
    "make_grid",
    "open_slide",
    "resample",
    "save_card",
    "score_points",
    "slide_info",
    "tissue_mask",
    "write_search_report",
    "write_slide",
]
