"""Files histoscale writes: all-or-nothing, checked before long work, JSON that is always valid.

Every file lands through a temporary file beside it and ``os.replace``: a crash, a kill or a full disk leaves
the previous file (or none), never half of one, and no temporary file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from histoscale.errors import HistoscaleError

__all__ = ["atomic_path", "atomic_write", "check_writable", "json_safe"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block completes it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of the lab
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` all-or-nothing; errors name the file and the likely fix."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with atomic_path(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise HistoscaleError(
            f"cannot write {path}: {err.strerror or err}; choose a writable --out folder with free space"
        ) from err
    return path


def read_json(path: str | os.PathLike[str], what: str, error: type[HistoscaleError], fix: str) -> Any:
    """The JSON document at ``path``. ``what`` names it in messages ("model card", "calibration file"), ``fix``
    says what to give instead, and ``error`` is the caller's error type.

    Raises:
        error: missing, a folder, or not readable JSON; the message names the file and the fix.
    """
    p = Path(path)
    if not p.is_file():
        state = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise error(f"{what} {p} {state}: {fix}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{what} {p} is not readable JSON: {err}; {fix}") from None


def check_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there, before any long computation.

    Raises HistoscaleError naming the folder (e.g. a path under a regular file, a read-only or full disk).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".histoscale-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise HistoscaleError(
            f"cannot write to the output folder {out}: {err.strerror or err}; choose a writable --out folder"
        ) from err
    return out


def json_safe(value: Any, *, digits: int | None = None) -> Any:
    """``value`` with every float made valid JSON (NaN and infinities become null), rounded to ``digits``."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, digits) if digits is not None else value
    if isinstance(value, dict):
        return {k: json_safe(v, digits=digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, digits=digits) for v in value]
    return value
