"""All-or-nothing files: every file histoscale writes lands through a temporary file beside it and ``os.replace``.

A crash, a kill or a full disk leaves the previous file (or none), never half of one, and no temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


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
