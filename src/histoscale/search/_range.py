"""The default search's range and grids, in level-0 downsample: placed by the slide and the model, never by the
slide's declared um/px (a check must not trust what it checks).

The range runs from the finest scale worth reading (at most 2x upsampling) to the coarsest at which the model's
field of view still fits on the slide, capped, when the model's training um/px is known, where the slide's level 0
would have to be finer than any brightfield scanner gives. A sparse scan over it (half-octave steps) finds the
region of the answer; a fine grid (quarter-octave steps) around the scan's peak gives the answer. Both lie on one
lattice anchored at the slide's own pixels (downsample 2^(k/2) for the scan, 2^(k/4) for the fine grid): the scan's
patches at the fine grid's scales are the fine stage's too (no point is read twice at one scale), and downsamples 1,
2, 4 are read from pyramid levels without resampling.
"""

from __future__ import annotations

import math

import numpy as np

from histoscale.errors import ScaleSearchError
from histoscale.units import STEPS_PER_OCTAVE

__all__ = [
    "FINEST_PLAUSIBLE_MPP", "FINE_HALF_WIDTH", "MAX_DOWNSAMPLE_UNKNOWN_MODEL", "MIN_AUTO_DOWNSAMPLE", "SCAN_STEPS_PER_OCTAVE",
    "FINE_INNER", "FOCUS_GUARD", "FOCUS_MIN_DROP", "fine_grid", "focus_window", "plausible_range", "scan_grid",
]

# Upsampled patches are blur, far from any training data, where margins can grow without meaning: with 4x allowed,
# the bundled model's scan peaked at 4x upsampling on a held-out phantom scanned at its own scale (+7.9 steps). A
# slide scanned more than 2x coarser than the model's scale needs explicit --scales (up to 4x).
MIN_AUTO_DOWNSAMPLE = 0.5
#: Level-0 um/px finer than this is not a brightfield slide (x80-x100 scanners give ~0.1-0.12 um/px).
FINEST_PLAUSIBLE_MPP = 0.1
#: Without the model's training um/px nothing bounds the coarse end physically: 5 octaves above 2x upsampling.
MAX_DOWNSAMPLE_UNKNOWN_MODEL = 16.0
SCAN_STEPS_PER_OCTAVE = 2
# The fine grid: +-4 quarter-octave steps (9 scales) around the scan's refined peak. 5 scales answered as well on
# phantoms with 40% fewer patches, but real models' margin curves are broad and noisy: one octave around a scan peak
# from 16 points may miss their maximum, and both times it was measured (standardised curves, then the plain mean)
# real models followed a shrink of the image less well (Capricorn on CMU-1: slope 0.97 -> 0.48, 0.99 -> 0.52;
# BENCHMARKS.md, "Real models on real tissue").
FINE_HALF_WIDTH = 4
# Scales the focus keeps beyond the lowest and highest winner of the bootstrap resamples: the parabola's neighbour.
# The resamples' spread already says how far more points may move the winner: on 40 development phantoms a second
# guard scale changed no answer and cost 15% more patches (441 against 383 per slide).
FOCUS_GUARD = 1
# Fine scales each side of the scan's peak that the scan's points are read at before the focus decides whether
# they need the outer ones: on phantoms the answer's window is usually decided from these alone.
FINE_INNER = 2
# A narrower focus restarts the reads ahead of the model: worth it for two scales or more.
FOCUS_MIN_DROP = 2


def plausible_range(model_mpp: float | None, input_px: int, size_wh: tuple[int, int], where: str) -> tuple[float, float]:
    """(finest, coarsest) level-0 downsample worth searching for a model with ``input_px`` inputs.

    Raises:
        ScaleSearchError: the slide is too small for even one octave of search.
    """
    fit = min(size_wh) / float(input_px)
    cap = model_mpp / FINEST_PLAUSIBLE_MPP if model_mpp else MAX_DOWNSAMPLE_UNKNOWN_MODEL
    lo, hi = MIN_AUTO_DOWNSAMPLE, min(fit, cap)
    if hi < 2 * lo:
        raise ScaleSearchError(
            f"{where} is {size_wh[0]}x{size_wh[1]} px: the model's {input_px} px field of view fits only up to "
            f"downsample {fit:.2g}, too little room to search for the scale; give explicit scales (--scales / "
            "scales=...) or a larger image"
        )
    return lo, hi


def _lattice(lo: float, hi: float, steps_per_octave: int) -> tuple[int, int]:
    """Indices k of the first and last downsample 2^(k / steps_per_octave) within [lo, hi]."""
    eps = 1e-9  # lo = 0.5 is itself on the lattice
    return (math.ceil(math.log2(lo) * steps_per_octave - eps), math.floor(math.log2(hi) * steps_per_octave + eps))


def scan_grid(lo: float, hi: float) -> np.ndarray:
    """The half-octave downsamples 2^(k/2) within [lo, hi] (the last at most half an octave below ``hi``; the fine
    grid reaches up to ``hi``)."""
    first, last = _lattice(lo, hi, SCAN_STEPS_PER_OCTAVE)
    return 2.0 ** (np.arange(first, last + 1) / SCAN_STEPS_PER_OCTAVE)


def fine_grid(center: float, lo: float, hi: float, half_width: int = FINE_HALF_WIDTH) -> np.ndarray:
    """``2 * half_width + 1`` quarter-octave downsamples 2^(k/4) centred on the one nearest ``center``, shifted to
    lie within [lo, hi] where the range allows (a peak at the range's edge keeps its neighbours on the inside)."""
    first, last = _lattice(lo, hi, STEPS_PER_OCTAVE)
    start = round(math.log2(center) * STEPS_PER_OCTAVE) - half_width
    start = min(max(start, first), max(first, last - 2 * half_width))
    return 2.0 ** ((start + np.arange(2 * half_width + 1)) / STEPS_PER_OCTAVE)


def focus_window(
    winner_span: tuple[int, int], n_scales: int, reading: np.ndarray | None = None, *, guard: int = FOCUS_GUARD,
    min_drop: int = FOCUS_MIN_DROP,
) -> np.ndarray | None:
    """The indices of a fine grid of ``n_scales`` that later points need: from the lowest to the highest winner any
    bootstrap resample chose (``winner_span``), ``guard`` more each side. A focus only ever narrows (points already
    read cannot cheaply gain scales): None when there is no winner, the window is not inside the indices read now
    (``reading``, ascending; default all), or it would leave out fewer than ``min_drop`` of them."""
    reading = np.arange(n_scales) if reading is None else reading
    lo, hi = winner_span
    if lo < 0:
        return None
    first, last = max(0, lo - guard), min(n_scales - 1, hi + guard)
    if first < reading[0] or last > reading[-1] or last - first + 1 > len(reading) - min_drop:
        return None
    return np.arange(first, last + 1)
