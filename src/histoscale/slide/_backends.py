"""Reader backends behind :class:`~histoscale.slide.Slide`: OpenSlide, tiffslide, tifffile (one chosen series),
plain JPEG/PNG images decoded on first read, and other images in memory.

Each backend exposes the pyramid geometry, its properties and ``read_px`` (an in-bounds box in integer pixels
of one level). Coordinates follow OpenSlide (level-0 px, (x, y)). The resolution is chosen by the opener
from every convention the file carries (:mod:`histoscale.slide.resolution`).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from histoscale.errors import SlideError
from histoscale.slide._pixels import to_rgb_u8
from histoscale.slide._plain_image import PlainImage
from histoscale.slide._tiles import MissingTiles, TileReader
from histoscale.slide.resolution import as_positive

__all__ = [
    "Backend",
    "ImageBackend",
    "OpenSlideBackend",
    "PlainImageBackend",
    "TiffSlideBackend",
    "TifffileBackend",
]


# OpenSlide formats that are plain tiled TIFF pyramids, whose levels are the file's pages
_TIFF_VENDORS = ("aperio", "generic-tiff")


class Backend(Protocol):
    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    vendor: str | None
    objective_power: float | None

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read an in-bounds box given in integer pixels of ``level`` as (h, w, 3) uint8."""
        ...

    def close(self) -> None: ...


