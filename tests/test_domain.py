"""Training feature statistics (histoscale.domain): the distance is ~1 on training-like features and large on
features that co-vary differently, survives the card's JSON round trip, and bad statistics are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoscale import ConfigError
from histoscale.domain import FeatureStats, domain_check
from histoscale.models.card import card_from_dict, card_to_dict


def _features(rng: np.random.Generator, n: int, mixing: np.ndarray) -> np.ndarray:
    return rng.normal(size=(n, mixing.shape[0])) @ mixing + 3.0


def test_distance_is_about_one_in_domain_and_large_for_other_correlations() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 64))  # training features vary along 8 directions (plus a little noise)
    train = _features(rng, 2000, mixing) + rng.normal(scale=0.05, size=(2000, 64))
    stats = FeatureStats.fit(train)
    same = domain_check(stats, _features(rng, 200, mixing) + rng.normal(scale=0.05, size=(200, 64)))
    # every feature with its training mean and spread, but independent: a per-feature statistic would not see it
    other = rng.normal(size=(200, 64)) * train.std(0) + train.mean(0)
    assert 0.7 < same.distance < 1.3 and not same.out_of_domain
    assert domain_check(stats, other).ratio > 5
    assert stats.quantiles["q50"] < stats.quantiles["q90"] < stats.quantiles["q99"]


def test_unread_cells_are_left_out_and_no_points_give_none() -> None:
    rng = np.random.default_rng(1)
    mixing = np.eye(40)
    stats = FeatureStats.fit(_features(rng, 500, mixing))
    feats = _features(rng, 30, mixing)
    feats[:10] = np.nan
    assert domain_check(stats, feats).points == 20
    assert domain_check(stats, np.full((3, 40), np.nan)) is None


def test_round_trip_through_a_card_and_bad_statistics_are_named() -> None:
    rng = np.random.default_rng(2)
    stats = FeatureStats.fit(_features(rng, 300, np.eye(48)))
    card = card_from_dict({"format": "onnx", "file": "m.onnx", "feature_stats": stats.to_dict()}, None, where="card")
    again = card_from_dict(json.loads(json.dumps(card_to_dict(card))), None, where="card").feature_stats
    x = _features(rng, 5, np.eye(48))
    np.testing.assert_allclose(again.distance(x), stats.distance(x), rtol=1e-3)
    bad = dict(stats.to_dict(), variances=[0.0] * len(stats.variances))
    with pytest.raises(Exception, match="feature_stats"):
        card_from_dict({"format": "onnx", "file": "m.onnx", "feature_stats": bad}, None, where="card x")
    with pytest.raises(ConfigError, match="do not match"):
        stats.distance(np.zeros((2, 7)))
    with pytest.raises(ConfigError, match="need features"):
        FeatureStats.fit(np.zeros((10, 5)))
