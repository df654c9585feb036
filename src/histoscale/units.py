"""Scales and their units: the one place that parses scale lists and turns a scale into a level-0 downsample.

A *scale* is either um/px (``"um/px"``, absolute: needs the slide's resolution) or level-0 px per output px
(``"downsample"``, relative: needs nothing). "x20" is only a label: the paper's magnification presets are
converted here with x = 10 / um/px (x40 ~ 0.25 um/px), as scanners differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from histoscale.errors import ConfigError, ScaleSearchError

__all__ = [
    "MIN_DOWNSAMPLE",
    "PAPER_MAGNIFICATIONS",
    "STEPS_PER_OCTAVE",
    "Units",
    "check_upsampling",
    "grid_around",
    "parse_scales",
    "steps_between",
    "to_downsamples",
]

Units = Literal["um/px", "downsample"]

STEPS_PER_OCTAVE = 4  # grid ratio 2^(1/4) ~ 1.19, the paper's ~1.2
#: The paper's magnifications around a x40 base (Penkin et al. 2023, Sec. 4); "x" is a label: x = 10 / um/px.
PAPER_MAGNIFICATIONS = (10, 12, 14, 17, 20, 25, 30, 35, 43)
#: No scale asks for more than 4x upsampling of the slide's finest level: beyond it patches are blur.
MIN_DOWNSAMPLE = 0.25


def grid_around(center: float, half_width: int = 4) -> np.ndarray:
    """``2 * half_width + 1`` scales of ratio 2^(1/4) centred on ``center``, ascending."""
    return float(center) * 2.0 ** (np.arange(-half_width, half_width + 1) / STEPS_PER_OCTAVE)


def parse_scales(scales: str | Sequence[float], *, units: Units, min_count: int = 1) -> np.ndarray:
    """Candidate scales from ``"paper"``, a comma-separated string or a sequence, as float64, ascending.

    One rule set everywhere: the values must be finite, positive and strictly increasing (an unsorted or
    duplicated list is refused with the fix, never silently reordered), at least ``min_count`` of them.
    ``"paper"`` gives the paper's nine magnifications: um/px = 10 / x, or downsample = 40 / x.

    Raises:
        ConfigError: unreadable, non-positive, unsorted or duplicated values, or fewer than ``min_count``.
    """
    if isinstance(scales, str) and scales.strip().lower() == "paper":
        base = 10.0 if units == "um/px" else 40.0
        return np.array(sorted(base / m for m in PAPER_MAGNIFICATIONS))
    if isinstance(scales, str):
        try:
            values = [float(v) for v in scales.replace(" ", "").split(",") if v]
        except ValueError as err:
            raise ConfigError(f"cannot read scales {scales!r}: give comma-separated numbers or 'paper'") from err
    else:
        values = [float(v) for v in scales]
    grid = np.asarray(values, dtype=np.float64)
    if grid.size < min_count:
        count = {1: "one", 2: "two"}.get(min_count, str(min_count))
        raise ConfigError(f"need at least {count} candidate scale{'s' if min_count > 1 else ''}, got {values}")
    if not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ConfigError(f"scales must be positive numbers ({units}), got {values}")
    if np.any(np.diff(grid) <= 0):
        problem, fix = ("duplicate", "remove the duplicates") if len(set(values)) < len(values) else ("unsorted", "sort them")
        raise ConfigError(f"scales must be strictly increasing ({problem} values in {values}): {fix}")
    return grid


def to_downsamples(scales: np.ndarray, units: Units, level0_mpp: float | None) -> np.ndarray:
    """Level-0 px per output px for ``scales``: ``scales / level0_mpp`` in um/px, the scales themselves otherwise.

    ``level0_mpp`` is the slide's (isotropic) um/px; :meth:`histoscale.slide.Slide.level0_mpp` gives it and
    refuses anisotropic or missing resolutions with the fix.
    """
    values = np.asarray(scales, dtype=np.float64)
    if units == "downsample":
        return values.copy()
    if level0_mpp is None or not level0_mpp > 0:
        raise ConfigError(f"scales in um/px need the slide's um/px, got {level0_mpp!r}")
    return values / float(level0_mpp)


def check_upsampling(downsamples: np.ndarray, scales: np.ndarray, units: Units, where: str) -> None:
    """Refuse scales that ask for more than ``1 / MIN_DOWNSAMPLE`` x upsampling of the slide's finest level.

    Raises:
        ScaleSearchError: naming the finest scale, the slide and the fix.
    """
    i = int(np.argmin(downsamples))
    if downsamples[i] < MIN_DOWNSAMPLE:
        raise ScaleSearchError(
            f"the finest scale {scales[i]:.3g} {units} asks for {1 / downsamples[i]:.3g}x upsampling of {where} "
            f"(at most {1 / MIN_DOWNSAMPLE:g}x makes sense): choose coarser scales, or check the slide's um/px"
        )


def steps_between(a: float, b: float) -> float:
    """log2(a / b) in grid steps (quarter octaves)."""
    return math.log2(a / b) * STEPS_PER_OCTAVE
