"""Configs that model zoos publish beside their weights, mapped onto :class:`ModelCard`.

- WSInfer model configs (``config.json``: ``spacing_um_px``, ``patch_size_pixels``, ``num_classes``,
  ``class_names``, ``transform``: a list of ``{"name": ..., "arguments": {...}}`` torchvision transforms).
  A WSInfer model reads ``patch_size_pixels`` px at ``spacing_um_px`` and resizes them (``Resize``) before the
  network: the network's own pixels are ``spacing_um_px * patch_size_pixels / size`` um wide, and that is the
  card's ``mpp`` (histoscale reads patches at the network's input size directly).
- timm / Hugging Face folders (``config.json`` with ``architecture`` and ``pretrained_cfg``: ``input_size``,
  ``mean``, ``std``, ``classifier``; ``num_classes``, ``label_names``; ``model.safetensors``): the architecture is
  built by a factory the user names, called with ``num_classes`` and the config's ``model_args``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from histoscale.errors import ModelError
from histoscale.models.card import ModelCard

__all__ = ["published_card", "published_kind"]

WSINFER = "WSInfer config"
TIMM = "timm/Hugging Face config"

# torchvision transforms a WSInfer config may list that histoscale reproduces; anything else is refused.
_WSINFER_TRANSFORMS = ("Resize", "CenterCrop", "ToTensor", "Normalize")


def published_kind(data: Any) -> str | None:
    """Which published config ``data`` is (:data:`WSINFER`, :data:`TIMM`), or None."""
    if not isinstance(data, dict):
        return None
    if "spacing_um_px" in data or "patch_size_pixels" in data:
        return WSINFER
    if "pretrained_cfg" in data or "architecture" in data or "label_names" in data or "id2label" in data:
        return TIMM
    return None


def published_card(data: dict[str, Any], path: Path, model_file: Path) -> ModelCard:
    """The card a published config (``data``, read from ``path``) gives ``model_file``.

    Raises:
        ModelError: a value histoscale cannot use (non-square sizes, unknown transforms, class counts that
            disagree), naming the config and the fix.
    """
    kind = published_kind(data)
    if kind == WSINFER:
        return _wsinfer(data, path, model_file)
    if kind == TIMM:
        return _timm(data, path, model_file)
    raise ModelError(f"{path} is neither a histoscale model card nor a WSInfer or timm/Hugging Face config")


def _format_of(model_file: Path) -> str | None:
    # None lets the torch adapter tell TorchScript from a state dict by the file's content.
    return {".onnx": "onnx", ".keras": "keras", ".safetensors": "torch-state-dict"}.get(model_file.suffix.lower())


def _positive(value: Any, key: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise ModelError(f"{where}: {key} must be a positive number, got {value!r}")
    return number


def _square(size: Any, key: str, where: str) -> int:
    """A side in px from an int or an [h, w] pair (h == w: histoscale feeds square patches)."""
    if isinstance(size, Sequence) and not isinstance(size, str):
        sides = {int(s) for s in size}
        if len(sides) != 1:
            raise ModelError(
                f"{where}: {key} {list(size)} is not square; histoscale feeds square patches: write a histoscale "
                "model card with the square input_size the model accepts"
            )
        size = sides.pop()
    return int(_positive(size, key, where))


def _rgb(values: Any, key: str, where: str) -> tuple[float, float, float]:
    try:
        r, g, b = (float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ModelError(f"{where}: {key} must be 3 numbers (R, G, B), got {values!r}") from err
    return r, g, b


def _names(names: Any, num_classes: Any, where: str) -> tuple[str, ...] | None:
    if names is None:
        return None
    names = tuple(str(n) for n in names)
    if num_classes is not None and len(names) != int(num_classes):
        raise ModelError(f"{where}: {len(names)} class names {list(names)} for num_classes={num_classes}; fix either")
    return names


def _wsinfer(data: dict[str, Any], path: Path, model_file: Path) -> ModelCard:
    where = f"{WSINFER} {path}"
    spacing = _positive(data.get("spacing_um_px"), "spacing_um_px", where)
    patch = _square(data.get("patch_size_pixels"), "patch_size_pixels", where)
    size, field_px = patch, float(patch)  # network input side, and the slide px at spacing it covers
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    transforms = data.get("transform")
    if transforms is not None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # ToTensor alone: 0..1 RGB, nothing subtracted
        for step in transforms:
            name = step.get("name") if isinstance(step, Mapping) else None
            args = (step.get("arguments") if isinstance(step, Mapping) else None) or {}
            if name not in _WSINFER_TRANSFORMS:
                raise ModelError(
                    f"{where}: transform {name!r} is not one histoscale reproduces ({', '.join(_WSINFER_TRANSFORMS)}); "
                    "write a histoscale model card (with a 'preprocess' function if needed) beside the model instead"
                )
            if name == "Resize":
                size = _square(args.get("size"), "Resize size", where)
            elif name == "CenterCrop":
                crop = _square(args.get("size"), "CenterCrop size", where)
                field_px *= crop / size
                size = crop
            elif name == "Normalize":
                mean, std = _rgb(args.get("mean"), "Normalize mean", where), _rgb(args.get("std"), "Normalize std", where)
    return ModelCard(
        format=_format_of(model_file), file=str(model_file), input_size=size, mean=mean, std=std,
        class_names=_names(data.get("class_names"), data.get("num_classes"), where),
        mpp=spacing * field_px / size, name=data.get("name") or data.get("architecture") or model_file.stem,
        path=path, extra={k: data[k] for k in ("architecture", "spec_version") if k in data}, kind=WSINFER,
    )


def _timm(data: dict[str, Any], path: Path, model_file: Path) -> ModelCard:
    where = f"{TIMM} {path}"
    cfg = data.get("pretrained_cfg") or {}
    size = cfg.get("input_size", data.get("input_size"))
    input_size = None
    if size is not None:
        # timm writes (channels, height, width)
        input_size = _square(size[-2:] if isinstance(size, Sequence) and len(size) == 3 else size, "input_size", where)
    num_classes = data.get("num_classes", cfg.get("num_classes"))
    names = data.get("label_names") or cfg.get("label_names")
    if names is None and isinstance(data.get("id2label"), Mapping):  # transformers' image classifiers
        names = [data["id2label"][k] for k in sorted(data["id2label"], key=int)]
    kwargs = dict(data.get("model_args") or {})
    if num_classes is not None:
        kwargs.setdefault("num_classes", int(num_classes))
    mean, std = cfg.get("mean"), cfg.get("std")
    return ModelCard(
        format=_format_of(model_file), file=str(model_file), factory_kwargs=kwargs, input_size=input_size,
        mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
        class_names=_names(names, num_classes, where), head=cfg.get("classifier"),
        name=data.get("architecture") or model_file.stem, path=path,
        extra={"architecture": data["architecture"]} if "architecture" in data else {}, kind=TIMM,
    )
