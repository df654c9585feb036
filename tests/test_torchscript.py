"""TorchScript models split on their graph (issue 29, item 6): traced and scripted torchvision-style ResNets built
from plain torch layers, WSInfer's layouts (``forward_features`` + ``classifier``, a plain ``fc`` wrapper, a folder
with ``torchscript_model.pt`` + ``config.json``), ``aten::addmm`` heads, frozen models, segmentation models with a
1x1-convolution head; every model is a real ``torch.jit`` file written to tmp_path and read by ``load_model``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from histoscale import load_model
from histoscale.errors import ModelError

SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def patches(n: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def own_output(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """The module's output, normalised independently of histoscale's preprocessing code."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    t = (t - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval()(t).numpy()


def save(net: nn.Module, path: Path, how: str) -> Path:
    """``net`` (in eval mode) saved as TorchScript by ``torch.jit.trace``, ``script`` or ``freeze`` (of the script)."""
    net.eval()
    if how == "trace":
        scripted = torch.jit.trace(net, torch.zeros(1, 3, SIZE, SIZE))
    elif how == "script":
        scripted = torch.jit.script(net)
    else:
        scripted = torch.jit.freeze(torch.jit.script(net))
    torch.jit.save(scripted, str(path))
    return path


def assert_splits_like(model, net: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """W, b are the head's; the features through them give the module's own output."""
    np.testing.assert_allclose(model.W, weight.detach().numpy().reshape(len(weight), -1).T)
    np.testing.assert_allclose(model.b, bias.detach().numpy())
    x = patches(3)
    want = own_output(net, x)
    tol = 1e-4 * (1 + np.abs(want).max())
    np.testing.assert_allclose(model.forward_logits(x), want, atol=tol)
    feats = model.features(x)
    assert feats.dtype == np.float32 and feats.shape[-1] == model.W.shape[0]
    np.testing.assert_allclose(model.logits(x), feats @ model.W + model.b, atol=tol)


# --------------------------------------------------------------------------------------------- classifiers
class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, from plain torch layers."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1.., avgpool, flatten, fc) at toy width."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)
        for m in self.modules():  # non-trivial BatchNorm statistics, so that eval mode matters
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.running_mean, -0.2, 0.2)
                nn.init.uniform_(m.running_var, 0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FeaturesClassifier(nn.Module):
    """The layout of issue 29's traced model: ``forward_features`` and a ``classifier`` Linear, no forward_head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(6, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class FcWrapper(nn.Module):
    """Issue 29's plain ``fc`` wrapper: a backbone module and an ``fc`` Linear, with dropout between."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyResNet()
        self.backbone.fc = nn.Identity()  # torchvision's way of dropping a head
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.backbone(x)))


