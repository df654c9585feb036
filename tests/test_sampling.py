"""Where the search looks (:func:`histoscale.sampling.sample_points`): on the tissue, reproducibly, and stable
under small changes of the tissue mask.

The last is what makes the answer independent of the encoding through the sample: the same pixels written as
JPEG give a thumbnail whose threshold moves a few edge pixels, and the points must not all move with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import tifffile

import histoscale
from histoscale.errors import ConfigError, ScaleSearchError
from histoscale.sampling import sample_points

CMU1 = Path(str(files("histoscale") / "assets")) / "demo" / "cmu-1-small-region.svs"


@dataclass(frozen=True)
class Mask:
    mask: np.ndarray
    downsample: float


def blob(shape=(120, 90), centre=(60, 45), radius=35.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def pixels_of(xy: np.ndarray, downsample: float) -> np.ndarray:
    return np.floor(xy / downsample).astype(int)


def shared(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the points of ``a`` found, at exactly the same coordinates, among those of ``b``."""
    return len({tuple(p) for p in a} & {tuple(p) for p in b}) / len(a)


def test_points_are_on_distinct_tissue_pixels_and_reproducible() -> None:
    m = Mask(blob(), 4.0)
    xy = sample_points((360, 480), 200, seed=3, mask=m)
    assert xy.shape == (200, 2) and xy.dtype == np.float64
    cols, rows = pixels_of(xy, 4.0).T
    assert m.mask[rows, cols].all()
    assert len({(r, c) for r, c in zip(rows, cols, strict=True)}) == 200  # without replacement
    np.testing.assert_array_equal(xy, sample_points((360, 480), 200, seed=3, mask=m))
    assert not np.array_equal(xy, sample_points((360, 480), 200, seed=4, mask=m))


def test_a_prefix_is_the_smaller_sample() -> None:
    """Early stopping reads a prefix of the points: it must be the sample a smaller ``n`` would have drawn."""
    m = Mask(blob(), 4.0)
    np.testing.assert_array_equal(sample_points((360, 480), 40, seed=1, mask=m),
                                  sample_points((360, 480), 100, seed=1, mask=m)[:40])


@pytest.mark.parametrize("change", ["grow", "shrink", "speckle"])
def test_a_mask_changed_at_its_edge_keeps_the_other_points(change: str) -> None:
    """A mask differing at ~1-3% of its pixels (the kind of change a JPEG copy of the slide gives) keeps the points
    on the pixels both masks hold; drawing by index into the list of tissue pixels moved nearly all of them."""
    a = blob()
    rng = np.random.default_rng(2024)  # not the sampler's seed: its keys would pick exactly the speckles
    if change == "grow":
        b = blob(radius=35.6)
    elif change == "shrink":
        b = blob(radius=34.4)
    else:
        b = a ^ (rng.random(a.shape) < 0.01)
    changed = (a ^ b).sum() / a.sum()
    assert 0.005 < changed < 0.05, changed
    xa = sample_points((360, 480), 100, seed=0, mask=Mask(a, 4.0))
    xb = sample_points((360, 480), 100, seed=0, mask=Mask(b, 4.0))
    assert shared(xa, xb) >= 0.9


def test_fewer_tissue_pixels_than_points_repeat_pixels_not_points() -> None:
    a = np.zeros((50, 50), bool)
    a[10:13, 20:23] = True  # 9 pixels
    xy = sample_points((200, 200), 30, seed=0, mask=Mask(a, 4.0))
    cols, rows = pixels_of(xy, 4.0).T
    assert a[rows, cols].all()
    assert len({tuple(p) for p in xy}) == 30


def test_margin_is_kept_where_the_tissue_allows_and_dropped_where_not() -> None:
    m = Mask(np.ones((100, 100), bool), 4.0)
    xy = sample_points((400, 400), 100, seed=0, mask=m, margin_px=100)
    assert (xy >= 98).all() and (xy <= 302).all()  # a pixel's centre keeps the margin; jitter is half a pixel
    edge = np.zeros((100, 100), bool)
    edge[:, :3] = True
    xy = sample_points((400, 400), 10, seed=0, mask=Mask(edge, 4.0), margin_px=100)
    assert (xy[:, 0] < 12).all()


def test_uniform_needs_no_mask_and_tissue_refuses_an_empty_one() -> None:
    xy = sample_points((300, 200), 50, seed=0, mode="uniform")
    assert ((xy >= 0) & (xy <= [300, 200])).all()
    with pytest.raises(ConfigError, match="mask"):
        sample_points((300, 200), 5, seed=0)
    with pytest.raises(ScaleSearchError, match="no tissue found in slide.svs"):
        sample_points((300, 200), 5, seed=0, mask=Mask(np.zeros((10, 10), bool), 30.0), where="slide.svs")
    with pytest.raises(ConfigError, match="at least 1"):
        sample_points((300, 200), 0, seed=0, mode="uniform")


@pytest.mark.parametrize("quality", [90, 75, 50])
def test_real_tissue_written_as_jpeg_is_read_at_the_same_points(tmp_path: Path, quality: int) -> None:
    """The CMU-1 region (real H&E, shipped as the demo's image) as a lossless and a JPEG tiled TIFF: their tissue
    masks differ at edge pixels, the search's points hardly at all."""
    with histoscale.open_slide(CMU1) as slide:
        w, h = slide.dimensions
        rgb = slide.read_level(0, (0, 0), (w, h))
    points = {}
    for name, comp in [("zlib", ("zlib", {})), ("jpeg", ("jpeg", {"level": quality}))]:
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression=comp[0], compressionargs=comp[1])
        with histoscale.open_slide(path) as slide:
            mask = histoscale.tissue_mask(slide)
            points[name] = (mask.mask, sample_points(slide.dimensions, 100, seed=0, mask=mask, margin_px=300))
    (ma, xa), (mb, xb) = points["zlib"], points["jpeg"]
    assert (ma ^ mb).any()  # the premise: the encoding changes the mask
    assert shared(xa, xb) >= 0.95
