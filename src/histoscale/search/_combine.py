"""Two independent readings of a slide's um/px, the model's and the nuclei's, weighed into one.

Each reading is a value with a 95% interval in log2(um/px), possibly asymmetric (the ruler widens its coarse side
where nuclei are small) and possibly one-sided (a model whose answer is the grid's end says only that the slide is at
least that coarse, or at least that fine). Each is taken as a split normal (one sd below its value, another above,
from its interval's ends); a one-sided reading is flat past its edge. Their product, evaluated on a fine grid,
is the combined reading: its median and 2.5 / 97.5% quantiles. Where both are normal this is the inverse-variance
weighted mean of metrology (GUM, JCGM 100:2008, and its consistency test below).

The two readings are consistent when their difference lies within 1.96 sd of its own uncertainty (the sds of the
sides that face each other, in quadrature); a reading that is flat towards the other is always consistent with it.
Readings that are not have both uncertainties scaled by the Birge ratio (their distance in sd over 1.96: the scale
factor particle-data compilations apply to inconsistent measurements) before they are combined: the combined value
stays where the weights put it, so that it moves continuously as either reading moves (a switch to the model's
reading alone at the threshold made CMU-1 at 2x read 1.21 um/px as JPEG 90 beside 1.08 and 0.94 for its other
encodings, and the TCGA slide's four encodings 15.9 steps apart; 9.6 with the scaling), and its interval widens
until it reaches both readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959964  # the standard normal's two-sided 95% quantile
_MIN_SD = 0.02  # octaves: an interval narrower than this is not believed narrower
_GRID_STEP = 0.002  # octaves
_GRID_MARGIN = 6.0  # sds beyond the readings' outermost ends


@dataclass(frozen=True)
class Reading:
    """A reading in log2(um/px): ``value`` and its 95% interval (``low``, ``high``); ``beyond``: ``"above"`` /
    ``"below"`` when the truth may lie anywhere past ``value`` on that side (the reading is a bound there)."""

    value: float
    low: float
    high: float
    beyond: str | None = None

    @classmethod
    def of_mpp(cls, mpp: float, interval: tuple[float, float], beyond: str | None = None) -> Reading:
        return cls(math.log2(mpp), math.log2(interval[0]), math.log2(interval[1]), beyond)

    def sd_below(self) -> float:
        return max((self.value - self.low) / Z95, _MIN_SD)

    def sd_above(self) -> float:
        return max((self.high - self.value) / Z95, _MIN_SD)

    def widened(self, factor: float) -> Reading:
        """The same reading with both sides of its interval ``factor`` times as long."""
        return Reading(self.value, self.value - factor * (self.value - self.low),
                       self.value + factor * (self.high - self.value), self.beyond)

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        below = x < self.value
        z = np.where(below, (x - self.value) / self.sd_below(), (x - self.value) / self.sd_above())
        if self.beyond == "above":
            z = np.where(below, z, 0.0)
        elif self.beyond == "below":
            z = np.where(below, 0.0, z)
        return -0.5 * z**2


@dataclass(frozen=True)
class Combined:
    """``mpp`` (um/px) and its 95% ``interval`` from both readings; ``z``: their difference in sds of its
    uncertainty (0 when one is flat towards the other); ``consistent``: ``z`` <= 1.96; ``birge``: the factor both
    readings' uncertainties were scaled by before they were combined (1 when consistent)."""

    mpp: float
    interval: tuple[float, float]
    z: float

    @property
    def consistent(self) -> bool:
        return self.z <= Z95

    @property
    def birge(self) -> float:
        return _birge(self.z)


def _birge(z: float) -> float:
    """The Birge ratio of two readings ``z`` sds apart: how much both understate their uncertainty (1 if not)."""
    return max(1.0, z / Z95)


def tension(a: Reading, b: Reading) -> float:
    """How far apart ``a`` and ``b`` lie, in sds of their difference (the sides that face each other)."""
    lower, upper = (a, b) if a.value <= b.value else (b, a)
    if lower.beyond == "above" or upper.beyond == "below":
        return 0.0
    return (upper.value - lower.value) / math.hypot(lower.sd_above(), upper.sd_below())


def combine(a: Reading, b: Reading) -> Combined:
    """The product of the two readings' likelihoods, each widened by the Birge ratio where they contradict each
    other: its median and central 95% (see the module's docstring)."""
    z = tension(a, b)
    if (birge := _birge(z)) > 1.0:
        a, b = a.widened(birge), b.widened(birge)
    sds = [a.sd_below(), a.sd_above(), b.sd_below(), b.sd_above()]
    span = _GRID_MARGIN * max(sds)
    x = np.arange(min(a.value, b.value) - span, max(a.value, b.value) + span, _GRID_STEP)
    log_p = a.log_likelihood(x) + b.log_likelihood(x)
    p = np.exp(log_p - log_p.max())
    cdf = np.cumsum(p) / p.sum()
    lo, median, hi = np.interp([0.025, 0.5, 0.975], cdf, x)
    return Combined(2.0 ** float(median), (2.0 ** float(lo), 2.0 ** float(hi)), z)
