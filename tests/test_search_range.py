"""The default search's grids: the plausible range, the scan and fine grids on one lattice, the focus window."""

import numpy as np
import pytest

from histoscale.errors import ScaleSearchError
from histoscale.search._range import FINE_HALF_WIDTH, fine_grid, focus_window, plausible_range, scan_grid


def _on_lattice(downsamples: np.ndarray, steps_per_octave: int) -> bool:
    k = np.log2(downsamples) * steps_per_octave
    return bool(np.allclose(k, np.round(k)))


@pytest.mark.parametrize("lo, hi", [(0.5, 5.0), (0.5, 1.0), (0.5, 16.0), (0.5, 2.9)])
def test_scan_grid_is_the_half_octave_lattice_within_the_range(lo, hi):
    grid = scan_grid(lo, hi)
    assert _on_lattice(grid, 2) and np.allclose(np.diff(np.log2(grid)), 0.5)
    assert grid[0] == pytest.approx(lo) and grid[-1] <= hi * (1 + 1e-12) and grid[-1] * 2**0.5 > hi
    assert 1.0 in grid.round(12)  # the slide's own pixels, read without resampling


@pytest.mark.parametrize("center", [0.5, 0.61, 0.9, 1.0, 1.27, 2.2, 3.9, 4.8])
def test_fine_grid_sits_on_the_quarter_octave_lattice_nearest_the_peak_and_inside_the_range(center):
    lo, hi = 0.5, 5.0
    grid = fine_grid(center, lo, hi)
    assert len(grid) == 2 * FINE_HALF_WIDTH + 1 and _on_lattice(grid, 4)
    assert np.allclose(np.diff(np.log2(grid)), 0.25)
    assert grid[0] >= lo - 1e-12 and grid[-1] <= hi + 1e-12
    nearest = 2.0 ** (round(np.log2(center) * 4) / 4)
    if lo <= nearest / 2 + 1e-12 and nearest * 2 <= hi + 1e-12:
        assert grid[FINE_HALF_WIDTH] == pytest.approx(nearest)
    else:  # shifted inwards: it touches the range's edge nearest the peak
        assert grid[0] == pytest.approx(lo) or grid[-1] * 2**0.25 > hi
    # every scan scale inside the fine grid is one of its scales: the scan's patches are the fine stage's
    scan = scan_grid(lo, hi)
    inside = scan[(scan >= grid[0] - 1e-12) & (scan <= grid[-1] + 1e-12)]
    assert np.isclose(inside[:, None], grid[None, :]).any(axis=1).all() and len(inside) >= 4


def test_focus_window_keeps_the_bootstrap_winners_and_one_neighbour_each_side():
    assert focus_window((4, 4), 9).tolist() == [3, 4, 5]
    assert focus_window((3, 5), 9).tolist() == [2, 3, 4, 5, 6]
    assert focus_window((0, 1), 9).tolist() == [0, 1, 2]  # at the grid's edge: no scale beyond it
    assert focus_window((1, 7), 9) is None  # would leave out fewer than two scales: read everything
    assert focus_window((-1, -1), 9) is None  # no informative point yet
    # only ever narrower: inside what is read now, by two scales or more (one with min_drop=1)
    assert focus_window((4, 4), 9, np.arange(2, 7)).tolist() == [3, 4, 5]
    assert focus_window((3, 4), 9, np.arange(2, 7)) is None
    assert focus_window((3, 4), 9, np.arange(2, 7), min_drop=1).tolist() == [2, 3, 4, 5]
    assert focus_window((2, 3), 9, np.arange(2, 9)) is None  # its neighbour 1 is no longer read


def test_plausible_range_needs_an_octave():
    assert plausible_range(0.5, 64, (3072, 3072), "s") == (0.5, 5.0)  # finest plausible slide: 0.1 um/px
    assert plausible_range(None, 64, (3072, 3072), "s") == (0.5, 16.0)
    with pytest.raises(ScaleSearchError, match="too little room"):
        plausible_range(0.5, 224, (200, 200), "small.tif")
