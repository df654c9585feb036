"""Write real pyramidal, tiled, JPEG-compressed TIFF slides (Aperio SVS, generic TIFF, or bare).

The files are meant to be read back by OpenSlide and tiffslide exactly like scanner output, so the
layouts follow what those readers expect:

* ``"svs"``: Aperio layout. Page 0 is level 0 with an ``ImageDescription`` starting
  ``"Aperio Image Library"`` and carrying ``|AppMag = ..|MPP = ..``; page 1 is a small stripped
  thumbnail (tifffile's SVS parser assumes page 1 is the thumbnail); pages 2.. are the lower levels
  (tiled, NewSubfileType 0 as Aperio writes them; tifffile stops at a "reduced" page).
* ``"tiff"``: generic tiled pyramid. Lower levels are extra pages (NewSubfileType = reduced image),
  which OpenSlide's generic-tiff driver and tifffile's generic series (hence tiffslide) both read as
  levels. Every page carries XResolution/YResolution in pixels per centimetre with
  ResolutionUnit=CENTIMETER; OpenSlide derives ``openslide.mpp-x`` from them, tiffslide
  ``tiffslide.mpp-x``.
* ``"bare"``: as ``"tiff"`` but without physical resolution (tifffile still writes 1/1 with
  ResolutionUnit=NONE, i.e. only an aspect ratio, which both readers ignore).

Tiles are JPEG with RGB colour space (no YCbCr subsampling): both readers decode it with exact
colours, and saturated synthetic patterns survive without chroma bleeding.

Level ``k`` with downsample ``d`` has size ``(W // d, H // d)`` (floor, as Aperio does) and pixel
``(i, j)`` covers level-0 pixels ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import tifffile

from histoscale._files import atomic_path
from histoscale.errors import ConfigError

__all__ = ["write_slide", "default_downsamples", "RegionSource"]

logger = logging.getLogger(__name__)

#: ``source(x, y, w, h, downsample) -> (h, w, 3) uint8``: pixels of the level with that downsample,
#: ``x, y, w, h`` in that level's pixels.
RegionSource = Callable[[int, int, int, int, int], np.ndarray]

_THUMBNAIL_MAX_SIDE = 1024
_APERIO_HEADER = "Aperio Image Library v10.0.51"


def default_downsamples(size_wh: tuple[int, int], tile: int = 256) -> list[int]:
    """Downsamples 1, 4, 16, ... adding a level while the current level's larger side is > ``tile``."""
    w, h = size_wh
    out = [1]
    while max(w // out[-1], h // out[-1]) > tile:
        out.append(out[-1] * 4)
    return out


def _array_source(image: np.ndarray) -> RegionSource:
    """Wrap an in-memory level-0 image; lower levels are exact d x d block averages (INTER_AREA)."""
    cache: dict[int, np.ndarray] = {1: image}

    def level(d: int) -> np.ndarray:
        if d not in cache:
            h, w = image.shape[0] // d, image.shape[1] // d
            # cropping to a multiple of d makes INTER_AREA an exact block average at factor d
            cache[d] = cv2.resize(image[: h * d, : w * d], (w, h), interpolation=cv2.INTER_AREA)
        return cache[d]

    def source(x: int, y: int, w: int, h: int, downsample: int) -> np.ndarray:
        return level(downsample)[y : y + h, x : x + w]

    return source


def _check_block(block: np.ndarray, w: int, h: int, what: str) -> np.ndarray:
    block = np.asarray(block)
    if block.shape != (h, w, 3) or block.dtype != np.uint8:
        raise ConfigError(f"slide source returned {block.shape} {block.dtype} for {what}; expected ({h}, {w}, 3) uint8")
    return block


def _iter_tiles(source: RegionSource, d: int, size_wh: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """Yield full ``tile x tile`` tiles row by row, rendering one strip of tile height at a time."""
    w, h = size_wh
    for y in range(0, h, tile):
        sh = min(tile, h - y)
        strip = _check_block(source(0, y, w, sh, d), w, sh, f"strip y={y} at downsample {d}")
        for x in range(0, w, tile):
            t = strip[:, x : x + tile]
            if t.shape[0] != tile or t.shape[1] != tile:
                # edge-replicate instead of tifffile's zero padding: black padding rings into the
                # real edge pixels through the JPEG blocks that straddle the image border
                t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), mode="edge")
            yield np.ascontiguousarray(t)
        del strip


