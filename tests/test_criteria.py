"""Issue 27: scale criteria beyond the margin: the information over the points (``infomax``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from histoscale import find_scale, load_model
from histoscale.aggregate import analyse_curves, information_curve, vote
from histoscale.phantom import write_phantom


def test_information_is_high_only_where_points_are_confident_and_diverse():
    certain_a, certain_b, unsure = [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]
    probs = np.array([
        [certain_a, certain_a, unsure],  # point 0 at three scales
        [certain_a, certain_b, unsure],  # point 1
    ])
    # scale 0: confident but collapsed (both "a"); scale 1: confident and diverse; scale 2: unsure
    np.testing.assert_allclose(information_curve(probs), [0.0, math.log(2), 0.0], atol=1e-9)


def test_infomax_prefers_diverse_confidence_to_a_collapse_the_margin_rewards():
    # 40 points, two classes; at scale 2 every point is called "a" with a large margin (a collapse), at scale 1
    # half are "a" and half "b" with a moderate margin (where the model sees the tissue).
    p, log2s = 40, np.log2([0.5, 1.0, 2.0])
    probs = np.empty((p, 3, 2))
    probs[:, 0] = [0.55, 0.45]
    probs[: p // 2, 1], probs[p // 2 :, 1] = [0.9, 0.1], [0.1, 0.9]
    probs[:, 2] = [0.99, 0.01]
    logits = np.log(probs)
    margin = np.abs(logits[..., 0] - logits[..., 1])
    answers = analyse_curves(margin, log2s)
    assert vote(answers, log2s, curves=margin, method="pooled", n_boot=50).winner == 2
    got = vote(answers, log2s, curves=margin, method="infomax", probs=probs, n_boot=50)
    assert got.winner == 1 and got.confidence == 1.0


def test_infomax_bootstrap_is_the_resample_by_resample_definition():
    rng = np.random.default_rng(3)
    log2s = np.log2(np.geomspace(0.5, 4, 7))
    logits = rng.normal(size=(50, 7, 4)) * (1 + np.arange(7))[None, :, None] / 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    curves = np.sort(logits, axis=-1)[..., -1] - np.sort(logits, axis=-1)[..., -2]
    answers = analyse_curves(curves, log2s)
    got = vote(answers, log2s, curves=curves, method="infomax", probs=probs, n_boot=200, seed=4)
    kept = probs[answers.informative]
    draws = np.random.default_rng(4)
    winners = [int(np.argmax(information_curve(kept[draws.integers(0, len(kept), len(kept))]))) for _ in range(200)]
    assert got.winner == int(np.argmax(information_curve(kept)))
    assert got.confidence == np.mean(np.array(winners) == got.winner)


def test_a_scale_a_point_lacks_is_judged_on_the_points_that_have_it():
    probs = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [np.nan, np.nan]]])
    np.testing.assert_allclose(information_curve(probs), [math.log(2), 0.0], atol=1e-9)
    assert information_curve(np.full((2, 1, 2), np.nan))[0] == -np.inf


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("infomax") / "p.tiff", mpp=0.25, size_px_wh=(3072, 3072), seed=11,
                         fmt="bare").slide_path


def test_infomax_search_end_to_end_records_the_curve_it_maximised(phantom, tmp_path):
    from histoscale.reports import write_search_report

    model = load_model("phantom")
    result = find_scale(phantom, model, points=40, seed=0, aggregation="infomax", ruler=False)
    assert abs(math.log2(0.5 / result.estimate / 0.25)) <= 0.25  # within one step of the truth
    assert not result.focus  # the focus needs per-point curves (pooled): every point reads every fine scale
    assert result.chosen_index == int(np.argmax(result.slide_curve))
    doc = json.loads(result.to_json())
    assert doc["aggregation"] == "infomax" and len(doc["slide_curve"]) == len(result.scales)
    files = write_search_report(result, tmp_path / "report")
    assert files["curves.png"].stat().st_size > 0 and files["report.html"].is_file()


def test_cli_accepts_infomax(phantom, tmp_path, capsys):
    from histoscale.cli import main

    code = main(["search", str(phantom), "--model", "phantom", "--points", "16", "--aggregation", "infomax",
                 "--no-ruler", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["aggregation"] == "infomax"


# ------------------------------------------------------------------------------------------------ bn-stats
def _bn_cnn(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=None), nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24, momentum=None), nn.ReLU(),
        nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32, momentum=None), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )


@pytest.fixture(scope="module")
def bn_model():
    """A small BatchNorm CNN whose running statistics were gathered in train mode on random patches."""
    import torch

    net = _bn_cnn(0)
    net.train()
    with torch.no_grad():
        net(torch.rand(32, 3, 64, 64))
    net.eval()
    return load_model(net, input_size=64, mean=(0, 0, 0), std=(1, 1, 1), mpp=0.5, class_names=list("ABCD"))


@pytest.mark.parametrize("truth", [0.25, 1.0])
def test_bn_stats_pools_the_moments_over_points_and_answers_within_reach(truth, tmp_path):
    # The bundled phantom model (SmallCNN, BatchNorm statistics of its training at 0.5 um/px); measured on the
    # held-out phantoms (bench/real_models/criteria.py) the pooled drift is within one step on 70% of slides.
    path = write_phantom(tmp_path / "p.tiff", mpp=truth, size_px_wh=(3072, 3072), seed=11, fmt="bare").slide_path
    model = load_model("phantom")
    result = find_scale(path, model, points=24, seed=0, scorer="bn-stats", ruler=False)
    implied = 0.5 / result.estimate
    assert abs(math.log2(implied / truth)) <= 0.5, implied  # within two steps
    assert result.scorer == "bn-stats" and result.class_scores.shape[-1] == len(model.class_names)
    assert result.chosen_index == int(np.argmax(result.slide_curve))


def test_bn_stats_moments_come_from_the_same_pass_and_phi_is_unchanged(bn_model):
    from histoscale.scoring import BatchNormStatistics, batchnorm_drift

    x = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    both = bn_model.features_with_moments(x)
    stats = BatchNormStatistics(*bn_model.batchnorm_statistics())
    m, k = bn_model.num_features, len(stats.running_mean)
    assert both.shape == (5, m + 2 * k) and k == 16 + 24 + 32
    np.testing.assert_allclose(both[:, :m], bn_model.features(x), rtol=1e-5, atol=1e-6)
    drift = batchnorm_drift(both[:, m:], stats)
    assert drift.shape == (5,) and (drift > 0).all()
    # the statistics the layers stored are matched exactly by moments equal to them: no drift
    exact = np.concatenate([stats.running_mean, stats.running_var + stats.running_mean**2])
    assert batchnorm_drift(exact, stats) == pytest.approx(0, abs=1e-9)


def test_bn_stats_drift_grows_as_the_moments_move_away():
    from histoscale.scoring import BatchNormStatistics, batchnorm_drift

    stats = BatchNormStatistics(np.array([0.0, 1.0, 2.0]), np.array([1.0, 4.0, 1.0]), np.array([0, 0, 1]))
    mean, var = np.array([0.5, 1.0, 2.0]), np.array([1.0, 4.0, 4.0])
    got = batchnorm_drift(np.concatenate([mean, var + mean**2]), stats)
    # layer 0: channel 0 mean off by 0.5 (0.25), channel 1 exact -> 0.125; layer 1: sd 2 against 1 -> 1.0
    assert got == pytest.approx((0.125 + 1.0) / 2)


def test_bn_stats_on_a_model_without_batchnorm_statistics_says_why(bn_model, tmp_path, phantom):
    import torch

    from histoscale import ConfigError
    from histoscale.models.torch_adapter import export_onnx

    onnx_model = load_model(export_onnx(bn_model.module, tmp_path / "bn.onnx", 64))
    assert not onnx_model.has_batchnorm
    with pytest.raises(ConfigError, match="from torch modules only"):
        find_scale(phantom, onnx_model, points=8, scorer="bn-stats")
    no_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="from torch modules only"):
        find_scale(phantom, load_model(no_bn, input_size=32), points=8, scorer="bn-stats")


# ------------------------------------------------------------------------------------------- feature-stats
@pytest.mark.parametrize("truth", [0.3, 0.8])
def test_feature_stats_finds_where_the_patches_look_like_the_training_patches(truth, tmp_path):
    # The phantom model's card records its training features (at 0.5 um/px); held-out phantoms
    # (bench/real_models/criteria.py): within one step on all 20, uncalibrated. On this phantom, at 32 points, it
    # reads 0.5-1.25 steps fine (24 seeds at 0.3 um/px: mean 0.8 step).
    path = write_phantom(tmp_path / "p.tiff", mpp=truth, size_px_wh=(3072, 3072), seed=12, fmt="bare").slide_path
    result = find_scale(path, load_model("phantom"), points=32, seed=1, scorer="feature-stats", ruler=False)
    assert abs(math.log2(0.5 / result.estimate / truth)) <= 0.375  # within 1.5 steps
    assert not (result.curves > 0).any()  # minus a distance (NaN where the focus did not read)


def test_feature_stats_without_recorded_statistics_says_how_to_get_them(bn_model, phantom):
    from histoscale import ConfigError

    with pytest.raises(ConfigError, match="feature_stats.*--scorer margin"):
        find_scale(phantom, bn_model, points=8, scorer="feature-stats")


# ----------------------------------------------------------------------------------------------- stability
def test_stability_is_the_agreement_between_a_patch_and_its_transpose():
    from histoscale.scoring import score_points

    W, b = np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    same = np.array([[[8.0, 0.0, 0.0, 8.0, 0.0, 0.0]]])  # the transpose changes nothing
    flipped = np.array([[[8.0, 0.0, 0.0, 0.0, 8.0, 0.0]]])  # it changes the answer
    assert score_points(same, W, b, "stability").curve[0, 0] == pytest.approx(1.0)
    assert score_points(flipped, W, b, "stability").curve[0, 0] < 0.05


def test_stability_search_runs_the_model_on_each_patch_and_its_transpose(phantom):
    model = load_model("phantom")
    fixed = {"points": 16, "seed": 0, "ruler": False, "early_stop": False, "widen": False,
             "scales": (0.71, 1.0, 1.41, 2.0), "relative": True}
    result = find_scale(phantom, model, scorer="stability", **fixed)  # the same reads, whatever the curves say
    plain = find_scale(phantom, model, **fixed)
    assert result.patches_scored == plain.patches_scored  # counted per patch read; the model ran twice on each
    curves = result.curves[~np.isnan(result.curves)]
    assert ((curves >= 0) & (curves <= 1 + 1e-6)).all()
    assert result.class_scores.shape == plain.class_scores.shape


def test_each_model_says_which_scorers_apply(bn_model):
    assert {"bn-stats", "feature-stats"} <= set(load_model("phantom").scorers)  # torch + BatchNorm, card statistics
    onnx = load_model("reference-he")
    assert "feature-stats" in onnx.scorers and "bn-stats" not in onnx.scorers  # BatchNorm folded in the ONNX file
    assert "bn-stats" in bn_model.scorers and "feature-stats" not in bn_model.scorers
    assert onnx.describe()["scorers"] == list(onnx.scorers)


def test_combinations_that_would_be_silently_ignored_are_refused(tmp_path, capsys):
    from histoscale import ConfigError, SearchConfig
    from histoscale.cli import main

    with pytest.raises(ConfigError, match="no 'infomax' aggregation"):
        SearchConfig(scorer="bn-stats", aggregation="infomax")
    with pytest.raises(ConfigError, match="no 'vote' aggregation"):
        SearchConfig(scorer="bn-stats", aggregation="vote")
    with pytest.raises(ConfigError, match="twice for nothing"):
        SearchConfig(scorer="stability", aggregation="infomax")
    code = main(["search", str(tmp_path / "any.svs"), "--paper", "--scorer", "bn-stats"])
    assert code != 0 and "--paper fixes the scorer and the aggregation" in capsys.readouterr().err


def test_infomax_answers_alike_from_a_torch_model_and_its_onnx_export(bn_model, phantom, tmp_path):
    # infomax needs only the logits, which an ONNX export keeps (BatchNorm folded or not): same patches, same answer
    from histoscale.models.torch_adapter import export_onnx

    onnx_model = load_model(export_onnx(bn_model.module, tmp_path / "bn.onnx", 64), input_size=64, mean=(0, 0, 0),
                            std=(1, 1, 1), mpp=0.5, class_names=list("ABCD"))
    kwargs = dict(points=16, seed=0, aggregation="infomax", ruler=False, early_stop=False)
    a, b = find_scale(phantom, bn_model, **kwargs), find_scale(phantom, onnx_model, **kwargs)
    np.testing.assert_allclose(a.slide_curve, b.slide_curve, rtol=1e-3, atol=1e-4)
    assert a.chosen_index == b.chosen_index and a.estimate == pytest.approx(b.estimate, rel=1e-3)
