"""Segmentation models (a 1x1-convolution head): the split reproduces the model's own per-pixel logits averaged per
cell, for torch, ONNX (a real ONNX Runtime session) and Keras; the search, classify and evaluate run on them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from histoscale import classify_slide, evaluate_scales, find_scale
from histoscale.errors import ModelError
from histoscale.models import SplitModel, load_card, load_model
from histoscale.models.contract import pool_cells
from histoscale.models.torch_adapter import export_onnx
from histoscale.phantom import CLASS_NAMES, write_phantom
from histoscale.scoring import SCORERS, score_points

SIZE = 32  # patch side; the nets below keep a 16 x 16 map, 2 x 2 px per cell of the 8 x 8 grid
RNG = np.random.default_rng(7)


def seg_net(classes: int = 5, activation: nn.Module | None = None) -> nn.Module:
    """Convolutions down to a 16 x 16 map of 6 features, then a 1x1 convolution to ``classes`` logits."""
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(6, classes, 1),
    ]
    return nn.Sequential(*layers, *([activation] if activation is not None else [])).eval()


class Upsampled(nn.Module):
    """A head whose logits are resized to the input size: the 1x1 convolution is not the last operation."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = seg_net()[:4], nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.head(self.body(x)), scale_factor=2.0, mode="bilinear")


