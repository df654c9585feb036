"""Keras 3 models (``.keras`` files) split at their last Dense layer; optional (``pip install histoscale[keras]``).

Keras runs on its torch backend unless the caller has already chosen another one (``KERAS_BACKEND``).
A Dense head with a softmax activation is accepted (the paper's TensorFlow head is ``Dense(5, softmax)``):
W and b are its kernel and bias, and :meth:`KerasSplitModel.forward_logits` returns the pre-softmax scores.
A segmentation model ends in a ``Conv2D`` with a 1x1 kernel and stride 1 (linear, softmax or sigmoid): its input
and pre-activation output maps are averaged over cells (:func:`~histoscale.models.contract.pool_cells`).
``head`` names the layer to split at instead of the last Dense / Conv2D.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from histoscale.errors import ConfigError, ModelError
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
    resolve_class_names,
)
from histoscale.models.registry import LoadRequest, ModelFormat, register_format

__all__ = ["KerasSplitModel", "load_keras"]

logger = logging.getLogger(__name__)


def _import_keras() -> Any:
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")  # the backend histoscale already depends on
    try:
        import keras
    except Exception as err:
        raise ModelError(f"Keras models need keras 3: pip install histoscale[keras] ({err})") from err
    if int(keras.__version__.split(".")[0]) < 3:
        raise ModelError(f"Keras models need keras >= 3, found {keras.__version__}: pip install -U 'keras>=3'")
    return keras


class KerasSplitModel(SplitModel):
    """A Keras model with a sub-model ending at the input of its last Dense (or 1x1 Conv2D) layer."""

    def __init__(
        self, model: Any, feature_model: Any, logits_model: Any, channels_last: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self._feature_model = feature_model
        self._logits_model = logits_model
        self._channels_last = channels_last  # of a segmentation head's maps
        self._scale, self._offset = self.preprocessing.scale_offset()

    def _predict(self, net: Any, chunk: np.ndarray) -> np.ndarray:
        x = chunk.astype(np.float32) * self._scale - self._offset  # Keras images are NHWC already
        out = np.asarray(net.predict_on_batch(x), np.float32)
        return out if self.cells is None else pool_cells(out, self.cells, channels_last=self._channels_last)

    def _features_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._predict(self._feature_model, chunk)

    def _forward_chunk(self, chunk: np.ndarray) -> np.ndarray:
        return self._predict(self._logits_model, chunk)


def load_keras(request: LoadRequest) -> KerasSplitModel:
    """Split a Keras 3 model (path or model object) at its last Dense layer and verify on a probe batch."""
    spec, where, name, device, precision = (
        request.spec, request.where, request.name, request.device, request.precision
    )
    batch_size, class_names, mpp = request.batch_size, request.class_names, request.mpp
    input_size, mean, std = request.input_size, request.mean, request.std
    if request.preprocess is not None:
        raise ConfigError(
            f"{where}: a preprocess function is supported for torch and ONNX models; export the Keras model "
            "to ONNX (tf2onnx) or drop 'preprocess' from the card"
        )
    keras = _import_keras()
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as err:
            raise ModelError(_load_failure(path, err)) from err
    else:
        model = spec
    head = _head_layer(keras, model, request.head, where)
    conv = isinstance(head, keras.layers.Conv2D)
    activation = getattr(head.activation, "__name__", str(head.activation))
    if activation not in ("linear", "softmax") + (("sigmoid",) if conv else ()):
        raise ModelError(
            f"{where}: the head, {type(head).__name__} layer {head.name!r}, applies {activation!r}; expected linear or "
            "softmax" + (" or sigmoid" if conv else "")
        )
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ModelError(f"{where}: model input shape {shape} is not an NHWC image batch")
    if shape[-1] != 3:
        raise ModelError(
            f"{where}: the model takes {shape[-1]} channel(s), but histoscale feeds RGB patches (3 channels)"
        )
    side = shape[1] if shape[1] is not None and shape[1] == shape[2] else None
    sources = dict(request.sources)
    if input_size is None and side is not None:
        sources["input_size"] = "Keras input shape"
    input_size = input_size or side or 224
    kernel, *rest = [np.asarray(keras.ops.convert_to_numpy(w), np.float32) for w in head.weights]
    b = rest[0] if rest else np.zeros(kernel.shape[-1], np.float32)
    try:
        feature_model = keras.Model(model.inputs, head.input)
    except Exception as err:
        raise ModelError(
            f"{where}: cannot build a sub-model up to {type(head).__name__} {head.name!r} ({err}); use a functional "
            "model"
        ) from err
    if activation == "linear" and (request.head is None or head is model.layers[-1]):
        logits_model = model
    else:
        # Same kernel and bias without the activation, applied to the same feature tensor.
        kind = keras.layers.Conv2D if conv else keras.layers.Dense
        extra = {"data_format": head.data_format} if conv else {}
        linear = kind(kernel.shape[-1], **({"kernel_size": 1} if conv else {}), activation=None,
                      name=f"{head.name}_logits", **extra)
        logits_model = keras.Model(model.inputs, linear(head.input))
        linear.set_weights([kernel, b])
        logger.info("%s: %r applies %s; forward_logits returns its pre-activation scores", where, head.name, activation)
    kernel = kernel.reshape(-1, kernel.shape[-1])  # a 1x1 Conv2D kernel (1, 1, M, C) -> (M, C)
    if precision == "bf16":
        logger.warning("%s: Keras models run in fp32 (bf16 asked)", where)
    common: dict[str, Any] = dict(
        name=name,
        W=kernel,
        b=b,
        class_names=resolve_class_names(class_names, kernel.shape[1], where),
        preprocessing=Preprocessing(int(input_size), tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)),  # type: ignore[arg-type]
        mpp=mpp,
        device=str(device or "cpu"),
        precision="fp32",
        batch_size=batch_size or default_batch_size(str(device or "cpu")),
        source=where,
        background=request.background,
        sources=sources,
        card=request.card,
        format="keras",
        head_name=f"{type(head).__name__} {head.name!r}",
    )
    channels_last = not conv or head.data_format == "channels_last"
    split = KerasSplitModel(model, feature_model, logits_model, channels_last, **common)
    probe = probe_batch(split.input_size)
    try:
        feats, out = split._features_chunk(probe), split._forward_chunk(probe)
    except Exception as err:
        raise ModelError(f"{where}: model {name!r} failed on a probe batch of {split.input_size} px: {err}") from err
    if conv:  # the maps are only known now: pool them over at most DENSE_CELLS cells per side
        cells = min(DENSE_CELLS, *(out.shape[1:3] if channels_last else out.shape[2:]))
        split = KerasSplitModel(model, feature_model, logits_model, channels_last, cells=cells, **common)
        feats = pool_cells(feats, cells, channels_last=channels_last)
        out = pool_cells(out, cells, channels_last=channels_last)
    check_split(name, where, feats, kernel, b, out)
    return split


def _head_layer(keras: Any, model: Any, head: str | None, where: str) -> Any:
    """The layer named ``head``, else the last Dense or Conv2D layer; a Conv2D must be 1x1 with stride 1."""
    kinds = (keras.layers.Dense, keras.layers.Conv2D)
    if head is not None:
        try:
            layer = model.get_layer(head)
        except ValueError as err:
            names = [layer.name for layer in model.layers if isinstance(layer, kinds)]
            raise ModelError(
                f"{where}: the Keras model has no layer named {head!r}; its Dense and Conv2D layers: {names}"
            ) from err
        if not isinstance(layer, kinds):
            raise ModelError(f"{where}: head {head!r} is a {type(layer).__name__}, not a Dense or 1x1 Conv2D layer")
    else:
        layer = next((layer for layer in reversed(model.layers) if isinstance(layer, kinds)), None)
        if layer is None:
            raise ModelError(f"{where}: no final linear layer found: the Keras model has no Dense or Conv2D layer")
    if isinstance(layer, keras.layers.Conv2D) and (
        tuple(layer.kernel_size) != (1, 1) or tuple(layer.strides) != (1, 1) or getattr(layer, "groups", 1) != 1
    ):
        raise ModelError(
            f"{where}: layer {layer.name!r} is a {type(layer).__name__} with kernel {tuple(layer.kernel_size)}"
            f" and strides {tuple(layer.strides)}, not a 1x1 convolution of stride 1 (a per-pixel linear "
            "classifier); name the head with head=..."
        )
    return layer


def _claims(request: LoadRequest) -> bool:
    return (
        request.fmt == "keras" or request.suffix in (".keras", ".h5")
        or type(request.spec).__module__.startswith("keras")
    )


register_format(ModelFormat("keras", _claims, load_keras))


def _load_failure(path: Path, err: Exception) -> str:
    """The message for a .keras file Keras cannot load, with a route the user can take."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            whole = {"config.json", "model.weights.h5"} <= set(archive.namelist())
        if whole:
            # A complete archive whose saved config no longer deserialises (e.g. a nested model saved by an older
            # Keras): the weights are intact, only the rebuild from config fails.
            return (
                f"Keras cannot rebuild the model saved in {path} from its config ({err}); its weights are intact: "
                "build the same architecture in Python, call model.load_weights(path) on it and pass the model "
                "object to histoscale.load_model (or export it to ONNX from an environment where it loads); "
                "without TensorFlow, set KERAS_BACKEND=torch before importing keras yourself"
            )
    return f"file {path} is not a loadable Keras model ({err}): an incomplete copy? re-copy it, or re-save it with model.save()"
