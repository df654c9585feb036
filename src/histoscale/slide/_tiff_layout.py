"""Which image in a TIFF is the slide, which are its associated images, and which reader sees it right.

:func:`inspect_tiff` looks at a TIFF's series and pages with tifffile (no pixel decoding) and returns a
:class:`TiffLayout`: the main pyramid is the largest *tiled* series (its levels come from
``TiffPageSeries.levels``, which covers pyramids in the main IFD chain, in SubIFDs and in OME-TIFF); stripped
label/macro/thumbnail pages are never the slide. It also predicts whether OpenSlide's reader would show the
same levels (OpenSlide 4.0 ``generic-tiff`` needs a tiled page 0 and takes as levels only page 0 plus tiled
main-chain pages marked reduced-resolution; it never reads SubIFDs and does not read OME-XML) and otherwise
names tiffslide. A Leica SCN's scanned regions (:mod:`histoscale.slide._scn`) are listed; one of them is read
alone, through tifffile, when the user picks it or when no reader shows them as one image (regions of
different resolutions).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from histoscale.errors import ConfigError, LayoutError
from histoscale.slide._scn import SlideRegion, describe_regions, scn_regions

__all__ = ["TiffLayout", "inspect_tiff"]

PathLike = Union[str, "os.PathLike[str]"]

_MAX_PREDICTED_PAGES = 1024  # directories read to predict OpenSlide's levels (pyramids have a few dozen)

_ASSOCIATED_WORDS = ("label", "macro", "thumbnail", "overview")
_WORD_RE = {w: re.compile(rf"\b{w}\b", re.IGNORECASE) for w in _ASSOCIATED_WORDS}


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
        regions, macros, apart = (
            scn_regions(tf.scn_metadata or "", {_page_index(s.keyframe): i for i, s in enumerate(all_series)})
            if tf.is_scn else ((), frozenset(), "")
        )
        names = ["macro" if i in macros else _associated_name(tf, s) for i, s in enumerate(all_series)]
        if region is not None and not (isinstance(region, int) and 0 <= region < max(len(regions), 1)):
            raise ConfigError(f"region={region!r} is out of range for {p}: " + describe_regions(regions),
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
