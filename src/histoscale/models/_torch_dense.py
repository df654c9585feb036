"""Segmentation heads in torch: find the 1x1 convolution that is a model's per-pixel linear classifier, and read the
maps entering and leaving it, averaged over cells (see :mod:`histoscale.models.torch_adapter`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from histoscale.errors import ModelError

__all__ = ["dense_fns", "find_dense_head", "gives_output", "is_pointwise_conv", "not_the_output", "pool_maps"]

logger = logging.getLogger("histoscale.models.torch_adapter")  # its messages belong to the torch loader


def is_pointwise_conv(module: Any) -> bool:
    """A 2D convolution that is a per-pixel linear map: 1x1 kernel, stride 1, no padding, one group."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and module.groups == 1
        and (module.padding in ("valid", "same") or tuple(module.padding) == (0, 0))  # type: ignore[arg-type]
    )


def find_dense_head(
    module: nn.Module, where: str, name: str, head: str | None, run: Callable[[nn.Module, np.ndarray], Any],
    probe: np.ndarray, out: np.ndarray,
) -> nn.Conv2d:
    """The 1x1 convolution whose output is the model's output ``out`` (N, C, H, W), as is or through a sigmoid or
    softmax over the channels; ``run(module, probe)`` runs the model on the probe batch as the adapter does."""
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if head is not None:
        try:
            head_mod = module.get_submodule(head)
        except AttributeError as err:
            raise ModelError(f"{where}: model {name!r} has no submodule {head!r}; its convolutions: {convs}") from err
        if not is_pointwise_conv(head_mod):
            raise ModelError(
                f"{where}: head {head!r} of the segmentation model {name!r} is a {type(head_mod).__name__}"
                + (f" with kernel {tuple(head_mod.kernel_size)}, stride {tuple(head_mod.stride)}, padding "
                   f"{head_mod.padding}" if isinstance(head_mod, nn.Conv2d) else "")
                + ", not a 1x1 convolution of stride 1 (a per-pixel linear classifier)"
            )
        candidates = [(head, head_mod)]
    else:
        candidates = [
            (n, m) for n, m in module.named_modules() if is_pointwise_conv(m) and m.out_channels == out.shape[1]
        ]
        if not candidates:
            raise ModelError(
                f"{where}: no 1x1 convolution with {out.shape[1]} outputs (the model's output channels) in the "
                f"segmentation model {name!r}; histoscale needs one as its last layer (pass head=... to name it; "
                f"its convolutions: {convs})"
            )
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _a, o, n=n: outputs.__setitem__(n, o)) for n, m in candidates]
    try:
        run(module, probe)
    finally:
        for h in handles:
            h.remove()
    for n, m in reversed(candidates):  # the last registered first, as the final head usually is
        if n in outputs and gives_output(outputs[n], out):
            return m  # type: ignore[return-value]
    if head is not None:  # named: its own output is the per-pixel logits, whatever follows (e.g. an upsampling)
        logger.info("%s: the output of %r is not that of its head %r; scoring the head's own output", where, name, head)
        return candidates[0][1]  # type: ignore[return-value]
    raise not_the_output(where, name, [n for n, _ in candidates])


def gives_output(logits: torch.Tensor, out: np.ndarray) -> bool:
    """Whether a 1x1 convolution's output ``logits`` is the model's output ``out`` (N, C, H, W), as is or through a
    sigmoid or softmax over the channels."""
    target = torch.from_numpy(out)
    if logits.shape != target.shape:
        return False
    logits = logits.float().cpu()
    tol = 1e-3 * (1.0 + float(target.abs().max()))
    return any(
        float((act(logits) - target).abs().max()) <= tol
        for act in (lambda t: t, torch.sigmoid, lambda t: torch.softmax(t, dim=1))
    )


def not_the_output(where: str, name: str, heads: list[str]) -> ModelError:
    """The error of a segmentation model whose output is not that of its 1x1 convolution(s) ``heads``."""
    return ModelError(
        f"{where}: the output of the segmentation model {name!r} is not the output of any of its 1x1 convolutions "
        f"{heads} (as is, or through a sigmoid or softmax): something follows it (resizing, "
        "scaling); name the 1x1 convolution to score with head=... (its own output is then taken as the logits), "
        "or export the model so that a 1x1 convolution is its last layer"
    )


def dense_fns(
    module: nn.Module, head_mod: nn.Module, cells: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(phi, forward): the head's input and output maps, each averaged over ``cells`` x ``cells`` cells, (N, G, K)."""

    def maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = head_mod.register_forward_hook(lambda _m, args, o: captured.append((args[0], o)))
        try:
            module(x)
        finally:
            handle.remove()
        return captured[-1]

    return (lambda x: pool_maps(maps(x)[0], cells)), (lambda x: pool_maps(maps(x)[1], cells))


def pool_maps(t: torch.Tensor, cells: int) -> torch.Tensor:
    """(N, K, H, W) maps averaged over ``cells`` x ``cells`` cells: (N, G, K), row-major over the grid."""
    return nn.functional.adaptive_avg_pool2d(t.float(), cells).flatten(2).transpose(1, 2)