class AddmmHead(nn.Module):
    """A head written as ``addmm(bias, x, weight.t())`` (what traced ``F.linear`` gave in older torch)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.weight = nn.Parameter(torch.randn(3, 5))
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, self.body(x), self.weight.t())


@pytest.mark.parametrize("how", ["trace", "script", "freeze"])
def test_torchvision_style_resnet(tmp_path: Path, how: str) -> None:
    torch.manual_seed(0)
    net = TinyResNet().eval()
    model = load_model(save(net, tmp_path / "resnet.pt", how), input_size=SIZE, mean=MEAN, std=STD)
    assert model.format == "torchscript" and model.W.shape == (16, 3)
    assert model.head_name == (None if how == "freeze" else "fc")  # a frozen model's weights are graph constants
    assert_splits_like(model, net, net.fc.weight, net.fc.bias)


@pytest.mark.parametrize("how", ["trace", "script"])
@pytest.mark.parametrize(("make", "head"), [(FeaturesClassifier, "classifier"), (FcWrapper, "fc")])
def test_wsinfer_layouts_issue_29_refused(tmp_path: Path, make, head: str, how: str) -> None:
    """Issue 29 input 6: 'neither forward_features/forward_head methods nor a Sequential layout' is gone."""
    torch.manual_seed(1)
    net = make().eval()
    model = load_model(save(net, tmp_path / "model.pt", how), input_size=SIZE, mean=MEAN, std=STD)
    assert model.head_name == head
    linear = net.get_submodule(head)
    assert_splits_like(model, net, linear.weight, linear.bias)


def test_addmm_head(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = AddmmHead().eval()
    model = load_model(save(net, tmp_path / "addmm.pt", "trace"), input_size=SIZE, mean=MEAN, std=STD)
    assert model.head_name == ""  # the weight is the root module's own attribute
    assert_splits_like(model, net, net.weight, net.bias)


def test_wsinfer_folder_with_a_traced_resnet(tmp_path: Path) -> None:
    """WSInfer's zoo layout: ``torchscript_model.pt`` (a traced torchvision ResNet) + ``config.json``, loaded from
    the folder, the model file or the config; the config gives input size, normalisation, classes and um/px."""
    torch.manual_seed(3)
    net = TinyResNet(num_classes=2).eval()
    save(net, tmp_path / "torchscript_model.pt", "trace")
    config = {
        "spec_version": "1.0", "architecture": "resnet34", "num_classes": 2, "class_names": ["notumor", "tumor"],
        "patch_size_pixels": SIZE, "spacing_um_px": 0.5,
        "transform": [{"name": "Resize", "arguments": {"size": SIZE}}, {"name": "ToTensor"},
                      {"name": "Normalize", "arguments": {"mean": list(MEAN), "std": list(STD)}}],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    for spec in (tmp_path, tmp_path / "torchscript_model.pt", tmp_path / "config.json"):
        model = load_model(spec)
        assert model.input_size == SIZE and model.mpp == pytest.approx(0.5) and model.missing == ()
        assert list(model.class_names) == ["notumor", "tumor"] and model.head_name == "fc"
        assert_splits_like(model, net, net.fc.weight, net.fc.bias)


class NoLinear(nn.Module):
    """Class scores from a 3x3 convolution, globally pooled: no linear op to split at."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class SoftmaxOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = FeaturesClassifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def test_unsplittable_torchscript_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = save(NoLinear(), tmp_path / "nolinear.pt", "trace")
    with pytest.raises(ModelError, match=r"nolinear\.pt.*no linear op \(aten::linear / aten::addmm\).*ONNX"):
        load_model(path, input_size=SIZE)
    path = save(SoftmaxOut(), tmp_path / "softmax.pt", "trace")
    with pytest.raises(ModelError, match=r"softmax\.pt.*something follows the final linear layer"):
        load_model(path, input_size=SIZE)
    path = save(FeaturesClassifier(), tmp_path / "named.pt", "script")
    with pytest.raises(ModelError, match=r"named\.pt.*no linear op .* whose weight belongs to 'body'"):
        load_model(path, input_size=SIZE, head="body")


# --------------------------------------------------------------------------------------------- segmentation
class TinySegmenter(nn.Module):
    """Two 3x3 convolutions and a 1x1-convolution head of 3 classes; optionally upsampled 2x afterwards."""

    def __init__(self, upsample: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.encoder(x))
        return nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear") if self.upsample else y


@pytest.mark.parametrize("how", ["trace", "script"])
def test_segmentation_model_splits_at_its_1x1_convolution(tmp_path: Path, how: str) -> None:
    """Issue 29 input 6: a traced segmentation model (1x1-conv head) was refused; it is split like a torch one."""
    torch.manual_seed(4)
    net = TinySegmenter().eval()
    model = load_model(save(net, tmp_path / "seg.pt", how), input_size=SIZE, mean=MEAN, std=STD)
    assert model.num_cells is not None and model.head_name == "head"
    np.testing.assert_allclose(model.W, net.head.weight.detach().numpy()[:, :, 0, 0].T)
    x = patches(2)
    maps = own_output(net, x)  # (N, C, 16, 16): pooled over the model's cells, the mean of each cell's logits
    cells = int(round(model.num_cells ** 0.5))
    want = maps.reshape(2, 3, cells, 16 // cells, cells, 16 // cells).mean(axis=(3, 5)).reshape(2, 3, -1)
    np.testing.assert_allclose(model.forward_logits(x), want.transpose(0, 2, 1), atol=1e-4)
    np.testing.assert_allclose(model.logits(x), model.forward_logits(x), atol=1e-4)


def test_segmentation_head_followed_by_an_upsampling_is_named(tmp_path: Path) -> None:
    torch.manual_seed(5)
    path = save(TinySegmenter(upsample=True), tmp_path / "upsampled.pt", "trace")
    with pytest.raises(ModelError, match=r"upsampled\.pt.*not the output of any of its 1x1 convolutions.*head="):
        load_model(path, input_size=SIZE)
    model = load_model(path, input_size=SIZE, head="head")  # its own output is then the logits
    assert model.head_name == "head" and model.W.shape == (8, 3)
