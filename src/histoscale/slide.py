"""Slide access at physical resolution.

Conventions (as in OpenSlide):

* Coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)``.
* Coordinates are continuous: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so the centre of that
  pixel is ``(i + 0.5, j + 0.5)``. Pixel ``i`` of a level with downsample ``d`` covers level-0
  ``[i*d, (i+1)*d)``.
* Resolution is in micrometres per level-0 pixel (um/px, "mpp"). A *downsample* is level-0 pixels per
  output pixel.
* Everything outside the slide reads as white (255), never as an error.

Backends, tried in this order: OpenSlide (anything it detects), tiffslide (TIFF-based files OpenSlide
does not read: OME-TIFF, stripped or odd generic TIFFs), then plain images (PNG, JPEG, TIFF) as a
single-level slide held in memory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, Union

import cv2
import numpy as np

from .errors import ConfigError, MissingMppError, SlideError

__all__ = [
    "Resolution",
    "Slide",
    "TissueMask",
    "open_slide",
    "resample",
    "tissue_mask",
    "slide_info",
    "ANISOTROPY_TOLERANCE",
]

logger = logging.getLogger(__name__)

#: mpp_x and mpp_y differing by more than this fraction makes a resolution anisotropic.
ANISOTROPY_TOLERANCE = 0.10
#: Resolutions read from generic DPI-style fields (TIFF tags, PNG pHYs, JFIF density) coarser than
#: this are dropped: 72/96/300 dpi defaults written by image tools give 85..350 um/px, which no
#: microscope produces (1000 dpi is 25.4 um/px).
MAX_PLAUSIBLE_TAG_MPP = 25.0
_LEVEL_MATCH_RTOL = 1e-3
_STRIP_BYTES = 64 * 2**20  # bounded memory when reading whole levels (thumbnails)
_MAX_LEVEL_SIDE = 2**24  # px (16.7 M: 4 m at 0.25 um/px); larger level sides come from a damaged header
_MAX_TILE_SIDE = 8192  # px; larger TIFF tiles are taken for a damaged directory (scanners write 240..1024)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------------
# resolution


@dataclass(frozen=True)
class Resolution:
    """Size of one level-0 pixel in micrometres along x and y, and where that number came from.

    ``source`` is ``"metadata:<property key>"`` (e.g. ``"metadata:openslide.mpp-x"``),
    ``"tiff-resolution-tag"`` (TIFF XResolution/YResolution with a physical unit), or ``"override"``.
    """

    mpp_x: float
    mpp_y: float
    source: str

    @property
    def mpp(self) -> float:
        """Geometric mean of ``mpp_x`` and ``mpp_y`` in um/px (the one number used for scale)."""
        return math.sqrt(self.mpp_x * self.mpp_y)

    @property
    def is_anisotropic(self) -> bool:
        """True when x and y pixel sizes differ by more than ``ANISOTROPY_TOLERANCE`` (relative)."""
        return abs(self.mpp_x - self.mpp_y) > ANISOTROPY_TOLERANCE * min(self.mpp_x, self.mpp_y)


def _positive_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _make_resolution(path: Path, mpp_x: Any, mpp_y: Any, source: str) -> Resolution | None:
    """Validated Resolution from raw um/px values, or None when absent, invalid or implausible."""
    x, y = _positive_float(mpp_x), _positive_float(mpp_y)
    if x is None and y is None:
        return None
    x, y = (x or y), (y or x)  # one axis declared: assume square pixels
    assert x is not None and y is not None
    res = Resolution(x, y, source)
    if _is_dpi_style(source) and res.mpp > MAX_PLAUSIBLE_TAG_MPP:
        logger.warning(
            "ignoring resolution %.4g um/px (%s) of %s: it looks like a screen/print DPI default, not a "
            "microscope; pass mpp=... to set it",
            res.mpp,
            source,
            path,
        )
        return None
    if res.is_anisotropic:
        logger.warning("slide %s has anisotropic pixels: mpp-x %.4g vs mpp-y %.4g um/px (%s)", path, x, y, source)
    return res


def _is_dpi_style(source: str) -> bool:
    return source in ("tiff-resolution-tag", "metadata:png.pHYs", "metadata:jfif.density")


# --------------------------------------------------------------------------------------------------
# pixels


def _to_rgb_u8(arr: np.ndarray) -> np.ndarray:
    """Any reader output -> (h, w, 3) uint8 RGB; alpha is composited on white."""
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    c = a.shape[2]
    if c in (2, 4):
        rgb = a[:, :, :1].repeat(3, axis=2) if c == 2 else a[:, :, :3]
        alpha = a[:, :, c - 1 : c]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        al = alpha.astype(np.uint16)
        return ((rgb.astype(np.uint16) * al + 255 * (255 - al) + 127) // 255).astype(np.uint8)
    if c == 1:
        return np.ascontiguousarray(a.repeat(3, axis=2))
    return np.ascontiguousarray(a[:, :, :3])


def resample(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize ``image`` to exactly ``size_wh = (width, height)`` with anti-aliasing.

    The project's one resampler: area averaging (``cv2.INTER_AREA``) along axes that shrink, bilinear
    (``cv2.INTER_LINEAR``) along axes that grow. uint8 in, uint8 out (other cv2 dtypes pass through).
    Returns the input itself when it already has the requested size.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    if w < 1 or h < 1:
        raise ConfigError(f"resample size must be positive, got {(w, h)}")
    ih, iw = image.shape[:2]
    if (iw, ih) == (w, h):
        return image
    if (w <= iw) == (h <= ih):
        interp = cv2.INTER_AREA if w <= iw else cv2.INTER_LINEAR
        return cv2.resize(image, (w, h), interpolation=interp)
    # one axis shrinks, the other grows: shrink first with area averaging, then grow bilinearly
    if w < iw:
        image = cv2.resize(image, (w, ih), interpolation=cv2.INTER_AREA)
    else:
        image = cv2.resize(image, (iw, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------------
# backends


class _Backend(Protocol):
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
    return _make_resolution(path, props.get(key), props.get(f"{prefix}.mpp-y"), source)


class _OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._osr.properties.items()}
        self.vendor = self.properties.get("openslide.vendor")
        self.objective_power = _positive_float(self.properties.get("openslide.objective-power"))
        self.resolution = _vendor_resolution(path, self.properties, "openslide", self.vendor == "generic-tiff")

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # OpenSlide takes level-0 integers and renders level coordinate loc/ds; a fractional level
        # origin goes through cairo's bilinear path (blurred, ~3x slower). With integer downsamples
        # round(x*ds) is exact; otherwise the residual is < 0.5/ds level px.
        loc = (round(x * ds), round(y * ds))
        return _to_rgb_u8(np.asarray(self._osr.read_region(loc, level, (w, h))))

    def close(self) -> None:
        self._osr.close()


class _TiffSlideBackend:
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self._ts = tiffslide.TiffSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._ts.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._ts.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._ts.properties.items() if v is not None}
        self.vendor = self.properties.get("tiffslide.vendor")
        self.objective_power = _positive_float(self.properties.get("tiffslide.objective-power"))
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
        return _to_rgb_u8(arr)

    def close(self) -> None:
        self._ts.close()


class _ImageBackend:
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
                    self.resolution = _make_resolution(path, mx, my, "tiff-resolution-tag")
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar (S, Y, X) -> (Y, X, S)
        if arr.ndim not in (2, 3):
            raise SlideError(f"{path}: first TIFF page has shape {arr.shape}, not a 2-D RGB/grey image")
        return _to_rgb_u8(arr)

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
                self.resolution = _make_resolution(path, _div(25400.0, dx), _div(25400.0, dy), "metadata:png.pHYs")
            elif fmt == "JPEG" and info.get("jfif_unit") in (1, 2) and "jfif_density" in info:
                unit = info["jfif_unit"]
                dx, dy = info["jfif_density"]
                self.properties["jfif.density"] = f"{dx},{dy} per {'inch' if unit == 1 else 'cm'}"
                um = 25400.0 if unit == 1 else 10000.0
                self.resolution = _make_resolution(path, _div(um, dx), _div(um, dy), "metadata:jfif.density")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in info):
                im2 = im.convert("RGBA")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return _to_rgb_u8((np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            else:
                im2 = im.convert("RGB")
            return _to_rgb_u8(np.asarray(im2))

    def read_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._img[y : y + h, x : x + w]

    def close(self) -> None:
        self._img = np.zeros((0, 0, 3), np.uint8)


def _div(a: float, b: Any) -> float | None:
    try:
        return a / float(b) if float(b) > 0 else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# opening


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


def open_slide(path: PathLike, mpp: float | None = None, *, backend: str | None = None) -> "Slide":
    """Open a whole-slide image or a plain image as a :class:`Slide`.

    Args:
        path: slide file (.svs, .tif, .ndpi, .mrxs, ... or .png/.jpg).
        mpp: level-0 resolution in um/px overriding whatever the file declares
            (``resolution.source == "override"``).
        backend: force ``"openslide"``, ``"tiffslide"`` or ``"image"`` (default: first that works).

    Raises:
        SlideError: the file is missing, not a file, empty, not a slide, damaged or truncated;
            the message names the file and the problem, the backend error is chained.
    """
    p = Path(os.fspath(path))
    if backend not in (None, "openslide", "tiffslide", "image"):
        raise ConfigError(f"backend must be 'openslide', 'tiffslide' or 'image', got {backend!r}")
    if mpp is not None and _positive_float(mpp) is None:
        raise ConfigError(f"mpp override must be a positive number of um/px, got {mpp!r}")
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
    impl: _Backend | None = None
    for name in order:
        try:
            if name == "openslide":
                import openslide

                fmt = openslide.OpenSlide.detect_format(str(p))
                if fmt is None:
                    reasons.append("OpenSlide does not recognise the format")
                    continue
                impl = _OpenSlideBackend(p)
            elif name == "tiffslide":
                if kind != "tiff":
                    reasons.append("tiffslide reads only TIFF files")
                    continue
                impl = _TiffSlideBackend(p)
            else:
                if kind == "other":
                    reasons.append("not a PNG, JPEG or TIFF image")
                    continue
                impl = _ImageBackend(p, kind)
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


def _check_geometry(path: Path, impl: _Backend) -> None:
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


# --------------------------------------------------------------------------------------------------
# slide


class Slide:
    """An open slide: pyramid geometry, resolution, and white-padded reads. Use as a context manager."""

    def __init__(self, path: Path, impl: _Backend, resolution: Resolution | None) -> None:
        self.path = path
        self._impl: _Backend | None = impl
        self.backend: str = impl.name
        self.level_dimensions: tuple[tuple[int, int], ...] = impl.level_dimensions
        self.level_downsamples: tuple[float, ...] = impl.level_downsamples
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.level_count: int = len(self.level_dimensions)
        self.resolution = resolution
        self.objective_power: float | None = impl.objective_power
        self.vendor: str | None = impl.vendor
        self.properties: Mapping[str, str] = MappingProxyType(dict(impl.properties))

    # -- lifecycle
    def close(self) -> None:
        """Release the backend (idempotent)."""
        if self._impl is not None:
            self._impl.close()
            self._impl = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions={self.dimensions}, "
            f"levels={self.level_count}, mpp={self.mpp})"
        )

    # -- resolution
    @property
    def mpp(self) -> float | None:
        """Level-0 um/px (geometric mean of x and y), or None when the slide declares none."""
        return self.resolution.mpp if self.resolution is not None else None

    def downsample_for(self, mpp: float) -> float:
        """Level-0 pixels per output pixel for an output resolution of ``mpp`` um/px.

        Raises:
            MissingMppError: the slide has no resolution (and none was passed to :func:`open_slide`).
            SlideError: the slide declares anisotropic pixels (x and y um/px differ by more than
                ``ANISOTROPY_TOLERANCE``) and no override was given: one number cannot convert both axes.
        """
        if _positive_float(mpp) is None:
            raise ConfigError(f"mpp must be a positive number of um/px, got {mpp!r}")
        res = self.resolution
        if res is None:
            raise MissingMppError(
                f"slide {self.path} has no um/px metadata: pass --mpp (Python: open_slide(path, mpp=...)) "
                "or use relative downsample units (--relative; Python: relative=True)"
            )
        if res.is_anisotropic and res.source != "override":
            raise SlideError(
                f"slide {self.path} declares contradictory pixel sizes: {res.mpp_x:.4g} um/px along x but "
                f"{res.mpp_y:.4g} um/px along y ({res.source}); absolute units would be wrong along one axis. "
                "Pass the true resolution with --mpp (classify: --slide-mpp; Python: open_slide(path, mpp=...)) "
                "or use relative downsample units (search --relative; Python: relative=True)"
            )
        return float(mpp) / res.mpp

    def best_level(self, downsample: float) -> int:
        """Index of the coarsest level that is still at least as fine as ``downsample`` (level-0 px per
        output px), with a 1e-3 relative tolerance so a level reported as 3.9999 serves 4."""
        best, best_ds = 0, self.level_downsamples[0]
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1.0 + _LEVEL_MATCH_RTOL) and d > best_ds:
                best, best_ds = i, d
        return best

    # -- pixels
    def _backend(self) -> _Backend:
        if self._impl is None:
            raise SlideError(f"slide {self.path} is closed")
        return self._impl

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < self.level_count:
            raise ConfigError(f"level {level} out of range for {self.path} ({self.level_count} levels)")

    def _read_level_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 box at integer pixels of ``level``; white outside the level."""
        impl = self._backend()
        out = np.full((h, w, 3), 255, np.uint8)
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            box = impl.read_px(level, x0, y0, x1 - x0, y1 - y0)
        except Exception as err:
            raise SlideError(
                f"failed to read slide {self.path} at level {level}, box x={x0} y={y0} w={x1 - x0} h={y1 - y0} "
                f"(level px): {type(err).__name__}: {err}"
            ) from err
        out[y0 - y : y1 - y, x0 - x : x1 - x] = box
        return out

    def read_level(self, level: int, location_xy: tuple[float, float], size_wh: tuple[int, int]) -> np.ndarray:
        """Raw pixels of one level as (h, w, 3) uint8, white outside the slide.

        ``location_xy`` is the top-left in level-0 px (OpenSlide's rule); it is snapped to the nearest
        whole pixel of ``level`` (OpenSlide would otherwise interpolate a sub-pixel shift, slower and
        blurred). ``size_wh`` is in pixels of ``level``.
        """
        self._check_level(level)
        w, h = int(size_wh[0]), int(size_wh[1])
        if w < 0 or h < 0:
            raise ConfigError(f"read size must be non-negative, got {(w, h)}")
        ds = self.level_downsamples[level]
        return self._read_level_px(level, round(location_xy[0] / ds), round(location_xy[1] / ds), w, h)

    def read_region_at(
        self,
        center_xy: tuple[float, float],
        size_px: Union[int, tuple[int, int]],
        *,
        mpp: float | None = None,
        downsample: float | None = None,
    ) -> np.ndarray:
        """Field of view centred on ``center_xy`` (level-0 px, continuous) as (h, w, 3) uint8.

        Exactly one of ``mpp`` (um/px of the output) or ``downsample`` (level-0 px per output px).
        The output is exactly ``size_px`` = (w, h) (or w = h = int) pixels and covers
        ``w*downsample x h*downsample`` level-0 px. The box is read from :meth:`best_level` (the
        level just finer than asked) on whole level pixels, then resampled with :func:`resample`.

        Precision: each edge of the field of view is within 0.5 px of the chosen level (hence at most
        0.5 output px, less when the level is finer than the output) of its exact position; on
        OpenSlide levels with a non-integer downsample add < 0.5/downsample level px.
        """
        if (mpp is None) == (downsample is None):
            raise ConfigError("read_region_at needs exactly one of mpp= (um/px) or downsample=")
        if isinstance(size_px, (int, np.integer)):
            ow = oh = int(size_px)
        else:
            ow, oh = int(size_px[0]), int(size_px[1])
        if ow < 1 or oh < 1:
            raise ConfigError(f"region size must be positive, got {(ow, oh)}")
        d = self.downsample_for(mpp) if mpp is not None else _positive_float(downsample)
        if d is None:
            raise ConfigError(f"downsample must be a positive number, got {downsample!r}")
        level = self.best_level(d)
        ds = self.level_downsamples[level]
        cx, cy = float(center_xy[0]), float(center_xy[1])
        # field of view in continuous level coordinates
        fx0, fx1 = (cx - ow * d / 2) / ds, (cx + ow * d / 2) / ds
        fy0, fy1 = (cy - oh * d / 2) / ds, (cy + oh * d / 2) / ds
        bx0, by0 = math.floor(fx0 + 0.5), math.floor(fy0 + 0.5)
        bw, bh = max(1, math.floor(fx1 + 0.5) - bx0), max(1, math.floor(fy1 + 0.5) - by0)
        box = self._read_level_px(level, bx0, by0, bw, bh)
        return resample(box, (ow, oh))

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longer side is ``max_side`` (never enlarged) and its downsample
        (level-0 px per thumbnail px, exact along the longer side). Read from the coarsest adequate
        level in horizontal strips (bounded memory), then resampled.

        A pyramid level between ``max_side / 2`` and ``max_side`` is returned as it is (a smaller
        thumbnail): the next finer level would cost 16x the pixels for a picture barely sharper."""
        if max_side < 1:
            raise ConfigError(f"max_side must be positive, got {max_side}")
        w0, h0 = self.dimensions
        scale = max(1.0, max(w0, h0) / max_side)
        for lw, lh in reversed(self.level_dimensions):
            if max(lw, lh) >= max_side / 2:
                scale = max(scale, max(w0, h0) / max(lw, lh))
                break
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        level = self.best_level(scale)
        lw, lh = self.level_dimensions[level]
        out = np.empty((th, tw, 3), np.uint8)
        level_rows = max(1, _STRIP_BYTES // (4 * lw))
        out_rows = max(1, int(level_rows * th / lh))
        for r0 in range(0, th, out_rows):
            r1 = min(th, r0 + out_rows)
            y0, y1 = round(r0 * lh / th), round(r1 * lh / th)
            block = self._read_level_px(level, 0, y0, lw, max(1, y1 - y0))
            out[r0:r1] = resample(block, (tw, r1 - r0))
        return out, scale


# --------------------------------------------------------------------------------------------------
# tissue


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask over the slide: ``mask[j, i]`` covers level-0 px
    ``[i*downsample, (i+1)*downsample) x [j*downsample, (j+1)*downsample)``."""

    mask: np.ndarray
    downsample: float  # level-0 px per mask px
    mpp: float | None  # um per mask px

    @property
    def fraction(self) -> float:
        """Fraction of the slide area covered by tissue (0..1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def tissue_mask(
    slide: Slide,
    *,
    max_side: int = 1024,
    min_object_um2: float = 5000.0,
    min_object_px: int | None = None,
    saturation_floor: int = 8,
    saturation_cap: int = 10,
) -> TissueMask:
    """Tissue vs background from the thumbnail: Otsu threshold on HSV saturation (0..255).

    ``saturation_floor`` is a lower bound on the threshold, so a blank (all-white or grey) slide gives
    an empty mask instead of Otsu-split noise. ``saturation_cap`` is an upper bound: on a slide that is
    all tissue, Otsu would split pale stroma from dense nuclei and call the stroma background. Objects and holes smaller than ``min_object_px`` mask
    px are removed; by default that is ``min_object_um2`` um^2 converted with the mask's um/px, or
    1e-4 of the mask area when the slide has no resolution.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    thumb, ds = slide.thumbnail(max_side)
    mask_mpp = slide.mpp * ds if slide.mpp is not None else None
    sat = cv2.medianBlur(cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[:, :, 1], 3)  # JPEG speckle on glass
    if int(sat.max()) <= saturation_floor:
        mask = np.zeros(sat.shape, bool)
    else:
        thr = min(max(float(threshold_otsu(sat)), float(saturation_floor)), float(saturation_cap))
        mask = sat > thr
        # Closing joins the sparse fibres of loose stroma (stained fibres on white) into one region, without
        # growing isolated specks or moving the border of solid tissue.
        window = max(3, (max(thumb.shape[:2]) // 100) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (window, window))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    if min_object_px is None:
        if mask_mpp is not None:
            min_object_px = int(math.ceil(min_object_um2 / mask_mpp**2))
        else:
            min_object_px = int(math.ceil(1e-4 * mask.size))
    if min_object_px > 1 and mask.any():
        mask = remove_small_objects(mask, max_size=min_object_px - 1)
        mask = remove_small_holes(mask, max_size=min_object_px - 1)
    return TissueMask(mask=mask, downsample=ds, mpp=mask_mpp)


# --------------------------------------------------------------------------------------------------
# info


def slide_info(slide: Slide, *, tissue: bool = False) -> dict[str, Any]:
    """JSON-able summary: path, backend, vendor, geometry, resolution and its provenance
    (um/px), objective power, and optionally the tissue fraction (computes a tissue mask)."""
    res = slide.resolution
    info: dict[str, Any] = {
        "path": str(slide.path),
        "backend": slide.backend,
        "vendor": slide.vendor,
        "dimensions": list(slide.dimensions),
        "level_count": slide.level_count,
        "levels": [
            {"level": i, "width": w, "height": h, "downsample": d}
            for i, ((w, h), d) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))
        ],
        "mpp": res.mpp if res else None,
        "mpp_x": res.mpp_x if res else None,
        "mpp_y": res.mpp_y if res else None,
        "mpp_source": res.source if res else None,
        "anisotropic": res.is_anisotropic if res else None,
        "objective_power": slide.objective_power,
    }
    if tissue:
        info["tissue_fraction"] = tissue_mask(slide).fraction
    return info
