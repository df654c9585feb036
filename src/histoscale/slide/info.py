"""A JSON-able summary of a slide for ``histoscale info``."""

from __future__ import annotations

from typing import Any

from histoscale.slide._slide import Slide
from histoscale.slide.resolution import PRECEDENCE
from histoscale.slide.tissue import tissue_mask

__all__ = ["slide_info"]


def slide_info(slide: Slide, *, tissue: bool = False) -> dict[str, Any]:
    """JSON-able summary: path, backend, vendor, geometry, resolution and its provenance (um/px), every
    resolution candidate the file carries (accepted/rejected with the reason, the chosen one and why),
    associated images (label, macro, thumbnail), the scanned regions of a Leica SCN (index, name, level-0 size in
    px, um/px, offset on the glass in mm, whether it is read) and which one is read, objective power, and optionally
    the tissue fraction (computes a tissue mask)."""
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
        "mpp_chosen_because": _why(slide),
        "mpp_candidates": [
            {
                "source": c.source,
                "kind": c.kind,
                "mpp_x": c.mpp_x,
                "mpp_y": c.mpp_y,
                "accepted": c.accepted,
                "chosen": res is not None and c is res.chosen,
                "reason": c.reason,
                "note": c.note,
            }
            for c in slide.resolution_candidates
        ],
        "associated_images": list(slide.associated_images),
        "regions": [
            {
                "region": r.index,
                "name": r.name,
                "width": r.width,
                "height": r.height,
                "mpp_x": r.mpp_x,
                "mpp_y": r.mpp_y,
                "offset_mm": list(r.offset_mm),
                "read": slide.region in (None, r.index),
            }
            for r in slide.regions
        ],
        "region_read": _region_read(slide),
        "objective_power": slide.objective_power,
    }
    if tissue:
        info["tissue_fraction"] = tissue_mask(slide).fraction
    return info


def _region_read(slide: Slide) -> str | None:
    """Which scanned regions the slide shows, and how to pick another (None for a file without regions)."""
    if not slide.regions:
        return None
    if slide.region is None:
        return f"all {len(slide.regions)}, placed on the glass's coordinates"
    pick = (f"; not read: {', '.join(str(r.index) for r in slide.regions if r.index != slide.region)} (pick one with "
            "open_slide(..., region=k))" if len(slide.regions) > 1 else "")
    return f"region {slide.region} alone{pick}"


def _why(slide: Slide) -> str:
    res = slide.resolution
    if res is None:
        return (
            "no accepted pixel size in the file: give it (CLI: --slide-mpp; Python: slide_mpp=...)"
            if not slide.resolution_candidates
            else "every pixel size in the file was rejected (see mpp_candidates): give it "
            "(CLI: --slide-mpp; Python: slide_mpp=...)"
        )
    if res.source == "override":
        return "given by the user (CLI: --slide-mpp; Python: slide_mpp=...), overrides the file"
    return "first accepted candidate in the precedence " + " > ".join(PRECEDENCE)
