"""The scanned regions (main images) of a Leica SCN slide, read from the file's XML.

Follows the Leica SCN XML (``<scn><collection><image><view/><pixels><dimension ifd=.../></pixels>``) as
OpenSlide's Leica reader reads it: the first collection, its macro image being the one whose view covers the
whole collection, and its rules for compositing the main images into one image on the glass's coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["SlideRegion", "describe_regions", "scn_regions"]


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


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def scn_regions(
    scn_metadata: str, series_of_ifd: dict[int, int]
) -> tuple[tuple[SlideRegion, ...], frozenset[int], str]:
    """The scanned regions of a Leica SCN (its first collection, as OpenSlide reads it), the series that are its macro
    image, and why no reader shows the regions as one image ("" when OpenSlide does).

    ``scn_metadata`` is the file's XML (tifffile's ``TiffFile.scn_metadata``); ``series_of_ifd`` maps the index of a
    series' first page in the main IFD chain to the series' index (the XML names each pyramid level by its IFD).

    OpenSlide's rules (its Leica reader): the macro image is the one whose view is the whole collection; the main
    images are composited on the glass's coordinates only when all are brightfield, with the same objective, the
    same number of levels and each level's resolution within 2% (otherwise it refuses the file, as tiffslide does).
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(scn_metadata)
        collection = next((el for el in root if _local(el.tag) == "collection"), None)
        if collection is not None:
            return _collection_regions(collection, series_of_ifd)
    except (ET.ParseError, ValueError):  # XML or numbers that do not parse: read as any TIFF, without regions
        pass
    return (), frozenset(), ""


def _collection_regions(
    collection: Any, series_of_ifd: dict[int, int]
) -> tuple[tuple[SlideRegion, ...], frozenset[int], str]:
    """:func:`scn_regions` of the collection's XML element."""
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


def describe_regions(regions: tuple[SlideRegion, ...]) -> str:
    """What ``region=k`` may pick, for an error message."""
    if not regions:
        return "it holds one image, region 0 (region=k picks among the scanned regions of a Leica SCN)"
    return (f"it holds {len(regions)} scanned region(s), numbered 0..{len(regions) - 1} ("
            + "; ".join(r.describe() for r in regions) + ")")
