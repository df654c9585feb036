"""Scorers and the per-point/per-slide aggregation, on hand-computed examples."""

import numpy as np
import pytest

from histoscale.aggregate import (
    Vote,
    analyse_curves,
    is_settled,
    monotone_direction,
    pooled_curve,
    rival_peaks,
    scan_peak,
    vote,
    vote_is_decided,
)
from histoscale.errors import ConfigError
from histoscale.scoring import SCORERS, hyperplane_distances, score_points

# Two classes in a 2-D feature space: w_0 = (3, 4) (norm 5), w_1 = (0, 2) (norm 2); b = (1, -1).
W = np.array([[3.0, 0.0], [4.0, 2.0]], dtype=np.float32)
B = np.array([1.0, -1.0], dtype=np.float32)
# One point seen at three scales.
X = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]], dtype=np.float32)


def test_paper_scorer_matches_hand_computation():
    # X W = [[3, 0], [7, 2], [4, 2]]; divided by the norms (5, 2): [[0.6, 0], [1.4, 1], [0.8, 1]].
    scores = score_points(X, W, B, "paper")
    np.testing.assert_allclose(scores.matrix[0], [[0.6, 0.0], [1.4, 1.0], [0.8, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(scores.curve[0], [0.6, 1.4, 1.0], rtol=1e-6)
    assert int(np.argmax(scores.curve[0])) == 1


def test_bias_aware_distance_and_margin():
    # (X W + b) / norms = [[4/5, -1/2], [8/5, 1/2], [5/5, 1/2]]
    expected = np.array([[0.8, -0.5], [1.6, 0.5], [1.0, 0.5]])
    np.testing.assert_allclose(score_points(X, W, B, "distance").matrix[0], expected, rtol=1e-6)
    np.testing.assert_allclose(score_points(X, W, B, "distance").curve[0], [0.8, 1.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(score_points(X, W, B, "margin").curve[0], [1.3, 1.1, 0.5], rtol=1e-6)


def test_distance_is_euclidean_distance_to_hyperplane():
    rng = np.random.default_rng(0)
    w, b, x = rng.normal(size=(5, 3)), rng.normal(size=3), rng.normal(size=5)
    d = hyperplane_distances(x, w, b)
    for c in range(3):
        foot = x - d[c] * w[:, c] / np.linalg.norm(w[:, c])  # projection onto the hyperplane
        assert abs(foot @ w[:, c] + b[c]) < 1e-9


def test_probability_scorers():
    logits = X[0] @ W + B
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(score_points(X, W, B, "softmax").curve[0], p.max(1), rtol=1e-5)
    np.testing.assert_allclose(score_points(X, W, B, "entropy").curve[0], (p * np.log(p)).sum(1), rtol=1e-5)


def test_activation_scorer_counts_interior_peaks_only():
    # Channel 0 peaks at scale 1 (interior), channel 1 rises monotonically (dropped), channel 2 is constant.
    feats = np.array([[[0.0, 5.0, 1.0], [3.0, 6.0, 1.0], [1.0, 7.0, 1.0]]])  # (1 point, 3 scales, 3 channels)
    curve = score_points(feats, np.ones((3, 2)), np.zeros(2), "activation").curve[0]
    np.testing.assert_array_equal(curve, [0, 1, 0])


def test_all_scorers_broadcast_over_points():
    from histoscale.domain import FeatureStats
    from histoscale.scoring import BatchNormStatistics

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(4, 6, 5)).astype(np.float32)
    stats = FeatureStats.fit(rng.normal(size=(40, 5)), components=3)
    bn = BatchNormStatistics(np.zeros(2), np.ones(2), np.array([0, 1]))
    moments = np.concatenate([feats, rng.normal(size=(4, 6, 2)), rng.random((4, 6, 2)) + 1], axis=-1)
    given = {"bn-stats": moments, "stability": np.concatenate([feats, feats[:, ::-1]], axis=-1)}
    for name in SCORERS:
        s = score_points(given.get(name, feats), rng.normal(size=(5, 3)), rng.normal(size=3), name,
                         feature_stats=stats, batchnorm=bn)
        assert s.curve.shape == (4, 6) and s.matrix.shape == (4, 6, 3)
    for name, needs in (("bn-stats", "batchnorm="), ("feature-stats", "feature_stats=")):
        with pytest.raises(ConfigError, match=needs):
            score_points(feats, rng.normal(size=(5, 3)), rng.normal(size=3), name)


def test_unknown_scorer_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown scorer 'best'"):
        score_points(X, W, B, "best")


def test_curve_shapes_and_subgrid_estimate():
    log2s = np.log2(0.5 * 2 ** (np.arange(-2, 3) / 4))
    peak_at = log2s[2] + 0.1  # a parabola in log-scale peaking between grid values
    curves = np.array([
        -((log2s - peak_at) ** 2),  # interior peak
        np.arange(5.0),  # rising to the coarse edge
        -np.arange(5.0),  # falling to the fine edge
        np.full(5, 3.0) + 1e-12 * np.arange(5),  # flat
    ])
    answers = analyse_curves(curves, log2s)
    assert answers.shape.tolist() == ["peak", "rising", "falling", "flat"]
    assert answers.informative.tolist() == [True, True, True, False]
    assert answers.log2_estimate[0] == pytest.approx(peak_at, abs=1e-9)
    assert answers.best_index.tolist()[:3] == [2, 4, 0]


def test_vote_winner_estimate_interval_and_confidence():
    log2s = np.arange(5) / 4.0
    curves = np.zeros((20, 5))
    curves[np.arange(20), [2] * 14 + [1] * 3 + [3] * 3] = 1.0  # 14 votes for scale 2
    answers = analyse_curves(curves, log2s)
    v = vote(answers, log2s, n_boot=200, seed=0)
    assert v.winner == 2 and v.counts.tolist() == [0, 3, 14, 3, 0]
    assert v.log2_interval[0] <= v.log2_estimate <= v.log2_interval[1]
    assert v.confidence > 0.95 and v.n_informative == 20


def test_vote_with_no_informative_point():
    answers = analyse_curves(np.ones((3, 4)), np.arange(4.0))
    assert vote(answers, np.arange(4.0)).winner == -1


def test_vote_is_decided_and_monotone_direction():
    assert vote_is_decided(np.array([10, 3, 0]), remaining=6)
    assert not vote_is_decided(np.array([10, 3, 0]), remaining=7)
    curves = np.tile(np.arange(5.0), (10, 1))
    assert monotone_direction(analyse_curves(curves, np.arange(5.0))) == 1
    assert monotone_direction(analyse_curves(-curves, np.arange(5.0))) == -1


def test_pooled_aggregation_finds_a_broad_peak_the_hard_vote_splits():
    # 30 noisy curves around a broad peak at index 4 of 9: single argmaxes scatter, their pooled mean does not.
    rng = np.random.default_rng(0)
    log2s = np.arange(9) / 4.0
    curves = -((np.arange(9) - 4.0) ** 2) / 16 + rng.normal(scale=0.4, size=(30, 9))
    answers = analyse_curves(curves, log2s)
    pooled = vote(answers, log2s, curves=curves, method="pooled", n_boot=200)
    assert pooled.winner == 4
    assert pooled.log2_interval[0] <= pooled.log2_estimate <= pooled.log2_interval[1]
    assert abs(pooled.log2_estimate - log2s[4]) < 0.25
    hard = vote(answers, log2s, method="vote", n_boot=200)
    assert hard.counts.max() < 15  # the hard vote is split
    assert pooled.confidence > hard.confidence


def test_rival_peaks_need_height_distance_and_a_dip():
    log2 = np.arange(9) / 2.0  # half-octave scan
    one = np.array([0, 1, 3, 5, 3, 1, 0, -1, -2], float)
    assert rival_peaks(one, log2).size == 0
    two = np.array([0, 1, 3, 5, 3, 1, 2, 4, 1], float)  # second peak at index 7, 2 octaves away, 4/5 of the height
    assert rival_peaks(two, log2).tolist() == [7]
    low = np.array([0, 1, 3, 5, 3, 1, 1.5, 2, 1], float)  # too low: below 60% of the height above the floor
    assert rival_peaks(low, log2).size == 0
    near = np.array([0, 5, 3, 4.5, 0, 0, 0, 0, 0], float)  # one octave apart counts; half an octave does not
    assert rival_peaks(near, log2).tolist() == [3]
    assert rival_peaks(near, log2, min_octaves=1.5).size == 0


@pytest.mark.parametrize("standardise", [False, True])
def test_pooled_bootstrap_is_the_resample_by_resample_definition(standardise):
    # The pooled vote draws every resample at once; it must give what resampling the points one resample after
    # another gives: same draws (seeded), same pooled curve per resample, same winners and parabola estimates.
    from histoscale.aggregate import standardised_curves

    rng = np.random.default_rng(5)
    log2s = np.log2(np.geomspace(0.5, 8, 11))
    curves = -((np.arange(11) - 6.0) ** 2) / 30 + rng.normal(scale=0.5, size=(70, 11))
    curves[:4] = 0.0  # flat: not informative
    answers = analyse_curves(curves, log2s)
    got = vote(answers, log2s, curves=curves, method="pooled", standardise=standardise, n_boot=300, seed=9)

    informative = curves[answers.informative]
    draws = np.random.default_rng(9)
    winners, estimates = [], []
    for _ in range(300):
        resample = informative[draws.integers(0, len(informative), len(informative))]
        pooled = (standardised_curves(resample) if standardise else resample).mean(axis=0)
        w = int(np.argmax(pooled))
        estimate = log2s[w]
        if 0 < w < 10:
            x, y = log2s[w - 1 : w + 2], pooled[w - 1 : w + 2]
            a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / (
                (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2]))
            bcoef = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / (
                (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2]))
            if a < 0:
                estimate = float(np.clip(-bcoef / (2 * a), x[0], x[2]))
        winners.append(w)
        estimates.append(estimate)
    assert got.confidence == np.mean(np.array(winners) == got.winner)
    np.testing.assert_allclose(got.log2_interval, np.percentile(estimates, [2.5, 97.5]), rtol=0, atol=1e-12)


def test_pooled_mean_weighs_near_flat_noisy_curves_little():
    # 10 points see the scale clearly (a margin peak of height 2 at index 6); 40 barely change over the grid and
    # carry only noise. The mean of the scores keeps the clear points' peak; standardising each curve first gives
    # every noisy curve the weight of a clear one (and a point's weight would depend on where the grid lies).
    rng = np.random.default_rng(3)
    log2s = np.log2(np.geomspace(0.5, 8, 9))
    clear = 2.0 * np.exp(-((np.arange(9) - 6.0) ** 2) / 2) + rng.normal(scale=0.05, size=(10, 9))
    noisy = 1.0 + rng.normal(scale=0.05, size=(40, 9)) + 0.02 * np.arange(9)[::-1]  # a slight lean to the fine end
    curves = np.vstack([clear, noisy])
    answers = analyse_curves(curves, log2s, flat_tol=0.0)
    assert vote(answers, log2s, curves=curves, method="pooled").winner == 6
    assert int(np.argmax(pooled_curve(curves))) == 6
    assert int(np.argmax(pooled_curve(curves, standardise=True))) != 6


def test_pooled_search_settles_on_agreement_or_on_a_narrow_enough_interval() -> None:
    counts = np.array([1, 5, 3])

    def interim(confidence: float, interval: tuple[float, float], n: int = 40) -> Vote:
        return Vote(counts, 1, 0.0, interval, confidence, n)

    assert not is_settled(interim(0.99, (-0.1, 0.1), n=20), "pooled", 60, min_points=32)  # too few points
    assert is_settled(interim(0.96, (-0.4, 0.4)), "pooled", 60, min_points=32)
    assert not is_settled(interim(0.7, (-0.2, 0.2)), "pooled", 60, min_points=32)  # no width given: agreement only
    assert is_settled(interim(0.7, (-0.12, 0.12)), "pooled", 60, min_points=32, enough_width=0.25)
    assert not is_settled(interim(0.7, (-0.2, 0.2)), "pooled", 60, min_points=32, enough_width=0.25)


def test_scan_peak_prefers_an_interior_maximum_to_a_rise_at_the_edge() -> None:
    log2 = np.log2(np.geomspace(0.5, 5.0, 8))
    # phantom 9015's scan (16 points): the 2x-upsampling edge a little above the true, interior peak
    curve = np.array([0.57, 0.4, -0.49, -0.32, 0.52, 0.32, -0.3, -0.69])
    centre, rivals = scan_peak(curve, log2, 0, float(log2[0]))
    assert log2[3] < centre < log2[5] and rivals.tolist() == [0]
    # an interior winner stays, its rivals reported
    interior_first = np.array([0.45, 0.4, -0.49, -0.32, 0.62, 0.32, -0.3, -0.69])
    centre, rivals = scan_peak(interior_first, log2, 4, 0.123)
    assert centre == 0.123 and rivals.tolist() == [0]
    # a rise to the edge with nothing inside rivalling it stays at the edge
    rising = np.array([0.9, 0.5, 0.2, 0.0, -0.2, -0.4, -0.6, -0.8])
    assert scan_peak(rising, log2, 0, float(log2[0])) == (float(log2[0]), pytest.approx(np.zeros(0)))


def test_pooled_curve_compares_scales_read_on_fewer_points_through_the_shared_ones():
    # 40 points with a peak at index 4 of 9; the first 16 read everywhere, the last 24 only at indices 3..5 (the
    # default search's focus). The last points happen to sit higher (their tissue): a plain per-scale mean would
    # rank the shared scales above the outer ones for that reason alone. Through the shared scales it does not,
    # and with every cell read the answer is the one of the complete curves.
    rng = np.random.default_rng(1)
    log2s = np.arange(9) / 4.0
    shape = -((np.arange(9) - 4.0) ** 2) / 8
    level = np.r_[np.zeros(16), np.full(24, 5.0)]
    full = shape + level[:, None] + rng.normal(scale=0.05, size=(40, 9))
    focused = full.copy()
    focused[16:, [0, 1, 2, 6, 7, 8]] = np.nan
    pooled = pooled_curve(focused)
    np.testing.assert_allclose(pooled - pooled[4], shape - shape[4], atol=0.1)
    answers = analyse_curves(focused, log2s)
    assert answers.informative.all()  # judged flat or not over the scales every point has
    assert answers.best_index.tolist() == np.nanargmax(focused, axis=1).tolist()
    got = vote(answers, log2s, curves=focused, method="pooled", n_boot=200)
    ref = vote(analyse_curves(full, log2s), log2s, curves=full, method="pooled", n_boot=200)
    assert got.winner == ref.winner == 4
    assert abs(got.log2_estimate - ref.log2_estimate) < 0.05
    assert np.isfinite(got.log2_interval).all() and got.winner_span[0] >= 3 and got.winner_span[1] <= 5


def test_vote_reports_the_span_of_the_bootstrap_winners():
    rng = np.random.default_rng(2)
    log2s = np.arange(9) / 4.0
    sharp = -((np.arange(9) - 4.0) ** 2) + rng.normal(scale=0.05, size=(30, 9))
    broad = -((np.arange(9) - 4.0) ** 2) / 40 + rng.normal(scale=0.3, size=(30, 9))
    for method in ("pooled", "vote"):
        assert vote(analyse_curves(sharp, log2s), log2s, curves=sharp, method=method).winner_span == (4, 4)
        lo, hi = vote(analyse_curves(broad, log2s), log2s, curves=broad, method=method).winner_span
        assert lo < 4 < hi
    assert vote(analyse_curves(np.zeros((5, 9)), log2s), log2s).winner_span == (-1, -1)
