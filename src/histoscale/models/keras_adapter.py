"""Keras 3 models (``.keras`` files) split at their last Dense layer; optional (``pip install histoscale[keras]``).

Keras runs on its torch backend unless the caller has already chosen another one (``KERAS_BACKEND``).
A Dense head with a softmax activation is accepted (the paper's TensorFlow head is ``Dense(5, softmax)``):
W and b are its kernel and bias, and :meth:`KerasSplitModel.forward_logits` returns the pre-softmax scores.
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
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    SplitModel,
    check_split,
    default_batch_size,
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
    """A Keras model with a sub-model ending at the input of its last Dense layer."""

    def __init__(self, model: Any, feature_model: Any, logits_model: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self._feature_model = feature_model
        self._logits_model = logits_model
        self._scale, self._offset = self.preprocessing.scale_offset()

    def _predict(self, net: Any, chunk: np.ndarray) -> np.ndarray:
        x = chunk.astype(np.float32) * self._scale - self._offset  # Keras images are NHWC already
        return np.asarray(net.predict_on_batch(x), np.float32)

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
            raise ModelError(f"file {path} is not a loadable Keras model: {err}; re-save it with model.save()") from err
    else:
        model = spec
    dense = next((layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense)), None)
    if dense is None:
        raise ModelError(f"{where}: no final linear layer found: the Keras model has no Dense layer")
    activation = getattr(dense.activation, "__name__", str(dense.activation))
    if activation not in ("linear", "softmax"):
        raise ModelError(
            f"{where}: the last Dense layer {dense.name!r} applies {activation!r}; expected linear or softmax"
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
    kernel, *rest = [np.asarray(keras.ops.convert_to_numpy(w), np.float32) for w in dense.weights]
    b = rest[0] if rest else np.zeros(kernel.shape[1], np.float32)
    try:
        feature_model = keras.Model(model.inputs, dense.input)
    except Exception as err:
        raise ModelError(
            f"{where}: cannot build a sub-model up to Dense {dense.name!r} ({err}); use a functional model"
        ) from err
    if activation == "linear":
        logits_model = model
    else:
        # Same kernel and bias without the softmax, applied to the same feature tensor.
        linear = keras.layers.Dense(kernel.shape[1], activation=None, name=f"{dense.name}_logits")
        logits_model = keras.Model(model.inputs, linear(dense.input))
        linear.set_weights([kernel, b])
        logger.info("%s: Dense %r has softmax; forward_logits returns its pre-softmax scores", where, dense.name)
    if precision == "bf16":
        logger.warning("%s: Keras models run in fp32 (bf16 asked)", where)
    split = KerasSplitModel(
        model,
        feature_model,
        logits_model,
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
        sources=sources,
        card=request.card,
        format="keras",
        head_name=f"Dense {dense.name!r}",
    )
    probe = probe_batch(split.input_size)
    try:
        feats, out = split._features_chunk(probe), split._forward_chunk(probe)
    except Exception as err:
        raise ModelError(f"{where}: model {name!r} failed on a probe batch of {split.input_size} px: {err}") from err
    check_split(name, where, feats, kernel, b, out)
    return split


def _claims(request: LoadRequest) -> bool:
    return (
        request.fmt == "keras" or request.suffix in (".keras", ".h5")
        or type(request.spec).__module__.startswith("keras")
    )


register_format(ModelFormat("keras", _claims, load_keras))
