"""Model cards: a JSON file beside the weights saying what file holds the model, how to build it and how it
expects its input (input size, mean/std, class names, training um/px)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoscale._files import atomic_path, read_json
from histoscale.calibration import ScaleCalibration
from histoscale.domain import FeatureStats
from histoscale.errors import ConfigError, ModelError

__all__ = ["CARD_FORMATS", "ModelCard", "card_from_dict", "card_to_dict", "load_card", "read_card_json", "save_card"]

CARD_FORMATS = ("torch-state-dict", "torchscript", "onnx", "keras", "torch-pickle")

# Not card keys: where the card was read from, and what kind of document it was.
_NOT_SAVED = ("path", "extra", "kind")


@dataclass(frozen=True)
class ModelCard:
    """A model card: what file holds the model, how to build it and how it expects its input.

    ``file`` is relative to the card's folder (``path``). ``mpp`` is the resolution in um/px the model's input
    pixels had in training, if known. ``format`` is one of :data:`CARD_FORMATS`, or None (the adapters tell by the
    file). ``head`` names the final layer when it is not found automatically (a torch submodule, an ONNX node, a
    Keras layer: a linear layer, or a 1x1 convolution for a segmentation model); ``background`` names the class a
    segmentation model's scale search leaves out (see :mod:`histoscale.scoring`). ``calibration`` says where the
model's margins peak (:mod:`histoscale.calibration`, written by ``histoscale calibrate``); ``feature_stats`` what its
    training patches' features look like (:mod:`histoscale.domain`: the search says when a slide lies outside). ``extra`` keeps unknown keys so
    that :func:`save_card` round-trips them. ``kind`` says what the card was read from ("model card", "WSInfer
    config", "timm/Hugging Face config", "ONNX metadata"), for provenance.
    """

    format: str | None
    file: str
    factory: str | None = None
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names: tuple[str, ...] | None = None
    mpp: float | None = None
    head: str | None = None
    preprocess: str | None = None
    background: str | None = None
    calibration: ScaleCalibration | None = None
    feature_stats: FeatureStats | None = None
    name: str | None = None
    path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "model card"

    def resolve_file(self) -> Path:
        """Absolute path of the model file (relative paths are taken from the card's folder)."""
        file = Path(self.file).expanduser()
        if not file.is_absolute() and self.path is not None:
            file = Path(self.path).parent / file
        return file

    def describe(self) -> str:
        """Where the card came from, for messages and provenance: e.g. ``"WSInfer config /models/x/config.json"``."""
        return f"{self.kind} {self.path}" if self.path is not None else self.kind


def read_card_json(path: Path) -> Any:
    """The JSON document of a model card or model config at ``path``.

    Raises:
        ModelError: missing, a folder, or not JSON, naming the file.
    """
    return read_json(path, "model card", ModelError,
                     "give a histoscale model card, or a WSInfer or timm config.json (fix or re-save it)")


def card_from_dict(data: Any, path: Path | None, *, where: str, kind: str = "model card") -> ModelCard:
    """Validate a card's JSON object (keys: see :class:`ModelCard`); ``where`` names it in messages.

    Raises:
        ModelError: not an object, ``format`` / ``file`` missing or unknown, invalid values.
    """
    if not isinstance(data, dict):
        raise ModelError(f"{where} must hold a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(ModelCard)} - set(_NOT_SAVED)
    missing = [k for k in ("format", "file") if k not in data]
    if missing:
        raise ModelError(f"{where} lacks {missing}; add 'format' (one of {CARD_FORMATS}) and 'file'")
    if data["format"] not in CARD_FORMATS:
        raise ModelError(f"{where}: format {data['format']!r} is unknown; use one of {CARD_FORMATS}")
    kwargs = {k: v for k, v in data.items() if k in known}
    for key in ("mean", "std", "class_names"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("mpp") is not None and not float(kwargs["mpp"]) > 0:
        raise ModelError(f"{where}: mpp must be > 0 um/px, got {kwargs['mpp']}")
    if kwargs.get("calibration") is not None:
        try:
            kwargs["calibration"] = ScaleCalibration.from_dict(kwargs["calibration"])
        except ConfigError as err:
            raise ModelError(f"{where}: {err}") from None
    if kwargs.get("feature_stats") is not None:
        try:
            kwargs["feature_stats"] = FeatureStats.from_dict(kwargs["feature_stats"])
        except ConfigError as err:
            raise ModelError(f"{where}: {err}") from None
    if not isinstance(kwargs.get("factory_kwargs", {}), dict):
        raise ModelError(f"{where}: factory_kwargs must be a JSON object")
    extra = {k: v for k, v in data.items() if k not in known}
    return ModelCard(**kwargs, path=path, extra=extra, kind=kind)


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a model card JSON file (keys: see :class:`ModelCard`)."""
    path = Path(path)
    return card_from_dict(read_card_json(path), path, where=f"model card {path}")


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """The card's JSON object: set keys only, unknown keys (``extra``) kept."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(ModelCard):
        value = getattr(card, f.name)
        if f.name in _NOT_SAVED or value is None or (f.name == "factory_kwargs" and not value):
            continue
        if isinstance(value, (ScaleCalibration, FeatureStats)):
            data[f.name] = value.to_dict()
            continue
        data[f.name] = (
            list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, Mapping) else value)
        )
    data.update(card.extra)
    return data


def save_card(card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Write ``card`` as JSON to ``path`` (atomically); ``file`` is stored as given, relative to the card."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card_to_dict(card), indent=2) + "\n", encoding="utf-8")
    return path
