"""Slides at physical resolution: open, read, locate tissue, write pyramids.

Conventions (as in OpenSlide):

* Coordinates are level-0 pixels ``(x, y)``; sizes are ``(width, height)``.
* Coordinates are continuous: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``; pixel ``i`` of a level with
  downsample ``d`` covers level-0 ``[i*d, (i+1)*d)``.
* Resolution is in micrometres per level-0 pixel (um/px, "mpp"). A *downsample* is level-0 pixels per
  output pixel.
* Everything outside the slide reads as white (255), never as an error.

Backends, chosen by content: a TIFF is inspected first (the slide is its largest tiled series, never a
label, macro or thumbnail page, which are named as associated images); OpenSlide reads it when it sees the
same levels (vendor formats, plain tiled pyramids), tiffslide when it does not (OME-TIFF, SubIFD pyramids),
tifffile on the right series when the slide is not the file's first series. Other files go to OpenSlide
(MRXS, VMS, DICOM, ...). JPEG/PNG open as a single-level slide decoded at the first read. The pixel size is
chosen among every convention the file carries (:mod:`histoscale.slide.resolution`); none means MISSING.
"""

from histoscale.slide._open import open_slide
from histoscale.slide._slide import Slide
from histoscale.slide.info import slide_info
from histoscale.slide.measure import measure_mpp
from histoscale.slide.resolution import ANISOTROPY_TOLERANCE, Resolution
from histoscale.slide.tissue import TissueMask, tissue_mask
from histoscale.slide.write import default_downsamples, write_slide

__all__ = [
    "ANISOTROPY_TOLERANCE",
    "Resolution",
    "Slide",
    "TissueMask",
    "default_downsamples",
    "measure_mpp",
    "open_slide",
    "slide_info",
    "tissue_mask",
    "write_slide",
]
