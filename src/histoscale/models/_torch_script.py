"""TorchScript models take no hooks: split them on their graph (see :mod:`histoscale.models.torch_adapter`).

The head is the last linear op among the top-level nodes of the inlined ``forward`` graph: ``aten::linear`` or
``aten::addmm`` (``x @ weight.t()`` plus the bias) for a classifier, a 1x1 ``aten::_convolution`` (traced) or
``aten::conv2d`` (scripted) of stride 1, no padding and one group for a segmentation model. Its weight and bias
are read from the module attributes the graph takes them from (``prim::GetAttr`` chains from ``self``) or from
the graph's constants (a frozen model). A copy of the graph that returns the op's input and output, run on the
module, gives the features and the head's own output, whatever the graph does with them afterwards.

The graph functions are TorchScript internals (``torch._C``) that are stable across torch 2.x; each use is here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from histoscale.errors import ModelError

__all__ = ["ScriptHead", "split_script"]

_LINEAR_OPS = ("aten::linear", "aten::addmm")
_CONV_OPS = ("aten::_convolution", "aten::conv2d")


@dataclass(frozen=True)
class ScriptHead:
    """The head of a TorchScript model: ``maps(x)`` -> (head input, head output) tensors, (N, M) and (N, C) for a
    classifier, (N, M, H, W) and (N, C, H, W) for a segmentation model; ``weight`` (C, M) or (C, M, 1, 1), ``bias``
    (C,) or None; ``name``: the submodule owning the weight (``"fc"``), None for a frozen model's constants."""

    maps: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    weight: torch.Tensor
    bias: torch.Tensor | None
    name: str | None
    op: str


def _attribute(value: Any, module: Any, self_value: Any) -> tuple[Any, str | None] | None:
    """(object, dotted attribute path) of a graph value that is a module attribute or a constant, else None."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue(), None
    path: list[str] = []
    while node.kind() == "prim::GetAttr":
        path.append(node.s("name"))
        value = node.input()
        node = value.node()
    if not path or value.unique() != self_value.unique():
        return None
    obj = module
    for attr in reversed(path):
        obj = getattr(obj, attr)
    return obj, ".".join(reversed(path))


def _constant(value: Any) -> Any:
    """The constant a graph value holds (a list of constants too), or None when it is computed."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        items = [_constant(v) for v in node.inputs()]
        return None if any(i is None for i in items) else items
    return None


def _head_of(node: Any, module: Any, self_value: Any) -> tuple[Any, torch.Tensor, torch.Tensor | None, str | None] | None:
    """(input value, weight, bias, weight's path) of a linear op node, or None when it is not a usable head."""
    kind = node.kind()
    inputs = list(node.inputs())
    if kind == "aten::addmm":  # addmm(bias, x, weight.t(), beta=1, alpha=1): what traced F.linear once gave
        if _constant(inputs[3]) != 1 or _constant(inputs[4]) != 1 or inputs[2].node().kind() != "aten::t":
            return None
        x, w_value, b_value = inputs[1], inputs[2].node().input(), inputs[0]
    else:
        x, w_value, b_value = inputs[0], inputs[1], inputs[2]
    weight = _attribute(w_value, module, self_value)
    bias = _attribute(b_value, module, self_value)
    if weight is None or bias is None or not isinstance(weight[0], torch.Tensor):
        return None
    w, path = weight
    b = bias[0] if isinstance(bias[0], torch.Tensor) else None
    if kind in _CONV_OPS:
        groups = _constant(inputs[6 if kind == "aten::conv2d" else 8])
        stride, padding = _constant(inputs[3]), _constant(inputs[4])
        transposed = kind == "aten::_convolution" and _constant(inputs[6]) is not False
        pointwise = w.ndim == 4 and tuple(w.shape[2:]) == (1, 1) and stride == [1, 1] and groups == 1 and not transposed
        if not pointwise or not (padding in ("valid", "same") or padding == [0, 0]):
            return None
    elif w.ndim != 2:
        return None
    return x, w, b, None if path is None else path.rpartition(".")[0]  # "fc.weight" -> "fc"


def _graph_maps(module: Any, graph: Any, values: tuple[Any, Any]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A function of the module's input returning the graph ``values``: the graph re-rooted at them, the rest pruned."""
    for i in reversed(range(len(list(graph.outputs())))):
        graph.eraseOutput(i)
    pair = graph.create("prim::TupleConstruct", list(values))
    graph.appendNode(pair)
    pair.output().setType(torch._C.TupleType([v.type() for v in values]))
    graph.registerOutput(pair.output())
    torch._C._jit_pass_dce(graph)
    fn = torch._C._create_function_from_graph("histoscale_head_maps", graph)
    owner = module._c
    return lambda x: fn(owner, x)


def split_script(module: Any, where: str, name: str, head: str | None, *, dense: bool) -> ScriptHead:
    """The last linear op (``dense``: 1x1 convolution) of a TorchScript module's forward graph, or the one whose
    weight belongs to the submodule ``head``; raises ModelError naming what the graph holds when there is none."""
    graph = module.inlined_graph  # a copy: editing it leaves the module alone
    # Folds branches on constants (timm's `if pre_logits:` in forward_head), which would hide the head in a block.
    torch._C._jit_pass_constant_propagation(graph)
    inputs = list(graph.inputs())
    if len(inputs) != 2:
        raise ModelError(
            f"{where}: the TorchScript model {name!r} takes {len(inputs) - 1} inputs; histoscale feeds one image batch"
        )
    ops = _CONV_OPS if dense else _LINEAR_OPS
    found = [(n, h) for n in graph.nodes() if n.kind() in ops and (h := _head_of(n, module, inputs[0])) is not None]
    if head is not None:
        found = [(n, h) for n, h in found if h[3] == head]
    if not found:
        what = "1x1 convolution (aten::_convolution / aten::conv2d of a 1x1 kernel, stride 1)" if dense else \
            "linear op (aten::linear / aten::addmm)"
        named = f" whose weight belongs to {head!r}" if head is not None else ""
        raise ModelError(
            f"{where}: cannot split the TorchScript model {name!r}: its forward graph has no {what}{named} at its top "
            "level (the head histoscale splits at); export it to ONNX (torch.onnx.export) or load the state dict "
            "with factory='module:callable'"
        )
    node, (x, weight, bias, owner) = found[-1]
    return ScriptHead(_graph_maps(module, graph, (x, node.output())), weight, bias, owner, node.kind())
