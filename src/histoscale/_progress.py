"""The one progress bar (rich) for long work: searches, classification, evaluation, cohorts."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, *, transient: bool = True) -> Any:
    """A rich ``Progress`` as a context manager, or a null context yielding None when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # stderr: stdout stays clean for results (--json)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=transient, console=Console(stderr=True),
    )
