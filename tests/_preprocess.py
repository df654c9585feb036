"""Preprocess functions for the model tests, importable by name as a model card's ``"preprocess"`` would be."""

from __future__ import annotations

import numpy as np


def optical_density(batch: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, S, S, 3) -> float32 (N, 2, S, S): mean optical density and a red-minus-blue density,
    the kind of stain-derived input some H&E models take instead of normalised RGB."""
    od = -np.log((batch.astype(np.float32) + 1.0) / 256.0)
    return np.stack([od.mean(axis=3), od[..., 0] - od[..., 2]], axis=1)


def scaled_density(batch: np.ndarray, gain: float) -> np.ndarray:
    """optical_density times a parameter, as a function bound to per-slide values (functools.partial) is."""
    return gain * optical_density(batch)


def wrong_shape(batch: np.ndarray) -> np.ndarray:
    return np.zeros((len(batch), 2, 7, 7), np.float32)
