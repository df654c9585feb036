"""One error family for everything histoscale refuses to do.

Every message names the file (when there is one), what is wrong, and what to do about it.
Backend exceptions are chained (``raise ... from err``) so the root cause stays inspectable.
"""

from __future__ import annotations

__all__ = [
    "HistoscaleError",
    "SlideError",
    "DamagedTileError",
    "LayoutError",
    "MissingMppError",
    "ModelError",
    "ScaleSearchError",
    "ConfigError",
]


class HistoscaleError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback by the CLI."""


class SlideError(HistoscaleError):
    """The slide cannot be opened or read as asked."""


class DamagedTileError(SlideError):
    """A read touched image data of the slide that does not decode (a damaged tile); the rest may still read.

    Attributes:
        level: the pyramid level read.
        box: (x, y, width, height) in pixels of ``level``: the damaged tile's, or the whole read's when the reader
            cannot say which tile failed.
    """

    def __init__(self, message: str, *, level: int, box: tuple[int, int, int, int]) -> None:
        super().__init__(message)
        self.level = level
        self.box = box


class LayoutError(SlideError):
    """A slide file whose structure cannot be used (TIFF layout, JPEG/PNG headers); the message names the file and
    the problem."""


class MissingMppError(SlideError):
    """Absolute units (um/px) were asked of a slide that declares no resolution."""


class ModelError(HistoscaleError):
    """The model cannot be loaded or split into features and a final linear layer."""


class ScaleSearchError(HistoscaleError):
    """The scale search cannot run with the given arguments or slide content."""


class ConfigError(HistoscaleError):
    """Arguments are inconsistent or out of range.

    ``keyword`` names the Python keyword at fault, when there is one: the command line rewrites it as its flag
    (``points`` -> ``--points``), so each audience reads the name it typed.
    """

    def __init__(self, message: str, *, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword
