"""Scores: how strongly the classifier "recognises" each patch, per scale.

For one point the model gives a feature matrix X (N scales x M features). A scorer turns it into

* a class matrix D (N x C): one number per scale and class (a hyperplane distance, a logit, a probability), and
* a curve r (N,): one number per scale; the scale search takes its argmax.

All functions broadcast over leading axes, so a whole batch of points (P, N, M) is scored at once.

Segmentation models (features (P, N, G, M): a feature map averaged over G cells, see
:mod:`histoscale.models.contract`) are scored cell by cell with the same scorer, then pooled over cells: the
point's curve is the **mean of the per-cell curves over its tissue cells**, cells whose top class (largest logit)
is the model's ``background`` class being left out, and the class matrix is the mean over the same cells. Why:

* per cell, not on the patch's mean logits: a patch half epithelium, half stroma would have a small margin of its
  mean logits even where every cell is decided, which favours the finest scales (most homogeneous patches); the
  mean of per-cell margins measures how decided the model is about each part of what it sees;
* mean, not max: one confident cell is noise, the mean follows the whole field of view;
* background left out: a model is usually most certain about empty glass, and a coarser field of view holds more
  of it, so counting it makes the curve rise towards coarse scales for a reason that says nothing about tissue.
  Without a named background every cell counts. A scale at which none of a point's cells is tissue takes the
  point's lowest pooled value (no evidence for that scale) and the class matrix of all its cells; a point without
  tissue at any scale is flat.

Sigmoid (multi-label) heads and softmax heads alike: the scorers work on the logits, before any activation; the
``margin`` (top-1 minus top-2 logit distance) is then how decisively one channel wins, for both.

Scorers
-------
``paper``       D = X W / ||w_c||, bias ignored, r = max_c D    (Penkin et al. 2023, Algorithm 1, exactly)
``distance``    D = (X W + b) / ||w_c||, r = max_c D            (signed distance to each class hyperplane)
``margin``      D as ``distance``, r = top-1 minus top-2 of D   (how far the winner is ahead; bias-aware)
``softmax``     D = softmax(X W + b), r = max_c D               (max softmax probability baseline)
``entropy``     D = softmax(X W + b), r = -H(D)                 (negative entropy baseline)
``activation``  the 2022 predecessor on Phi's channels: r[i] = how many informative channels peak at scale i
``bn-stats``    D as ``distance``, r = minus the BatchNorm drift (:func:`batchnorm_drift`): how far the network's
                inner activations lie from the statistics it stored in training. The features carry each patch's
                BatchNorm input moments after Phi (``SplitModel.features_with_moments``); r is the patch's own
                drift, while the slide's answer pools the moments over the points first, as BatchNorm does over a
                batch (the search does it). Torch classifiers with BatchNorm layers.
``stability``   D as ``distance``, r = the Bhattacharyya agreement sum_c sqrt(p_c q_c) between the class
                probabilities of the patch (p) and of its transpose (q, a flip composed with a 90-degree rotation):
                where the model sees structure its answer should not depend on the patch's orientation. The
                features carry Phi of the transposed patch after Phi (two model calls per patch).
``feature-stats`` D as ``distance``, r = minus the distance of Phi from the training features recorded in the
                model card (:class:`histoscale.domain.FeatureStats`): the scale at which the slide's patches look most
                like the patches the model was trained on. Models whose card records ``feature_stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from histoscale.errors import ConfigError

__all__ = [
    "PER_SCALE_SCORERS", "SCORERS", "BatchNormStatistics", "batchnorm_drift", "Scorer", "CurveScores", "score_points",
    "hyperplane_distances", "softmax",
]

Scorer = Literal[
    "paper", "distance", "margin", "softmax", "entropy", "activation", "bn-stats", "feature-stats", "stability"
]
SCORERS: tuple[str, ...] = (
    "paper", "distance", "margin", "softmax", "entropy", "activation", "bn-stats", "feature-stats", "stability",
)
#: Scorers whose value at a scale depends on that scale's patch alone, so a scale left unread (NaN features) leaves
#: the others' scores as they are (``activation`` compares a channel across scales).
PER_SCALE_SCORERS: tuple[str, ...] = (
    "paper", "distance", "margin", "softmax", "entropy", "bn-stats", "feature-stats", "stability",
)


@dataclass(frozen=True)
class BatchNormStatistics:
    """What a network stored in its BatchNorm layers for the K channels compared: ``running_mean``,
    ``running_var`` and the ``layer`` index of each (K,), layer after layer."""

    running_mean: np.ndarray
    running_var: np.ndarray
    layer: np.ndarray


def batchnorm_drift(moments: np.ndarray, stats: BatchNormStatistics) -> np.ndarray:
    """How far BatchNorm input moments (..., 2K) (the mean over positions of x, then of x^2, per channel; of one
    patch, or pooled over the points of a slide) lie from the stored statistics: (...,).

    Per channel, mean m and variance v = E[x^2] - m^2 against the stored mu, sigma^2: the squared 2-Wasserstein
    distance between Gaussians in units of the stored variance, ((m - mu)^2 + (sqrt(v) - sigma)^2) / sigma^2 (finite
    for constant channels, unlike a KL divergence); averaged over a layer's channels, then over layers, so that a
    deep network weighs no more than a shallow one. The signal of DeepInversion (Yin et al. 2020) and of BatchNorm
    test-time adaptation: at the scale the network was trained at its activations should have the recorded
    statistics.
    """
    moments = np.asarray(moments, dtype=np.float64)
    k = len(stats.running_mean)
    m = moments[..., :k]
    v = np.maximum(moments[..., k:] - m**2, 0.0)
    var = np.maximum(np.asarray(stats.running_var, dtype=np.float64), 1e-5)
    per_channel = ((m - stats.running_mean) ** 2 + (np.sqrt(v) - np.sqrt(var)) ** 2) / var
    layer = np.asarray(stats.layer)
    starts = np.flatnonzero(np.r_[True, layer[1:] != layer[:-1]])
    per_layer = np.add.reduceat(per_channel, starts, axis=-1) / np.diff(np.r_[starts, k])
    return per_layer.mean(axis=-1)


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


def score_points(
    features: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    scorer: str = "margin",
    *,
    background: int | None = None,
    feature_stats: Any = None,
    batchnorm: BatchNormStatistics | None = None,
) -> CurveScores:
    """Score features of shape (P, N, M) (P points, N scales, M features) with the named scorer.

    Features (P, N, G, M) of a segmentation model are scored per cell and pooled over the cells that are not
    ``background`` (a class index; see the module docstring); the result has the same shapes, (P, N, C), (P, N).
    ``feature-stats`` needs ``feature_stats`` (the model's :class:`~histoscale.domain.FeatureStats`);
    ``bn-stats`` needs ``batchnorm`` and features (P, N, M + 2K) that end with the patches' moments;
    ``stability`` features (P, N, 2M) (or (P, N, G, 2M)): Phi of each patch, then of its transpose.

    Raises:
        ConfigError: an unknown scorer, or one whose statistics are not given.
    """
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}: choose one of {', '.join(SCORERS)}")
    features = np.asarray(features, dtype=np.float32)
    if scorer == "bn-stats":
        if batchnorm is None or features.ndim != 3:
            raise ConfigError("scorer 'bn-stats' needs a classifier's BatchNorm statistics (batchnorm=...)")
        m = W.shape[0]
        return CurveScores(hyperplane_distances(features[..., :m], W, b), -batchnorm_drift(features[..., m:], batchnorm))
    if scorer == "stability":
        m = W.shape[0]
        plain, turned = features[..., :m], features[..., m:]
        if turned.shape[-1] != m:
            raise ConfigError("scorer 'stability' needs the features of each patch and of its transpose, side by side")
        p = score_points(plain, W, b, "softmax", background=background).matrix
        q = score_points(turned, W, b, "softmax", background=background).matrix
        return CurveScores(score_points(plain, W, b, "distance", background=background).matrix,
                           np.sqrt(p * q).sum(axis=-1))
    if scorer == "feature-stats":
        if feature_stats is None:
            raise ConfigError("scorer 'feature-stats' needs the training feature statistics the model card records "
                              "(feature_stats=...)")
        scored = score_points(features, W, b, "distance", background=background)
        phi = features if features.ndim == 3 else features.mean(axis=2)  # a segmenter's: its cells' mean, as recorded
        distance = feature_stats.distance(phi.reshape(-1, phi.shape[-1])).reshape(phi.shape[:2])
        return CurveScores(scored.matrix, -distance.astype(np.float32))
    if features.ndim == 4:
        return _pool_over_cells(features, W, b, scorer, background)
    return _score(features, W, b, scorer)


def _pool_over_cells(features: np.ndarray, W: np.ndarray, b: np.ndarray, scorer: str, background: int | None) -> CurveScores:
    """Per-cell scores of (P, N, G, M) features, averaged over each point's tissue cells: (P, N, C), (P, N)."""
    cells = _score(features.transpose(0, 2, 1, 3), W, b, scorer)  # scales next to last, as _score expects
    matrix, curve = cells.matrix.transpose(0, 2, 1, 3), cells.curve.transpose(0, 2, 1)  # (P, N, G, C), (P, N, G)
    if background is None:
        return CurveScores(matrix.mean(axis=2), curve.mean(axis=2))
    tissue = ((features @ W + b).argmax(axis=-1) != background).astype(np.float32)  # (P, N, G)
    count = tissue.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (curve * tissue).sum(axis=2) / count
        pooled_matrix = (matrix * tissue[..., None]).sum(axis=2) / count[..., None]
    unread = np.isnan(curve).all(axis=2)  # a scale the search did not read at this point stays NaN
    empty = (count == 0) & ~unread
    floor = np.where(empty | unread, np.inf, pooled).min(axis=1, keepdims=True)  # the point's lowest tissue value
    pooled = np.where(empty, np.where(np.isfinite(floor), floor, 0.0), pooled)
    pooled_matrix = np.where(empty[..., None], matrix.mean(axis=2), pooled_matrix)  # all background: say so
    pooled, pooled_matrix = np.where(unread, np.nan, pooled), np.where(unread[..., None], np.nan, pooled_matrix)
    return CurveScores(pooled_matrix.astype(np.float32), pooled.astype(np.float32))


def _score(features: np.ndarray, W: np.ndarray, b: np.ndarray, scorer: str) -> CurveScores:
    """:func:`score_points` on (..., N, M) features, scales on the next-to-last axis."""
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
