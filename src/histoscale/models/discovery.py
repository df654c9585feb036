"""Finding what describes a model file: a card beside it, a published config, or a folder as model zoos ship it.

A model file ``folder/<stem>.<ext>`` (``.onnx``, ``.pt``, ``.keras``, ``.safetensors``, ...) is described by the
first of :data:`CARD_NAMES` in its folder that is about it: a histoscale model card whose ``file`` is this model
(a card for another file is skipped), a WSInfer config or a timm / Hugging Face ``config.json``
(:mod:`~histoscale.models._published`). ONNX files may also carry their card inside (the ONNX adapter reads it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from histoscale.errors import ModelError
from histoscale.models._published import published_card, published_kind
from histoscale.models.card import ModelCard, card_from_dict, read_card_json

__all__ = ["CARD_NAMES", "MODEL_SUFFIXES", "find_card", "looked_for", "model_in_folder", "read_card"]

logger = logging.getLogger(__name__)

CARD_NAMES = ("{stem}.json", "{stem}.card.json", "config.json")
MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".safetensors", ".keras", ".h5", ".bin")


def _card_names(model_file: Path) -> list[Path]:
    return [model_file.parent / n.format(stem=model_file.stem) for n in CARD_NAMES]


def read_card(path: str | os.PathLike[str], model_file: Path | None = None) -> ModelCard:
    """A histoscale model card, WSInfer config or timm / Hugging Face config read from ``path``.

    Published configs name no model file: it is ``model_file``, or else the one model file in the config's folder.

    Raises:
        ModelError: unreadable, neither kind, or (for a config) no single model file beside it.
    """
    path = Path(path)
    data = read_card_json(path)
    if isinstance(data, dict) and published_kind(data) is not None and "format" not in data:
        return published_card(data, path, model_file or _single_model_file(path.parent, path))
    return card_from_dict(data, path, where=f"model card {path}")


def find_card(model_file: str | os.PathLike[str]) -> ModelCard | None:
    """The card describing ``model_file``, from the first of :data:`CARD_NAMES` beside it that is about it."""
    model_file = Path(model_file)
    for candidate in _card_names(model_file):
        if not candidate.is_file():
            continue
        data = read_card_json(candidate)
        if isinstance(data, dict) and "format" in data and "file" in data:
            card = card_from_dict(data, candidate, where=f"model card {candidate}")
            if not _same_file(card.resolve_file(), model_file):
                # info only: a folder may hold several models, each with its card (e.g. the bundled assets)
                logger.info("%s describes %s, not %s: skipped", candidate, card.resolve_file(), model_file)
                continue
            return card
        if published_kind(data) is not None:
            return published_card(data, candidate, model_file)
        # A file named after the model was surely meant as its card: say why it is not used.
        log = logger.info if candidate.name == "config.json" else logger.warning
        log("%s is neither a model card (needs \"format\" and \"file\") nor a WSInfer / timm config: skipped",
            candidate)
    return None


def model_in_folder(folder: str | os.PathLike[str]) -> tuple[Path, ModelCard | None]:
    """(model file, its card) of a folder as model zoos ship it: one model file and a ``config.json``.

    Raises:
        ModelError: no model file, or several (naming them: pass the one to use).
    """
    folder = Path(folder)
    model_file = _single_model_file(folder, folder)
    return model_file, find_card(model_file)


def _single_model_file(folder: Path, asked: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())
    if len(files) == 1:
        return files[0]
    if not files:
        raise ModelError(
            f"{asked}: no model file in {folder} (looked for {', '.join(MODEL_SUFFIXES)}); pass the model file itself"
        )
    raise ModelError(
        f"{asked}: {folder} holds {len(files)} model files ({', '.join(p.name for p in files)}); pass the one to use, "
        f"e.g. --model {files[0]}"
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def looked_for(model_file: str | os.PathLike[str]) -> str:
    """The card names :func:`find_card` tries for ``model_file``, for messages."""
    return ", ".join(p.name for p in _card_names(Path(model_file)))
