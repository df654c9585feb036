"""Opening a slide: sniff the file, check it is whole, pick the backend that reads it, refuse damaged headers."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Union

from histoscale._compat import renamed
from histoscale.errors import ConfigError, SlideError
from histoscale.slide._backends import Backend, ImageBackend, OpenSlideBackend, TiffSlideBackend
from histoscale.slide._slide import Slide
from histoscale.slide.resolution import Resolution, as_positive

__all__ = ["open_slide"]

logger = logging.getLogger(__name__)

_MAX_LEVEL_SIDE = 2**24  # px (16.7 M: 4 m at 0.25 um/px); larger level sides come from a damaged header
_MAX_TILE_SIDE = 8192  # px; larger TIFF tiles are taken for a damaged directory (scanners write 240..1024)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

PathLike = Union[str, "os.PathLike[str]"]


def _sniff(path: Path) -> tuple[str, bytes]:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in _TIFF_MAGIC:
        return "tiff", head
    if head.startswith(_PNG_MAGIC):
        return "png", head
    if head.startswith(_JPEG_MAGIC):
        return "jpeg", head
    return "other", head


def _check_tiff_complete(path: Path) -> None:
    """Fail early and clearly on damaged or truncated TIFFs (readers otherwise fail tile by tile later)."""
    import tifffile

    size = path.stat().st_size
    problems: list[str] = []

    def capture(record: logging.LogRecord) -> bool:
        # tifffile only logs (does not raise) when an IFD offset points past the end of the file
        if record.levelno >= logging.WARNING:
            problems.append(record.getMessage())
            return False
        return True

    tlog = logging.getLogger("tifffile")
    tlog.addFilter(capture)
    # the filter only sees records the logger lets through: make sure a quiet application logging config
    # (root level ERROR) does not switch this check off
    old_level = tlog.level
    if tlog.getEffectiveLevel() > logging.WARNING:
        tlog.setLevel(logging.WARNING)
    try:
        with tifffile.TiffFile(path) as tf:
            npages = 0
            page = tf.pages.first
            for npages, page in enumerate(tf.pages, start=1):
                if npages > 256:  # enough to cover any pyramid; skip long image stacks
                    break
                offsets = getattr(page, "dataoffsets", ())
                counts = getattr(page, "databytecounts", ())
                ends = [o + c for o, c in zip(offsets, counts) if c]
                tile_wh = (int(getattr(page, "tilewidth", 0) or 0), int(getattr(page, "tilelength", 0) or 0))
                if page.is_tiled and not all(0 < t <= _MAX_TILE_SIDE for t in tile_wh):
                    # OpenSlide allocates whole tiles and aborts the process (glib) when that fails
                    raise SlideError(
                        f"{path} is a damaged TIFF file: page {npages - 1} declares {tile_wh[0]}x{tile_wh[1]} px "
                        f"tiles (whole-slide tiles are at most {_MAX_TILE_SIDE} px); re-export or re-copy the file"
                    )
                chunks = math.prod(getattr(page, "chunked", ()) or (0,))
                if page.shape and math.prod(page.shape) and len(offsets) < chunks:
                    # a damaged directory (tags with invalid types are dropped by tifffile with a log record)
                    raise SlideError(
                        f"{path} is a damaged TIFF file: page {npages - 1} ({page.shape}) needs {chunks} strips or "
                        f"tiles but its directory lists {len(offsets)} data offsets; re-export or re-copy the file"
                    )
                if ends and max(ends) > size:
                    raise SlideError(
                        f"{path} is truncated: page {npages - 1} needs data up to byte {max(ends)} but the "
                        f"file has only {size} bytes (incomplete copy or download?)"
                    )
            del page
    except SlideError:
        raise
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise SlideError(f"{path} is a damaged TIFF file: {err}") from err
    finally:
        tlog.removeFilter(capture)
        tlog.setLevel(old_level)
    if any("offset" in m for m in problems):
        raise SlideError(
            f"{path} is truncated or damaged: its directory chain points past the end of the file "
            f"({size} bytes; tifffile: {problems[0]})"
        )
    for m in problems:
        logger.debug("tifffile on %s: %s", path, m)


def open_slide(
    path: PathLike, slide_mpp: float | None = None, *, backend: str | None = None, mpp: float | None = None
) -> Slide:
    """Open a whole-slide image or a plain image as a :class:`Slide`.

    Args:
        path: slide file (.svs, .tif, .ndpi, .mrxs, ... or .png/.jpg).
        slide_mpp: level-0 resolution in um/px overriding whatever the file declares
            (``resolution.source == "override"``); ``mpp`` is its deprecated name.
        backend: force ``"openslide"``, ``"tiffslide"`` or ``"image"`` (default: first that works).

    Raises:
        SlideError: the file is missing, not a file, empty, not a slide, damaged or truncated;
            the message names the file and the problem, the backend error is chained.
    """
    p = Path(os.fspath(path))
    if backend not in (None, "openslide", "tiffslide", "image"):
        raise ConfigError(f"backend must be 'openslide', 'tiffslide' or 'image', got {backend!r}")
    mpp = renamed("open_slide", "mpp", "slide_mpp", mpp, slide_mpp)
    if mpp is not None and as_positive(mpp) is None:
        raise ConfigError(f"slide_mpp (the slide's um/px) must be a positive number, got {mpp!r}")
    if not p.exists():
        raise SlideError(f"slide {p} does not exist")
    if p.is_dir():
        raise SlideError(f"slide {p} is a directory, not a slide file")
    try:
        size = p.stat().st_size
        kind, head = _sniff(p)
    except OSError as err:
        raise SlideError(f"slide {p} cannot be read: {err.strerror or err}") from err
    if size == 0:
        raise SlideError(f"slide {p} is empty (0 bytes)")
    if kind == "tiff":
        _check_tiff_complete(p)

    order = [backend] if backend else ["openslide", "tiffslide", "image"]
    reasons: list[str] = []
    last_err: BaseException | None = None
    impl: Backend | None = None
    for name in order:
        try:
            if name == "openslide":
                import openslide

                fmt = openslide.OpenSlide.detect_format(str(p))
                if fmt is None:
                    reasons.append("OpenSlide does not recognise the format")
                    continue
                impl = OpenSlideBackend(p)
            elif name == "tiffslide":
                if kind != "tiff":
                    reasons.append("tiffslide reads only TIFF files")
                    continue
                impl = TiffSlideBackend(p)
            else:
                if kind == "other":
                    reasons.append("not a PNG, JPEG or TIFF image")
                    continue
                impl = ImageBackend(p, kind)
            break
        except Exception as err:
            last_err = err
            reasons.append(f"{name}: {type(err).__name__}: {err}")
            logger.debug("backend %s failed on %s", name, p, exc_info=True)
    if impl is None:
        if kind == "other" and backend is None and last_err is None:
            what = f"not a slide or image file (it starts with {head[:8]!r})"
        else:
            what = "unreadable"
        raise SlideError(
            f"slide {p} is {what}: " + "; ".join(reasons) + ". Expected a whole-slide image OpenSlide or "
            "tiffslide reads (.svs, .tif, .ndpi, .mrxs, OME-TIFF, ...) or a PNG/JPEG/TIFF image"
        ) from last_err

    _check_geometry(p, impl)
    resolution = impl.resolution
    if mpp is not None:
        resolution = Resolution(float(mpp), float(mpp), "override")
    return Slide(p, impl, resolution)


def _check_geometry(path: Path, impl: Backend) -> None:
    """Refuse (closing the backend) level sizes or downsamples no real slide has: a damaged header would
    otherwise make reads loop or allocate without bound."""
    dims, downs = impl.level_dimensions, impl.level_downsamples
    ok = bool(dims) and len(dims) == len(downs)
    ok = ok and all(1 <= w <= _MAX_LEVEL_SIDE and 1 <= h <= _MAX_LEVEL_SIDE for w, h in dims)
    ok = ok and all(math.isfinite(d) and 0 < d <= _MAX_LEVEL_SIDE for d in downs)
    if not ok:
        impl.close()
        shown = ", ".join(f"{w}x{h}" if len(str(w)) + len(str(h)) < 24 else "(huge)" for w, h in dims[:4])
        raise SlideError(
            f"slide {path} declares impossible level sizes [{shown}] or downsamples (sides must be 1..{_MAX_LEVEL_SIDE} "
            "px): its header is damaged; re-export or re-copy the file"
        )

