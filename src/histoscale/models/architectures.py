"""Plain-torch classifiers split timm-style into features (Phi) and a linear head (W, b).

Both expose ``forward_features`` (pooled feature vector, shape (N, M)), ``forward_head(x, pre_logits=False)``
and ``get_classifier()``: the protocol :mod:`histoscale.models` duck-types for any timm-like model.
No torchvision: the few layers needed are written here.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "DenseNet121"]


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """The bundled reference model: four conv stages, global average pooling, one linear head.

    Small enough to ship in the package and to run hundreds of patches per second on a laptop CPU,
    deep enough (receptive field ~100 px) that its features depend on the physical size of nuclei and glands.
    """

    def __init__(self, num_classes: int = 5, widths: tuple[int, ...] = (24, 48, 96, 160), drop_rate: float = 0.2):
        super().__init__()
        # Every stage halves the resolution first: the stem works at 1/2 of the input, which keeps the model at
        # ~0.2 GFLOP per 128 px patch while the receptive field still spans several nuclei.
        layers: list[nn.Module] = [_conv_bn_relu(3, widths[0], stride=2)]
        in_ch = widths[0]
        for width in widths[1:]:
            layers += [_conv_bn_relu(in_ch, width, stride=2), _conv_bn_relu(width, width)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(self.drop(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(torch.relu(self.norm2(y)))], 1)


def _transition(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2)
    )


class DenseNet121(nn.Module):
    """DenseNet-121 (Huang et al. 2017), the paper's architecture: 1024 pooled features, one linear head.

    Layer layout and parameter count match the standard definition, so benchmarks run at the paper's cost.
    """

    def __init__(self, num_classes: int = 5, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16)):
        super().__init__()
        ch = 2 * growth
        stem: list[nn.Module] = [
            nn.Conv2d(3, ch, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        body: list[nn.Module] = []
        for i, n_layers in enumerate(blocks):
            body += [_DenseLayer(ch + j * growth, growth, bn_size=4) for j in range(n_layers)]
            ch += n_layers * growth
            if i < len(blocks) - 1:
                body.append(_transition(ch, ch // 2))
                ch //= 2
        self.features = nn.Sequential(*stem, *body, nn.BatchNorm2d(ch), nn.ReLU(inplace=True))
        self.num_features = ch
        self.classifier = nn.Linear(ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
