"""ONNX models split into features and final linear layer, run with ONNX Runtime.

The node producing the logits (a ``Gemm``, or ``MatMul`` followed by ``Add``; behind an optional ``Softmax`` or
``Sigmoid``) is located in the graph, or named by ``head``; W and b are read from its initializers, and its input
tensor is added as an extra graph output, so one session run returns both the features (N, M) and the logits (N, C).

Segmentation models: a ``Conv`` with a 1x1 kernel, stride 1, no padding and one group is a per-pixel linear layer;
its input map (N, M, H, W) and output map (N, C, H, W) are averaged over cells
(:func:`~histoscale.models.contract.pool_cells`) into features (N, G, M) and logits (N, G, C). A named head's
own output is the logits, whatever follows it in the graph (an upsampling, say).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from histoscale._files import atomic_path
from histoscale.errors import ModelError
from histoscale.models.card import ModelCard, card_from_dict, card_to_dict
from histoscale.models.contract import (
    DENSE_CELLS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    SplitModel,
    check_split,
    default_batch_size,
    pool_cells,
    probe_batch,
    probe_failure,
    resolve_class_names,
)
from histoscale.models.registry import LoadRequest, ModelFormat, register_format

__all__ = ["CARD_KEY", "OnnxSplitModel", "embed_card", "load_onnx", "read_embedded_card"]

# The metadata_props key holding a histoscale card (JSON) inside an ONNX file: one file is then enough.
CARD_KEY = "histoscale.card"

logger = logging.getLogger(__name__)

_PASS_THROUGH = ("Identity", "Softmax", "LogSoftmax", "Sigmoid")


class OnnxSplitModel(SplitModel):
    """An ONNX Runtime session returning the head's input (features) and the logits in one run."""

    def __init__(
        self,
        session: Any,
        input_name: str,
        nchw: bool,
        fixed_batch: int | None,
        outputs: tuple[str, str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.session = session
        self._input_name = input_name
        self._nchw = nchw
        self._fixed_batch = fixed_batch  # graphs exported with a static batch dimension
        self._outputs = list(outputs)  # [features, logits]
        scale, offset = self.preprocessing.scale_offset()
        self._scale, self._offset = scale, offset

    def _run_session(self, chunk: np.ndarray) -> list[np.ndarray]:
        if self.preprocessing.function is not None:
            x = self.preprocessing.to_nchw(chunk)
            x = x if self._nchw else x.transpose(0, 2, 3, 1)
        else:
            x = chunk.astype(np.float32) * self._scale - self._offset
            x = x.transpose(0, 3, 1, 2) if self._nchw else x
        x = np.ascontiguousarray(x)
        n = len(x)
        if self._fixed_batch is not None and n != self._fixed_batch:
            parts = [self._run_fixed(x[i : i + self._fixed_batch]) for i in range(0, n, self._fixed_batch)]
            out = [np.concatenate([p[k] for p in parts])[:n] for k in range(2)]
        else:
            out = [np.asarray(o, np.float32) for o in self.session.run(self._outputs, {self._input_name: x})]
        return out

    def _run_fixed(self, x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        if n < self._fixed_batch:  # type: ignore[operator]
            x = np.concatenate([x, np.zeros((self._fixed_batch - n, *x.shape[1:]), x.dtype)])  # type: ignore[operator]
        return [np.asarray(o, np.float32)[:n] for o in self.session.run(self._outputs, {self._input_name: x})]

    def _pooled(self, chunk: np.ndarray, k: int) -> np.ndarray:
        out = self._run_session(chunk)[k]
        return out if self.cells is None else pool_cells(out, self.cells)

    def _features_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._pooled(chunk, 0)

    def _forward_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._pooled(chunk, 1)


def _constant(graph: Any, name: str, producers: dict[str, Any], inits: dict[str, Any]) -> np.ndarray | None:
    """The value of tensor ``name`` when it is an initializer, a Constant, or Identity/Transpose of one."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t).astype(np.float32)
        return None
    if node.op_type == "Identity":
        return _constant(graph, node.input[0], producers, inits)
    if node.op_type == "Transpose":
        value = _constant(graph, node.input[0], producers, inits)
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return None if value is None else np.transpose(value, perm)
    return None


def _locate_head(model: Any, where: str, head: str | None) -> tuple[str, str, np.ndarray, np.ndarray, bool, str]:
    """(features tensor, logits tensor, W (M, C), b (C,), dense, head description) of the final linear layer of an
    ONNX graph, or of the node named ``head``; ``dense``: a 1x1 convolution (a segmentation head)."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    if head is not None:
        node = next((n for n in graph.node if n.name == head), None)
        if node is None:
            layers = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul", "Add", "Conv")]
            raise ModelError(
                f"{where}: the ONNX graph has no node named {head!r}; fix head= (the card's 'head') to one of its "
                f"linear or convolution nodes: {layers[-20:]}"
            )
        return _parse_head(graph, node, node.output[0], producers, inits, where)
    logits = graph.output[0].name
    if len(graph.output) > 1:
        logger.info("%s has %d outputs; using the first, %r, as the class scores", where, len(graph.output), logits)
    node = producers.get(logits)
    while node is not None and node.op_type in _PASS_THROUGH:
        if node.op_type != "Identity":
            logger.info(
                "%s: the graph output passes through %s; forward_logits returns its input (the logits)",
                where,
                node.op_type,
            )
        logits = node.input[0]
        node = producers.get(logits)
    if node is None:
        raise ModelError(f"{where}: no final linear layer found: the graph output {logits!r} is not computed by a node")
    return _parse_head(graph, node, logits, producers, inits, where)


def _parse_head(
    graph: Any, node: Any, logits: str, producers: dict[str, Any], inits: dict[str, Any], where: str
) -> tuple[str, str, np.ndarray, np.ndarray, bool, str]:
    """:func:`_locate_head`'s answer for ``node`` (Gemm, MatMul(+Add) or a 1x1 Conv) computing ``logits``."""
    from onnx import helper

    def fail(detail: str) -> ModelError:
        return ModelError(
            f"{where}: no final linear layer found: the logits come from a {node.op_type} node {node.name!r} "
            f"({detail}); histoscale needs a graph ending in Gemm or MatMul+Add with constant weights, or a 1x1 Conv "
            "for a segmentation model (optionally followed by Softmax or Sigmoid); re-export the model so that its "
            "last layer is linear, or name that layer with head=..."
        )

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        weight = _constant(graph, node.input[1], producers, inits)
        if weight is None or weight.ndim != 4:
            raise fail("its weight is not a constant 2D kernel")
        pads = [int(p) for p in attrs.get("pads", [])]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        strides = [int(v) for v in attrs.get("strides", [1, 1])]
        if weight.shape[2:] != (1, 1) or any(v != 1 for v in strides) or int(attrs.get("group", 1)) != 1 or any(
            pads
        ) or auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise fail(
                f"kernel {list(weight.shape[2:])}, strides {strides}, pads {pads}, group {attrs.get('group', 1)}: "
                "not a 1x1 convolution of stride 1, a per-pixel linear classifier"
            )
        W = weight.reshape(weight.shape[0], weight.shape[1]).T
        bias = _constant(graph, node.input[2], producers, inits) if len(node.input) > 2 and node.input[2] else None
        b = np.zeros(W.shape[1], np.float32) if bias is None else bias.reshape(-1)
        return node.input[0], logits, W.astype(np.float32), np.asarray(b, np.float32), True, _node_name(node)
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            raise fail("transA=1")
        B = _constant(graph, node.input[1], producers, inits)
        if B is None:
            raise fail("its weight is not a constant")
        W = float(attrs.get("alpha", 1.0)) * (B.T if attrs.get("transB", 0) else B)
        C = _constant(graph, node.input[2], producers, inits) if len(node.input) > 2 and node.input[2] else None
        b = (
            np.zeros(W.shape[1], np.float32)
            if C is None
            else float(attrs.get("beta", 1.0)) * np.broadcast_to(C, (1, W.shape[1])).reshape(-1)
        )
        return node.input[0], logits, W.astype(np.float32), np.asarray(b, np.float32), False, _node_name(node)
    b = None
    if node.op_type == "Add":
        for i in (0, 1):
            other = producers.get(node.input[1 - i])
            value = _constant(graph, node.input[i], producers, inits)
            if value is not None and other is not None and other.op_type == "MatMul":
                b, node = value, other
                break
        else:
            raise fail("not a MatMul plus a constant bias")
    if node.op_type == "MatMul":
        W = _constant(graph, node.input[1], producers, inits)
        if W is None or W.ndim != 2:
            raise fail("its right operand is not a constant matrix")
        b = np.zeros(W.shape[1], np.float32) if b is None else np.broadcast_to(b, (1, W.shape[1])).reshape(-1)
        head_name = _node_name(node) + (" + Add" if b.any() else "")
        return node.input[0], logits, W.astype(np.float32), np.asarray(b, np.float32), False, head_name
    raise fail("not Gemm, MatMul, Add or Conv")


def _node_name(node: Any) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else node.op_type


def _input_layout(model: Any, where: str, rgb: bool) -> tuple[str, bool, int | None, int | None]:
    """(input name, is NCHW, static input side in px or None, static batch size or None)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{where}: the graph has {len(inputs)} inputs; histoscale needs one image input")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != 1:  # FLOAT
        raise ModelError(f"{where}: input {inp.name!r} is not float32; re-export the model with a float32 input")
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelError(
            f"{where}: input {inp.name!r} has {len(dims)} dimensions; expected an image batch (N, C, H, W)"
        )
    if dims[1] in (1, 3):
        nchw = True
    elif dims[3] in (1, 3):
        nchw = False
    else:
        nchw = True  # symbolic channels: the PyTorch convention
    channels = dims[1] if nchw else dims[3]
    if rgb and channels is not None and channels != 3:
        raise ModelError(
            f"{where}: input {inp.name!r} has {channels} channel(s) (shape {dims}), but histoscale feeds RGB patches "
            "(3 channels); give a preprocess function turning uint8 RGB into its input (preprocess= in Python, "
            "\"preprocess\" in the model card)"
        )
    h, w = (dims[2], dims[3]) if nchw else (dims[1], dims[2])
    side = h if h is not None and h == w else None
    return inp.name, nchw, side, dims[0]


def load_onnx(request: LoadRequest) -> OnnxSplitModel:
    """Split an ONNX model (path or ``onnx.ModelProto``) and verify the split on a probe batch.

    A card stored in the model's ``metadata_props`` (:data:`CARD_KEY`, written by :func:`embed_card`) fills what
    the request lacks."""
    import onnx
    import onnxruntime as ort

    spec = request.spec
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
        if path.stat().st_size == 0:
            raise ModelError(f"model file {path} is empty (0 bytes): an interrupted export or copy? re-export it")
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model if model.ByteSize() < 2**31 - 1 else str(path))
        except Exception as err:
            raise ModelError(f"file {path} is not a valid ONNX model: {err}; re-export it") from err
    else:
        model = spec
        try:
            onnx.checker.check_model(model)
        except Exception as err:
            raise ModelError(f"{request.where}: not a valid ONNX model: {err}; re-export it") from err
    embedded = read_embedded_card(model, request.where, spec)
    if embedded is not None:
        named = request.card is None  # a card beside the file names the model; else the one inside does
        request = request.filled_from(embedded)
        if named and embedded.name:
            request = dataclasses.replace(request, name=embedded.name)
    where, name, device, precision = request.where, request.name, request.device, request.precision
    batch_size, class_names, mpp = request.batch_size, request.class_names, request.mpp
    input_size, mean, std = request.input_size, request.mean, request.std
    preprocess = request.preprocess
    sources = dict(request.sources)
    input_name, nchw, side, fixed_batch = _input_layout(model, where, rgb=preprocess is None)
    feat_name, logits_name, W, b, dense, head_name = _locate_head(model, where, request.head)
    if input_size is None:
        input_size = side or 224
        if side is not None:
            sources["input_size"] = "ONNX input shape"
    elif side is not None and side != int(input_size):
        raise ModelError(
            f"{where}: input_size {input_size} px given but the ONNX input is fixed at {side} px; use {side}"
        )

    # Ask for the head's input (and the pre-softmax logits) as extra outputs of the same graph.
    graph_outputs = {o.name for o in model.graph.output}
    for tensor in (feat_name, logits_name):
        if tensor not in graph_outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # ORT warns about the extra outputs otherwise
    providers = ["CPUExecutionProvider"]
    wants_gpu = device is None or str(device).startswith("cuda")
    if wants_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    except Exception as err:
        raise ModelError(f"{where}: ONNX Runtime cannot run the model: {err}; re-export it (opset >= 13)") from err
    if precision == "bf16":
        logger.warning("%s: ONNX models run in fp32 (bf16 asked)", where)
    pre = Preprocessing(
        int(input_size),
        tuple(mean or IMAGENET_MEAN),
        tuple(std or IMAGENET_STD),  # type: ignore[arg-type]
        preprocess,
    )
    device_name = "cuda" if providers[0].startswith("CUDA") else "cpu"
    common: dict[str, Any] = dict(
        name=name, W=W, b=b, class_names=resolve_class_names(class_names, W.shape[1], where), preprocessing=pre,
        mpp=mpp, device=device_name, precision="fp32", batch_size=batch_size or default_batch_size(device_name),
        source=where, background=request.background, sources=sources, card=request.card, format="onnx",
        head_name=head_name,
    )
    layout = (session, input_name, nchw, fixed_batch, (feat_name, logits_name))
    split = OnnxSplitModel(*layout, **common)
    probe = probe_batch(pre.input_size)
    try:
        feats, out = split._run_session(probe)
    except Exception as err:
        raise probe_failure(where, name, pre.input_size, err) from err
    if dense:  # the maps are only known now: pool them over at most DENSE_CELLS cells per side
        if feats.ndim != 4 or out.ndim != 4:
            raise ModelError(
                f"{where}: the 1x1 Conv head of {name!r} gives maps of shape {feats.shape} -> {out.shape}, not "
                "(N, M, H, W) -> (N, C, H, W)"
            )
        cells = min(DENSE_CELLS, *out.shape[2:])
        split = OnnxSplitModel(*layout, cells=cells, **common)
        feats, out = pool_cells(feats, cells), pool_cells(out, cells)
    check_split(name, where, feats, W, b, out)
    split.calibration = request.calibration  # the embedded card's, when nothing outside gave one
    split.feature_stats = request.feature_stats
    logger.info("loaded ONNX %r from %s: M=%d, C=%d, %s", name, where, W.shape[0], W.shape[1], providers[0])
    return split


def read_embedded_card(model: Any, where: str, spec: Any) -> ModelCard | None:
    """The card stored in an ONNX model's ``metadata_props`` under :data:`CARD_KEY`, or None.

    Raises:
        ModelError: the stored card is not valid JSON or not a valid card.
    """
    text = next((p.value for p in model.metadata_props if p.key == CARD_KEY), None)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"{where}: the model card in its ONNX metadata ({CARD_KEY}) is not JSON: {err}") from err
    is_path = isinstance(spec, (str, os.PathLike))
    if isinstance(data, dict):  # the card is about this very file
        data = {**data, "format": "onnx", "file": str(Path(spec).resolve()) if is_path else "<in memory>"}
    return card_from_dict(
        data, Path(spec) if is_path else None, where=f"{where}: model card in the ONNX metadata", kind="ONNX metadata of"
    )


def embed_card(path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Store ``card`` (input size, mean/std, class names, um/px, ...) in the ONNX file at ``path``
    (``metadata_props``, key :data:`CARD_KEY`), so that the file alone describes the model. Returns ``path``."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    data = {k: v for k, v in card_to_dict(card).items() if k not in ("format", "file")}
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, CARD_KEY: json.dumps(data)})
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def _claims(request: LoadRequest) -> bool:
    return request.fmt == "onnx" or request.suffix == ".onnx" or type(request.spec).__name__ == "ModelProto"


register_format(ModelFormat("onnx", _claims, load_onnx))
