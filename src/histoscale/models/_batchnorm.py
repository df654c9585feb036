"""The moments of a torch network's BatchNorm inputs, per patch, and the statistics it stored while it trained.

A BatchNorm layer keeps the running mean and variance of its input channels over the training batches. Shown a
batch of patches at the scale it was trained at, a network's inner activations should have the statistics it
recorded; at other scales textures and object sizes change and the statistics drift (the signal that data-free
distillation, e.g. DeepInversion, Yin et al. 2020, and test-time adaptation use). The statistic is a BATCH one:
the mean and variance over the slide's points and the positions of their patches, as the layer computed them in
training. A patch alone has a smaller variance than the population (its own positions only), smaller the finer
the scale, so a per-patch comparison favours the coarsest scales (measured: `bench/real_models/criteria.py`);
this module therefore records per patch only the sums that pool over points: per channel the mean of x and of
x^2 over the patch's positions. The search pools them over points and
:func:`histoscale.scoring.batchnorm_drift` compares them with the stored statistics.

Only layers that track running statistics count; an ONNX export usually folds BatchNorm into the convolutions,
so this applies to torch modules (not TorchScript files whose BatchNorm was frozen into the convolutions).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ["MAX_CHANNELS", "batchnorm_layers", "batchnorm_moments", "running_statistics"]

#: Channels kept per layer (evenly spaced): the drift is a mean over a layer's channels, which a fixed subset
#: estimates without bias, and a DenseNet121's 41824 channels would cost 330 KB per patch.
MAX_CHANNELS = 64


def _kept(layer: nn.modules.batchnorm._BatchNorm, max_channels: int | None) -> np.ndarray:
    c = int(layer.num_features)
    if max_channels is None or c <= max_channels:
        return np.arange(c)
    return np.unique(np.linspace(0, c - 1, max_channels).round().astype(int))


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that hold running statistics (in module order)."""
    return [
        m for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]


def running_statistics(
    module: nn.Module, max_channels: int | None = MAX_CHANNELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored statistics of the kept channels (at most ``max_channels`` per layer; None: all), layer after
    layer: running mean (K,), running variance (K,) and the index of the channel's layer (K,)."""
    mean, var, index = [], [], []
    for i, layer in enumerate(batchnorm_layers(module)):
        keep = _kept(layer, max_channels)
        mean.append(layer.running_mean.detach().float().cpu().numpy()[keep])  # type: ignore[union-attr]
        var.append(layer.running_var.detach().float().cpu().numpy()[keep])  # type: ignore[union-attr]
        index.append(np.full(len(keep), i))
    return np.concatenate(mean), np.concatenate(var), np.concatenate(index)


@contextmanager
def batchnorm_moments(module: nn.Module, max_channels: int | None = MAX_CHANNELS) -> Iterator[list[np.ndarray]]:
    """Record, while the block runs, each forward pass's per-patch moments of the BatchNorm inputs.

    Yields a list that gains one float32 array (B, 2K) per forward pass of ``module``: for its B patches, the mean
    over positions of x (the K kept channels, layer after layer as :func:`running_statistics` with the same
    ``max_channels``), then of x^2. The hooks are removed on exit.

    Raises:
        ValueError: ``module`` has no BatchNorm layer with running statistics, or a forward pass did not run
            each of them once (a feature function that stops early).
    """
    layers = batchnorm_layers(module)
    if not layers:
        raise ValueError("the module has no BatchNorm layer with running statistics")
    firsts: list[torch.Tensor] = []
    seconds: list[torch.Tensor] = []
    out: list[np.ndarray] = []

    kept = {id(layer): torch.from_numpy(_kept(layer, max_channels)) for layer in layers}

    def hook(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach()[:, kept[id(layer)]].float().flatten(2)  # (B, kept channels, positions)
        firsts.append(x.mean(dim=2))
        seconds.append((x * x).mean(dim=2))
        if len(firsts) == len(layers):
            out.append(torch.cat(firsts + seconds, dim=1).cpu().numpy())
            firsts.clear()
            seconds.clear()

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
    if firsts:
        raise ValueError("a forward pass did not run every BatchNorm layer once")
