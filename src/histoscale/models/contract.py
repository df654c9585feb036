"""The model contract: a classifier split into features Phi and its final linear layer (W, b).

The scale search needs, for a classifier, the feature vector entering its final linear layer and that layer's
weights: ``logits = features(batch) @ W + b`` (Penkin et al. 2023, Sec. 3: the distances to the hyperplanes
``W``). Patches enter as uint8 RGB, NHWC, (N, S, S, 3) with S == ``input_size``; features leave as float32
(N, M). This module imports no framework: adapters (torch, ONNX, Keras) subclass :class:`SplitModel` and
verify their split with :func:`check_split`.

Segmentation models (dense heads): a network whose last layer is a 1x1 convolution (stride 1) is a per-pixel
linear classifier: its map entering that convolution (N, M, H, W) is Phi, the convolution's kernel is W, its bias
b. A dense map of every patch at every scale would not fit in memory (32 x 256 x 256 floats per patch), but the
per-pixel logits are linear in the features, so averaging the feature map over a coarse grid of ``cells`` x
``cells`` blocks (:func:`pool_cells`) averages the logits exactly: a dense :class:`SplitModel` returns features
(N, G, M) with G = ``cells ** 2``, and ``features @ W + b`` (N, G, C) are the model's own per-pixel logits
averaged over each cell. The scorer pools the per-cell curves (:func:`histoscale.scoring.score_points`).
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from histoscale.calibration import ScaleCalibration
from histoscale.domain import FeatureStats
from histoscale.errors import ConfigError, ModelError
from histoscale.patches import Region
from histoscale.scoring import SCORERS

__all__ = [
    "DEFAULT_SOURCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "SplitModel",
    "DENSE_CELLS",
    "check_split",
    "default_batch_size",
    "probe_failure",
    "import_callable",
    "pool_cells",
    "probe_batch",
    "resolve_class_names",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Cells per side of the grid a segmentation model's map is averaged over (64 cells: 100 points x 9 scales x
#: 64 cells x 32 features is 7 MB, where the dense maps of 256 px patches would be 7 GB).
DENSE_CELLS = 8


def pool_cells(maps: np.ndarray, cells: int, *, channels_last: bool = False) -> np.ndarray:
    """Average feature or logit maps over a ``cells`` x ``cells`` grid: (N, K, H, W) -> float32 (N, G, K).

    G = ``cells ** 2``, row-major over the grid. Cell i spans rows ``floor(i H / cells)`` to
    ``ceil((i + 1) H / cells)`` (PyTorch's ``adaptive_avg_pool2d`` rule, so all adapters pool alike); with
    ``channels_last`` the maps are (N, H, W, K), as Keras gives them.
    """
    maps = np.asarray(maps, np.float32)
    if channels_last:
        maps = maps.transpose(0, 3, 1, 2)
    n, k, h, w = maps.shape
    if h % cells == 0 and w % cells == 0:  # the common case: one reshape
        out = maps.reshape(n, k, cells, h // cells, cells, w // cells).mean(axis=(3, 5))
    else:
        rows = [(i * h // cells, -(-(i + 1) * h // cells)) for i in range(cells)]
        cols = [(j * w // cells, -(-(j + 1) * w // cells)) for j in range(cells)]
        out = np.stack([maps[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for r0, r1 in rows for c0, c1 in cols], axis=2)
        out = out.reshape(n, k, cells, cells)
    return np.ascontiguousarray(out.reshape(n, k, cells * cells).transpose(0, 2, 1))
# Where a model's description came from when nothing said: the defaults, named so that nobody mistakes them
# for knowledge. Keys: the fields of :meth:`SplitModel.describe` that have a source.
DEFAULT_SOURCES: dict[str, str] = {
    "input_size": "default (unknown)",
    "preprocessing": "default (unknown)",
    "class_names": "default (class0, class1, ...)",
    "mpp": "unknown",
    "head": "located in the model",
    "calibration": "none",
    "feature_stats": "none",
}
# What the search needs to know and must not silently assume, by key, as messages name it.
_NEEDED = {"preprocessing": "preprocessing (mean/std)", "mpp": "training um/px", "input_size": "input size"}


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB patches become model input: ``(x / 255 - mean) / std`` at ``input_size`` x ``input_size`` px.

    ``mean`` and ``std`` are per RGB channel for 0..1-scaled values, as in timm's pretrained config.
    ``function`` (``"module:function"``, a model card's ``"preprocess"``, or in Python the callable itself)
    replaces that normalisation for models that do not take normalised RGB (e.g. stain-derived channels): it
    receives uint8 RGB patches (N, S, S, 3) and returns the model's input as float32 (N, C, S, S), NCHW whatever
    the model's own layout. A callable serves what a name cannot, e.g. parameters estimated once per slide
    (``functools.partial(stain_channels, stain_params=...)``).
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    function: str | Callable[[np.ndarray], np.ndarray] | None = None

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
        if self.function is not None:
            import_callable(self.function, "preprocess")  # fail at load, not at the first patch

    def to_nchw(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) patches -> float32 (N, C, S, S) model input.

        Raises:
            ModelError: a ``function`` returned something else than (N, C, S, S) finite numbers.
        """
        if self.function is None:
            scale, offset = self.scale_offset()
            return np.ascontiguousarray((batch.astype(np.float32) * scale - offset).transpose(0, 3, 1, 2))
        out = np.asarray(import_callable(self.function, "preprocess")(batch), dtype=np.float32)
        n, s = batch.shape[0], self.input_size
        if out.ndim != 4 or out.shape[0] != n or out.shape[2:] != (s, s):
            raise ModelError(
                f"preprocess function {self.function_name!r} returned shape {out.shape} for {n} patches of {s} px; it "
                f"must return float32 (N, C, {s}, {s}) NCHW input"
            )
        return np.ascontiguousarray(out)

    @property
    def function_name(self) -> str | None:
        """The preprocess function as messages and provenance name it: ``"module:function"`` as given, or a
        callable's ``module:qualname`` (a ``functools.partial`` is named by the function it wraps)."""
        fn = self.function
        if fn is None or isinstance(fn, str):
            return fn
        inner = getattr(fn, "func", fn)
        name = getattr(inner, "__qualname__", type(inner).__name__)
        return f"{getattr(inner, '__module__', '?')}:{name}" + (" (partial)" if inner is not fn else "")

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``scale``, ``offset`` (float32, (3,)) such that input = uint8 * scale - offset."""
        std = np.asarray(self.std, np.float32)
        return (1.0 / (255.0 * std)).astype(np.float32), (np.asarray(self.mean, np.float32) / std).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _import(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def import_callable(spec: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    """The callable named ``"module:callable"`` (``what`` names its role in messages), or ``spec`` if callable.

    Raises:
        ModelError: malformed, not importable, or not callable.
    """
    if callable(spec):
        return spec
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise ModelError(f"{what} {spec!r} must read 'module:callable', e.g. 'histoscale.models.architectures:SmallCNN'")
    try:
        obj = _import(str(spec))
    except (ImportError, AttributeError) as err:
        raise ModelError(f"cannot import {what} {spec!r}: {err}; check the module is installed and the name") from err
    if not callable(obj):
        raise ModelError(f"{what} {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def check_split(name: str, where: str, phi: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Raise ModelError unless probe features reproduce the model's own probe output through (W, b).

    Classifiers: ``phi`` (N, M), ``out`` (N, C); segmentation models: both pooled per cell, (N, G, M) and (N, G, C).
    """
    dense = out.ndim == 3
    if out.ndim not in (2, 3):
        raise ModelError(f"{where}: model {name!r} returns shape {tuple(out.shape)}, expected (N, C) class scores")
    if phi.ndim != out.ndim or phi.shape[:-1] != out.shape[:-1]:
        raise ModelError(
            f"{where}: the input of the final linear layer of {name!r} has shape {tuple(phi.shape)}, not a flat "
            "(N, M) feature vector; histoscale needs a classifier whose head is one linear layer on pooled features"
        )
    if phi.shape[-1] != W.shape[0] or out.shape[-1] != W.shape[1]:
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
        layer = "1x1 convolution" if dense else "linear layer"
        raise ModelError(
            f"{where}: features @ W + b differs from the output of {name!r} by up to {diff:.3g}: something follows "
            f"the final {layer} (softmax, an activation, scaling); export or wrap the model so it returns the "
            f"raw logits of its last {layer}, or name the head with head=..."
        )


def default_batch_size(device: str) -> int:
    """Patches per forward pass when none is given: 16 on CPUs (larger batches fall out of cache and run
    slower: DenseNet121 18 patches/s at 8, 10 at 64, measured), 64 on accelerators."""
    return 16 if str(device).split(":")[0] == "cpu" else 64


def probe_batch(size: int) -> np.ndarray:
    """Two random uint8 patches (2, size, size, 3), seed 0: the batch adapters verify their split on."""
    return np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def probe_failure(where: str, name: str, size: int, err: Exception, detail: str = "") -> ModelError:
    """The error for a model that failed on :func:`probe_batch`: a :class:`ModelError` (a preprocess function's,
    already naming it and its fix) is passed on; anything else is most often an input size the network was not
    built for. ``detail``: what the adapter adds after the patch size (e.g. where the size came from)."""
    if isinstance(err, ModelError):
        return ModelError(f"{where}: model {name!r} failed on a probe batch: {err}")
    return ModelError(
        f"{where}: model {name!r} failed on a probe batch of {size} x {size} px{detail}: {type(err).__name__}: "
        f"{err}; set input_size to the size the model was trained at"
    )


def resolve_class_names(class_names: Sequence[str] | None, n: int, where: str) -> tuple[str, ...]:
    if class_names is None:
        return tuple(f"class{i}" for i in range(n))
    if len(class_names) != n:
        raise ModelError(
            f"{where}: {len(class_names)} class names given ({list(class_names)}) but the final layer has {n} outputs; "
            f"fix class_names in the card or the arguments to list {n} names"
        )
    return tuple(str(c) for c in class_names)


def _background_index(class_names: Sequence[str], background: str | None, where: str) -> int | None:
    """Index of the class named ``background`` (None: none named).

    Raises:
        ModelError: no class has that name.
    """
    if background is None:
        return None
    if background not in class_names:
        raise ModelError(
            f"{where}: background class {background!r} is not one of the model's classes {list(class_names)}; fix "
            "'background' in the card (or background=...) to name one of them"
        )
    return list(class_names).index(background)


class SplitModel(ABC):
    """A classifier split into features ``Phi`` (N, M) and its final linear layer ``W`` (M, C), ``b`` (C,).

    A segmentation model (``cells`` set: a 1x1-convolution head, see the module docstring) returns features
    (N, G, M), its feature map averaged over G = ``cells`` ** 2 cells, and logits (N, G, C). ``background`` is the
    index of a class whose cells the scale search leaves out of its pooling (None: every cell counts).

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
        cells: int | None = None,
        background: str | None = None,
        sources: Mapping[str, str] | None = None,
        card: str | None = None,
        format: str | None = None,
        head_name: str | None = None,
    ) -> None:
        self.name = name
        self.cells = None if cells is None else int(cells)
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
        # Provenance: where each described value came from (DEFAULT_SOURCES when nothing said), the card used.
        self.sources = {**DEFAULT_SOURCES, **(sources or {})}
        self.card = card
        self.format = format
        self.head_name = head_name
        self.file: str | None = None  # the model file, when loaded from one
        self.calibration: ScaleCalibration | None = None  # where its margins peak (histoscale.calibration)
        self.feature_stats: FeatureStats | None = None  # its training features (histoscale.domain), if recorded
        if self.b.shape[0] != self.W.shape[1] or len(self.class_names) != self.W.shape[1]:
            raise ModelError(
                f"{source}: {len(self.class_names)} class names and bias of {self.b.shape[0]} for a final layer with "
                f"{self.W.shape[1]} outputs; give exactly {self.W.shape[1]} class names"
            )
        self.background = _background_index(self.class_names, background, source)

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

    @property
    def num_cells(self) -> int | None:
        """G, the cells a segmentation model's map is pooled over; None for a classifier."""
        return None if self.cells is None else self.cells**2

    @property
    def missing(self) -> tuple[str, ...]:
        """What the search needs to know about the model but was assumed: e.g. ``("training um/px",)``."""
        return tuple(
            label for key, label in _NEEDED.items() if self.sources[key].startswith(("default", "unknown"))
        )

    def describe(self) -> dict[str, Any]:
        """What the model is and where each value came from (``sources``), as JSON-ready values: for
        ``histoscale model-info`` and the model provenance of result.json. ``preprocessing`` is the source of
        mean/std (``"default (unknown)"`` when nothing said); ``missing`` lists what was assumed."""
        pre = self.preprocessing
        return {
            "name": self.name,
            "format": self.format,
            "file": self.file,
            "card": self.card,
            "head": self.head_name,
            "M": self.num_features,
            "C": self.num_classes,
            "cells": self.num_cells,  # G for a segmentation model, None for a classifier
            "class_names": list(self.class_names),
            "input_size": pre.input_size,
            "mean": list(pre.mean) if pre.function is None else None,
            "std": list(pre.std) if pre.function is None else None,
            "preprocess_function": pre.function_name,
            "mpp": self.mpp,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "feature_stats": None if self.feature_stats is None else {
                "patches": self.feature_stats.patches, "quantiles": dict(self.feature_stats.quantiles)},
            "preprocessing": self.sources["preprocessing"],
            "scorers": list(self.scorers),
            "sources": dict(self.sources),
            "missing": list(self.missing),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, M={self.num_features}, C={self.num_classes}, "
            f"input_size={self.input_size}, mpp={self.mpp}, device={self.device!r}, precision={self.precision!r}"
            + ("" if self.cells is None else f", cells={self.cells}x{self.cells}")
            + ")"
        )

    @abstractmethod
    def _features_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """uint8 (n, S, S, 3) -> float32 (n, M), or (n, G, M) pooled per cell for a segmentation model."""

    @abstractmethod
    def _forward_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """uint8 (n, S, S, 3) -> float32 (n, C) (or (n, G, C) pooled per cell), the model's own output."""

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
        cells = () if self.num_cells is None else (self.num_cells,)
        out = np.empty((batch.shape[0], *cells, width), np.float32)
        for start in range(0, batch.shape[0], self.batch_size):
            out[start : start + self.batch_size] = self._finite(
                fn(np.ascontiguousarray(batch[start : start + self.batch_size])), start, what
            )
        return out

    def _finite(self, part: np.ndarray, start: int, what: str) -> np.ndarray:
        """``part`` (the model's output for the chunk at patch ``start``), refused when it holds NaN/inf."""
        bad = ~np.isfinite(part.reshape(len(part), -1)).all(axis=1)
        if bad.any():
            raise ModelError(
                f"model {self.name!r} ({self.source}) produced NaN/inf {what} for {int(bad.sum())} of {len(part)} "
                f"patches (batch starting at patch {start}); check the weights (a diverged or corrupt checkpoint)"
                + (" or use precision='fp32'" if self.precision == "bf16" else "")
            )
        return part

    @property
    def resamples_on_device(self) -> bool:
        """Whether :meth:`features_of_regions` resamples on the model's own device (a GPU) rather than on the CPU;
        the search then hands it the reads, not the patches. False here."""
        return False

    def features_of_regions(self, regions: Sequence[Region]) -> np.ndarray:
        """Phi of the patches cropped from ``regions`` (:func:`histoscale.patches.read_regions`), in order, each
        resampled to the input size: float32 (N, M) ((N, G, M) per cell). Here on the CPU with
        :func:`histoscale.patches.resample`, the same patches as :func:`~histoscale.patches.read_multiscale`."""
        return self.features(np.concatenate([region.patches(self.input_size) for region in regions]))

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Phi: uint8 RGB patches (N, S, S, 3) -> float32 features (N, M) entering the final linear layer
        ((N, G, M), averaged per cell, for a segmentation model)."""
        return self._run(batch, self._features_chunk, self.num_features, "features")

    @property
    def scorers(self) -> tuple[str, ...]:
        """The scorers (:data:`histoscale.scoring.SCORERS`) that apply to this model (:meth:`scorer_unavailable`)."""
        return tuple(s for s in SCORERS if self.scorer_unavailable(s) is None)

    def scorer_unavailable(self, scorer: str) -> str | None:
        """Why ``scorer`` does not apply to this model, with the fix (None: it applies): ``bn-stats`` needs
        :attr:`has_batchnorm`, ``feature-stats`` the training feature statistics of its card."""
        if scorer == "bn-stats" and not self.has_batchnorm:
            return (
                f"scorer 'bn-stats' needs the BatchNorm statistics a classifier stored in training; model "
                f"{self.name!r} ({self.format or type(self).__name__}, {self.source}) has no BatchNorm layer "
                "histoscale can read: they are read from torch modules only (an ONNX or Keras export usually folds "
                "them into the convolutions; a segmentation model is not supported). Load the torch module or "
                "checkpoint, or use --scorer margin"
            )
        if scorer == "feature-stats" and self.feature_stats is None:
            return (
                "scorer 'feature-stats' needs the training feature statistics a model card records (feature_stats); "
                f"model {self.name!r} has none: use a bundled model, record them (histoscale.FeatureStats.fit on the "
                "training patches' features, saved in the card), or use --scorer margin"
            )
        return None

    @property
    def has_batchnorm(self) -> bool:
        """Whether the ``bn-stats`` scorer applies: :meth:`features_with_moments` can measure the patches against
        the network's BatchNorm statistics (torch classifiers with BatchNorm layers; False for ONNX and Keras files,
        whose exports usually fold them into the convolutions)."""
        return False

    def _no_batchnorm(self) -> ConfigError:
        return ConfigError(str(self.scorer_unavailable("bn-stats")))

    def batchnorm_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Running mean, running variance and layer index (K,) of the BatchNorm channels the ``bn-stats`` scorer
        compares the patches with.

        Raises:
            ConfigError: the model holds no BatchNorm statistics (see :attr:`has_batchnorm`).
        """
        raise self._no_batchnorm()

    def features_with_moments(self, batch: np.ndarray) -> np.ndarray:
        """Phi of uint8 patches (N, S, S, 3) followed by each patch's BatchNorm input moments (the ``bn-stats``
        scorer; :mod:`histoscale.models._batchnorm`): float32 (N, M + 2K), K as :meth:`batchnorm_statistics`.

        Raises:
            ConfigError: the model holds no BatchNorm statistics (see :attr:`has_batchnorm`).
        """
        raise self._no_batchnorm()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """``features(batch) @ W + b``: float32 (N, C) class scores computed from the split ((N, G, C) per cell
        for a segmentation model)."""
        out = self.features(batch) @ self.W + self.b
        if not np.isfinite(out).all():
            raise ModelError(
                f"model {self.name!r} ({self.source}) produced NaN/inf logits; check its final layer weights"
            )
        return out

    def patch_logits(self, batch: np.ndarray) -> np.ndarray:
        """One answer per patch, float32 (N, C): :meth:`logits` of a classifier; for a segmentation model the mean
        of its cells' logits, which is the patch-level linear classifier on its mean-pooled map (what
        ``classify`` and ``evaluate`` use: the label there is one class per window or position)."""
        out = self.logits(batch)
        return out if out.ndim == 2 else out.mean(axis=1)

    def forward_logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's own output (N, C) ((N, G, C) pooled per cell) for uint8 patches, to verify the split
        against :meth:`logits`."""
        return self._run(batch, self._forward_chunk, self.num_classes, "logits")
