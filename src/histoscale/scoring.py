"""Scores: how strongly the classifier "recognises" each patch, per scale.

For one point the model gives a feature matrix X (N scales x M features). A scorer turns it into

* a class matrix D (N x C): one number per scale and class (a hyperplane distance, a logit, a probability), and
* a curve r (N,): one number per scale; the scale search takes its argmax.

All functions broadcast over leading axes, so a whole batch of points (P, N, M) is scored at once.

Scorers
-------
``paper``       D = X W / ||w_c||, bias ignored, r = max_c D    (Penkin et al. 2023, Algorithm 1, exactly)
``distance``    D = (X W + b) / ||w_c||, r = max_c D            (signed distance to each class hyperplane)
``margin``      D as ``distance``, r = top-1 minus top-2 of D   (how far the winner is ahead; bias-aware)
``softmax``     D = softmax(X W + b), r = max_c D               (max softmax probability baseline)
``entropy``     D = softmax(X W + b), r = -H(D)                 (negative entropy baseline)
``activation``  the 2022 predecessor on Phi's channels: r[i] = how many informative channels peak at scale i
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from histoscale.errors import ConfigError

__all__ = ["SCORERS", "Scorer", "CurveScores", "score_points", "hyperplane_distances", "softmax"]

Scorer = Literal["paper", "distance", "margin", "softmax", "entropy", "activation"]
SCORERS: tuple[str, ...] = ("paper", "distance", "margin", "softmax", "entropy", "activation")


@dataclass(frozen=True)
class CurveScores:
    """Scores of P points over N scales: ``matrix`` (P, N, C) per class, ``curve`` (P, N) per scale."""

    matrix: np.ndarray
    curve: np.ndarray


def hyperplane_distances(features: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Projection of features (..., M) on the unit normals of the C class hyperplanes: (..., C).

    With ``b`` it is the signed Euclidean distance to each hyperplane ``x.w_c + b_c = 0``; with ``b=None`` it is the
    paper's bias-free projection ``x.w_c / ||w_c||``.
    """
    norms = np.linalg.norm(W, axis=0)
    logits = features @ W
    if b is not None:
        logits = logits + b
    return logits / np.where(norms > 0, norms, 1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax along the last axis (class scores -> probabilities), shifted for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _activation_peaks(features: np.ndarray, rel_tol: float = 1e-3) -> np.ndarray:
    """The 2022 method: per channel, keep only interior extrema over scales; count channels peaking at each scale.

    Constant channels (range below ``rel_tol`` of the feature scale) and strictly monotone channels carry no
    information about the scale and are dropped, as in the predecessor paper. Features: (..., N, M) -> (..., N).
    """
    n = features.shape[-2]
    peak = np.argmax(features, axis=-2)  # (..., M)
    spread = features.max(axis=-2) - features.min(axis=-2)
    level = np.abs(features).mean(axis=(-2, -1), keepdims=True)[..., 0, :]
    informative = (spread > rel_tol * np.maximum(level, 1e-12)) & (peak > 0) & (peak < n - 1)
    one_hot = (peak[..., None, :] == np.arange(n)[:, None]) & informative[..., None, :]
    return one_hot.sum(axis=-1).astype(np.float32)


def score_points(features: np.ndarray, W: np.ndarray, b: np.ndarray, scorer: str = "margin") -> CurveScores:
    """Score features of shape (P, N, M) (P points, N scales, M features) with the named scorer."""
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}: choose one of {', '.join(SCORERS)}")
    features = np.asarray(features, dtype=np.float32)
    if scorer == "paper":
        matrix = hyperplane_distances(features, W, None)
        return CurveScores(matrix, matrix.max(axis=-1))
    if scorer in ("distance", "margin"):
        matrix = hyperplane_distances(features, W, b)
        if scorer == "distance":
            return CurveScores(matrix, matrix.max(axis=-1))
        top2 = np.sort(matrix, axis=-1)[..., -2:]
        return CurveScores(matrix, top2[..., 1] - top2[..., 0])
    if scorer in ("softmax", "entropy"):
        probs = softmax(features @ W + b)
        if scorer == "softmax":
            return CurveScores(probs, probs.max(axis=-1))
        return CurveScores(probs, (probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1))
    matrix = hyperplane_distances(features, W, b)
    return CurveScores(matrix, _activation_peaks(features))
