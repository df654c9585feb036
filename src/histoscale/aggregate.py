"""From per-scale curves to answers: per point (argmax, curve shape, sub-grid estimate), then per slide (vote).

Scales enter as log2 values so that "one grid step" means the same ratio everywhere on a geometric grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PointAnswers", "Vote", "analyse_curves", "vote", "vote_is_decided", "monotone_direction"]

PEAK, RISING, FALLING, FLAT = "peak", "rising", "falling", "flat"


@dataclass(frozen=True)
class PointAnswers:
    """Per-point reading of P curves over N scales.

    ``best_index`` (P,) argmax scale index; ``shape`` (P,) one of ``peak`` (interior maximum: the range is right),
    ``rising`` (maximum at the coarsest scale: widen upwards), ``falling`` (maximum at the finest scale),
    ``flat`` (no preference: e.g. background); ``log2_estimate`` (P,) sub-grid log2 scale from a parabola through
    the peak and its neighbours (the grid value itself at the edges); ``informative`` (P,) False for flat curves.
    """

    best_index: np.ndarray
    shape: np.ndarray
    log2_estimate: np.ndarray
    informative: np.ndarray


@dataclass(frozen=True)
class Vote:
    """The slide's answer: vote ``counts`` (N,) over the grid, the ``winner`` index, a continuous ``log2_estimate``
    with a bootstrap 95% ``log2_interval``, and ``confidence`` (share of bootstrap resamples with the same winner)."""

    counts: np.ndarray
    winner: int
    log2_estimate: float
    log2_interval: tuple[float, float]
    confidence: float
    n_informative: int


def _parabola_vertex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertex abscissa of the parabola through three points per row; x, y: (P, 3). Falls back to x[:, 1]."""
    x0, x1, x2 = x.T
    y0, y1, y2 = y.T
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / np.where(denom == 0, 1.0, denom)
    bcoef = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / np.where(denom == 0, 1.0, denom)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = -bcoef / (2 * a)
    ok = (a < 0) & np.isfinite(vertex)
    return np.where(ok, np.clip(vertex, x0, x2), x1)


def analyse_curves(curves: np.ndarray, log2_scales: np.ndarray, *, flat_tol: float = 0.1) -> PointAnswers:
    """Read P curves (P, N) sampled at ``log2_scales`` (N,), ascending.

    A curve is flat when its range is below ``flat_tol`` times the median range of all curves of the slide: the
    distances' units depend on the model, so "flat" can only be judged against the slide's other points.
    """
    curves = np.asarray(curves, dtype=np.float64)
    log2_scales = np.asarray(log2_scales, dtype=np.float64)
    n = curves.shape[1]
    best = np.argmax(curves, axis=1)
    spread = curves.max(axis=1) - curves.min(axis=1)
    reference = np.median(spread) if len(spread) else 0.0
    flat = spread <= max(flat_tol * reference, 1e-9)
    shape = np.where(best == 0, FALLING, np.where(best == n - 1, RISING, PEAK)).astype(object)
    shape[flat] = FLAT
    estimate = log2_scales[best].copy()
    interior = (best > 0) & (best < n - 1)
    if interior.any() and n >= 3:
        idx = best[interior][:, None] + np.array([-1, 0, 1])
        rows = curves[interior][np.arange(interior.sum())[:, None], idx]
        estimate[interior] = _parabola_vertex(log2_scales[idx], rows)
    return PointAnswers(best, shape.astype(str), estimate, ~flat)


def _winner(counts: np.ndarray) -> int:
    """Argmax of the vote; ties go to the index whose neighbours hold more votes, then to the grid's middle."""
    smooth = np.convolve(counts, [1.0, 2.0, 1.0], mode="same")
    middle = (len(counts) - 1) / 2
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], -smooth[i], abs(i - middle)))
    return order[0]


def _estimate(log2_estimates: np.ndarray, best: np.ndarray, winner: int, step: float) -> float:
    """Continuous answer: median sub-grid estimate of the points voting within one step of the winner."""
    near = np.abs(best - winner) <= 1
    chosen = log2_estimates[near] if near.any() else log2_estimates
    return float(np.median(chosen)) if len(chosen) else float("nan")


def vote(
    answers: PointAnswers, log2_scales: np.ndarray, *, n_boot: int = 500, seed: int = 0
) -> Vote:
    """Majority vote of the informative points, a continuous estimate and its bootstrap interval."""
    log2_scales = np.asarray(log2_scales, dtype=np.float64)
    n = len(log2_scales)
    step = float(np.median(np.diff(log2_scales))) if n > 1 else 1.0
    best = answers.best_index[answers.informative]
    estimates = answers.log2_estimate[answers.informative]
    counts = np.bincount(best, minlength=n)
    if len(best) == 0:
        return Vote(counts, -1, float("nan"), (float("nan"), float("nan")), 0.0, 0)
    winner = _winner(counts)
    estimate = _estimate(estimates, best, winner, step)
    rng = np.random.default_rng(seed)
    boot_estimates = np.empty(n_boot)
    same = 0
    for k in range(n_boot):
        pick = rng.integers(0, len(best), len(best))
        w = _winner(np.bincount(best[pick], minlength=n))
        same += w == winner
        boot_estimates[k] = _estimate(estimates[pick], best[pick], w, step)
    lo, hi = np.percentile(boot_estimates, [2.5, 97.5])
    return Vote(counts, winner, estimate, (float(lo), float(hi)), same / n_boot, len(best))


def vote_is_decided(counts: np.ndarray, remaining: int) -> bool:
    """True when the leader cannot be caught even if every remaining point votes for the runner-up."""
    if remaining <= 0:
        return True
    top = np.sort(counts)[::-1]
    runner_up = top[1] if len(top) > 1 else 0
    return bool(top[0] - runner_up > remaining)


def monotone_direction(answers: PointAnswers, *, majority: float = 0.5) -> int:
    """+1 when most informative curves rise to the coarsest scale, -1 when most fall to the finest, else 0."""
    shapes = answers.shape[answers.informative]
    if len(shapes) == 0:
        return 0
    if np.mean(shapes == RISING) > majority:
        return 1
    if np.mean(shapes == FALLING) > majority:
        return -1
    return 0
