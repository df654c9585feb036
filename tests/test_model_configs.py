"""Models as users have them: a card found beside the file, WSInfer and timm / Hugging Face configs, a card inside
an ONNX file, and loud defaults when nothing describes the model.

Each config is checked against the model's own output: tiny generated SmallCNNs saved as TorchScript, ONNX or a
safetensors state dict; the loaded SplitModel's logits must equal the module's output on the same uint8 patches
after the preprocessing the config describes (computed here with torch, not with histoscale's code).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import histoscale
from histoscale.cli import main
from histoscale.errors import ModelError
from histoscale.models import ModelCard, load_model, save_card
from histoscale.models.architectures import SmallCNN
from histoscale.models.torch_adapter import export_onnx
from histoscale.phantom import write_phantom

ASSETS = Path(histoscale.__file__).parent / "assets"
MEAN, STD = (0.7, 0.55, 0.68), (0.12, 0.15, 0.11)
NAMES = ["stroma", "tumor", "fat"]


def tiny_net(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=len(NAMES), widths=(4, 8)).eval()


def own_output(net: torch.nn.Module, x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The module's output on uint8 patches after ``(x / 255 - mean) / std``, computed with torch directly."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return net(t).numpy()


def patches(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def assert_own_output(model, net, size: int, mean, std) -> None:
    x = patches(4, size)
    want = own_output(net, x, mean, std)
    np.testing.assert_allclose(model.logits(x), want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


def wsinfer_config(transform: list[dict]) -> dict:
    """A WSInfer model config (its published schema, spec_version 1.0)."""
    return {
        "spec_version": "1.0", "architecture": "smallcnn", "num_classes": 3, "class_names": NAMES,
        "patch_size_pixels": 96, "spacing_um_px": 0.25, "transform": transform,
    }


NORMALIZE = {"name": "Normalize", "arguments": {"mean": list(MEAN), "std": list(STD)}}


@pytest.mark.parametrize(
    ("model_name", "transform", "size", "mpp"),
    [
        # 96 px at 0.25 um/px resized to 64 px: the network's pixels are 0.25 * 96 / 64 = 0.375 um wide
        ("torchscript_model.pt", [{"name": "Resize", "arguments": {"size": 64}}, {"name": "ToTensor"}, NORMALIZE],
         64, 0.375),
        # resized to 80 px, then the centre 64 px: 76.8 px of the slide at 0.25 um/px in 64 px, 0.3 um/px
        ("model.onnx", [{"name": "Resize", "arguments": {"size": [80, 80]}},
                        {"name": "CenterCrop", "arguments": {"size": 64}}, {"name": "ToTensor"}, NORMALIZE], 64, 0.3),
    ],
)
def test_wsinfer_config_beside_torchscript_or_onnx(tmp_path: Path, model_name, transform, size, mpp) -> None:
    net = tiny_net()
    model_file = tmp_path / model_name
    if model_file.suffix == ".pt":
        torch.jit.save(torch.jit.script(net), str(model_file))
    else:
        export_onnx(net, model_file, size)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(wsinfer_config(transform)))

    for spec in (model_file, tmp_path, config):  # the model file, its folder, or the config itself
        model = load_model(spec)
        assert model.input_size == size and model.mpp == pytest.approx(mpp)
        assert list(model.class_names) == NAMES
        assert model.preprocessing.mean == pytest.approx(MEAN) and model.preprocessing.std == pytest.approx(STD)
        assert model.card == f"WSInfer config {config}" and model.missing == ()
        assert set(model.sources.values()) >= {f"WSInfer config {config}"}
        assert_own_output(model, net, size, MEAN, STD)
    export_onnx(net, tmp_path / "other.onnx", size)
    with pytest.raises(ModelError, match="holds 2 model files"):
        load_model(tmp_path)


def test_wsinfer_config_without_normalize_means_plain_0_to_1_input(tmp_path: Path) -> None:
    net = tiny_net(1)
    export_onnx(net, tmp_path / "model.onnx", 48)
    (tmp_path / "config.json").write_text(json.dumps(wsinfer_config([{"name": "ToTensor"}]) | {"patch_size_pixels": 48}))
    model = load_model(tmp_path / "model.onnx")
    assert model.mpp == pytest.approx(0.25) and model.missing == ()
    assert_own_output(model, net, 48, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_wsinfer_transform_histoscale_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    export_onnx(tiny_net(), tmp_path / "model.onnx", 48)
    (tmp_path / "config.json").write_text(json.dumps(wsinfer_config([{"name": "Grayscale"}, NORMALIZE])))
    with pytest.raises(ModelError, match="transform 'Grayscale'.*histoscale model card"):
        load_model(tmp_path / "model.onnx")


def timm_folder(folder: Path, net: SmallCNN) -> Path:
    """A timm / Hugging Face hub folder: config.json (timm's layout) and model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(net.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "smallcnn", "num_classes": 3, "num_features": 8, "label_names": NAMES,
        "model_args": {"widths": [4, 8]},
        "pretrained_cfg": {
            "input_size": [3, 48, 48], "mean": list(MEAN), "std": list(STD), "classifier": "classifier",
            "num_classes": 3, "interpolation": "bicubic", "crop_pct": 1.0,
        },
    }))
    return folder


