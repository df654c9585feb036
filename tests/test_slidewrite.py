"""write_slide produces files that OpenSlide and tiffslide read as real pyramidal slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide

from conftest import SYNTH_H, SYNTH_MPP, SYNTH_SQUARES, SYNTH_W
from histoscale.errors import ConfigError
from histoscale.slide.write import default_downsamples, write_slide

READERS = {"openslide": openslide.OpenSlide, "tiffslide": tiffslide.TiffSlide}


def _rgb(reader, loc, level, size) -> np.ndarray:
    return np.asarray(reader.read_region(loc, level, size).convert("RGB")).astype(int)


def test_default_downsamples() -> None:
    assert default_downsamples((2048, 1536), 256) == [1, 4, 16]
    assert default_downsamples((256, 100), 256) == [1]
    assert default_downsamples((257, 100), 256) == [1, 4]
    assert default_downsamples((64000, 64000), 256) == [1, 4, 16, 64, 256]


@pytest.mark.parametrize("fmt", ["svs", "tiff", "bare"])
@pytest.mark.parametrize("reader_name", list(READERS))
def test_readers_see_pyramid_and_colours(synthetic_slides: dict[str, Path], fmt: str, reader_name: str) -> None:
    with READERS[reader_name](str(synthetic_slides[fmt])) as r:
        assert r.level_count == 3
        assert r.dimensions == (SYNTH_W, SYNTH_H)
        assert [tuple(d) for d in r.level_dimensions] == [(2048, 1536), (512, 384), (128, 96)]
        assert np.allclose(r.level_downsamples, [1, 4, 16])
        for x0, y0, x1, y1, rgb in SYNTH_SQUARES.values():
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            # RGB JPEG (no chroma subsampling): colours within JPEG noise at every level
            assert np.abs(_rgb(r, (cx - 4, cy - 4), 0, (8, 8)) - rgb).max() <= 4
            assert np.abs(_rgb(r, (cx - 8, cy - 8), 1, (4, 4)) - rgb).max() <= 4
        # edge tiles (2048 is a multiple of 256 but level 1 is 512x384: partial last tile row)
        assert np.abs(_rgb(r, (SYNTH_W - 8, SYNTH_H - 8), 1, (2, 2)) - 255).max() <= 2


def test_svs_metadata(synthetic_slides: dict[str, Path]) -> None:
    with openslide.OpenSlide(str(synthetic_slides["svs"])) as r:
        props = r.properties
        assert props["openslide.vendor"] == "aperio"
        assert float(props["openslide.mpp-x"]) == pytest.approx(SYNTH_MPP)
        assert float(props["openslide.objective-power"]) == 20  # AppMag = round(10 / mpp)
        assert "thumbnail" in r.associated_images
    with tiffslide.TiffSlide(str(synthetic_slides["svs"])) as t:
        assert t.properties["tiffslide.vendor"] == "aperio"
        assert t.properties["tiffslide.mpp-x"] == pytest.approx(SYNTH_MPP)


def test_tiff_resolution_tags(synthetic_slides: dict[str, Path]) -> None:
    with tifffile.TiffFile(synthetic_slides["tiff"]) as tf:
        p0, p1 = tf.pages[0], tf.pages[1]
        assert p0.is_tiled and p0.compression == tifffile.COMPRESSION.JPEG
        assert p0.photometric == tifffile.PHOTOMETRIC.RGB
        assert p0.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        xr = p0.tags["XResolution"].value
        assert 1e4 * xr[1] / xr[0] == pytest.approx(SYNTH_MPP)  # 20000 px/cm
        xr1 = p1.tags["XResolution"].value
        assert 1e4 * xr1[1] / xr1[0] == pytest.approx(SYNTH_MPP * 4)  # each level declares its own
    with openslide.OpenSlide(str(synthetic_slides["tiff"])) as r:
        assert r.properties["openslide.vendor"] == "generic-tiff"
        assert float(r.properties["openslide.mpp-x"]) == pytest.approx(SYNTH_MPP)
    with openslide.OpenSlide(str(synthetic_slides["bare"])) as r:
        assert "openslide.mpp-x" not in r.properties
    with tiffslide.TiffSlide(str(synthetic_slides["bare"])) as t:
        assert t.properties["tiffslide.mpp-x"] is None


def test_streaming_source_matches_array_and_stays_bounded(tmp_path: Path) -> None:
    w, h, tile = 1500, 1100, 256
    yy, xx = np.mgrid[0:h, 0:w]
    full = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    calls: list[tuple[int, int, int, int, int]] = []
    from histoscale.slide.write import _array_source  # reference pyramid for the callable

    ref = _array_source(full)

    def source(x: int, y: int, cw: int, ch: int, d: int) -> np.ndarray:
        calls.append((x, y, cw, ch, d))
        return ref(x, y, cw, ch, d).copy()

    a = write_slide(tmp_path / "a.tif", full, mpp=1.0, fmt="tiff", tile=tile)
    b = write_slide(tmp_path / "b.tif", source, (w, h), mpp=1.0, fmt="tiff", tile=tile)
    assert a.read_bytes() == b.read_bytes()
    assert calls and max(c[3] for c in calls) <= tile  # strips of at most one tile row
    assert {c[4] for c in calls} == {1, 4, 16}
    # svs also renders a thumbnail from the coarsest level, still strip-wise
    calls.clear()
    write_slide(tmp_path / "c.svs", source, (w, h), mpp=1.0, fmt="svs", tile=tile)
    assert max(c[3] for c in calls) <= 4096


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def broken(x: int, y: int, w: int, h: int, d: int) -> np.ndarray:
        if y > 0:
            raise RuntimeError("renderer died")
        return np.zeros((h, w, 3), np.uint8)

    with pytest.raises(RuntimeError):
        write_slide(tmp_path / "x.tif", broken, (600, 600), mpp=1.0, fmt="tiff")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError):
        write_slide(tmp_path / "y.tif", lambda *a: np.zeros((1, 1, 3), np.uint8), (600, 600), mpp=1.0, fmt="tiff")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_custom_levels(tmp_path: Path) -> None:
    img = np.full((300, 500, 3), 128, np.uint8)
    p = write_slide(tmp_path / "s.svs", img, mpp=0.25, fmt="svs", downsamples=[1, 2], vendor_props={"Foo": "bar"})
    p = write_slide(p, img, mpp=0.25, fmt="svs", downsamples=[1, 2], vendor_props={"Foo": "bar"})
    with openslide.OpenSlide(str(p)) as r:
        assert r.level_dimensions == ((500, 300), (250, 150))
        assert r.properties["aperio.Foo"] == "bar"
        assert float(r.properties["openslide.objective-power"]) == 40
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.svs"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mpp=None, fmt="svs"),
        dict(mpp=-1.0, fmt="tiff"),
        dict(mpp=1.0, fmt="png"),
        dict(mpp=1.0, fmt="tiff", tile=100),
        dict(mpp=1.0, fmt="tiff", downsamples=[2, 4]),
        dict(mpp=1.0, fmt="tiff", downsamples=[1, 1000]),
        dict(mpp=1.0, fmt="tiff", quality=0),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        write_slide(tmp_path / "s.tif", np.zeros((64, 64, 3), np.uint8), **kwargs)
