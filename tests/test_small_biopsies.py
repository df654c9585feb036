"""Small biopsies on much glass (issue 28, item 5): a correct slide holding two small tissue fragments must not be
answered coarse, as it was when half the points lay so near the glass that their coarse patches saw it.

The slide is phantom tissue cut into fragments on white glass, written with :func:`histoscale.slide.write_slide`;
searched with the bundled phantom model and ``ruler=False`` (phantom nuclei are not real-sized).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from histoscale import find_scale, load_model
from histoscale.phantom import PhantomSpec, render_region
from histoscale.sampling import MIN_FIELD_TISSUE, field_tissue, sample_points
from histoscale.slide import TissueMask, open_slide, tissue_mask, write_slide

MPP, SIDE = 0.5, 8192
FRAGMENTS = ((1500, 2000), (5000, 4800))  # top-left corners (level-0 px) of two 0.6 x 0.5 mm fragments
FRAGMENT_WH = (1200, 1000)


@pytest.fixture(scope="module")
def biopsy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A correct 0.5 um/px SVS, 8192 x 8192 px, 3.6% tissue in two fragments (phantom seed 5: 20-point searches
    were 1.2 steps coarse at seed 0 and MISMATCH at seed 3)."""
    canvas = np.full((SIDE, SIDE, 3), 255, np.uint8)
    spec = PhantomSpec(width_um=SIDE * MPP, height_um=SIDE * MPP, seed=5)
    w, h = FRAGMENT_WH
    for x, y in FRAGMENTS:
        canvas[y:y + h, x:x + w] = render_region(spec, x * MPP, y * MPP, (w, h), MPP)
    return write_slide(tmp_path_factory.mktemp("biopsy") / "biopsy.svs", canvas, mpp=MPP, fmt="svs")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_biopsy_is_not_answered_coarse(biopsy: Path, seed: int) -> None:
    result = find_scale(biopsy, load_model("phantom"), points=20, seed=seed, ruler=False)
    steps = 4 * math.log2(result.check.implied_mpp / MPP)
    assert result.check.status != "MISMATCH" and abs(steps) <= 1, result.summary()
    # every point's field of view (the scan's middle patch, 2 x the border margin) is mostly tissue
    with open_slide(biopsy) as slide:
        mask = tissue_mask(slide, use_mpp=False)
    field = 128 * math.sqrt(0.5 * 4.0)  # the phantom model's 128 px input over the scan's downsamples 0.5 .. 4
    share = field_tissue(mask.mask, round(field / mask.downsample))
    cells = (result.points_xy // mask.downsample).astype(int)
    assert (share[cells[:, 1], cells[:, 0]] >= MIN_FIELD_TISSUE).all()


def _mask(grid: np.ndarray) -> TissueMask:
    return TissueMask(mask=grid, downsample=16.0, mpp=None)


def test_points_keep_the_field_of_view_on_tissue() -> None:
    grid = np.zeros((100, 100), bool)
    grid[20:60, 10:70] = True  # a fragment, 640 x 960 level-0 px
    grid[70:95, 80:82] = True  # a strip narrower than the field of view
    xy = sample_points((1600, 1600), 200, seed=0, margin_px=160, field_px=320, mask=_mask(grid))
    cols, rows = (xy // 16).astype(int).T
    assert grid[rows, cols].all()
    assert field_tissue(grid, 20)[rows, cols].min() >= MIN_FIELD_TISSUE
    assert rows.min() >= 27 and rows.max() <= 52 and cols.min() >= 17 and cols.max() <= 62  # kept off the glass


def test_holes_within_tissue_and_the_slide_border_change_nothing() -> None:
    grid = np.ones((100, 100), bool)
    grid[40:42, 50:52] = False  # a small hole: 4 of the 441 px of a field of view
    plain = sample_points((1600, 1600), 50, seed=3, margin_px=160, mask=_mask(grid))
    field = sample_points((1600, 1600), 50, seed=3, margin_px=160, field_px=320, mask=_mask(grid))
    np.testing.assert_array_equal(plain, field)


def test_tissue_narrower_than_the_field_is_still_sampled(caplog: pytest.LogCaptureFixture) -> None:
    grid = np.zeros((100, 100), bool)
    grid[10:90, 20:23] = True  # needle cores, 48 level-0 px wide
    grid[10:90, 60:63] = True
    with caplog.at_level(logging.INFO, logger="histoscale"):
        xy = sample_points((1600, 1600), 40, seed=0, margin_px=160, field_px=320, mask=_mask(grid), where="cores.svs")
    cols, rows = (xy // 16).astype(int).T
    assert grid[rows, cols].all()
    assert "cores.svs: no tissue fills 90% of a 320 px field of view; points are drawn over all the tissue" in caplog.text
