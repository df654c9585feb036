"""Provenance of results: versions, machine, and the JSON document writer that records them."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histoscale._files import atomic_write, json_safe

__all__ = ["machine", "versions", "write_document"]


def versions() -> dict[str, str]:
    """Versions of what produced a result, for reproducibility."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("histoscale", "numpy", "torch", "onnxruntime", "openslide-python", "openslide-bin", "tiffslide"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    """CPU model and core count, for benchmark and result provenance."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"



def write_document(path: str | os.PathLike[str], document: dict[str, Any], arguments: Mapping[str, Any] | None) -> Path:
    """Write a JSON result atomically with the arguments and versions that produced it (NaN written as null)."""
    document = {**document, "arguments": dict(arguments or {}), "versions": versions()}
    return atomic_write(path, json.dumps(json_safe(document), indent=2, default=str))