def patches(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def cell_logits(net: nn.Module, x: np.ndarray, model: SplitModel) -> np.ndarray:
    """The net's own pre-activation logit map, averaged over 8 x 8 cells by reshaping: (N, 64, C)."""
    mean, std = np.asarray(model.preprocessing.mean), np.asarray(model.preprocessing.std)
    t = torch.from_numpy(((x / 255.0 - mean) / std).astype(np.float32)).permute(0, 3, 1, 2)
    body = net[:5]  # without the activation, if any
    with torch.no_grad():
        out = body(t).numpy()
    n, c, h, w = out.shape
    return out.reshape(n, c, 8, h // 8, 8, w // 8).mean(axis=(3, 5)).reshape(n, c, 64).transpose(0, 2, 1)


def assert_cells_reproduce(model: SplitModel, expected: np.ndarray, x: np.ndarray) -> None:
    feats = model.features(x)
    assert model.cells == 8 and feats.shape == (len(x), 64, model.num_features)
    scale = 1e-4 * (1 + np.abs(expected).max())
    np.testing.assert_allclose(feats @ model.W + model.b, expected, rtol=1e-4, atol=scale)
    np.testing.assert_allclose(model.forward_logits(x), expected, rtol=1e-4, atol=scale)
    np.testing.assert_allclose(model.patch_logits(x), expected.mean(axis=1), rtol=1e-4, atol=scale)


@pytest.mark.parametrize("activation", [None, nn.Sigmoid(), nn.Softmax(dim=1)], ids=["logits", "sigmoid", "softmax"])
def test_torch_split_reproduces_cell_logits(activation: nn.Module | None) -> None:
    net = seg_net(activation=activation)
    model = load_model(net, input_size=SIZE, device="cpu")
    x = patches(3)
    assert_cells_reproduce(model, cell_logits(net, x, model), x)


@pytest.mark.parametrize("activation", [None, nn.Sigmoid()], ids=["logits", "sigmoid"])
def test_onnx_split_reproduces_torch_cell_logits(tmp_path: Path, activation: nn.Module | None) -> None:
    net = seg_net(activation=activation)
    onnx_model = load_model(export_onnx(net, tmp_path / "seg.onnx", SIZE))
    x = patches(3)
    assert type(onnx_model).__name__ == "OnnxSplitModel"
    assert_cells_reproduce(onnx_model, cell_logits(net, x, onnx_model), x)


def test_card_names_the_onnx_head_and_the_background(tmp_path: Path) -> None:
    export_onnx(Upsampled(), tmp_path / "up.onnx", SIZE)  # a Resize follows the head: only naming it splits it
    card = tmp_path / "upsampled-model.json"  # not a name found beside up.onnx: the bare file has no card
    card.write_text(json.dumps({
        "format": "onnx", "file": "up.onnx", "head": "/head/Conv", "class_names": list(CLASS_NAMES),
        "background": "BG",
    }))
    model = load_model(card)
    assert model.cells == 8 and model.background == list(CLASS_NAMES).index("BG")
    assert load_card(card).background == "BG"
    with pytest.raises(ModelError, match="no final linear layer"):
        load_model(tmp_path / "up.onnx")


def test_bad_head_names_are_clear_errors(tmp_path: Path) -> None:
    net = seg_net()
    with pytest.raises(ModelError, match=r"no submodule 'nope'.*convolutions: \['0', '2', '4'\]"):
        load_model(net, input_size=SIZE, head="nope")
    with pytest.raises(ModelError, match=r"head '2' .* kernel \(3, 3\), stride \(2, 2\).*not a 1x1 convolution"):
        load_model(net, input_size=SIZE, head="2")
    with pytest.raises(ModelError, match="no node named 'nope'"):
        load_model(export_onnx(net, tmp_path / "seg.onnx", SIZE), head="nope")
    with pytest.raises(ModelError, match="background class 'glass' is not one of"):
        load_model(net, input_size=SIZE, class_names=CLASS_NAMES, background="glass")


def test_torch_head_followed_by_resizing_needs_naming() -> None:
    net = Upsampled().eval()
    with pytest.raises(ModelError, match="something follows it"):
        load_model(net, input_size=SIZE)
    model = load_model(net, input_size=SIZE, head="head")  # named: its own output is the logits
    x = patches(2)
    with torch.no_grad():
        own = net.head(net.body(torch.from_numpy(model.preprocessing.to_nchw(x)))).numpy()
    expected = pool_cells(own, 8)
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed (histoscale[keras])")
def test_keras_conv_head_with_sigmoid() -> None:
    from histoscale.models.keras_adapter import _import_keras

    keras = _import_keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="down")(h)
    net = keras.Model(inp, keras.layers.Conv2D(4, 1, activation="sigmoid", name="seg_head")(h))
    model = load_model(net)
    x = patches(3)
    mean, std = np.asarray(model.preprocessing.mean), np.asarray(model.preprocessing.std)
    prob = np.asarray(net.predict_on_batch(((x / 255.0 - mean) / std).astype(np.float32)), np.float64)
    own = np.log(prob / (1 - prob)).transpose(0, 3, 1, 2)  # the logits behind the sigmoid, NCHW
    assert_cells_reproduce(model, own.reshape(3, 4, 8, 2, 8, 2).mean(axis=(3, 5)).reshape(3, 4, 64).transpose(0, 2, 1), x)
    with pytest.raises(ModelError, match="no layer named 'nope'"):
        load_model(net, head="nope")
    with pytest.raises(ModelError, match="'down' is a Conv2D with kernel \\(3, 3\\)"):
        load_model(net, head="down")


def test_pool_cells_follows_adaptive_avg_pool() -> None:
    maps = RNG.normal(size=(2, 3, 13, 11)).astype(np.float32)
    expected = nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps), 4).flatten(2).transpose(1, 2).numpy()
    np.testing.assert_allclose(pool_cells(maps, 4), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool_cells(maps.transpose(0, 2, 3, 1), 4, channels_last=True), expected, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("scorer", [s for s in SCORERS if s != "bn-stats"])  # bn-stats: classifiers only
def test_one_cell_scores_as_a_classifier(scorer: str) -> None:
    from histoscale.domain import FeatureStats

    feats, W, b = RNG.normal(size=(4, 6, 5)), RNG.normal(size=(5, 3)), RNG.normal(size=3)
    if scorer == "stability":  # Phi of the patch, then of its transpose
        feats = np.concatenate([feats, RNG.normal(size=(4, 6, 5))], axis=-1)
    stats = FeatureStats.fit(RNG.normal(size=(40, 5)), components=3)
    flat = score_points(feats, W, b, scorer, feature_stats=stats)
    cells = score_points(feats[:, :, None, :], W, b, scorer, feature_stats=stats)
    np.testing.assert_allclose(cells.curve, flat.curve, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cells.matrix, flat.matrix, rtol=1e-5, atol=1e-6)


def test_cells_pool_to_the_mean_margin_over_tissue_cells() -> None:
    # Identity head, classes (tissue A, tissue B, background): logits are the features themselves.
    W, b = np.eye(3), np.zeros(3)
    cells = np.array([
        # point 0, scale 0: margins 2 (A) and 1 (B); scale 1: 3 (A) and a background cell (margin 5)
        [[[3.0, 1.0, 0.0], [0.0, 1.0, 0.0]], [[4.0, 1.0, 0.0], [0.0, 0.0, 5.0]]],
        # point 1: only background cells at scale 0, one tissue cell of margin 1 at scale 1
        [[[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], [[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]],
    ])
    every = score_points(cells, W, b, "margin")
    np.testing.assert_allclose(every.curve, [[1.5, 4.0], [2.5, 1.0]])
    tissue = score_points(cells, W, b, "margin", background=2)
    np.testing.assert_allclose(tissue.curve, [[1.5, 3.0], [1.0, 1.0]])  # all-background scale: the point's lowest
    np.testing.assert_allclose(tissue.matrix[0, 1], [4.0, 1.0, 0.0])  # class scores of the tissue cell only
    assert tissue.matrix[1, 0].argmax() == 2  # a scale without tissue says background


@pytest.mark.parametrize("background", [None, 0, 2])
def test_a_scale_not_read_stays_unscored(background) -> None:
    # The focus leaves some scales of later points unread (NaN features): they must stay NaN, whatever the
    # background class, and must not become a point's "lowest tissue value".
    W, b = np.eye(3), np.zeros(3)
    cells = np.array([[[[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], [[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                       [[np.nan] * 3, [np.nan] * 3]]])  # one point, three scales, the last not read
    scored = score_points(cells, W, b, "margin", background=background)
    read = score_points(cells[:, :2], W, b, "margin", background=background)
    assert np.isnan(scored.curve[0, 2]) and np.isnan(scored.matrix[0, 2]).all()
    np.testing.assert_allclose(scored.curve[:, :2], read.curve)
    np.testing.assert_allclose(scored.matrix[:, :2], read.matrix)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    return write_phantom(tmp_path_factory.mktemp("seg") / "ph.svs", mpp=0.5, size_px_wh=(2048, 2048), seed=3)


def test_search_classify_and_evaluate_run_on_a_segmentation_model(phantom) -> None:
    model = load_model(seg_net(), input_size=SIZE, class_names=CLASS_NAMES, background="BG", device="cpu")
    result = find_scale(phantom.slide_path, model, points=12, seed=0, widen=False, early_stop=False)
    n = len(result.scales)
    assert result.curves.shape == (12, n) and result.class_scores.shape == (12, n, len(CLASS_NAMES))
    assert np.isfinite(result.curves).all() and result.chosen_scale in result.scales
    cmap = classify_slide(phantom.slide_path, model, downsample=4.0)
    assert cmap.class_names == CLASS_NAMES and (cmap.class_index >= 0).any()
    acc = evaluate_scales(phantom.slide_path, model, None, scales=[0.5, 1.0, 2.0], points_per_class=4)
    assert acc.accuracy.shape == (3, len(CLASS_NAMES)) and np.all((acc.overall >= 0) & (acc.overall <= 1))
