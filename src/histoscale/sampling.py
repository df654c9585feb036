"""Where to look: P points on the slide, reproducible from a seed.

``tissue`` mode (default) draws points from the tissue mask, so that glass and pen marks do not waste model
time, and where the tissue fills the field of view around them; ``uniform`` draws over the whole slide as the paper
did. Points keep their draw order, which lets the
search stop early on a prefix of them without biasing the sample.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

import numpy as np

from histoscale.errors import ConfigError, ScaleSearchError

__all__ = ["MIN_FIELD_TISSUE", "SAMPLING_MODES", "SamplingMode", "field_tissue", "sample_points"]

logger = logging.getLogger(__name__)

SamplingMode = Literal["tissue", "uniform"]
SAMPLING_MODES: tuple[str, ...] = ("tissue", "uniform")


class Mask(Protocol):
    """A coarse boolean mask: ``mask[j, i]`` covers level-0 px ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``, d =
    ``downsample`` (:class:`histoscale.slide.TissueMask` is one)."""

    @property
    def mask(self) -> np.ndarray: ...

    @property
    def downsample(self) -> float: ...


# Glass in a patch lowers the model's margin, the more the coarser the patch: on a small biopsy, where half the points
# lie within 50 um of glass, that moved the margins' peak finer and the implied um/px up to 1.5 steps coarse. Points
# drawn where 90% of the field of view is tissue: 94% of small-biopsy searches within one step (79% before).
#: Share of the field of view (``field_px``) that must be tissue where a point is drawn, when the mask has such places.
MIN_FIELD_TISSUE = 0.9


def field_tissue(grid: np.ndarray, side: int) -> np.ndarray:
    """Share of tissue (0..1) in the ``side`` x ``side`` square (mask px) centred on each px of the boolean mask
    ``grid``; same shape as ``grid``, float64. The mask is mirrored beyond its edge: the slide's border is the
    margin's business, not glass."""
    side = max(1, int(side)) | 1  # odd: the square is centred on its px
    r = side // 2
    padded = np.pad(grid.astype(np.float64), r, mode="symmetric")
    integral = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = grid.shape
    total = (integral[side:side + h, side:side + w] - integral[:h, side:side + w] - integral[side:side + h, :w]
             + integral[:h, :w])
    return total / (side * side)


def _inside(coords: np.ndarray, side: int, margin: float) -> np.ndarray:
    return (coords >= margin) & (coords <= side - margin)


def sample_points(
    size_wh: tuple[int, int],
    n: int,
    *,
    seed: int = 0,
    mode: SamplingMode = "tissue",
    margin_px: float = 0.0,
    field_px: float = 0.0,
    mask: Mask | None = None,
    where: str = "the slide",
) -> np.ndarray:
    """Draw ``n`` points, (n, 2) float64 level-0 (x, y), on a slide of ``size_wh`` level-0 px.

    ``tissue`` mode draws from ``mask`` (required), ``uniform`` over the whole slide; ``where`` names the slide
    in messages.

    ``margin_px`` (level-0 px) keeps points that far from the border when the slide allows it, so that the widest
    patch sees tissue rather than padding; when no candidate is that far inside, the margin is dropped and
    reads are padded with white (logged by the caller through the returned coordinates, never an error).

    ``field_px`` (level-0 px, ``tissue`` mode): the side of the field of view whose tissue counts; points are drawn
    where at least :data:`MIN_FIELD_TISSUE` of that square around them is tissue, so that a small fragment's points
    do not see glass at coarse scales. Where no tissue qualifies (needle cores, fragments narrower than the field)
    points are drawn over all the tissue, and a log line says so.

    Raises:
        ConfigError: ``n`` < 1, an unknown ``mode``, or ``tissue`` mode without ``mask``.
        ScaleSearchError: the mask holds no tissue.
    """
    if n < 1:
        raise ConfigError(f"the number of points must be at least 1 (got {n})")
    rng = np.random.default_rng(seed)
    w, h = size_wh
    if mode == "uniform":
        lo = np.array([min(margin_px, w / 2), min(margin_px, h / 2)])
        hi = np.array([w, h]) - lo
        return lo + rng.random((n, 2)) * (hi - lo)
    if mode != "tissue":
        raise ConfigError(f"unknown sampling mode {mode!r}: use 'tissue' or 'uniform'")
    if mask is None:
        raise ConfigError("tissue sampling needs the slide's tissue mask (mask=histoscale.tissue_mask(slide))")
    grid = np.asarray(mask.mask, dtype=bool)
    if not grid.any():
        raise ScaleSearchError(
            f"no tissue found in {where}: the slide looks empty at thumbnail resolution; "
            "check the file, or sample the whole slide with --sampling uniform"
        )
    # Mask pixels whose centre (level-0 px) keeps the margin, found per axis: only the drawn ones get coordinates.
    xs = (np.arange(grid.shape[1]) + 0.5) * mask.downsample
    ys = (np.arange(grid.shape[0]) + 0.5) * mask.downsample
    inside = grid & _inside(ys, h, margin_px)[:, None] & _inside(xs, w, margin_px)[None, :]
    inside = inside if inside.any() else grid
    if field_px > mask.downsample:
        whole = inside & (field_tissue(grid, round(field_px / mask.downsample)) >= MIN_FIELD_TISSUE)
        if whole.any():
            inside = whole
        else:
            logger.info(
                "%s: no tissue fills %.0f%% of a %.0f px field of view; points are drawn over all the tissue, "
                "near glass", where, 100 * MIN_FIELD_TISSUE, field_px,
            )
    candidates = np.flatnonzero(inside)  # row-major, as np.nonzero
    rows, cols = np.divmod(candidates[rng.integers(0, len(candidates), n)], grid.shape[1])
    # Jitter inside each mask pixel: the mask is coarse, the points should not sit on its grid.
    centres = (np.stack([cols, rows], axis=1) + 0.5) * mask.downsample
    jitter = (rng.random((n, 2)) - 0.5) * mask.downsample
    return np.clip(centres + jitter, 0, [w - 1, h - 1])
