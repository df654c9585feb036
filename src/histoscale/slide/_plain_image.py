"""Plain raster images (JPEG, PNG, anything else Pillow reads) opened as a one-level slide.

:func:`jpeg_size_and_density` / :func:`png_size_and_density` read image headers without decoding (JPEG:
ITU-T T.81 B.2.2 frame header and T.871 JFIF 1.02 APP0 density; PNG: IHDR and pHYs, PNG spec 11.2.2 and
11.3.5.3), and :func:`open_plain_image` opens the image as a :class:`PlainImage` that decodes on the first
read, under an explicit memory budget instead of Pillow's decompression-bomb limit.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from histoscale.errors import LayoutError
from histoscale.slide._conventions import Candidate, from_jfif, from_png_phys

__all__ = [
    "MAX_DECODE_BYTES",
    "JpegHeader",
    "PlainImage",
    "PngHeader",
    "jpeg_size_and_density",
    "open_plain_image",
    "png_size_and_density",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Default memory budget for decoding a whole plain image (bytes of decoded pixels). 2 GiB covers a
#: 26000 x 26000 RGB JPEG; a 13500 x 13500 RGB JPEG needs 547 MB.
MAX_DECODE_BYTES = 2 * 2**30


# --------------------------------------------------------------------------------------------------
# plain image headers


@dataclass(frozen=True)
class JpegHeader:
    """JPEG frame header (SOFn) and JFIF APP0 density (ITU-T T.81 B.2.2, T.871 JFIF 1.02).

    Attributes:
        width, height: pixels.
        components: 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK.
        precision: bits per sample (8 for baseline).
        sof: SOF marker byte (0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...).
        jfif_units: None without a JFIF APP0; 0 aspect only, 1 dots/inch, 2 dots/cm.
        x_density, y_density: JFIF Xdensity/Ydensity (None without JFIF).
    """

    width: int
    height: int
    components: int
    precision: int
    sof: int
    jfif_units: int | None = None
    x_density: int | None = None
    y_density: int | None = None

    @property
    def progressive(self) -> bool:
        return self.sof in (0xC2, 0xC6, 0xCA, 0xCE)

    def candidates(self) -> list[Candidate]:
        """Resolution candidates from the JFIF density (see ``resolution.from_jfif``)."""
        return from_jfif(self.jfif_units, self.x_density, self.y_density)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size_and_density(path: PathLike) -> JpegHeader:
    """Read size and JFIF density from a JPEG's marker segments without decoding.

    Walks the segments after SOI up to the first SOS (the entropy-coded data), so it reads a few KB
    even for a 13500 x 13500 image.

    Raises:
        LayoutError: not a JPEG, truncated header, no SOFn, or a height deferred to a DNL marker.
    """
    p = Path(os.fspath(path))
    with open(p, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise LayoutError(f"{p} is not a JPEG file (no SOI marker)")
        jfif: tuple[int, int, int] | None = None
        while True:
            b = f.read(1)
            if not b:
                raise LayoutError(f"{p}: JPEG header ends before a frame header (SOFn); truncated file?")
            if b != b"\xff":
                raise LayoutError(f"{p}: corrupt JPEG header at byte {f.tell() - 1} (expected a marker)")
            marker = 0xFF
            while marker == 0xFF:  # fill bytes
                mb = f.read(1)
                if not mb:
                    raise LayoutError(f"{p}: truncated JPEG header")
                marker = mb[0]
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                continue
            if marker in (0xD9, 0xDA):
                raise LayoutError(f"{p}: JPEG has no frame header (SOFn) before its scan data")
            raw_len = f.read(2)
            if len(raw_len) < 2:
                raise LayoutError(f"{p}: truncated JPEG header")
            (length,) = struct.unpack(">H", raw_len)
            payload = f.read(length - 2)
            if len(payload) < length - 2:
                raise LayoutError(f"{p}: truncated JPEG header (segment 0x{marker:02X})")
            if marker == 0xE0 and payload[:5] == b"JFIF\x00" and len(payload) >= 12:
                units, xd, yd = struct.unpack(">BHH", payload[7:12])
                jfif = (units, xd, yd)
            elif marker in _SOF_MARKERS:
                precision, height, width, ncomp = struct.unpack(">BHHB", payload[:6])
                if height == 0:
                    raise LayoutError(f"{p}: JPEG height is given by a DNL marker, which is not supported")
                if width == 0:
                    raise LayoutError(f"{p}: JPEG frame header declares width 0")
                units, xd, yd = jfif if jfif else (None, None, None)
                return JpegHeader(width, height, ncomp, precision, marker, units, xd, yd)


@dataclass(frozen=True)
class PngHeader:
    """PNG IHDR and pHYs (PNG spec 11.2.2, 11.3.5.3).

    Attributes:
        width, height: pixels.
        bit_depth, color_type: IHDR fields (color type 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA).
        x_ppu, y_ppu, phys_unit: pHYs pixels per unit and unit (1 = metre, 0 = unknown); None if absent.
    """

    width: int
    height: int
    bit_depth: int
    color_type: int
    x_ppu: int | None = None
    y_ppu: int | None = None
    phys_unit: int | None = None

    def candidates(self) -> list[Candidate]:
        """Resolution candidates from pHYs (see ``resolution.from_png_phys``)."""
        return from_png_phys(self.x_ppu, self.y_ppu, self.phys_unit)


def png_size_and_density(path: PathLike) -> PngHeader:
    """Read IHDR and pHYs (which must precede IDAT) without decoding.

    Raises:
        LayoutError: not a PNG or truncated before IHDR.
    """
    p = Path(os.fspath(path))
    with open(p, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            raise LayoutError(f"{p} is not a PNG file (bad signature)")
        ihdr: tuple[int, int, int, int] | None = None
        phys: tuple[int, int, int] | None = None
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, ctype = struct.unpack(">I4s", head)
            if ctype == b"IDAT" or ctype == b"IEND":
                break
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)  # CRC
            if ctype == b"IHDR" and len(data) >= 10:
                w, h, depth, color = struct.unpack(">IIBB", data[:10])
                ihdr = (w, h, depth, color)
            elif ctype == b"pHYs" and len(data) >= 9:
                phys = struct.unpack(">IIB", data[:9])
    if ihdr is None:
        raise LayoutError(f"{p}: PNG has no IHDR chunk (truncated file?)")
    x, y, unit = phys if phys else (None, None, None)
    return PngHeader(*ihdr, x, y, unit)


# --------------------------------------------------------------------------------------------------
# plain images


_PIL_LOCK = threading.Lock()


class PlainImage:
    """A JPEG/PNG/other raster image seen as a one-level slide; pixels are decoded on first read.

    JPEGs are decoded by libjpeg-turbo through ``imagecodecs.jpeg8_decode`` straight into one numpy
    array (w * h * components bytes: 547 MB and 0.35 s for 13500 x 13500 RGB), avoiding Pillow's
    decompression-bomb check and its 4-bytes-per-pixel copy (Pillow needs 1.8 GB peak and 4.8 s
    for the same file). Other formats go through Pillow with its pixel limit lifted for that one
    decode (after this class's own memory check). Grey images stay one channel in memory and are
    expanded to RGB per read.

    Attributes:
        path, format (``"JPEG"``, ``"PNG"``, Pillow's name otherwise), dimensions (w, h),
        level_count (1), level_dimensions, level_downsamples, candidates (resolution candidates from
        the header), decode_bytes (memory the full decode needs), max_decode_bytes.
    """

    level_count = 1
    level_downsamples = (1.0,)

    def __init__(
        self,
        path: Path,
        fmt: str,
        width: int,
        height: int,
        channels: int,
        candidates: list[Candidate],
        max_decode_bytes: int,
    ) -> None:
        self.path = path
        self.format = fmt
        self.dimensions = (width, height)
        self.level_dimensions = ((width, height),)
        self.candidates = candidates
        self._channels = channels
        if fmt == "JPEG":  # libjpeg-turbo decodes into the final array
            self.decode_bytes = width * height * channels
        else:  # Pillow keeps RGB as 4 bytes/px, then numpy copies it
            self.decode_bytes = width * height * (2 if channels == 1 else 7)
        self.max_decode_bytes = max_decode_bytes
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    def _check_budget(self) -> None:
        if self.decode_bytes > self.max_decode_bytes:
            w, h = self.dimensions
            raise LayoutError(
                f"{self.path}: decoding this {w}x{h} px {self.format} needs {self.decode_bytes / 1e6:.0f} MB, "
                f"over the {self.max_decode_bytes / 1e6:.0f} MB a plain image may take in memory; convert it to a "
                "tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid), which is read tile by tile"
            )

    def _decode(self) -> np.ndarray:
        self._check_budget()
        try:
            return self._decode_unchecked()
        except MemoryError as err:
            w, h = self.dimensions
            raise LayoutError(
                f"{self.path}: not enough memory to decode this {w}x{h} px {self.format} "
                f"({self.decode_bytes / 1e6:.0f} MB); convert it to a tiled pyramidal TIFF "
                "(e.g. vips tiffsave --tile --pyramid) and open that"
            ) from err

    def _decode_unchecked(self) -> np.ndarray:
        if self.format == "JPEG" and self._channels in (1, 3):
            try:
                import imagecodecs

                arr = imagecodecs.jpeg8_decode(self.path.read_bytes())
            except ImportError:
                arr = None
            if arr is not None:
                return arr
        return self._decode_pil()

    def _decode_pil(self) -> np.ndarray:
        with _open_unlimited(self.path) as im:
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"))
                alpha = rgba[..., 3:4].astype(np.uint16)
                return (rgba[..., :3] * alpha // 255 + 255 - alpha).astype(np.uint8)  # composite on white
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return (np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            if im.mode not in ("L", "RGB"):
                return np.asarray(im.convert("RGB"))
            return np.asarray(im)

    def pixels(self) -> np.ndarray:
        """The whole decoded image, (h, w) grey or (h, w, 3) RGB uint8, decoded once and cached."""
        with self._lock:
            if self._pixels is None:
                self._pixels = self._decode()
            return self._pixels

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the box at (x, y) in pixels; parts outside the image are white."""
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        img = self.pixels()
        out = np.full((h, w, 3), 255, np.uint8)
        W, H = self.dimensions
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x0 < x1 and y0 < y1:
            box = img[y0:y1, x0:x1]
            out[y0 - y : y1 - y, x0 - x : x1 - x] = box[..., None] if box.ndim == 2 else box[..., :3]
        return out

    def thumbnail(self, max_side: int) -> np.ndarray:
        """RGB image whose longer side is at most ``max_side``, without a full-resolution decode for
        JPEG: libjpeg's DCT scaling (Pillow ``draft``) decodes at 1/2, 1/4 or 1/8 directly (62 MB and
        0.09 s for 13500 x 13500 at 1/8), then Pillow resizes the rest of the way."""
        with _open_unlimited(self.path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            rgb = im.convert("RGB")
            rgb.thumbnail((max_side, max_side))
            return np.asarray(rgb)

    def close(self) -> None:
        with self._lock:
            self._pixels = None


def open_plain_image(path: PathLike, *, max_decode_bytes: int = MAX_DECODE_BYTES) -> PlainImage:
    """Open a JPEG, PNG or other Pillow-readable raster lazily: only the header is read here.

    JPEG and PNG headers are parsed directly (:func:`jpeg_size_and_density`,
    :func:`png_size_and_density`); other formats through ``PIL.Image.open`` (lazy in Pillow) with
    the decompression-bomb limit lifted for that call. The memory check happens at the first read.

    Raises:
        LayoutError: unreadable header or not an image Pillow knows.
    """
    p = Path(os.fspath(path))
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\xff\xd8\xff"):
        jh = jpeg_size_and_density(p)
        channels = 1 if jh.components == 1 else 3
        return PlainImage(p, "JPEG", jh.width, jh.height, channels, jh.candidates(), max_decode_bytes)
    if head == b"\x89PNG\r\n\x1a\n":
        ph = png_size_and_density(p)
        channels = 1 if ph.color_type == 0 and ph.bit_depth <= 8 else 3
        return PlainImage(p, "PNG", ph.width, ph.height, channels, ph.candidates(), max_decode_bytes)
    from PIL import UnidentifiedImageError

    try:
        with _open_unlimited(p) as im:
            w, h, fmt = im.size[0], im.size[1], im.format or "unknown"
    except (UnidentifiedImageError, OSError) as err:
        raise LayoutError(f"{p} is not an image Pillow can read: {err}") from err
    return PlainImage(p, fmt, w, h, 3, [], max_decode_bytes)


def _open_unlimited(path: Path) -> Any:
    """``PIL.Image.open(path)`` (lazy) with the decompression-bomb limit lifted for that call only: the size is
    checked here, before any decode. MAX_IMAGE_PIXELS is a module global, hence the lock."""
    from PIL import Image

    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
