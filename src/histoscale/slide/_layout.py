"""Which image in a file is the slide, which are its associated images, and which reader sees it right.

Two parts:

* :func:`inspect_tiff` looks at a TIFF's series and pages with tifffile (no pixel decoding) and
  returns a :class:`TiffLayout`: the main pyramid is the largest *tiled* series (its levels come from
  ``TiffPageSeries.levels``, which covers pyramids in the main IFD chain, in SubIFDs and in OME-TIFF);
  stripped label/macro/thumbnail pages are never the slide. It also predicts whether OpenSlide's
  reader would show the same levels (OpenSlide 4.0 ``generic-tiff`` needs a tiled page 0 and takes
  as levels only page 0 plus tiled main-chain pages marked reduced-resolution; it never reads
  SubIFDs and does not read OME-XML) and otherwise names tiffslide. A Leica SCN's scanned regions (its main
  images) are listed; one of them is read alone, through tifffile, when the user picks it or when no reader
  shows them as one image (regions of different resolutions).

* :func:`jpeg_size_and_density` / :func:`png_size_and_density` read image headers without decoding,
  and :func:`open_plain_image` opens a JPEG/PNG/other raster as a one-level image that decodes on the
  first read, under an explicit memory budget instead of Pillow's decompression-bomb limit.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from histoscale.errors import ConfigError, SlideError
from histoscale.slide._conventions import Candidate, from_jfif, from_png_phys

__all__ = [
    "MAX_DECODE_BYTES",
    "JpegHeader",
    "LayoutError",
    "PlainImage",
    "PngHeader",
    "SlideRegion",
    "TiffLayout",
    "inspect_tiff",
    "jpeg_size_and_density",
    "open_plain_image",
    "png_size_and_density",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Default memory budget for decoding a whole plain image (bytes of decoded pixels). 2 GiB covers a
#: 26000 x 26000 RGB JPEG; a 13500 x 13500 RGB JPEG needs 547 MB.
MAX_DECODE_BYTES = 2 * 2**30

_MAX_PREDICTED_PAGES = 1024  # directories read to predict OpenSlide's levels (pyramids have a few dozen)

_ASSOCIATED_WORDS = ("label", "macro", "thumbnail", "overview")
_WORD_RE = {w: re.compile(rf"\b{w}\b", re.IGNORECASE) for w in _ASSOCIATED_WORDS}


class LayoutError(SlideError):
    """A file whose structure cannot be used (message names the file and the problem)."""


# --------------------------------------------------------------------------------------------------
# TIFF layout


@dataclass(frozen=True)
class SlideRegion:
    """One scanned region (main image) of a Leica SCN slide, as the file's XML describes it.

    Attributes:
        index: the region's number, counted from 0 over the main images in the XML's order (the macro image,
            which covers the whole glass, is not a region).
        name: the image's name in the XML ("" when it has none).
        series_index: the tifffile series holding its pyramid.
        width, height: level-0 size in pixels.
        level_count: levels of its pyramid.
        mpp_x, mpp_y: level-0 um/px: the region's size on the glass (the view, nm) over its pixels.
        offset_mm: (x, y) of its top-left corner on the glass, in mm.
        objective: the objective's magnification as the XML gives it ("" when it does not).
        illumination: the illumination source (``"brightfield"``, ``"fluorescence"``; "" when not given).
    """

    index: int
    name: str
    series_index: int
    width: int
    height: int
    level_count: int
    mpp_x: float
    mpp_y: float
    offset_mm: tuple[float, float]
    objective: str = ""
    illumination: str = ""

    @property
    def mpp(self) -> float:
        """Level-0 um/px (geometric mean of x and y)."""
        return math.sqrt(self.mpp_x * self.mpp_y)

    def describe(self) -> str:
        """One line, e.g. ``region 1 'B': 256x384 px at 1 um/px``."""
        name = f" {self.name!r}" if self.name else ""
        mpp = f"{self.mpp_x:.4g}" if math.isclose(self.mpp_x, self.mpp_y, rel_tol=1e-3) else (
            f"{self.mpp_x:.4g} x {self.mpp_y:.4g}")
        return f"region {self.index}{name}: {self.width}x{self.height} px at {mpp} um/px"


@dataclass(frozen=True)
class TiffLayout:
    """What is where in a TIFF file.

    Attributes:
        series_index: tifffile series holding the slide pyramid (``TiffFile.series[series_index]``).
        level_shapes: (height, width) of each pyramid level, largest first.
        tiled: the level-0 image is tiled (False: a stripped image; fine for small images only).
        associated: associated image name -> index of its page in the main IFD chain
            (``"label"``, ``"macro"``, ``"thumbnail"``; unnamed ones ``"image<page>"``).
        ome: the file carries OME-XML.
        imagej: the file carries an ImageJ description.
        reader: ``"openslide"`` when OpenSlide shows exactly these levels, ``"tifffile"`` for one region of a
            Leica SCN read alone, else ``"tiffslide"``.
        reason: one line on why ``reader`` was chosen (for logs and ``slide_info``).
        other_series: other tiled series that are neither the slide nor named associated images
            (e.g. the reduced levels of an OME file that stores each level as its own Image).
        axes: tifffile's axes of the slide's level 0 (``YXS`` RGB, ``SYX`` planar RGB, ``CYX`` channels,
            ``ZYXS`` a Z-stack, ...).
        sizes: the size along each of ``axes``.
        dtype: the sample type (``uint8``, ``uint16``, ...).
        photometric: the TIFF photometric interpretation of level 0 (``RGB``, ``YCBCR``, ``MINISBLACK``, ...).
        channel_names: the OME channel names, when the file gives them.
        regions: the scanned regions of a Leica SCN (empty for other files).
        region: the index in ``regions`` of the one region that is the slide; None when the file has no regions or
            the reader shows every region at once (OpenSlide places them on the glass's coordinates).
        regions_apart: why no reader shows the regions as one image (different resolutions, objectives, ...; ""
            when OpenSlide does).
    """

    series_index: int
    level_shapes: tuple[tuple[int, int], ...]
    tiled: bool
    associated: dict[str, int]
    ome: bool
    imagej: bool
    reader: Literal["openslide", "tiffslide", "tifffile"]
    reason: str = ""
    other_series: tuple[int, ...] = field(default=())
    axes: str = "YXS"
    sizes: tuple[int, ...] = ()
    dtype: str = "uint8"
    photometric: str = "RGB"
    channel_names: tuple[str, ...] = ()
    regions: tuple[SlideRegion, ...] = ()
    region: int | None = None
    regions_apart: str = ""

    @property
    def channels(self) -> int:
        """Samples per pixel times separate channels (3 for RGB)."""
        size = dict(zip(self.axes, self.sizes))
        return size.get("S", 1) * size.get("C", 1)

    @property
    def brightfield_rgb(self) -> bool:
        """Colour pixels as a brightfield scanner writes them: RGB or YCbCr, 3 samples (4 with alpha)."""
        size = dict(zip(self.axes, self.sizes))
        return self.photometric in ("RGB", "YCBCR") and size.get("C", 1) == 1 and size.get("S", 1) in (3, 4)

    @property
    def planes(self) -> dict[str, int]:
        """Axes beyond one image (Z focal planes, T time points, ...) with their size, where larger than 1."""
        return {a: n for a, n in zip(self.axes, self.sizes) if a not in "YXSC" and n > 1}

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) per level, OpenSlide order."""
        return tuple((w, h) for h, w in self.level_shapes)

    @property
    def needs_series_override(self) -> bool:
        """tiffslide 3.0 always reads series 0 of non-vendor TIFFs; True when that is not the slide."""
        return self.series_index != 0


def _hw(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    """(height, width) of a tifffile shape given its axes string (``YXS``, ``IYXS``, ``CYX``...)."""
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _page_index(page: Any) -> int:
    """Index in the main IFD chain (the parent page for a SubIFD)."""
    idx = page.index
    return int(idx[0]) if isinstance(idx, tuple) else int(idx)


def _associated_name(tf: Any, series: Any) -> str | None:
    """'label', 'macro' or 'thumbnail' when the series names itself so, else None.

    Sources, in order: tifffile's series name (set from Aperio/Ventana/OME conventions, e.g. Aperio's
    second page is 'Thumbnail', trailing pages 'Label'/'Macro'); the page's ImageDescription when it
    is short plain text (Aperio writes "...\\nlabel 387x463", "...\\nmacro 1280x431"); never the OME-XML
    (it describes every image of the file at once).
    """
    page = series.keyframe
    texts = [str(getattr(series, "name", "") or "")]
    desc = "" if getattr(tf, "is_ome", False) else (page.description or "")
    if desc and not desc.lstrip().startswith("<") and len(desc) < 2000:
        texts.append(desc)
    for text in texts:
        for word in _ASSOCIATED_WORDS:
            if _WORD_RE[word].search(text):
                return "macro" if word == "overview" else word
    if page.subfiletype == 9 and not page.is_tiled:  # Aperio macro: reduced | MRC bits
        return "macro"
    return None


def _openslide_levels(tf: Any) -> tuple[tuple[int, int], ...] | None:
    """(height, width) of the levels OpenSlide 4.0 would show, or None when it rejects the file.

    Vendor TIFFs that OpenSlide reads (Aperio, Hamamatsu NDPI, Leica SCN, Ventana BIF, Philips) are
    taken as read correctly. For generic TIFF OpenSlide requires page 0 to be tiled and takes page 0
    plus every tiled main-chain page with the NewSubfileType reduced-image bit; SubIFDs are ignored.
    """
    first = tf.pages.first
    if not first.is_tiled:
        return None
    levels = [_hw(first.shape, first.axes)]
    # once tifffile has parsed the series, the cache holds TiffFrames (no tag properties) for the planes of an
    # image stack: ``get`` reads each directory as a TiffPage. A stack's pages past the cap are planes, not levels.
    for i in range(1, min(len(tf.pages), _MAX_PREDICTED_PAGES)):
        page = tf.pages.get(i)
        if page.is_tiled and page.is_reduced:
            levels.append(_hw(page.shape, page.axes))
    return tuple(sorted(levels, key=lambda hw: -hw[0] * hw[1]))


def inspect_tiff(path: PathLike, *, confirm_with_openslide: bool = False, region: int | None = None) -> TiffLayout:
    """Find the slide pyramid and associated images of a TIFF and pick the reader.

    Args:
        path: a TIFF/BigTIFF file (OME-TIFF, ImageJ, SVS, Leica SCN, generic...).
        confirm_with_openslide: also open the file with OpenSlide (if installed) and compare its
            level sizes with the pyramid found here, instead of relying on the prediction only.
        region: for a Leica SCN, the scanned region (``TiffLayout.regions``, counted from 0) that is the slide,
            read alone through tifffile. Default: every region as OpenSlide shows them, or, when no reader shows
            them as one image (different resolutions), the largest in pixels. 0 for any other file.

    Raises:
        LayoutError: the file has no image series.
        ConfigError: ``region`` is out of range (the message lists the regions).
    """
    import tifffile

    p = Path(os.fspath(path))
    with tifffile.TiffFile(p) as tf:
        all_series = list(tf.series)
        if not all_series:
            raise LayoutError(f"{p}: TIFF file has no images")
        regions, macros, apart = _scn_regions(tf, all_series) if tf.is_scn else ((), frozenset(), "")
        names = ["macro" if i in macros else _associated_name(tf, s) for i, s in enumerate(all_series)]
        if region is not None and not (isinstance(region, int) and 0 <= region < max(len(regions), 1)):
            raise ConfigError(f"region={region!r} is out of range for {p}: " + _describe_regions(regions),
                              keyword="region")

        def area(i: int) -> int:
            h, w = _hw(all_series[i].levels[0].shape, all_series[i].levels[0].axes)
            return h * w

        indices = range(len(all_series))
        pool = [i for i in indices if all_series[i].keyframe.is_tiled and names[i] is None]
        pool = pool or [i for i in indices if names[i] is None] or list(indices)
        main = max(pool, key=lambda i: (area(i), -i))
        alone = bool(regions) and (region is not None or bool(apart))
        if alone and region is not None:
            main = regions[region].series_index
        chosen = next((r.index for r in regions if r.series_index == main), None) if alone else None
        series = all_series[main]
        level_shapes = tuple(_hw(lvl.shape, lvl.axes) for lvl in series.levels)
        tiled = bool(series.keyframe.is_tiled)
        main_h, main_w = level_shapes[0]

        associated: dict[str, int] = {}
        other: list[int] = []
        for i, s in enumerate(all_series):
            if i == main:
                continue
            page = s.keyframe
            name = names[i]
            if name is None:
                h, w = _hw(s.levels[0].shape, s.levels[0].axes)
                same_aspect = abs(w / h - main_w / main_h) <= 0.02 * (main_w / main_h)
                if page.is_reduced and same_aspect and not page.is_tiled:
                    name = "thumbnail"
                elif page.is_tiled:
                    other.append(i)
                    continue
                else:
                    name = f"image{_page_index(page)}"
            if name in associated:
                name = f"{name}{_page_index(page)}"
            associated[name] = _page_index(page)

        predicted = _openslide_levels(tf)
        ome, imagej = bool(tf.is_ome), bool(tf.is_imagej)
        vendor = next((v for v in ("svs", "ndpi", "scn", "bif", "philips") if getattr(tf, f"is_{v}", False)), None)
        subifd_levels = any(lvl.keyframe.is_subifd for lvl in series.levels)
        level0 = series.levels[0]
        pixels = dict(
            axes=str(level0.axes), sizes=tuple(int(n) for n in level0.shape), dtype=str(level0.dtype),
            photometric=series.keyframe.photometric.name, channel_names=_ome_channel_names(tf, main) if ome else (),
        )

    reader: Literal["openslide", "tiffslide", "tifffile"]
    if chosen is not None:
        # OpenSlide and tiffslide read an SCN's regions as one image on the glass (or refuse them): one region
        # alone is its own tifffile series
        why = f"no reader shows the regions as one image: {apart}" if apart else "picked by the user"
        reader, reason = "tifffile", f"region {chosen} of {len(regions)} of a Leica SCN, read alone ({why})"
    elif vendor is not None:
        reader, reason = "openslide", f"OpenSlide vendor format ({vendor})"
    elif predicted is None:
        reader, reason = "tiffslide", "page 0 is not tiled: OpenSlide's generic-tiff reader rejects the file"
    elif predicted != level_shapes:
        why = "levels are SubIFDs, which OpenSlide ignores" if subifd_levels else "OpenSlide would see other levels"
        reader = "tiffslide"
        reason = f"{why} (OpenSlide: {len(predicted)} level(s), slide: {len(level_shapes)})"
    else:
        reader, reason = "openslide", "generic tiled TIFF whose levels OpenSlide reads"
    if confirm_with_openslide and reader != "tifffile":
        actual = _openslide_actual_levels(p)
        if actual != level_shapes and reader == "openslide":
            reader = "tiffslide"
            reason = f"OpenSlide shows levels {actual}, not {level_shapes}"
        elif actual == level_shapes and reader == "tiffslide":
            reader, reason = "openslide", "OpenSlide shows the same levels"
    if reader == "tiffslide" and main != 0:
        reason += f"; the slide is series {main}, tiffslide reads series 0 unless told otherwise"
    return TiffLayout(main, level_shapes, tiled, associated, ome, imagej, reader, reason, tuple(other), **pixels,
                      regions=regions, region=chosen, regions_apart=apart)


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _scn_regions(tf: Any, all_series: list[Any]) -> tuple[tuple[SlideRegion, ...], frozenset[int], str]:
    """The scanned regions of a Leica SCN (its first collection, as OpenSlide reads it), the series that are its macro
    image, and why no reader shows the regions as one image ("" when OpenSlide does).

    OpenSlide's rules (its Leica reader): the macro image is the one whose view is the whole collection; the main
    images are composited on the glass's coordinates only when all are brightfield, with the same objective, the
    same number of levels and each level's resolution within 2% (otherwise it refuses the file, as tiffslide does).
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tf.scn_metadata)
        collection = next((el for el in root if _local(el.tag) == "collection"), None)
        if collection is not None:
            return _collection_regions(collection, all_series)
    except (ET.ParseError, ValueError):  # XML or numbers that do not parse: read as any TIFF, without regions
        pass
    return (), frozenset(), ""


def _collection_regions(collection: Any, all_series: list[Any]) -> tuple[tuple[SlideRegion, ...], frozenset[int], str]:
    """:func:`_scn_regions` of the collection's XML element."""
    series_of_ifd = {_page_index(s.keyframe): i for i, s in enumerate(all_series)}
    size_nm = (int(collection.get("sizeX", 0)), int(collection.get("sizeY", 0)))
    regions: list[SlideRegion] = []
    level_mpps: list[list[float]] = []
    macros: set[int] = set()
    for image in (el for el in collection if _local(el.tag) == "image"):
        fields = {_local(el.tag): el for el in image.iter()}
        view, pixels = fields.get("view"), fields.get("pixels")
        if view is None or pixels is None:
            continue
        dims = sorted(
            ((int(d.get("sizeX", 0)), int(d.get("sizeY", 0)), int(d.get("ifd", -1))) for d in pixels
             if _local(d.tag) == "dimension" and d.get("z", "0") == "0" and d.get("c", "0") == "0"),
            reverse=True,
        )
        series = series_of_ifd.get(dims[0][2]) if dims and dims[0][0] > 0 and dims[0][1] > 0 else None
        if series is None:
            continue
        vx, vy, ox, oy = (int(view.get(a, 0)) for a in ("sizeX", "sizeY", "offsetX", "offsetY"))
        if (ox, oy, vx, vy) == (0, 0, *size_nm):
            macros.add(series)
            continue
        w, h = dims[0][0], dims[0][1]
        regions.append(SlideRegion(
            len(regions), image.get("name", ""), series, w, h, len(dims), vx / w / 1000, vy / h / 1000,
            (ox / 1e6, oy / 1e6), (fields["objective"].text or "").strip() if "objective" in fields else "",
            (fields["illuminationSource"].text or "").strip() if "illuminationSource" in fields else "",
        ))
        level_mpps.append([vx / d[0] / 1000 for d in dims])
    return tuple(regions), frozenset(macros), _apart(regions, level_mpps)


def _apart(regions: list[SlideRegion], level_mpps: list[list[float]]) -> str:
    """Why OpenSlide does not composite these regions into one image ("" when it does); ``level_mpps``: each
    region's um/px per level."""
    if len(regions) < 2:
        return ""
    if any(r.illumination != "brightfield" for r in regions):
        return "not every region is brightfield"
    if len({r.objective for r in regions}) > 1:
        return "objectives " + ", ".join(r.objective for r in regions)
    if len({len(m) for m in level_mpps}) > 1:
        return "pyramids of " + ", ".join(str(len(m)) for m in level_mpps) + " levels"
    if any(abs(a - b) > 0.02 * b for m in level_mpps[1:] for a, b in zip(m, level_mpps[0])):
        return "different resolutions, " + ", ".join(f"{r.mpp:.4g}" for r in regions) + " um/px"
    return ""


def _describe_regions(regions: tuple[SlideRegion, ...]) -> str:
    """What ``region=k`` may pick, for an error message."""
    if not regions:
        return "it holds one image, region 0 (region=k picks among the scanned regions of a Leica SCN)"
    return (f"it holds {len(regions)} scanned region(s), numbered 0..{len(regions) - 1} ("
            + "; ".join(r.describe() for r in regions) + ")")


def _ome_channel_names(tf: Any, series_index: int) -> tuple[str, ...]:
    """The Name of each Channel of the OME Image holding the slide (empty when the XML gives none)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tf.ome_metadata)
    except ET.ParseError:
        return ()
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    if series_index >= len(images):
        return ()
    channels = [el for el in images[series_index].iter() if el.tag.rsplit("}", 1)[-1] == "Channel"]
    return tuple(str(c.get("Name")) for c in channels if c.get("Name"))


def _openslide_actual_levels(path: Path) -> tuple[tuple[int, int], ...] | None:
    """(height, width) per level as OpenSlide shows the file, None if it does not read it."""
    try:
        import openslide
    except ImportError:
        return None
    if openslide.OpenSlide.detect_format(str(path)) is None:
        return None
    with openslide.OpenSlide(str(path)) as osr:
        return tuple((int(h), int(w)) for w, h in osr.level_dimensions)


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
        from PIL import Image

        with _PIL_LOCK:  # MAX_IMAGE_PIXELS is a module global: lift it only around this open
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(self.path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with im:
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
        from PIL import Image

        with _PIL_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(self.path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with im:
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
    from PIL import Image, UnidentifiedImageError

    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(p) as im:
                w, h, fmt = im.size[0], im.size[1], im.format or "unknown"
        except (UnidentifiedImageError, OSError) as err:
            raise LayoutError(f"{p} is not an image Pillow can read: {err}") from err
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    return PlainImage(p, fmt, w, h, 3, [], max_decode_bytes)
