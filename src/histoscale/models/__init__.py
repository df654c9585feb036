"""Any trained patch classifier, split into features Phi and its final linear layer (W, b).

:func:`load_model` returns a :class:`SplitModel` for PyTorch modules (timm-style or arbitrary), TorchScript
files, state dicts with a factory and pickled checkpoints (opt-in) (:mod:`~histoscale.models.torch_adapter`),
ONNX files (:mod:`~histoscale.models.onnx_adapter`) and Keras 3 files (:mod:`~histoscale.models.keras_adapter`),
described by a model card: given, found beside the file (:func:`find_card`: a histoscale card, a WSInfer or a
timm / Hugging Face ``config.json``), or stored inside an ONNX file. Each value the model is described by keeps
its source (:meth:`SplitModel.describe`). Frameworks are imported only by their adapter, when used.
"""

from histoscale.models.card import CARD_FORMATS, ModelCard, load_card, save_card
from histoscale.models.contract import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, SplitModel
from histoscale.models.discovery import CARD_NAMES, find_card, read_card
from histoscale.models.registry import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    LoadRequest,
    ModelFormat,
    bundled_card,
    load_model,
    register_format,
)

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "CARD_FORMATS",
    "CARD_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadRequest",
    "ModelCard",
    "ModelFormat",
    "Preprocessing",
    "SplitModel",
    "bundled_card",
    "find_card",
    "load_card",
    "load_model",
    "read_card",
    "register_format",
    "save_card",
]
