"""Direct TIFF tile decoding under the OpenSlide backend: the same pixels as OpenSlide, or OpenSlide itself."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from histoscale.phantom import write_phantom
from histoscale.slide import open_slide
from histoscale.slide._pixels import to_rgb_u8
from histoscale.slide._tiles import TileReader


def _openslide_box(path: Path):
    osr = openslide.OpenSlide(str(path))

    def read(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = osr.level_downsamples[level]
        return to_rgb_u8(np.asarray(osr.read_region((round(x * ds), round(y * ds)), level, (w, h))))

    return osr, read


def _tiled_tiff(path: Path, **options) -> Path:
    """A 3-level tiled pyramid of textured RGB (JPEG needs texture to show a codec difference)."""
    rng = np.random.default_rng(3)
    base = (rng.random((1100, 1300, 3)) * 255).astype(np.uint8)
    base[::7] = (120, 40, 160)
    with tifffile.TiffWriter(path) as tw:
        for i in range(3):
            tw.write(base[:: 2**i, :: 2**i], tile=(256, 256), metadata=None, subfiletype=1 if i else 0, **options)
    return path


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiles") / "phantom.svs"
    write_phantom(path, mpp=0.25, size_px_wh=(3000, 2600), seed=4, fmt="svs")
    return path


@pytest.mark.parametrize("kind", ["svs", "jpeg-ycbcr", "jpeg-rgb", "deflate"])
def test_direct_tiles_give_openslide_pixels(kind: str, svs: Path, tmp_path: Path) -> None:
    if kind == "svs":
        path = svs
    elif kind == "jpeg-ycbcr":
        path = _tiled_tiff(tmp_path / "ycbcr.tif", compression="jpeg", photometric="ycbcr", subsampling=(2, 2))
    elif kind == "jpeg-rgb":
        path = _tiled_tiff(tmp_path / "rgbjpeg.tif", compression="jpeg", photometric="rgb")
    else:
        path = _tiled_tiff(tmp_path / "deflate.tif", compression="zlib", photometric="rgb")
    osr, reference = _openslide_box(path)
    with osr:
        dims = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        downsamples = tuple(float(d) for d in osr.level_downsamples)
        tiles = TileReader.open(path, dims, downsamples, reference)
        assert tiles is not None, "direct decoding was refused on a plain tiled pyramid"
        # levels with a whole downsample only: elsewhere OpenSlide interpolates a sub-pixel origin
        assert tiles.levels == {i for i, d in enumerate(downsamples) if d.is_integer()} and 0 in tiles.levels
        with open_slide(path) as slide:
            assert slide.backend == "openslide"
            rng = np.random.default_rng(0)
            for level, (lw, lh) in enumerate(dims):
                boxes = [(0, 0, lw, lh), (lw - 3, lh - 5, 3, 5)]  # the whole level; the last, padded tile's corner
                for _ in range(12):
                    w, h = (int(v) for v in rng.integers(1, 700, 2))
                    w, h = min(w, lw), min(h, lh)
                    boxes.append((int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1)), w, h))
                for x, y, w, h in boxes:
                    expected = reference(level, x, y, w, h)
                    if level in tiles.levels:
                        assert np.array_equal(tiles.read(level, x, y, w, h), expected), (kind, level, x, y, w, h)
                    ds = slide.level_downsamples[level]
                    assert np.array_equal(slide.read_level(level, (x * ds, y * ds), (w, h)), expected)
        tiles.close()


def test_a_level_that_decodes_differently_keeps_the_reader(svs: Path) -> None:
    osr, reference = _openslide_box(svs)
    with osr:
        dims = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        whole = tuple(float(d) for d in osr.level_downsamples)
        assert len(whole) > 1 and whole[1] == 4.0

        def brighter(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            out = reference(level, x, y, w, h)
            if level == 1:
                out = out.copy()
                out[0, 0] ^= 1  # one pixel off on the last level
            return out

        assert TileReader.open(svs, dims, whole, brighter) is None
        assert TileReader.open(svs, dims[:1] + ((dims[1][0] + 1, dims[1][1]),), whole[:2], reference) is None  # no page
        assert TileReader.open(svs, dims[:2], (1.5, 4.0000001), reference) is None  # no whole downsample


def test_concurrent_reads_match_serial_reads(svs: Path) -> None:
    with open_slide(svs) as slide:
        w, h = slide.dimensions
        rng = np.random.default_rng(1)
        boxes = [(float(rng.integers(0, w - 400)), float(rng.integers(0, h - 400))) for _ in range(24)]
        serial = [slide.read_level(0, xy, (400, 400)) for xy in boxes]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda xy: slide.read_level(0, xy, (400, 400)), boxes))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel))


def test_thumbnail_and_tissue_mask_are_computed_once_per_slide(svs: Path) -> None:
    from histoscale.slide import tissue_mask

    with open_slide(svs) as slide:
        thumb, ds = slide.thumbnail(256)
        assert slide.thumbnail(256)[0] is thumb and not thumb.flags.writeable
        assert slide.thumbnail(128)[0].shape[1] <= 128  # another size is its own thumbnail
        mask = tissue_mask(slide)
        assert tissue_mask(slide) is mask and not mask.mask.flags.writeable
        assert tissue_mask(slide, use_mpp=False) is not mask
    with open_slide(svs) as again:  # a new slide object reads its own
        assert np.array_equal(again.thumbnail(256)[0], thumb) and again.thumbnail(256)[0] is not thumb
