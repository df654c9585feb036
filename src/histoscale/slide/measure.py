"""The tissue's own ruler on a slide: sample regions on the tissue at level 0 and measure its nuclei
(:mod:`histoscale.ruler`). Uses neither a model nor the slide's declared um/px."""

from __future__ import annotations

import logging
import time

import numpy as np

from histoscale.errors import ConfigError, ScaleSearchError, SlideError
from histoscale.ruler import RulerEstimate, ruler_estimate
from histoscale.sampling import sample_points
from histoscale.slide._slide import Slide
from histoscale.slide.tissue import tissue_mask

__all__ = ["RULER_REGIONS", "RULER_REGION_PX", "measure_mpp"]

logger = logging.getLogger(__name__)

RULER_REGIONS = 24  # regions read; their spectra are summed, the bootstrap over them gives the sampling error
RULER_REGION_PX = 320  # level-0 px square: holds nuclei up to ~20 px sigma (0.08 um/px scans)
_MAX_FAILED_READS = 0.5  # of the regions: past it the slide's pixels cannot be trusted to measure anything


def measure_mpp(
    slide: Slide, *, regions: int = RULER_REGIONS, region_px: int = RULER_REGION_PX, seed: int = 0,
) -> RulerEstimate:
    """Estimate ``slide``'s level-0 um/px from the size of its nuclei (:func:`histoscale.ruler.ruler_estimate`).

    ``regions`` squares of ``region_px`` level-0 px are read on the tissue (mask from the thumbnail, built without
    the declared um/px: a check must not let the value it checks decide where it looks). Regions that cannot be
    read (damaged tiles) are skipped and logged. Returns a :class:`~histoscale.ruler.RulerEstimate`: ``mpp`` None
    with the ``reason`` when there is nothing to measure.

    Raises:
        ConfigError: ``regions`` < 1 or ``region_px`` < 64.
    """
    if regions < 1 or region_px < 64:
        raise ConfigError(f"the ruler needs regions >= 1 and region_px >= 64, got {regions} and {region_px}")
    start = time.perf_counter()
    mask = tissue_mask(slide, use_mpp=False)
    try:
        xy = sample_points(slide.dimensions, regions, seed=seed, mask=mask, margin_px=region_px / 2,
                           where=str(slide.path))
    except ScaleSearchError:
        return RulerEstimate(None, None, None, 0, 0, "no tissue found on the thumbnail")
    reads, failed = [], 0
    for x, y in np.asarray(xy):
        try:
            reads.append(slide.read_level(0, (x - region_px / 2, y - region_px / 2), (region_px, region_px)))
        except SlideError as err:
            failed += 1
            logger.warning("ruler: region skipped: %s", err)
    if failed > _MAX_FAILED_READS * regions:
        return RulerEstimate(None, None, None, 0, 0, f"{failed} of {regions} regions could not be read "
                             "(damaged tiles?)")
    estimate = ruler_estimate(reads, seed=seed)
    logger.info("ruler on %s: %s (%.2f s)", slide.path, estimate.describe(), time.perf_counter() - start)
    return estimate
