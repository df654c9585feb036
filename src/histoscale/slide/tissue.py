"""Where the tissue is: a coarse boolean mask from the slide's thumbnail."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import cv2
import numpy as np

from histoscale.slide._slide import Slide

__all__ = ["TissueMask", "tissue_mask"]


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
    use_mpp: bool = True,
) -> TissueMask:
    """Tissue vs background from the thumbnail: Otsu threshold on HSV saturation (0..255).

    ``saturation_floor`` is a lower bound on the threshold, so a blank (all-white or grey) slide gives
    an empty mask instead of Otsu-split noise. ``saturation_cap`` is an upper bound: on a slide that is
    all tissue, Otsu would split pale stroma from dense nuclei and call the stroma background. Objects and holes smaller than ``min_object_px`` mask
    px are removed; by default that is ``min_object_um2`` um^2 converted with the mask's um/px, or
    1e-4 of the mask area when the slide has no resolution or ``use_mpp`` is False (a check of the declared
    um/px must not let that value decide where it looks).

    Computed once per slide and settings while the slide is open (a search, then a classification of the same
    slide, share it): the returned ``mask`` is read-only.
    """
    key = (max_side, min_object_um2, min_object_px, saturation_floor, saturation_cap, use_mpp)
    cached = _MASKS.setdefault(slide, {})
    if key not in cached:
        cached[key] = _tissue_mask(slide, *key)
    return cached[key]


# masks per open slide and settings; a slide's entry goes with the slide object
_MASKS: weakref.WeakKeyDictionary[Slide, dict[tuple[object, ...], TissueMask]] = weakref.WeakKeyDictionary()


def _tissue_mask(
    slide: Slide, max_side: int, min_object_um2: float, min_object_px: int | None, saturation_floor: int,
    saturation_cap: int, use_mpp: bool,
) -> TissueMask:
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    thumb, ds = slide.thumbnail(max_side)
    mask_mpp = slide.mpp * ds if (slide.mpp is not None and use_mpp) else None
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
    mask.flags.writeable = False
    return TissueMask(mask=mask, downsample=ds, mpp=mask_mpp)

