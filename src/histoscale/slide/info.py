"""A JSON-able summary of a slide for ``histoscale info``."""

from __future__ import annotations

from typing import Any

from histoscale.slide._slide import Slide
from histoscale.slide.tissue import tissue_mask

__all__ = ["slide_info"]


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

