"""Reader backends behind :class:`~histoscale.slide.Slide`: OpenSlide, tiffslide and plain images in memory.

Each backend exposes the pyramid geometry, its properties, the declared :class:`Resolution` and ``read_px``
(an in-bounds box in integer pixels of one level). Coordinates follow OpenSlide (level-0 px, (x, y)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from histoscale.errors import SlideError
from histoscale.slide._pixels import to_rgb_u8
from histoscale.slide.resolution import Resolution, as_positive, make_resolution

__all__ = ["Backend", "ImageBackend", "OpenSlideBackend", "TiffSlideBackend"]


class Backend(Protocol):
    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    resolution: Resolution | None
    vendor: str | None
    objective_power: float | None

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read an in-bounds box given in integer pixels of ``level`` as (h, w, 3) uint8."""
        ...

    def close(self) -> None: ...


def _vendor_resolution(path: Path, props: Mapping[str, str], prefix: str, generic: bool) -> Resolution | None:
    key = f"{prefix}.mpp-x"
    # generic TIFFs have no vendor mpp: the reader derived it from XResolution/YResolution
    source = "tiff-resolution-tag" if generic and "tiff.XResolution" in props else f"metadata:{key}"
    return make_resolution(path, props.get(key), props.get(f"{prefix}.mpp-y"), source)


class OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._osr.properties.items()}
        self.vendor = self.properties.get("openslide.vendor")
        self.objective_power = as_positive(self.properties.get("openslide.objective-power"))
        self.resolution = _vendor_resolution(path, self.properties, "openslide", self.vendor == "generic-tiff")

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # OpenSlide takes level-0 integers and renders level coordinate loc/ds; a fractional level
        # origin goes through cairo's bilinear path (blurred, ~3x slower). With integer downsamples
        # round(x*ds) is exact; otherwise the residual is < 0.5/ds level px.
        loc = (round(x * ds), round(y * ds))
        return to_rgb_u8(np.asarray(self._osr.read_region(loc, level, (w, h))))

    def close(self) -> None:
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
        self.resolution = _vendor_resolution(path, self.properties, "tiffslide", self.vendor in (None, "generic-tiff"))

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
        return to_rgb_u8(arr)

    def close(self) -> None:
        self._ts.close()


class ImageBackend:
    name = "image"

    def __init__(self, path: Path, kind: str) -> None:
        self.properties: dict[str, str] = {}
        self.resolution: Resolution | None = None
        self.vendor = None
        self.objective_power = None
        if kind == "tiff":
            self._img = self._load_tiff(path)
        else:
            self._img = self._load_pil(path)
        h, w = self._img.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _load_tiff(self, path: Path) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            arr = page.asarray()
            tags = page.tags
            self.properties["image.format"] = "TIFF"
            unit_tag = tags.get("ResolutionUnit")
            xr, yr = tags.get("XResolution"), tags.get("YResolution")
            if unit_tag is not None and xr is not None and yr is not None:
                unit = int(unit_tag.value)
                self.properties["tiff.ResolutionUnit"] = str(unit)
                self.properties["tiff.XResolution"] = str(xr.value[0] / xr.value[1] if xr.value[1] else 0)
                self.properties["tiff.YResolution"] = str(yr.value[0] / yr.value[1] if yr.value[1] else 0)
                um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # 1 = no absolute unit
                if um_per_unit is not None:
                    try:
                        mx = um_per_unit * xr.value[1] / xr.value[0]
                        my = um_per_unit * yr.value[1] / yr.value[0]
                    except ZeroDivisionError:
                        mx = my = None
                    self.resolution = make_resolution(path, mx, my, "tiff-resolution-tag")
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar (S, Y, X) -> (Y, X, S)
        if arr.ndim not in (2, 3):
            raise SlideError(f"{path}: first TIFF page has shape {arr.shape}, not a 2-D RGB/grey image")
        return to_rgb_u8(arr)

    def _load_pil(self, path: Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            fmt = im.format or "unknown"
            self.properties["image.format"] = fmt
            info = im.info
            if fmt == "PNG" and "dpi" in info:
                # PIL sets "dpi" only for pHYs unit = metre; unit 0 (aspect ratio) gives "aspect"
                dx, dy = info["dpi"]
                self.properties["png.pHYs.dpi"] = f"{dx},{dy}"
                self.resolution = make_resolution(path, _div(25400.0, dx), _div(25400.0, dy), "metadata:png.pHYs")
            elif fmt == "JPEG" and info.get("jfif_unit") in (1, 2) and "jfif_density" in info:
                unit = info["jfif_unit"]
                dx, dy = info["jfif_density"]
                self.properties["jfif.density"] = f"{dx},{dy} per {'inch' if unit == 1 else 'cm'}"
                um = 25400.0 if unit == 1 else 10000.0
                self.resolution = make_resolution(path, _div(um, dx), _div(um, dy), "metadata:jfif.density")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in info):
                im2 = im.convert("RGBA")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_rgb_u8((np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            else:
                im2 = im.convert("RGB")
            return to_rgb_u8(np.asarray(im2))

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._img[y : y + h, x : x + w]

    def close(self) -> None:
        self._img = np.zeros((0, 0, 3), np.uint8)


def _div(a: float, b: Any) -> float | None:
    try:
        return a / float(b) if float(b) > 0 else None
    except (TypeError, ValueError):
        return None

