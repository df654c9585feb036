"""Slides at physical resolution: open, read, locate tissue, write pyramids.

Conventions (as in OpenSlide):

* Coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)``.
* Coordinates are continuous: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``; pixel ``i`` of a level with
  downsample ``d`` covers level-0 ``[i*d, (i+1)*d)``.
* Resolution is in micrometres per level-0 pixel (um/px, "mpp"). A *downsample* is level-0 pixels per
  output pixel.
* Everything outside the slide reads as white (255), never as an error.

Backends, tried in this order: OpenSlide (anything it detects), tiffslide (TIFF-based files OpenSlide
does not read: OME-TIFF, stripped or odd generic TIFFs), then plain images (PNG, JPEG, TIFF) as a
single-level slide held in memory.
"""

from histoscale.slide._open import open_slide
from histoscale.slide._slide import Slide
from histoscale.slide.info import slide_info
from histoscale.slide.resolution import ANISOTROPY_TOLERANCE, Resolution
from histoscale.slide.tissue import TissueMask, tissue_mask
from histoscale.slide.write import default_downsamples, write_slide

__all__ = [
    "ANISOTROPY_TOLERANCE",
    "Resolution",
    "Slide",
    "TissueMask",
    "default_downsamples",
    "open_slide",
    "slide_info",
    "tissue_mask",
    "write_slide",
]
