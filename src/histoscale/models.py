"""Load any trained patch classifier and split it into features (Phi) and its final linear layer (W, b).

The scale search needs, for a classifier, the feature vector entering its final linear layer and that layer's
weights: ``logits = features(batch) @ W + b``. :func:`load_model` returns a :class:`SplitModel` that provides
exactly this for PyTorch modules (timm-style or arbitrary), TorchScript files, state dicts with a factory and
pickled checkpoints (opt-in) (:mod:`histoscale.torch_adapter`), ONNX files (:mod:`histoscale.onnx_adapter`) and
Keras 3 files (:mod:`histoscale.keras_adapter`), described by an optional model card JSON.

Every adapter verifies the split on a probe batch: ``features @ W + b`` must reproduce the model's own output.
Patches enter as uint8 RGB, NHWC, (N, S, S, 3) with S == ``input_size``; features leave as float32 (N, M).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from histoscale.atomic import atomic_path
from histoscale.errors import ConfigError, ModelError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "ModelCard",
    "SplitModel",
    "load_card",
    "save_card",
    "load_model",
    "bf16_supported",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CARD_FORMATS = ("torch-state-dict", "torchscript", "onnx", "keras", "torch-pickle")
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB patches become model input: ``(x / 255 - mean) / std`` at ``input_size`` x ``input_size`` px.

    ``mean`` and ``std`` are per RGB channel for 0..1-scaled values, as in timm's pretrained config.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if int(self.input_size) <= 0:
            raise ConfigError(f"input_size must be a positive number of pixels, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (R, G, B), got mean={self.mean}, std={self.std}")
        if any(float(s) <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std}")
        object.__setattr__(self, "input_size", int(self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``scale``, ``offset`` (float32, (3,)) such that input = uint8 * scale - offset."""
        std = np.asarray(self.std, np.float32)
        return (1.0 / (255.0 * std)).astype(np.float32), (np.asarray(self.mean, np.float32) / std).astype(np.float32)