class OpenSlideBackend:
    """OpenSlide, with its TIFF tiles decoded directly where that gives the same pixels (:mod:`._tiles`)."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        self._path = path
        self._tiles: TileReader | None = None
        self._tiles_checked = False
        self._lock = threading.Lock()
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._osr.properties.items()}
        self.vendor = self.properties.get("openslide.vendor")
        self.objective_power = as_positive(self.properties.get("openslide.objective-power"))

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if not self._tiles_checked:
            with self._lock:
                if not self._tiles_checked and self.properties.get("openslide.vendor") in _TIFF_VENDORS:
                    self._tiles = TileReader.open(
                        self._path, self.level_dimensions, self.level_downsamples, self._read_region
                    )
                self._tiles_checked = True
        if self._tiles is not None and level in self._tiles.levels:
            return self._tiles.read(level, x, y, w, h)
        return self._read_region(level, x, y, w, h)

    def _read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self.level_downsamples[level]
        # OpenSlide takes level-0 integers and renders level coordinate loc/ds; a fractional level
        # origin goes through cairo's bilinear path (blurred, ~3x slower). With integer downsamples
        # round(x*ds) is exact; otherwise the residual is < 0.5/ds level px.
        loc = (round(x * ds), round(y * ds))
        osr = self._osr
        try:
            return to_rgb_u8(np.asarray(osr.read_region(loc, level, (w, h))))
        except openslide.OpenSlideError:
            # after a failed read an OpenSlide handle refuses every later one: a fresh handle reads the rest (the old
            # one is not closed here, a reader thread may still hold it; it is freed with its last reference)
            with self._lock:
                if self._osr is osr:
                    self._osr = openslide.OpenSlide(str(self._path))
            raise

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._osr.close()


class TiffSlideBackend:
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self._ts = tiffslide.TiffSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._ts.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._ts.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._ts.properties.items() if v is not None}
        self.vendor = self.properties.get("tiffslide.vendor")
        self.objective_power = as_positive(self.properties.get("tiffslide.objective-power"))
        # levels composed from several series (one OME Image per level) have no single series to look at
        composed = "tiffslide.series-composition" in self._ts.properties
        series = self._ts.ts_tifffile.series[int(self.properties.get("tiffslide.series-index", 0))]
        self._missing = None if composed else MissingTiles.find(series, self.level_dimensions)

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]

        def loc(v: int) -> int:
            # tiffslide maps level-0 v to level int(v / ds): pick the smallest v that lands on our pixel
            v0 = math.ceil(v * ds)
            while v0 > 0 and int((v0 - 1) / ds) == v:
                v0 -= 1
            while int(v0 / ds) < v:
                v0 += 1
            return v0

        arr = self._ts.read_region((loc(x), loc(y)), level, (w, h), as_array=True, padding=False)
        out = to_rgb_u8(arr)
        return self._missing.paint(level, x, y, out) if self._missing is not None else out

    def close(self) -> None:
        self._ts.close()


class ImageBackend:
    """The first page of a (stripped, small) TIFF held in memory as a one-level slide."""

    name = "image"

    def __init__(self, path: Path) -> None:
        self.properties: dict[str, str] = {"image.format": "TIFF"}
        self.vendor = None
        self.objective_power = None
        self._img = self._load_tiff(path)
        h, w = self._img.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _load_tiff(self, path: Path) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            arr = page.asarray()
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar (S, Y, X) -> (Y, X, S)
        if arr.ndim not in (2, 3):
            raise SlideError(f"{path}: first TIFF page has shape {arr.shape}, not a 2-D RGB/grey image")
        return to_rgb_u8(arr)

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._img[y : y + h, x : x + w]

    def close(self) -> None:
        self._img = np.zeros((0, 0, 3), np.uint8)


class PlainImageBackend:
    """A JPEG/PNG (or other Pillow raster) as a one-level slide: the header is read at open, the pixels are
    decoded once at the first read under a memory budget (no Pillow decompression-bomb limit: the user named
    the file). Too big for the budget: one-line :class:`~histoscale.errors.SlideError` naming size and fix."""

    name = "image"

    def __init__(self, img: PlainImage) -> None:
        self._img = img
        self.properties: dict[str, str] = {"image.format": img.format}
        self.vendor = None
        self.objective_power = None
        self.level_dimensions = img.level_dimensions
        self.level_downsamples = (1.0,)

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._img.read_region(x, y, w, h)

    def close(self) -> None:
        self._img.close()


class TifffileBackend:
    """One tifffile series of a TIFF (the slide pyramid when it is not series 0, e.g. after a label page),
    levels from ``series.levels`` (main IFD chain, SubIFDs or OME), read through tifffile's zarr store.
    ``plane`` counts the images of a stack (axes other than Y, X, S) in file order."""

    name = "tifffile"

    def __init__(self, path: Path, series_index: int, plane: int = 0) -> None:
        import tifffile
        import zarr

        self._tf = tifffile.TiffFile(path)
        try:
            series = self._tf.series[series_index]
            self._levels = []
            dims = []
            for i, lvl in enumerate(series.levels):
                axes = lvl.axes
                shape = dict(zip(axes, lvl.shape))
                dims.append((int(shape["X"]), int(shape["Y"])))
                # a missing tile (sparse file) is glass: white, not tifffile's default 0
                white = np.iinfo(lvl.dtype).max if lvl.dtype.kind in "ui" else 1.0
                self._levels.append((zarr.open_array(series.aszarr(level=i, fillvalue=white), mode="r"), axes))
            stack = [n for a, n in zip(series.levels[0].axes, series.levels[0].shape) if a not in "YXS"]
            self._plane = tuple(int(k) for k in np.unravel_index(plane, stack)) if stack else ()
        except Exception:
            self._tf.close()
            raise
        self.level_dimensions = tuple(dims)
        w0 = dims[0][0]
        self.level_downsamples = tuple(w0 / w for w, _ in dims)
        page = series.levels[0].keyframe
        self.properties: dict[str, str] = {"tifffile.series-index": str(series_index)}
        for tag in ("XResolution", "YResolution", "ResolutionUnit"):
            if tag in page.tags:
                self.properties[f"tiff.{tag}"] = str(page.tags[tag].value)
        if self._tf.is_svs:
            # Aperio's fields as OpenSlide and tiffslide name them, parsed by the same code as theirs
            from tifffile.tifffile import svs_description_metadata

            fields = svs_description_metadata(self._tf.pages.first.description)
            self.properties.update({f"aperio.{k}": str(v) for k, v in fields.items() if k != "Header"})
        self.vendor = None
        self.objective_power = None

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr, axes = self._levels[level]
        plane = iter(self._plane)
        index = tuple(
            slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X" else slice(None) if a == "S" else next(plane)
            for a in axes
        )
        out = np.asarray(arr[index])
        kept = "".join(a for a in axes if a in "YXS")
        if kept == "SYX":
            out = np.moveaxis(out, 0, -1)
        return to_rgb_u8(out)

    def close(self) -> None:
        self._tf.close()