def _strip_thumbnail(source: RegionSource, d: int, size_wh: tuple[int, int], max_side: int) -> np.ndarray:
    """Small thumbnail of one level, read in horizontal strips so memory stays bounded."""
    w, h = size_wh
    scale = max(1.0, max(w, h) / max_side)
    tw, th = max(1, round(w / scale)), max(1, round(h / scale))
    out = np.empty((th, tw, 3), np.uint8)
    rows_per_strip = max(1, int(4096 // scale))
    for r0 in range(0, th, rows_per_strip):
        r1 = min(th, r0 + rows_per_strip)
        y0, y1 = round(r0 * h / th), round(r1 * h / th)
        block = _check_block(source(0, y0, w, y1 - y0, d), w, y1 - y0, f"thumbnail strip at downsample {d}")
        out[r0:r1] = cv2.resize(block, (tw, r1 - r0), interpolation=cv2.INTER_AREA)
    return out


def _format_mpp(mpp: float) -> str:
    return f"{mpp:.6g}"


def _format_mag(mpp: float) -> str:
    # Aperio convention: AppMag = 10 / mpp, rounded (20x at 0.5 um/px); keep a fraction below 1x
    mag = 10.0 / mpp
    return str(round(mag)) if mag >= 1 else f"{mag:.3g}"


def write_slide(
    path: str | os.PathLike[str],
    source: np.ndarray | RegionSource,
    size_wh: tuple[int, int] | None = None,
    *,
    mpp: float | None,
    fmt: Literal["svs", "tiff", "bare"],
    tile: int = 256,
    quality: int = 90,
    downsamples: Sequence[int] | None = None,
    vendor_props: Mapping[str, str] | None = None,
) -> Path:
    """Write a pyramidal tiled JPEG TIFF slide atomically and return its path.

    Args:
        path: output file (``.svs`` / ``.tif``); written to a temp file in the same folder, then
            ``os.replace``-d into place.
        source: level-0 image as an (H, W, 3) uint8 array, or a callable
            ``source(x, y, w, h, downsample) -> (h, w, 3) uint8`` rendering pixels of the level with
            that downsample (``x, y, w, h`` in that level's pixels). A callable is pulled one strip of
            ``tile`` rows at a time, so arbitrarily large slides are written with bounded memory.
        size_wh: level-0 (width, height) in pixels; required for a callable, checked for an array.
        mpp: level-0 resolution in um/px (required for "svs"/"tiff"; ignored for "bare").
        fmt: "svs" (Aperio), "tiff" (generic, resolution tags in cm) or "bare" (no resolution).
        tile: tile side in pixels (multiple of 16).
        quality: JPEG quality 1..100.
        downsamples: integer level downsamples, starting with 1; default 1, 4, 16, ... (see
            :func:`default_downsamples`).
        vendor_props: extra ``key = value`` pairs; appended to the Aperio description for "svs",
            stored as lines of the ImageDescription otherwise.
    """
    path = Path(path)
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ConfigError(f"write_slide needs an (H, W, 3) uint8 image, got {source.shape} {source.dtype}")
        array_wh = (source.shape[1], source.shape[0])
        if size_wh is not None and tuple(size_wh) != array_wh:
            raise ConfigError(f"size_wh {tuple(size_wh)} does not match the image's (W, H) {array_wh}")
        size_wh = array_wh
        src: RegionSource = _array_source(source)
    elif callable(source):
        if size_wh is None:
            raise ConfigError("write_slide with a callable source needs size_wh=(width, height)")
        src = source
    else:
        raise ConfigError(f"write_slide source must be an ndarray or a callable, got {type(source).__name__}")
    w0, h0 = int(size_wh[0]), int(size_wh[1])
    if w0 < 1 or h0 < 1:
        raise ConfigError(f"slide size must be positive, got {(w0, h0)}")
    if fmt not in ("svs", "tiff", "bare"):
        raise ConfigError(f"fmt must be 'svs', 'tiff' or 'bare', got {fmt!r}")
    if tile < 16 or tile % 16:
        raise ConfigError(f"tile must be a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    if fmt == "bare":
        if mpp is not None:
            logger.debug("fmt='bare' writes no resolution; ignoring mpp=%s", mpp)
        mpp = None
    elif mpp is None or not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"fmt={fmt!r} needs a positive mpp (um/px), got {mpp!r}; use fmt='bare' for none")

    ds = list(downsamples) if downsamples is not None else default_downsamples((w0, h0), tile)
    if not ds or ds[0] != 1 or any(int(d) != d or d < 1 for d in ds) or any(b <= a for a, b in zip(ds, ds[1:])):
        raise ConfigError(f"downsamples must be increasing integers starting at 1, got {ds}")
    ds = [int(d) for d in ds]
    levels = [(d, (w0 // d, h0 // d)) for d in ds]
    if any(w < 1 or h < 1 for _, (w, h) in levels):
        raise ConfigError(f"downsamples {ds} make a level smaller than one pixel for a {w0}x{h0} slide")

    extra = dict(vendor_props or {})
    raw_bytes = sum(w * h * 3 for _, (w, h) in levels)
    # classic TIFF offsets are 32-bit; JPEG never grows much beyond raw size
    bigtiff = raw_bytes > 2**32 - 2**26
    jpeg = dict(
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": int(quality), "outcolorspace": "rgb"},
        tile=(tile, tile),
        metadata=None,  # no tifffile "shaped" JSON description: it would hide the pyramid
        dtype=np.uint8,
    )

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for index, (d, (w, h)) in enumerate(levels):
            kwargs: dict = dict(jpeg, shape=(h, w, 3))
            if fmt == "svs":
                assert mpp is not None
                desc = f"{_APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
                if index:
                    desc += f" -> {w}x{h}"
                desc += f" JPEG/RGB Q={quality}|AppMag = {_format_mag(mpp)}|MPP = {_format_mpp(mpp)}"
                desc += "".join(f"|{k} = {v}" for k, v in extra.items())
                kwargs["description"] = desc
            else:
                kwargs["subfiletype"] = 1 if index else 0
                if mpp is not None:
                    px_per_cm = 1e4 / (mpp * d)
                    kwargs["resolution"] = (px_per_cm, px_per_cm)
                    kwargs["resolutionunit"] = "CENTIMETER"
                if index == 0 and extra:
                    kwargs["description"] = "histoscale\n" + "\n".join(f"{k} = {v}" for k, v in extra.items())
            tw.write(_iter_tiles(src, d, (w, h), tile), **kwargs)
            if fmt == "svs" and index == 0:
                dc, wh_c = levels[-1]
                thumb = _strip_thumbnail(src, dc, wh_c, _THUMBNAIL_MAX_SIDE)
                tw.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": int(quality), "outcolorspace": "rgb"},
                    metadata=None,
                    description=f"{_APERIO_HEADER}\r\n{w0}x{h0} -> {thumb.shape[1]}x{thumb.shape[0]} - "
                    f"|AppMag = {_format_mag(mpp)}|MPP = {_format_mpp(mpp)}",
                )
            logger.debug("wrote level %d (downsample %d, %dx%d) of %s", index, d, w, h, path)
    logger.info("wrote %s slide %s (%dx%d, levels %s, mpp %s)", fmt, path, w0, h0, ds, mpp)
    return path
