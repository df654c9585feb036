"""histoscale: find the scale (um/px) at which a trained patch classifier should see a whole-slide image.

>>> import histoscale
>>> result = histoscale.find_scale("slide.svs")        # bundled reference model, 100 points
>>> result.chosen_scale, result.check.status
>>> histoscale.measure_mpp(histoscale.open_slide("slide.svs")).describe()   # the nuclei's ruler, no model
"""

from __future__ import annotations

__version__ = "0.1.0"

from histoscale.calibration import ScaleCalibration, fit_calibration
from histoscale.classify import ClassMap, classify_slide
from histoscale.cohort import CalibrationRun, CohortSummary, calibrate_model, read_manifest, read_results, run_cohort
from histoscale.domain import DomainCheck, FeatureStats
from histoscale.errors import (
    ConfigError,
    HistoscaleError,
    MissingMppError,
    ModelError,
    ScaleSearchError,
    SlideError,
)
from histoscale.evaluate import ScaleAccuracy, evaluate_scales
from histoscale.labels import LabelMap, load_labels
from histoscale.models import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    ModelCard,
    Preprocessing,
    SplitModel,
    load_card,
    load_model,
    register_format,
    save_card,
)
from histoscale.patches import resample
from histoscale.reports.search import write_search_report
from histoscale.ruler import RulerEstimate
from histoscale.scoring import SCORERS, score_points
from histoscale.search import MetadataCheck, ScaleResult, SearchConfig, find_scale
from histoscale.slide import (
    Resolution,
    Slide,
    TissueMask,
    measure_mpp,
    open_slide,
    slide_info,
    tissue_mask,
    write_slide,
)
from histoscale.units import parse_scales

__all__ = [
    "__version__",
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "DomainCheck",
    "FeatureStats",
    "CalibrationRun",
    "ClassMap",
    "CohortSummary",
    "ConfigError",
    "HistoscaleError",
    "LabelMap",
    "MetadataCheck",
    "MissingMppError",
    "ModelCard",
    "ModelError",
    "Preprocessing",
    "Resolution",
    "SCORERS",
    "ScaleAccuracy",
    "ScaleCalibration",
    "ScaleResult",
    "RulerEstimate",
    "ScaleSearchError",
    "SearchConfig",
    "Slide",
    "SlideError",
    "SplitModel",
    "TissueMask",
    "calibrate_model",
    "classify_slide",
    "evaluate_scales",
    "find_scale",
    "fit_calibration",
    "load_card",
    "load_labels",
    "load_model",
    "measure_mpp",
    "open_slide",
    "parse_scales",
    "read_manifest",
    "read_results",
    "register_format",
    "resample",
    "run_cohort",
    "save_card",
    "score_points",
    "slide_info",
    "tissue_mask",
    "write_search_report",
    "write_slide",
]