def test_timm_folder_with_safetensors_and_factory(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    net = tiny_net(2)
    folder = timm_folder(tmp_path / "hub", net)
    config = f"timm/Hugging Face config {folder / 'config.json'}"
    for spec in (folder, folder / "model.safetensors"):
        model = load_model(spec, factory="histoscale.models.architectures:SmallCNN")
        assert model.input_size == 48 and list(model.class_names) == NAMES and model.head_name == "classifier"
        assert model.preprocessing.mean == pytest.approx(MEAN) and model.preprocessing.std == pytest.approx(STD)
        assert model.format == "torch safetensors state dict + factory" and model.card == config
        assert model.sources["preprocessing"] == config and model.sources["head"] == config
        assert model.mpp is None and model.missing == ("training um/px",)  # timm configs carry no um/px
        assert_own_output(model, net, 48, MEAN, STD)
    with pytest.raises(ModelError, match="factory"):
        load_model(folder)


def test_cli_model_info_on_a_timm_folder(tmp_path: Path, capsys) -> None:
    pytest.importorskip("safetensors")
    folder = timm_folder(tmp_path / "hub", tiny_net(2))
    assert main(["model-info", str(folder), "--factory", "histoscale.models.architectures:SmallCNN", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == 48 and info["class_names"] == NAMES and info["M"] == 8 and info["C"] == 3
    assert info["sources"]["input_size"].startswith("timm/Hugging Face config")
    assert info["missing"] == ["training um/px"] and info["sources"]["mpp"] == "unknown"


def test_card_inside_onnx_is_enough_and_a_card_beside_it_wins(tmp_path: Path) -> None:
    net = tiny_net(3)
    card = ModelCard(format="onnx", file="m.onnx", mean=MEAN, std=STD, class_names=tuple(NAMES), mpp=0.7, name="tiny")
    path = export_onnx(net, tmp_path / "m.onnx", 40, card=card)
    model = load_model(path)
    inside = f"ONNX metadata of {path}"
    assert model.name == "tiny" and model.mpp == 0.7 and list(model.class_names) == NAMES and model.input_size == 40
    assert model.card == inside and model.sources["preprocessing"] == inside and model.missing == ()
    assert_own_output(model, net, 40, MEAN, STD)

    # <stem>.json describing another file is not this model's card: skipped
    save_card(ModelCard(format="torch-state-dict", file="m.pt", mpp=2.0), tmp_path / "m.json")
    assert load_model(path).mpp == 0.7
    # <stem>.card.json about this file: what it says wins, the rest still comes from inside
    save_card(ModelCard(format="onnx", file="m.onnx", mpp=0.9), tmp_path / "m.card.json")
    model = load_model(path)
    assert model.mpp == 0.9 and model.sources["mpp"] == f"model card {tmp_path / 'm.card.json'}"
    assert model.sources["class_names"] == inside and list(model.class_names) == NAMES
    # the documented order: <stem>.json first
    save_card(ModelCard(format="onnx", file="m.onnx", mpp=0.8), tmp_path / "m.json")
    assert load_model(path).mpp == 0.8


def _bare_reference(folder: Path) -> Path:
    """The bundled ONNX reference without its card inside, alone in a folder."""
    model = onnx.load(str(ASSETS / "reference.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(folder / "bare.onnx"))
    return folder / "bare.onnx"


def test_unknown_preprocessing_and_mpp_are_loud(tmp_path: Path, caplog) -> None:
    bare = _bare_reference(tmp_path)
    with caplog.at_level(logging.WARNING, logger="histoscale.models.registry"):
        model = load_model(bare)
    assert model.missing == ("preprocessing (mean/std)", "training um/px")
    assert model.describe()["preprocessing"] == "default (unknown)" and model.card is None
    assert "preprocessing (mean/std) and training um/px unknown" in caplog.text
    assert "bare.json, bare.card.json, config.json" in caplog.text


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slide")
    return write_phantom(folder / "slide.tiff", mpp=0.5, size_px_wh=(2560, 2560), seed=5).slide_path


def _search(slide: Path, model: Path, out: Path, capsys) -> tuple[dict, str, str]:
    assert main(["search", "--model", "phantom", str(slide), "--model", str(model), "--points", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    return json.loads((out / "result.json").read_text()), printed.out, printed.err


def test_cli_reference_onnx_finds_its_card_and_answers_as_with_the_card(slide: Path, tmp_path: Path, capsys) -> None:
    alone, _, err = _search(slide, ASSETS / "reference.onnx", tmp_path / "alone", capsys)
    assert "ONNX metadata of" in err
    carded, _, err = _search(slide, ASSETS / "reference-onnx.json", tmp_path / "card", capsys)
    assert "reference-onnx.json" in err
    for key in ("chosen_scale", "estimate", "interval", "votes", "class_names", "check"):
        assert alone[key] == carded[key], key
    assert alone["check"]["status"] != "UNKNOWN-MODEL-MPP" and alone["model_info"]["missing"] == []
    assert alone["model_info"]["card"].startswith("ONNX metadata of")

    # the same file without its card inside finds reference-onnx.json's content beside it as <stem>.card.json
    bare = _bare_reference(tmp_path)
    card = json.loads((ASSETS / "reference-onnx.json").read_text()) | {"file": "bare.onnx"}
    (tmp_path / "bare.card.json").write_text(json.dumps(card))
    beside, _, err = _search(slide, bare, tmp_path / "beside", capsys)
    assert f"model card {tmp_path / 'bare.card.json'}" in err
    for key in ("chosen_scale", "estimate", "votes", "check"):
        assert beside[key] == carded[key], key


def test_cli_search_without_a_card_says_what_was_missing(slide: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    result, out, err = _search(slide, _bare_reference(folder), tmp_path / "run", capsys)
    assert "no model card; UNKNOWN: preprocessing (mean/std), training um/px (defaults assumed)" in err
    assert result["model_info"]["preprocessing"] == "default (unknown)"
    assert result["model_info"]["missing"] == ["preprocessing (mean/std)", "training um/px"]
    assert result["check"]["status"] == "UNKNOWN-MODEL-MPP"
    assert "unknown: defaults assumed" in out


def test_pickles_stay_refused_when_a_config_is_found(tmp_path: Path) -> None:
    net = tiny_net()
    torch.save(net, tmp_path / "model.pt")  # a whole pickled module
    (tmp_path / "config.json").write_text(json.dumps(wsinfer_config([{"name": "ToTensor"}, NORMALIZE])))
    with pytest.raises(ModelError, match="pickled checkpoint"):
        load_model(tmp_path / "model.pt")
