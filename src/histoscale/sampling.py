"""Where to look: P points on the slide, reproducible from a seed.

``tissue`` mode (default) draws points from the tissue mask, so that glass and pen marks do not waste model
time; ``uniform`` draws over the whole slide as the paper did. Points keep their draw order, which lets the
search stop early on a prefix of them without biasing the sample. Tissue points are stable under small changes of
the mask: the same slide written with another encoding, whose mask differs at a few edge pixels, is read at the
same points there, so the answer does not move with the encoding through the sample alone.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from histoscale.errors import ConfigError, ScaleSearchError

__all__ = ["SAMPLING_MODES", "SamplingMode", "sample_points"]

SamplingMode = Literal["tissue", "uniform"]
SAMPLING_MODES: tuple[str, ...] = ("tissue", "uniform")


class Mask(Protocol):
    """A coarse boolean mask: ``mask[j, i]`` covers level-0 px ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``, d =
    ``downsample`` (:class:`histoscale.slide.TissueMask` is one)."""

    @property
    def mask(self) -> np.ndarray: ...

    @property
    def downsample(self) -> float: ...


def _inside(coords: np.ndarray, side: int, margin: float) -> np.ndarray:
    return (coords >= margin) & (coords <= side - margin)


def sample_points(
    size_wh: tuple[int, int],
    n: int,
    *,
    seed: int = 0,
    mode: SamplingMode = "tissue",
    margin_px: float = 0.0,
    mask: Mask | None = None,
    where: str = "the slide",
) -> np.ndarray:
    """Draw ``n`` points, (n, 2) float64 level-0 (x, y), on a slide of ``size_wh`` level-0 px.

    ``tissue`` mode draws distinct pixels of ``mask`` (required) in an order fixed by the seed, each point jittered
    inside its pixel (pixels repeat only when the mask holds fewer than ``n``); ``uniform`` draws over the whole
    slide; ``where`` names the slide in messages.

    ``margin_px`` (level-0 px) keeps points that far from the border when the slide allows it, so that the widest
    patch sees tissue rather than padding; when no candidate is that far inside, the margin is dropped and
    reads are padded with white (logged by the caller through the returned coordinates, never an error).
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
    # Every mask pixel gets its own key (its place in the draw order) and jitter from the seed, drawn over the
    # whole grid: the points then depend on the mask only through which pixels it holds. A mask that differs at a
    # few edge pixels (the same slide re-encoded: JPEG noise moves the thumbnail's threshold) moves only the points
    # on those pixels; indexing a list of tissue pixels instead moved every point after the first difference.
    keys = rng.random(grid.shape)
    jitter = rng.random((*grid.shape, 2))
    # Mask pixels whose centre (level-0 px) keeps the margin, found per axis.
    xs = (np.arange(grid.shape[1]) + 0.5) * mask.downsample
    ys = (np.arange(grid.shape[0]) + 0.5) * mask.downsample
    inside = grid & _inside(ys, h, margin_px)[:, None] & _inside(xs, w, margin_px)[None, :]
    candidates = np.flatnonzero(inside if inside.any() else grid)
    # Key order is a uniform random permutation: any prefix is a uniform sample without replacement. Only the n
    # smallest keys are sorted (a whole-slide mask holds up to a million candidates).
    ck = keys.ravel()[candidates]
    first = np.argpartition(ck, n - 1)[:n] if n < len(ck) else np.arange(len(ck))
    drawn = np.resize(candidates[first[np.argsort(ck[first], kind="stable")]], n)
    offsets = jitter.reshape(-1, 2)[drawn]
    if n > len(candidates):  # fewer tissue pixels than points: the repeats get fresh jitter, not the same point
        offsets[len(candidates):] = rng.random((n - len(candidates), 2))
    rows, cols = np.divmod(drawn, grid.shape[1])
    # Jitter inside each mask pixel: the mask is coarse, the points should not sit on its grid.
    centres = (np.stack([cols, rows], axis=1) + 0.5) * mask.downsample
    return np.clip(centres + (offsets - 0.5) * mask.downsample, 0, [w - 1, h - 1])
