"""Level-0 pixel size (um/px) and where it came from.

``Resolution`` is what a slide declares (or what the caller overrides); the readers build it through
:func:`make_resolution`, which drops values that are screen/print DPI defaults rather than a microscope's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ANISOTROPY_TOLERANCE", "MAX_PLAUSIBLE_TAG_MPP", "Resolution", "as_positive", "make_resolution"]

logger = logging.getLogger(__name__)

#: mpp_x and mpp_y differing by more than this fraction makes a resolution anisotropic.
ANISOTROPY_TOLERANCE = 0.10
#: Resolutions read from generic DPI-style fields (TIFF tags, PNG pHYs, JFIF density) coarser than
#: this are dropped: 72/96/300 dpi defaults written by image tools give 85..350 um/px, which no
#: microscope produces (1000 dpi is 25.4 um/px).
MAX_PLAUSIBLE_TAG_MPP = 25.0


@dataclass(frozen=True)
class Resolution:
    """Size of one level-0 pixel in micrometres along x and y, and where that number came from.

    ``source`` is ``"metadata:<property key>"`` (e.g. ``"metadata:openslide.mpp-x"``),
    ``"tiff-resolution-tag"`` (TIFF XResolution/YResolution with a physical unit), or ``"override"``.
    """

    mpp_x: float
    mpp_y: float
    source: str

    @property
    def mpp(self) -> float:
        """Geometric mean of ``mpp_x`` and ``mpp_y`` in um/px (the one number used for scale)."""
        return math.sqrt(self.mpp_x * self.mpp_y)

    @property
    def is_anisotropic(self) -> bool:
        """True when x and y pixel sizes differ by more than ``ANISOTROPY_TOLERANCE`` (relative)."""
        return abs(self.mpp_x - self.mpp_y) > ANISOTROPY_TOLERANCE * min(self.mpp_x, self.mpp_y)


def as_positive(value: Any) -> float | None:
    """``value`` as a finite positive float, or None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def make_resolution(path: Path, mpp_x: Any, mpp_y: Any, source: str) -> Resolution | None:
    """Validated Resolution from raw um/px values, or None when absent, invalid or implausible."""
    x, y = as_positive(mpp_x), as_positive(mpp_y)
    if x is None and y is None:
        return None
    x, y = (x or y), (y or x)  # one axis declared: assume square pixels
    assert x is not None and y is not None
    res = Resolution(x, y, source)
    if _is_dpi_style(source) and res.mpp > MAX_PLAUSIBLE_TAG_MPP:
        logger.warning(
            "ignoring resolution %.4g um/px (%s) of %s: it looks like a screen/print DPI default, not a "
            "microscope; set the slide's um/px yourself (CLI: --slide-mpp; Python: slide_mpp=...)",
            res.mpp,
            source,
            path,
        )
        return None
    if res.is_anisotropic:
        logger.warning("slide %s has anisotropic pixels: mpp-x %.4g vs mpp-y %.4g um/px (%s)", path, x, y, source)
    return res


def _is_dpi_style(source: str) -> bool:
    return source in ("tiff-resolution-tag", "metadata:png.pHYs", "metadata:jfif.density")

