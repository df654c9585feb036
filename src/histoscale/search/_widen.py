"""Range widening: when the curves keep rising towards an edge of the grid, the answer may lie beyond it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from histoscale.aggregate import FALLING, RISING, PointAnswers
from histoscale.search._range import MIN_AUTO_DOWNSAMPLE

__all__ = ["edge_direction", "widen_grid"]


def edge_direction(winner: int, n_scales: int, answers: PointAnswers, min_share: float = 1 / 3) -> int:
    """+1 / -1 when the current winner sits on the coarse / fine edge of the grid AND at least ``min_share`` of
    the informative curves are monotone towards it; a lone edge winner from a few noisy points is no reason."""
    if winner < 0:
        return 0
    direction = 1 if winner == n_scales - 1 else -1 if winner == 0 else 0
    shapes = answers.shape[answers.informative]
    toward = np.mean(shapes == (RISING if direction > 0 else FALLING)) if len(shapes) else 0.0
    return direction if toward >= min_share else 0


def widen_grid(
    grid: np.ndarray, direction: int, to_downsamples: Callable[[np.ndarray], np.ndarray], out_px: int,
    size_wh: tuple[int, int], done: int, limit: int,
) -> np.ndarray | None:
    """Up to 2 new scales beyond the grid's edge in ``direction``, within what the slide allows; None if none.

    Coarser scales must still fit the slide (``out_px`` model px at their downsample); finer ones stop at
    :data:`MIN_AUTO_DOWNSAMPLE`; ``done`` widenings so far, at most ``limit`` new scales in all.
    """
    if direction == 0 or done * 2 >= limit:
        return None
    ratio = grid[1] / grid[0]
    if direction > 0:
        new = grid[-1] * ratio ** np.arange(1, 3)
        new = new[out_px * to_downsamples(new) <= max(size_wh)]
    else:
        new = grid[0] / ratio ** np.arange(2, 0, -1)
        new = new[to_downsamples(new) >= MIN_AUTO_DOWNSAMPLE]
    return new if len(new) else None
