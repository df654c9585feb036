"""Does a slide look like what the model was trained on? Feature statistics recorded at training time.

A margin search trusts the model's confidence; a model shown tissue it never saw (the phantom model on real H&E,
an H&E model on IHC or fluorescence) is confident anyway, somewhere, and the search then reports a precise,
wrong scale. The features Phi of the training patches are a record of what the model knows: their mean, their
``COMPONENTS`` principal directions with the variance along each, and the mean squared residual outside them
(:class:`FeatureStats`, stored in the model card under ``feature_stats``). A patch's distance from that record is
the Mahalanobis distance in the principal subspace plus the residual measured in units of its training mean,
divided by ``components + 1``: about 1 for training-like patches, whatever the width of Phi. A per-feature
(diagonal) version was tried first and does not separate real H&E from phantom tissue for the phantom model
(median 0.95 against a training 99th percentile of 1.41): what changes is how the features co-vary.

A slide is out of the model's domain (:func:`domain_check`) when the typical patch the search read at the scale
it chose lies farther than ``OUT_OF_DOMAIN_QUANTILE`` of the training patches: the median over points, so a few
odd fields (a fold, pen marks) do not decide it. The search then says so and no confident MISMATCH is asserted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoscale.errors import ConfigError

__all__ = ["COMPONENTS", "OUT_OF_DOMAIN_QUANTILE", "DomainCheck", "FeatureStats", "domain_check"]

# The training quantile of the patch distance above which the slide's median patch counts as unlike training.
OUT_OF_DOMAIN_QUANTILE = "q99"
_QUANTILES = {"q50": 0.5, "q90": 0.9, "q99": 0.99}
COMPONENTS = 32  # principal directions kept (32 x M numbers in the card)


@dataclass(frozen=True)
class FeatureStats:
    """A model's training features: ``mean`` (M,), principal ``components`` (K, M) with the ``variances`` (K,)
    along them, the mean squared ``residual`` outside them, and ``quantiles`` ({"q50", "q90", "q99"}) of the
    training patches' own :meth:`distance`."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual: float
    quantiles: Mapping[str, float]
    patches: int

    @classmethod
    def fit(cls, features: np.ndarray, components: int = COMPONENTS) -> FeatureStats:
        """From training features (N, M), N > ``components``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) <= components:
            raise ConfigError(f"feature statistics need features (N > {components}, M), got shape {x.shape}")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = min(components, vt.shape[0])
        variances = np.maximum(s[:k] ** 2 / (len(x) - 1), 1e-12)
        z = (x - mean) @ vt[:k].T
        residual = max(float(np.mean(np.sum((x - mean - z @ vt[:k]) ** 2, axis=1))), 1e-12)
        stats = cls(mean, vt[:k], variances, residual, {}, len(x))
        d = stats.distance(x)
        return cls(mean, vt[:k], variances, residual, {k_: float(np.quantile(d, q)) for k_, q in _QUANTILES.items()},
                   len(x))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) distance of each row of ``features`` (N, M) from the training features (about 1 in the domain)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ConfigError(f"features of shape {x.shape} do not match the statistics of {len(self.mean)} features")
        c = x - self.mean
        z = c @ self.components.T
        outside = np.sum((c - z @ self.components) ** 2, axis=1) / self.residual
        return (np.sum(z**2 / self.variances, axis=1) + outside) / (len(self.variances) + 1)

    def to_dict(self) -> dict[str, Any]:
        r = lambda a: [float(f"{v:.5g}") for v in np.ravel(a)]
        return {"mean": r(self.mean), "components": [r(c) for c in self.components], "variances": r(self.variances),
                "residual": float(f"{self.residual:.6g}"), "quantiles": dict(self.quantiles), "patches": self.patches}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureStats:
        """Raises ConfigError naming what is missing or inconsistent."""
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            components = np.asarray(data["components"], dtype=np.float64)
            variances = np.asarray(data["variances"], dtype=np.float64)
            residual = float(data["residual"])
            quantiles = {k: float(v) for k, v in dict(data["quantiles"]).items()}
            patches = int(data["patches"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"feature_stats needs mean, components, variances, residual, quantiles and patches "
                              f"({err})") from None
        if (mean.ndim != 1 or components.ndim != 2 or components.shape[1] != len(mean)
                or variances.shape != (len(components),) or not np.all(variances > 0) or not residual > 0):
            raise ConfigError("feature_stats: mean (M,), components (K, M), variances (K,) > 0 and residual > 0")
        if OUT_OF_DOMAIN_QUANTILE not in quantiles:
            raise ConfigError(f"feature_stats: quantiles lacks {OUT_OF_DOMAIN_QUANTILE!r}")
        return cls(mean, components, variances, residual, quantiles, patches)


@dataclass(frozen=True)
class DomainCheck:
    """How far the slide's patches lie from the model's training patches.

    ``distance``: median over points of the patch distance at the chosen scale; ``threshold``: the training
    patches' :data:`OUT_OF_DOMAIN_QUANTILE`; ``ratio`` = distance / threshold (> 1: out of domain);
    ``typical``: the training median, for scale.
    """

    distance: float
    threshold: float
    typical: float
    points: int

    @property
    def ratio(self) -> float:
        return self.distance / self.threshold

    @property
    def out_of_domain(self) -> bool:
        return self.ratio > 1.0

    def describe(self) -> str:
        if not self.out_of_domain:
            return (f"the slide's patches resemble the model's training patches (median distance {self.distance:.2f}, "
                    f"training median {self.typical:.2f})")
        return (f"the slide's patches lie far outside what the model was trained on (median feature distance "
                f"{self.distance:.2f}, {self.ratio:.1f}x the training patches' 99th percentile {self.threshold:.2f}): "
                "its margins need not peak at its training scale, so the answer is not to be trusted; use a model "
                "trained on this kind of tissue and stain")

    def to_dict(self) -> dict[str, Any]:
        return {"distance": round(self.distance, 4), "threshold": round(self.threshold, 4),
                "training_median": round(self.typical, 4), "ratio": round(self.ratio, 3), "points": self.points,
                "out_of_domain": self.out_of_domain}


def domain_check(stats: FeatureStats, features: np.ndarray) -> DomainCheck | None:
    """The slide's :class:`DomainCheck` from its points' features (P, M) at one scale; None without points.
    Rows with non-finite values (unread cells) are left out."""
    x = np.asarray(features, dtype=np.float64)
    x = x[np.all(np.isfinite(x), axis=1)] if x.ndim == 2 else x
    if x.ndim != 2 or not len(x):
        return None
    d = stats.distance(x)
    return DomainCheck(float(np.median(d)), float(stats.quantiles[OUT_OF_DOMAIN_QUANTILE]),
                       float(stats.quantiles.get("q50", np.nan)), len(x))
