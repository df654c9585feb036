"""Loading any classifier: a registry of model formats that each adapter fills, and :func:`load_model`.

An adapter module (``torch_adapter``, ``onnx_adapter``, ``keras_adapter``, or your own) calls
:func:`register_format` with a predicate that recognises what it reads and a loader. :func:`load_model`
normalises the request (card, overrides, names) and asks the formats in registration order, importing the
built-in adapters only as far as needed: an ONNX user never imports torch, a torch user never imports Keras.
Adding a model format is one module that calls :func:`register_format` (import it before loading).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from histoscale.calibration import ScaleCalibration, calibration_from
from histoscale.domain import FeatureStats
from histoscale.errors import ConfigError, ModelError
from histoscale.models.card import ModelCard
from histoscale.models.contract import SplitModel
from histoscale.models.discovery import find_card, looked_for, model_in_folder, read_card

__all__ = ["BUNDLED_MODELS", "DEFAULT_MODEL", "LoadRequest", "ModelFormat", "Precision", "load_model", "register_format"]

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]

# Tried in this order after the formats registered by users; torch last: it claims what nobody else does.
_BUILTIN_ADAPTERS = (
    "histoscale.models.onnx_adapter",
    "histoscale.models.keras_adapter",
    "histoscale.models.torch_adapter",
)


@dataclass(frozen=True)
class LoadRequest:
    """Everything a loader needs, resolved from the arguments and the card (arguments win).

    ``spec`` is a path or an in-memory model; ``fmt`` the card's format (or None); ``where`` names the source
    in messages; ``device`` None means "the best available"; ``batch_size`` None means the adapter's default.
    ``sources`` says where each given value came from (keys of :data:`~histoscale.models.contract.DEFAULT_SOURCES`:
    "argument", or a card's :meth:`~ModelCard.describe`); ``card`` describes the card used, if any.
    """

    spec: Any
    fmt: str | None
    where: str
    name: str
    device: str | None
    precision: Precision
    batch_size: int | None
    class_names: Sequence[str] | None
    mpp: float | None
    input_size: int | None
    mean: Sequence[float] | None
    std: Sequence[float] | None
    head: str | None
    factory: str | Callable[..., Any] | None
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False
    preprocess: str | Callable[..., Any] | None = None
    background: str | None = None
    calibration: ScaleCalibration | None = None
    feature_stats: FeatureStats | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    card: str | None = None

    def filled_from(self, card: ModelCard) -> LoadRequest:
        """This request with the values it lacks taken from ``card`` (what is given wins), and their source."""
        changes: dict[str, Any] = {}
        sources = dict(self.sources)
        source = card.describe()
        for key, kind in _CARD_FIELDS.items():
            value = getattr(card, key)
            if getattr(self, key) is None and value is not None:
                changes[key] = value
                sources.setdefault(kind, source)
        if not self.factory_kwargs and card.factory_kwargs:
            changes["factory_kwargs"] = card.factory_kwargs
        if self.fmt is None:
            changes["fmt"] = card.format
        return dataclasses.replace(self, **changes, sources=sources, card=self.card or source)

    @property
    def suffix(self) -> str:
        """The lower-case file suffix of a path ``spec`` ("" for in-memory models)."""
        return Path(self.spec).suffix.lower() if isinstance(self.spec, (str, os.PathLike)) else ""


@dataclass(frozen=True)
class ModelFormat:
    """A model format: ``claims(request)`` says whether ``load(request)`` reads it. A ``fallback`` format (torch:
    any path or module) is asked only after every other format declined."""

    name: str
    claims: Callable[[LoadRequest], bool]
    load: Callable[[LoadRequest], SplitModel]
    fallback: bool = False


_FORMATS: list[ModelFormat] = []

# Request fields a card may fill, and the provenance key each one answers for.
_CARD_FIELDS = {
    "class_names": "class_names", "mpp": "mpp", "input_size": "input_size", "mean": "preprocessing",
    "std": "preprocessing", "preprocess": "preprocessing", "head": "head", "factory": "factory",
    "background": "background", "calibration": "calibration", "feature_stats": "feature_stats",
}


def register_format(fmt: ModelFormat) -> ModelFormat:
    """Add (or replace, by name) a model format; returns it."""
    _FORMATS[:] = [f for f in _FORMATS if f.name != fmt.name]
    _FORMATS.append(fmt)
    return fmt


def _formats_to_try() -> Iterator[ModelFormat]:
    """Registered formats, importing the built-in adapters one by one as the earlier ones decline; fallbacks last."""
    tried: set[str] = set()
    for module in (None, *_BUILTIN_ADAPTERS):
        if module is not None:
            importlib.import_module(module)
        for fmt in list(_FORMATS):
            if not fmt.fallback and fmt.name not in tried:
                tried.add(fmt.name)
                yield fmt
    yield from (fmt for fmt in list(_FORMATS) if fmt.fallback)


# The models that ship inside the package, by the name ``--model`` / ``load_model`` take, and their cards.
# "reference-he" (the default) knows real H&E at 0.5 um/px; "phantom" knows only histoscale's phantom tissue
# (tests, the phantom demo), as a torch state dict or ("phantom-onnx") the same weights in ONNX.
BUNDLED_MODELS = {
    "reference-he": "reference-he.json",
    "phantom": "reference.json",
    "phantom-onnx": "reference-onnx.json",
}
DEFAULT_MODEL = "reference-he"


def bundled_card(name: str = DEFAULT_MODEL) -> Path:
    """The card file of the bundled model ``name`` (:data:`BUNDLED_MODELS`).

    Raises:
        ConfigError: an unknown name. ModelError: the card is missing from the installation.
    """
    from importlib.resources import files

    if name not in BUNDLED_MODELS:
        raise ConfigError(f"no bundled model {name!r}: the bundled models are {', '.join(BUNDLED_MODELS)}")
    card = Path(str(files("histoscale") / "assets" / BUNDLED_MODELS[name]))
    if not card.is_file():
        raise ModelError(
            f"the bundled model card {card} is missing; reinstall histoscale, or pass your own model"
        )
    return card


def load_model(
    spec: Any = None,
    *,
    card: ModelCard | str | os.PathLike[str] | None = None,
    head: str | None = None,
    factory: str | Callable[..., Any] | None = None,
    allow_pickle: bool = False,
    device: str | None = None,
    precision: Precision = "auto",
    batch_size: int | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mpp: float | None = None,
    preprocess: str | Callable[..., Any] | None = None,
    background: str | None = None,
    calibration: ScaleCalibration | Mapping[str, Any] | str | os.PathLike[str] | None = None,
) -> SplitModel:
    """Load a classifier and split it into features (Phi) and its final linear layer (W, b).

    Args:
        spec: None (the bundled reference model for real H&E, :data:`DEFAULT_MODEL`), the name of a bundled
            model (:data:`BUNDLED_MODELS`: ``"reference-he"``, ``"phantom"``, ``"phantom-onnx"``), an ``nn.Module`` (put in eval mode and moved to ``device`` in
            place), an ``onnx.ModelProto``, a Keras model, or a path: model card ``.json``, TorchScript /
            state dict / pickled checkpoint (``.pt``, ``.pth``, ``.ts``, ...), ``.safetensors``, ``.onnx``,
            ``.keras``, a WSInfer or timm / Hugging Face ``config.json``, or a folder holding one model file and its
            ``config.json``. A model file without ``card`` is described by the first card beside it
            (:data:`~histoscale.models.discovery.CARD_NAMES`: ``<stem>.json``, ``<stem>.card.json``,
            ``config.json``; a WSInfer or timm config counts), else by the card inside an ONNX file.
        card: a model card (object or JSON path: histoscale card, WSInfer or timm config) describing ``spec``;
            its keys fill what is not given here. The model's ``sources`` record where each value came from, and a
            warning is logged for what had to be assumed (``model.missing``).
        head: name of the final layer when automatic detection is not wanted: a torch submodule, an ONNX node or
            a Keras layer; a linear layer, or a 1x1 convolution for a segmentation model (whose split features
            are its map averaged over cells, see :mod:`histoscale.models.contract`).
        factory: ``"module:callable"`` or a callable building the architecture for a state dict.
        allow_pickle: allow full unpickling of checkpoints (runs code stored in the file). A card saying
            ``"torch-pickle"`` does not grant it: only the caller does.
        device: "cpu", "cuda", ...; None picks CUDA when available.
        precision: "auto" uses bf16 only on CUDA GPUs that support it, else fp32.
        batch_size: patches per forward pass; None: 16 on CPU (larger batches fall out of cache and run slower,
            measured on DenseNet121: 18 patches/s at 8, 10 at 64), 64 on GPUs.
        class_names, input_size (px), mean, std (0..1 RGB), mpp (um/px at training): override the card.
        preprocess: ``"module:function"`` or a callable turning uint8 RGB (N, S, S, 3) into the model's float32
            (N, C, S, S) input, for models that do not take normalised RGB (see :class:`Preprocessing`); torch
            and ONNX.
        background: the class a segmentation model's scale search leaves out of its pooling over cells (see
            :mod:`histoscale.scoring`); None: every cell counts.
        calibration: where the model's margins peak: a :class:`~histoscale.calibration.ScaleCalibration`, its
            dict, or the JSON file ``histoscale calibrate --out`` wrote; overrides the card's.

    Raises:
        ModelError: the model cannot be loaded or split; the message names the file and the fix.
        ConfigError: contradictory or invalid arguments.
    """
    cal = None if calibration is None else calibration_from(calibration)
    given = {"input_size": input_size, "class_names": class_names, "mpp": mpp, "head": head, "factory": factory}
    sources = {k: "argument" for k, v in given.items() if v is not None}
    if cal is not None:
        sources["calibration"] = f"file {calibration}" if isinstance(calibration, (str, os.PathLike)) else "argument"
    if mean is not None or std is not None or preprocess is not None:
        sources["preprocessing"] = "argument"
    if spec is None and card is None:
        card = bundled_card()
    elif isinstance(spec, str) and spec in BUNDLED_MODELS and card is None and not Path(spec).exists():
        card, spec = bundled_card(spec), None
    # Messages name what the caller gave: the model file or folder, else the card.
    asked = str(spec) if isinstance(spec, (str, os.PathLike)) and Path(spec).suffix.lower() != ".json" else None
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if path.suffix.lower() == ".json":
            if card is not None:
                raise ConfigError("give the model card either as spec or as card=, not both")
            card, spec = read_card(path), None
        elif path.is_dir():
            spec, found = model_in_folder(path)
            card = card if card is not None else found
        elif card is None:
            card = find_card(path)
            if card is not None:
                logger.info("%s: using %s, found beside it", path, card.describe())
    if card is not None and not isinstance(card, ModelCard):
        card = read_card(card)
    if card is not None and spec is None:
        spec = card.resolve_file()

    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    is_path = isinstance(spec, (str, os.PathLike))
    where = asked or (str(card.path) if card is not None and card.path is not None else (
        str(spec) if is_path else type(spec).__name__
    ))
    name = (card.name if card is not None else None) or (Path(spec).stem if is_path else type(spec).__name__)
    request = LoadRequest(
        spec=spec, fmt=None, where=where, name=name, device=device, precision=precision, batch_size=batch_size,
        class_names=class_names, mpp=mpp, input_size=input_size, mean=mean, std=std, head=head, factory=factory,
        allow_pickle=allow_pickle, preprocess=preprocess, background=background, calibration=cal,
        sources=sources,
    )
    if card is not None:
        request = request.filled_from(card)
    if request.mpp is not None and not float(request.mpp) > 0:
        raise ConfigError(f"mpp (the model's training um/px) must be > 0, got {request.mpp}")
    for fmt in _formats_to_try():
        if fmt.claims(request):
            return _described(fmt.load(request), request, fmt.name)
    raise ModelError(f"cannot load a model from {where}: give a path, an nn.Module, an ONNX or Keras model, or a card")


def _described(model: SplitModel, request: LoadRequest, fmt: str) -> SplitModel:
    """Complete the model's provenance with the request's and say loudly what had to be assumed."""
    model.sources.update(request.sources)
    model.card = model.card or request.card
    if request.calibration is not None:
        model.calibration = request.calibration
    if request.feature_stats is not None:
        model.feature_stats = request.feature_stats
    model.format = model.format or fmt
    if isinstance(request.spec, (str, os.PathLike)):
        model.file = str(request.spec)
    if model.missing:
        beside = (
            f" (no model card found beside it: looked for {looked_for(request.spec)})"
            if isinstance(request.spec, (str, os.PathLike)) and model.card is None else ""
        )
        logger.warning(
            "%s: the model's %s unknown%s; assumed: %s. The search relies on them: write a model card "
            "(README, 'Your own model') or pass them (input_size=, mean=, std=, mpp=)",
            request.where, " and ".join(model.missing), beside, _assumed(model),
        )
    return model


def _assumed(model: SplitModel) -> str:
    """The defaults standing in for what is missing, for the warning."""
    pre = model.preprocessing
    parts = {
        "preprocessing (mean/std)": f"ImageNet mean {pre.mean} / std {pre.std}",
        "training um/px": "none (the metadata check cannot compare: UNKNOWN-MODEL-MPP)",
        "input size": f"{pre.input_size} px",
    }
    return "; ".join(parts[m] for m in model.missing)
