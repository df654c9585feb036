"""Level-0 pixel size (um/px) and where it came from.

``Resolution`` is the value a slide ends up with (or what the caller overrides). The readers gather every
:class:`Candidate` the file carries (one parser per convention in :mod:`histoscale.slide._conventions`:
vendor keys, OME-XML, ImageJ, DICOM PixelSpacing, TIFF tags, JFIF, PNG pHYs) and :func:`resolve` picks one
by the documented precedence ``vendor > ome > imagej > dicom > tiff > jfif > png``, rejecting screen/print
DPI defaults (72/96/150/300/600 dpi, or coarser than 25 um/px). No accepted candidate means no resolution:
histoscale never guesses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoscale.slide._conventions import (
    ANISOTROPY_TOLERANCE,
    MAX_PLAUSIBLE_DENSITY_MPP,
    PRECEDENCE,
    Candidate,
    choose,
)

__all__ = [
    "ANISOTROPY_TOLERANCE",
    "MAX_PLAUSIBLE_TAG_MPP",
    "PRECEDENCE",
    "Candidate",
    "Resolution",
    "as_positive",
    "make_resolution",
    "resolve",
]

logger = logging.getLogger(__name__)

#: Resolutions read from generic DPI-style fields (TIFF tags, PNG pHYs, JFIF density) coarser than
#: this are dropped: 72/96/300 dpi defaults written by image tools give 85..350 um/px, which no
#: microscope produces (1000 dpi is 25.4 um/px).
MAX_PLAUSIBLE_TAG_MPP = MAX_PLAUSIBLE_DENSITY_MPP

_OVERRIDE_HINT = "set the slide's um/px yourself (CLI: --slide-mpp; Python: slide_mpp=...)"


@dataclass(frozen=True)
class Resolution:
    """Size of one level-0 pixel in micrometres along x and y, and where that number came from.

    ``source`` is ``"metadata:<where>"`` (e.g. ``"metadata:openslide.mpp-x"``, ``"metadata:aperio.MPP"``,
    ``"metadata:OME-XML PhysicalSizeX/Y (µm)"``, ``"metadata:ImageJ unit=micron + XResolution/YResolution"``,
    ``"metadata:jfif.density"``, ``"metadata:png.pHYs"``), ``"tiff-resolution-tag"`` (TIFF
    XResolution/YResolution with a physical unit), or ``"override"``. ``chosen`` is the candidate it was
    built from (None for an override); ``candidates`` lists every candidate the file carries, best first,
    rejected ones with their reason (not part of equality).
    """

    mpp_x: float
    mpp_y: float
    source: str
    chosen: Candidate | None = field(default=None, compare=False, repr=False)
    candidates: tuple[Candidate, ...] = field(default=(), compare=False, repr=False)

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


def _source(c: Candidate) -> str:
    """The stable ``Resolution.source`` string of a candidate."""
    if c.kind == "tiff":
        return "tiff-resolution-tag"
    if c.kind == "jfif":
        return "metadata:jfif.density"
    if c.kind == "png":
        return "metadata:png.pHYs"
    for prefix in ("openslide", "tiffslide"):
        if c.source.startswith(f"{prefix}.mpp-x"):
            return f"metadata:{prefix}.mpp-x"
    return f"metadata:{c.source}"


def resolve(path: Path, candidates: Iterable[Candidate]) -> tuple[Resolution | None, tuple[Candidate, ...]]:
    """Choose the level-0 resolution among ``candidates`` (see :func:`histoscale.slide._conventions.choose`).

    Returns ``(resolution or None, every candidate best first)``. Logs a warning naming the override
    (CLI and Python) when density values were rejected and nothing else was found, and when the chosen
    pixels are anisotropic.
    """
    chosen, ordered = choose(candidates)
    every = tuple(ordered)
    if chosen is None or chosen.mpp_x is None or chosen.mpp_y is None:
        for c in every:
            if not c.accepted and c.mpp is not None:
                logger.warning(
                    "ignoring resolution %s of %s: it looks like a screen/print DPI default or an implausible "
                    "value, not a microscope's; %s",
                    c,
                    path,
                    _OVERRIDE_HINT,
                )
        return None, every
    res = Resolution(chosen.mpp_x, chosen.mpp_y, _source(chosen), chosen, every)
    if res.is_anisotropic:
        logger.warning(
            "slide %s has anisotropic pixels: mpp-x %.4g vs mpp-y %.4g um/px (%s)",
            path,
            res.mpp_x,
            res.mpp_y,
            chosen.source,
        )
    return res, every


def make_resolution(path: Path, mpp_x: Any, mpp_y: Any, source: str) -> Resolution | None:
    """Validated Resolution from raw um/px values, or None when absent, invalid or implausible.

    ``source`` ``"tiff-resolution-tag"``, ``"metadata:png.pHYs"`` and ``"metadata:jfif.density"`` get the
    density checks (editor-default DPI, coarser than ``MAX_PLAUSIBLE_TAG_MPP``).
    """
    from histoscale.slide._conventions import _make

    kind = {"tiff-resolution-tag": "tiff", "metadata:png.pHYs": "png", "metadata:jfif.density": "jfif"}.get(
        source, "vendor"
    )
    cand = _make(source.removeprefix("metadata:"), kind, mpp_x, mpp_y)
    if cand is None:
        return None
    res, _ = resolve(path, [cand])
    return None if res is None else Resolution(res.mpp_x, res.mpp_y, source, cand, (cand,))
