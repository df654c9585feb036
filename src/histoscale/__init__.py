"""histoscale: find the scale (um/px) at which a trained patch classifier should see a whole-slide image."""

from __future__ import annotations

from histoscale.errors import (
    ConfigError,
    HistoscaleError,
    MissingMppError,
    ModelError,
    ScaleSearchError,
    SlideError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ConfigError",
    "HistoscaleError",
    "MissingMppError",
    "ModelError",
    "ScaleSearchError",
    "SlideError",
]