@dataclass(frozen=True)
class ModelCard:
    """A model card: what file holds the model, how to build it and how it expects its input.

    ``file`` is relative to the card's folder (``path``). ``mpp`` is the resolution in um/px the model was trained
    at, if known. ``extra`` keeps unknown keys so that :func:`save_card` round-trips them.
    """

    format: str
    file: str
    factory: str | None = None
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    class_names: tuple[str, ...] | None = None
    mpp: float | None = None
    head: str | None = None
    name: str | None = None
    path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def resolve_file(self) -> Path:
        """Absolute path of the model file (relative paths are taken from the card's folder)."""
        file = Path(self.file).expanduser()
        if not file.is_absolute() and self.path is not None:
            file = Path(self.path).parent / file
        return file


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a model card JSON file (keys: see :class:`ModelCard`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelError(f"model card {path} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"model card {path} is not readable JSON: {err}; fix or re-save the card") from err
    if not isinstance(data, dict):
        raise ModelError(f"model card {path} must hold a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(ModelCard)} - {"path", "extra"}
    missing = [k for k in ("format", "file") if k not in data]
    if missing:
        raise ModelError(f"model card {path} lacks {missing}; add 'format' (one of {CARD_FORMATS}) and 'file'")
    if data["format"] not in CARD_FORMATS:
        raise ModelError(f"model card {path}: format {data['format']!r} is unknown; use one of {CARD_FORMATS}")
    kwargs = {k: v for k, v in data.items() if k in known}
    for key in ("mean", "std", "class_names"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("mpp") is not None and not float(kwargs["mpp"]) > 0:
        raise ModelError(f"model card {path}: mpp must be > 0 um/px, got {kwargs['mpp']}")
    if not isinstance(kwargs.get("factory_kwargs", {}), dict):
        raise ModelError(f"model card {path}: factory_kwargs must be a JSON object")
    extra = {k: v for k, v in data.items() if k not in known}
    return ModelCard(**kwargs, path=path, extra=extra)


def save_card(card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Write ``card`` as JSON to ``path`` (atomically); ``file`` is stored as given, relative to the card."""
    path = Path(path)
    data: dict[str, Any] = {}
    for f in dataclasses.fields(ModelCard):
        value = getattr(card, f.name)
        if f.name in ("path", "extra") or value is None or (f.name == "factory_kwargs" and not value):
            continue
        data[f.name] = (
            list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, Mapping) else value)
        )
    data.update(card.extra)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 matmuls are accelerated on ``device``: CUDA with bf16, or x86 CPUs with AMX/AVX512-BF16.

    Emulated bf16 is two orders of magnitude slower than fp32 on other CPUs, hence the strict check.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _resolve_device(device: str | None) -> torch.device:
    return torch.device(device if device else ("cuda" if torch.cuda.is_available() else "cpu"))


def _resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        # CPUs stay fp32 even with avx512_bf16: autocast measured slower there (SmallCNN 766 vs 922 patches/s)
        return "bf16" if device.type == "cuda" and bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        logger.warning("bf16 asked on %s without bf16 hardware support: expect it to be much slower than fp32", device)
    return precision  # type: ignore[return-value]


def _check_split(name: str, where: str, phi: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Raise ModelError unless probe features reproduce the model's own probe output through (W, b)."""
    if out.ndim != 2:
        raise ModelError(f"{where}: model {name!r} returns shape {tuple(out.shape)}, expected (N, C) class scores")
    if phi.ndim != 2:
        raise ModelError(
            f"{where}: the input of the final linear layer of {name!r} has shape {tuple(phi.shape)}, not a flat "
            "(N, M) feature vector; histoscale needs a classifier whose head is one linear layer on pooled features"
        )
    if phi.shape[1] != W.shape[0] or out.shape[1] != W.shape[1]:
        raise ModelError(
            f"{where}: final linear layer of {name!r} maps {W.shape[0]} -> {W.shape[1]} but got features "
            f"{tuple(phi.shape)} and output {tuple(out.shape)}"
        )
    if not (np.isfinite(phi).all() and np.isfinite(out).all()):
        raise ModelError(
            f"{where}: model {name!r} produced NaN/inf features or logits on a probe batch; check the weights "
            "(a diverged or corrupt checkpoint)"
        )
    recon = phi.astype(np.float64) @ W.astype(np.float64) + b
    diff = float(np.max(np.abs(recon - out))) if out.size else 0.0
    if not diff <= 1e-3 * (1.0 + float(np.max(np.abs(out)))):
        raise ModelError(
            f"{where}: features @ W + b differs from the output of {name!r} by up to {diff:.3g}: something follows "
            "the final linear layer (softmax, an activation, scaling); export or wrap the model so it returns the "
            "raw logits of its last linear layer, or name the head with head=..."
        )


def _probe(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def _class_names(class_names: Sequence[str] | None, n: int, where: str) -> tuple[str, ...]:
    if class_names is None:
        return tuple(f"class{i}" for i in range(n))
    if len(class_names) != n:
        raise ModelError(
            f"{where}: {len(class_names)} class names given ({list(class_names)}) but the final layer has {n} outputs; "
            f"fix class_names in the card or the arguments to list {n} names"
        )
    return tuple(str(c) for c in class_names)


class SplitModel(ABC):
    """A classifier split into features ``Phi`` (N, M) and its final linear layer ``W`` (M, C), ``b`` (C,).

    Subclasses implement :meth:`_features_chunk` and :meth:`_forward_chunk` on one chunk of at most
    ``batch_size`` uint8 patches; this base validates input, chunks, and checks the numbers are finite.
    """

    def __init__(
        self,
        *,
        name: str,
        W: np.ndarray,
        b: np.ndarray,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        mpp: float | None,
        device: str,
        precision: Literal["fp32", "bf16"],
        batch_size: int,
        source: str,
    ) -> None:
        self.name = name
        self.W = np.ascontiguousarray(W, dtype=np.float32)
        self.b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        self.class_names = tuple(str(c) for c in class_names)
        self.preprocessing = preprocessing
        self.mpp = None if mpp is None else float(mpp)
        self.device = device
        self.precision = precision
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.source = source  # the file (or object) the model came from, for messages
        if self.b.shape[0] != self.W.shape[1] or len(self.class_names) != self.W.shape[1]:
            raise ModelError(
                f"{source}: {len(self.class_names)} class names and bias of {self.b.shape[0]} for a final layer with "
                f"{self.W.shape[1]} outputs; give exactly {self.W.shape[1]} class names"
            )

    @property
    def input_size(self) -> int:
        """Patch side in px the model expects."""
        return self.preprocessing.input_size

    @property
    def num_features(self) -> int:
        """M, the length of the feature vector."""
        return int(self.W.shape[0])

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return int(self.W.shape[1])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, M={self.num_features}, C={self.num_classes}, "
            f"input_size={self.input_size}, mpp={self.mpp}, device={self.device!r}, precision={self.precision!r})"
        )

    @abstractmethod
    def _features_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """uint8 (n, S, S, 3) -> float32 (n, M)."""

    @abstractmethod
    def _forward_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """uint8 (n, S, S, 3) -> float32 (n, C), the model's own output."""

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8:
            raise ConfigError(
                f"patches must be a uint8 numpy array, got {type(batch).__name__} {getattr(batch, 'dtype', '')}"
            )
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (s, s, 3):
            raise ConfigError(f"patches must have shape (N, {s}, {s}, 3) for model {self.name!r}, got {batch.shape}")
        return batch

    def _run(self, batch: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], width: int, what: str) -> np.ndarray:
        batch = self._check_batch(batch)
        out = np.empty((batch.shape[0], width), np.float32)
        for start in range(0, batch.shape[0], self.batch_size):
            part = fn(np.ascontiguousarray(batch[start : start + self.batch_size]))
            bad = ~np.isfinite(part).all(axis=1)
            if bad.any():
                raise ModelError(
                    f"model {self.name!r} ({self.source}) produced NaN/inf {what} for {int(bad.sum())} of {len(part)} "
                    f"patches (batch starting at patch {start}); check the weights (a diverged or corrupt checkpoint)"
                    + (" or use precision='fp32'" if self.precision == "bf16" else "")
                )
            out[start : start + len(part)] = part
        return out

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Phi: uint8 RGB patches (N, S, S, 3) -> float32 features (N, M) entering the final linear layer."""
        return self._run(batch, self._features_chunk, self.num_features, "features")

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """``features(batch) @ W + b``: float32 (N, C) class scores computed from the split."""
        out = self.features(batch) @ self.W + self.b
        if not np.isfinite(out).all():
            raise ModelError(
                f"model {self.name!r} ({self.source}) produced NaN/inf logits; check its final layer weights"
            )
        return out

    def forward_logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's own output (N, C) for uint8 patches, to verify the split against :meth:`logits`."""
        return self._run(batch, self._forward_chunk, self.num_classes, "logits")


def _reference_card() -> Path:
    from importlib.resources import files

    card = Path(str(files("histoscale") / "assets" / "reference.json"))
    if not card.is_file():
        raise ModelError(
            f"the bundled reference model card {card} is missing; reinstall histoscale, or pass your own model"
        )
    return card


def load_model(
    spec: str | os.PathLike[str] | nn.Module | Any | None = None,
    *,
    card: ModelCard | str | os.PathLike[str] | None = None,
    head: str | None = None,
    factory: str | Callable[..., nn.Module] | None = None,
    allow_pickle: bool = False,
    device: str | None = None,
    precision: Precision = "auto",
    batch_size: int | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mpp: float | None = None,
) -> SplitModel:
    """Load a classifier and split it into features (Phi) and its final linear layer (W, b).

    Args:
        spec: None (the bundled reference model), an ``nn.Module`` (put in eval mode and moved to ``device`` in
            place), an ``onnx.ModelProto``, a Keras model, or a path: model card ``.json``, TorchScript /
            state dict / pickled checkpoint (``.pt``, ``.pth``, ``.ts``, ...), ``.safetensors``, ``.onnx``,
            ``.keras``.
        card: a model card (object or JSON path) describing ``spec``; its keys fill what is not given here.
        head: name of the final linear submodule (torch), when automatic detection is not wanted.
        factory: ``"module:callable"`` or a callable building the architecture for a state dict.
        allow_pickle: allow full unpickling of checkpoints (runs code stored in the file).
        device: "cpu", "cuda", ...; None picks CUDA when available.
        precision: "auto" uses bf16 only where the hardware accelerates it (torch paths), else fp32.
        batch_size: patches per forward pass; None: 16 on CPU (larger batches fall out of cache and run slower,
            measured on DenseNet121: 18 patches/s at 8, 10 at 64), 64 on GPUs.
        class_names, input_size (px), mean, std (0..1 RGB), mpp (um/px at training): override the card.

    Raises:
        ModelError: the model cannot be loaded or split; the message names the file and the fix.
    """
    if spec is None and card is None:
        card = _reference_card()
    if isinstance(spec, (str, os.PathLike)) and Path(spec).suffix.lower() == ".json":
        if card is not None:
            raise ConfigError("give the model card either as spec or as card=, not both")
        card, spec = spec, None
    if card is not None and not isinstance(card, ModelCard):
        card = load_card(card)
    if card is not None and spec is None:
        spec = card.resolve_file()

    def pick(value: Any, key: str) -> Any:
        return value if value is not None else (getattr(card, key) if card is not None else None)

    head, factory, class_names, mpp = (
        pick(head, "head"),
        pick(factory, "factory"),
        pick(class_names, "class_names"),
        pick(mpp, "mpp"),
    )
    input_size, mean, std = pick(input_size, "input_size"), pick(mean, "mean"), pick(std, "std")
    if mpp is not None and not float(mpp) > 0:
        raise ConfigError(f"mpp must be > 0 um/px, got {mpp}")
    fmt = card.format if card is not None else None
    where = (
        str(card.path)
        if card is not None and card.path is not None
        else (str(spec) if isinstance(spec, (str, os.PathLike)) else type(spec).__name__)
    )
    name = (card.name if card is not None else None) or (
        Path(spec).stem if isinstance(spec, (str, os.PathLike)) else type(spec).__name__
    )
    dev = _resolve_device(device)
    if batch_size is None:
        batch_size = 16 if dev.type == "cpu" else 64
    opts = dict(
        where=where, name=name, device=dev, precision=precision, batch_size=batch_size, class_names=class_names, mpp=mpp
    )

    suffix = Path(spec).suffix.lower() if isinstance(spec, (str, os.PathLike)) else ""
    if fmt == "onnx" or suffix == ".onnx" or type(spec).__name__ == "ModelProto":
        from histoscale.onnx_adapter import load_onnx

        return load_onnx(spec, input_size=input_size, mean=mean, std=std, **opts)
    if fmt == "keras" or suffix in (".keras", ".h5") or type(spec).__module__.startswith("keras"):
        from histoscale.keras_adapter import load_keras

        return load_keras(spec, input_size=input_size, mean=mean, std=std, **opts)

    from histoscale.torch_adapter import build_torch, load_torch_file

    if isinstance(spec, (str, os.PathLike)):
        # A card saying "torch-pickle" does not grant pickle permission: only the caller's allow_pickle does.
        module = load_torch_file(
            Path(spec),
            fmt=fmt if fmt in ("torchscript",) else None,
            factory=factory,
            factory_kwargs=card.factory_kwargs if card is not None else {},
            allow_pickle=allow_pickle,
        )
    elif isinstance(spec, nn.Module):
        module = spec
    else:
        raise ModelError(f"cannot load a model from {type(spec).__name__}: give a path, an nn.Module or a model card")

    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    if not isinstance(cfg, Mapping):
        cfg = {}
    size_from = (
        "arguments/card"
        if input_size is not None
        else ("the model's pretrained_cfg" if "input_size" in cfg else "the default 224")
    )
    if input_size is None:
        input_size = int(cfg["input_size"][-1]) if "input_size" in cfg else 224
    pre = Preprocessing(
        int(input_size),
        tuple(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        tuple(std if std is not None else cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
    )
    if isinstance(module, torch.jit.ScriptModule) and name == "RecursiveScriptModule":
        name = getattr(module, "original_name", name)
    opts["name"] = name
    return build_torch(module, head=head, pre=pre, input_size_from=size_from, **opts)  # type: ignore[arg-type]
