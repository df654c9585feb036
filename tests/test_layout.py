"""Which image is the slide, associated images, reader choice, and plain JPEG/PNG images.

Every layout is also opened with OpenSlide 4 and tiffslide 3 to check the prediction against what
the readers really do (findings recorded in NOTES.md)."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import histoscale
import histoscale.errors
from _wsi_files import PURPLE, image, write_aperio, write_pyramid
from histoscale.errors import LayoutError
from histoscale.slide._conventions import OME_LENGTH_UNITS_UM, candidates_from_tifffile, choose
from histoscale.slide._plain_image import jpeg_size_and_density, open_plain_image, png_size_and_density
from histoscale.slide._tiff_layout import inspect_tiff

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")

LEVELS_512 = ((512, 512), (256, 256), (128, 128))


def openslide_levels(path: Path) -> tuple[tuple[int, int], ...] | None:
    if openslide.OpenSlide.detect_format(str(path)) is None:
        return None
    with openslide.OpenSlide(str(path)) as osr:
        return tuple((h, w) for w, h in osr.level_dimensions)


def tiffslide_levels(path: Path) -> tuple[tuple[int, int], ...]:
    with tiffslide.TiffSlide(path) as ts:
        return tuple((h, w) for w, h in ts.level_dimensions)


def tiffslide_on_series(path: Path, series_index: int) -> tiffslide.TiffSlide:
    """Make tiffslide 3.0 read another series than 0 (tested recipe, see NOTES.md): rewrite its cached
    property dict before any level attribute is touched."""
    from tiffslide.tiffslide import _PropertyParser

    ts = tiffslide.TiffSlide(path)
    props = ts.properties
    for key in [k for k in props if k.startswith("tiffslide.level[")]:
        del props[key]
    series = ts.ts_tifffile.series[series_index]
    props["tiffslide.series-index"] = series_index
    props.update(_PropertyParser.collect_level_info(series))
    return ts


# ------------------------------------------------------------------------------------------------
# issue 12 cases 1 and 3


def test_issue_case1_ome_subifd_layout(tmp_path: Path) -> None:
    path = write_pyramid(
        tmp_path / "case1.ome.tif",
        "ome",
        size=2048,
        tile=256,
        resolution=None,
        ome_metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"},
    )
    lay = inspect_tiff(path, confirm_with_openslide=True)
    assert lay.series_index == 0 and lay.level_shapes == ((2048, 2048), (1024, 1024), (512, 512))
    assert lay.ome and lay.tiled and not lay.imagej and lay.associated == {}
    assert lay.reader == "tiffslide" and "SubIFD" in lay.reason
    assert openslide_levels(path) == ((2048, 2048),)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_count == 3 and ts.properties["tiffslide.mpp-x"] is None
        assert ts.read_region((1024, 1024), 2, (8, 8), as_array=True)[0, 0].tolist() == [200, 200, 200]


def write_case3(tmp_path: Path, label_description: str | None) -> Path:
    """Issue 12's case 3: page 0 a stripped 600x1800 label, then a tiled 3-level 2048^2 pyramid at 0.5 um/px."""
    return write_pyramid(
        tmp_path / "case3.tif", "pages", size=2048, tile=256, label_at=0, label_shape=(1800, 600),
        label_description=label_description,
    )


@pytest.mark.parametrize("label_description", ["label", None])
def test_issue_case3_label_first_then_pyramid(tmp_path: Path, label_description: str | None) -> None:
    """Page 0 = stripped 600x1800 label, then a tiled 3-level 2048^2 pyramid at 0.5 um/px."""
    path = write_case3(tmp_path, label_description)
    lay = inspect_tiff(path, confirm_with_openslide=True)
    assert lay.series_index == 1
    assert lay.level_shapes == ((2048, 2048), (1024, 1024), (512, 512))
    assert lay.associated == ({"label": 0} if label_description else {"image0": 0})
    assert lay.reader == "tiffslide" and lay.needs_series_override
    with tifffile.TiffFile(path) as tf:
        chosen, _ = choose(candidates_from_tifffile(tf, lay.series_index))
    assert chosen is not None and chosen.mpp == 0.5 and chosen.kind == "tiff"
    # what the readers do on their own
    assert openslide_levels(path) is None  # page 0 stripped: not a generic TIFF to OpenSlide
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_dimensions == ((600, 1800),)  # tiffslide 3 takes series 0 = the label
    # the recipe that makes tiffslide read the slide
    ts = tiffslide_on_series(path, lay.series_index)
    try:
        assert ts.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
        region = ts.read_region((600, 600), 1, (4, 4), as_array=True)  # inside the purple block
        assert region[0, 0].tolist() == list(PURPLE)
    finally:
        ts.close()


# ------------------------------------------------------------------------------------------------
# the whole kind: layouts x label positions, predicted vs actual OpenSlide


# (layout, label_at, expected series index, expected OpenSlide levels, expected reader)
CASES = [
    ("pages", None, 0, LEVELS_512, "openslide"),
    ("pages", 0, 1, None, "tiffslide"),
    ("pages", 1, 0, LEVELS_512, "openslide"),
    ("pages", 3, 0, LEVELS_512, "openslide"),
    ("pages-noflag", None, 0, ((512, 512),), "tiffslide"),
    ("subifd", None, 0, ((512, 512),), "tiffslide"),
    ("subifd", 0, 1, None, "tiffslide"),
    ("subifd", 3, 0, ((512, 512),), "tiffslide"),
    ("ome", None, 0, ((512, 512),), "tiffslide"),
]


@pytest.mark.parametrize(("layout", "label_at", "series", "os_levels", "reader"), CASES)
def test_layouts(
    tmp_path: Path, layout: str, label_at: int | None, series: int, os_levels: object, reader: str
) -> None:
    path = write_pyramid(tmp_path / "p.tif", layout, label_at=label_at)
    lay = inspect_tiff(path)
    assert lay.series_index == series
    assert lay.level_shapes == LEVELS_512
    assert lay.tiled
    if label_at is None:
        assert lay.associated == {}
    else:
        assert list(lay.associated) == ["label"]
        with tifffile.TiffFile(path) as tf:
            label_page = tf.pages[lay.associated["label"]]
            assert label_page.shape[:2] == (300, 100) and not label_page.is_tiled
    assert lay.reader == reader
    # the prediction matches what OpenSlide really does
    assert openslide_levels(path) == os_levels
    assert inspect_tiff(path, confirm_with_openslide=True).reader == reader
    # tiffslide sees the full pyramid whenever the slide is series 0
    if series == 0:
        assert tiffslide_levels(path) == LEVELS_512


def test_ome_levels_as_separate_images(tmp_path: Path) -> None:
    """Each level its own OME Image: neither reader pyramids it; we keep level 0 and report the rest."""
    path = write_pyramid(
        tmp_path / "s.ome.tif", "ome-series", resolution=None, ome_metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    )
    lay = inspect_tiff(path, confirm_with_openslide=True)
    assert lay.level_shapes == ((512, 512),) and lay.other_series == (1, 2) and lay.associated == {}
    assert lay.reader == "openslide"  # 1 level either way
    assert openslide_levels(path) == ((512, 512),) and tiffslide_levels(path) == ((512, 512),)
    with tiffslide.TiffSlide(path) as ts:
        assert sorted(ts.associated_images) == ["image1", "image2"]  # tiffslide calls them associated
    with tifffile.TiffFile(path) as tf:
        chosen, _ = choose(candidates_from_tifffile(tf, 0))
    assert chosen is not None and chosen.kind == "ome" and chosen.mpp == 0.5


def test_aperio_layout(tmp_path: Path) -> None:
    path = write_aperio(tmp_path / "a.svs")
    lay = inspect_tiff(path, confirm_with_openslide=True)
    assert lay.level_shapes == LEVELS_512 and lay.reader == "openslide"
    assert lay.associated == {"thumbnail": 1, "label": 4, "macro": 5}
    with openslide.OpenSlide(str(path)) as osr:
        assert sorted(osr.associated_images) == ["label", "macro", "thumbnail"]
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_count == 3 and sorted(ts.associated_images) == ["label", "macro", "thumbnail"]


def test_thumbnail_by_reduced_bit(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image(512, 512), tile=(128, 128), photometric="rgb", metadata=None)
        tw.write(image(64, 64), subfiletype=1, photometric="rgb", metadata=None)  # stripped, reduced, same aspect
    lay = inspect_tiff(path)
    assert lay.associated == {"thumbnail": 1} and lay.level_shapes == ((512, 512),)


def test_imagej_stripped(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, image(256, 128)[..., 0], imagej=True, resolution=(2, 2), metadata={"unit": "micron"})
    lay = inspect_tiff(path, confirm_with_openslide=True)
    assert lay.imagej and not lay.tiled and lay.level_shapes == ((256, 128),) and lay.reader == "tiffslide"


# ------------------------------------------------------------------------------------------------
# plain images


def test_issue_case4_big_jpeg(big_jpeg: Path) -> None:
    """13500x13500 JPEG, JFIF 50800 dpi -> 0.5 um/px, opened without the decompression-bomb error."""
    hdr = jpeg_size_and_density(big_jpeg)
    assert (hdr.width, hdr.height, hdr.components, hdr.jfif_units, hdr.x_density) == (13500, 13500, 3, 1, 50800)
    chosen, _ = choose(hdr.candidates())
    assert chosen is not None and chosen.mpp == 0.5 and chosen.source == "JPEG JFIF density (dpi)"
    with pytest.raises(Image.DecompressionBombError):  # what the current _ImageBackend runs into
        Image.open(big_jpeg)
    img = open_plain_image(big_jpeg)
    assert img.dimensions == (13500, 13500) and img.level_count == 1 and img.decode_bytes == 13500 * 13500 * 3
    thumb = img.thumbnail(512)  # DCT-scaled decode, no full-size buffer
    assert max(thumb.shape[:2]) == 512
    region = img.read_region(1100, 2100, 16, 16)  # one decode of 547 MB via imagecodecs
    assert region.shape == (16, 16, 3) and np.abs(region.astype(int) - PURPLE).max() <= 6
    edge = img.read_region(13500 - 4, 0, 8, 2)
    assert (edge[:, 4:] == 255).all()  # outside the image reads white
    img.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb < 2500, f"peak RSS {peak_mb:.0f} MB"


def test_big_jpeg_over_budget_message(big_jpeg: Path) -> None:
    img = open_plain_image(big_jpeg, max_decode_bytes=100 * 2**20)
    with pytest.raises(LayoutError, match=r"13500x13500 px JPEG needs 547 MB, over the 105 MB a plain image may take.*tiled pyramidal TIFF"):
        img.read_region(0, 0, 4, 4)


def test_small_jpeg_grey_progressive_and_png(tmp_path: Path) -> None:
    grey = tmp_path / "g.jpg"
    Image.fromarray(image(40, 60)[..., 0]).save(grey, progressive=True, dpi=(25400, 25400))
    hdr = jpeg_size_and_density(grey)
    assert (hdr.width, hdr.height, hdr.components, hdr.progressive) == (60, 40, 1, True)
    img = open_plain_image(grey)
    assert img.read_region(0, 0, 60, 40).shape == (40, 60, 3)
    png = tmp_path / "p.png"
    Image.fromarray(image(40, 60)).save(png, dpi=(50800, 50800))
    ph = png_size_and_density(png)
    assert (ph.width, ph.height, ph.x_ppu, ph.phys_unit) == (60, 40, 2_000_000, 1)
    pimg = open_plain_image(png)
    assert pimg.format == "PNG" and pimg.read_region(15, 10, 1, 1)[0, 0].tolist() == list(PURPLE)
    assert choose(pimg.candidates)[0].mpp == 0.5


def test_header_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    with pytest.raises(LayoutError, match="truncated"):
        jpeg_size_and_density(bad)
    notjpeg = tmp_path / "x.jpg"
    notjpeg.write_bytes(b"hello")
    with pytest.raises(LayoutError, match="not a JPEG"):
        jpeg_size_and_density(notjpeg)
    with pytest.raises(LayoutError, match="not a PNG"):
        png_size_and_density(notjpeg)
    with pytest.raises(LayoutError, match="not an image"):
        open_plain_image(notjpeg)


# ------------------------------------------------------------------------------------------------
# issue 12 through the real opener: histoscale.open_slide, slide_info, the CLI


def _open(path: Path, **kw: object) -> histoscale.Slide:
    return histoscale.open_slide(path, **kw)  # type: ignore[arg-type]


def test_open_slide_case1_ome_subifd(tmp_path: Path) -> None:
    path = write_pyramid(
        tmp_path / "case1.ome.tif",
        "ome",
        size=2048,
        tile=256,
        resolution=(1, 1),
        resolutionunit="NONE",
        ome_metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"},
    )
    with _open(path) as s:
        assert s.mpp == 0.5 and s.level_count == 3 and s.dimensions == (2048, 2048)
        assert s.resolution is not None and s.resolution.source.startswith("metadata:OME-XML")
        assert s.backend == "tiffslide"
        kinds = {(c.kind, c.accepted) for c in s.resolution_candidates}
        assert ("ome", True) in kinds and ("tiff", False) in kinds  # tags 1/1 NONE listed, rejected
        assert s.read_region_at((1536, 1536), (8, 8), downsample=4.0)[0, 0].tolist() == [200, 200, 200]


def test_open_slide_case2_imagej(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, image(256, 128), imagej=True, resolution=(2, 2), metadata={"unit": "micron"})
    with _open(path) as s:
        assert s.mpp == 0.5 and s.resolution is not None and "ImageJ" in s.resolution.source
        assert s.dimensions == (128, 256)


@pytest.mark.parametrize("label_description", ["label", None])
def test_open_slide_case3_label_first(tmp_path: Path, label_description: str | None) -> None:
    path = write_case3(tmp_path, label_description)
    with _open(path) as s:
        assert s.dimensions == (2048, 2048) and s.level_count == 3 and s.mpp == 0.5
        assert s.associated_images == (("label",) if label_description else ("image0",))
        assert s.backend == "tifffile"
        assert s.read_region_at((600, 600), (4, 4), downsample=2.0)[0, 0].tolist() == list(PURPLE)
        info = histoscale.slide_info(s)
    assert info["associated_images"] == list(s.associated_images) and info["level_count"] == 3


# label position x layout: the slide is always the pyramid, the label is named
@pytest.mark.parametrize(("layout", "label_at"), [(a, b) for a, b, *_ in CASES] + [("ome", 0), ("ome", 3)])
def test_open_slide_layouts(tmp_path: Path, layout: str, label_at: int | None) -> None:
    path = write_pyramid(tmp_path / "p.tif", layout, label_at=label_at)
    with _open(path) as s:
        assert s.level_dimensions == ((512, 512), (256, 256), (128, 128)), s.backend
        assert s.mpp == 0.5
        if label_at is not None and s.backend != "openslide":
            # tifffile writes no description into OME-TIFF pages: there the label is unnamed (image<page>)
            assert ("label" in s.associated_images) if layout != "ome" else len(s.associated_images) == 1
        assert s.read_region_at((200, 200), (4, 4), downsample=4.0)[0, 0].tolist() == list(PURPLE)


def test_open_slide_ome_every_unit(tmp_path: Path) -> None:
    """Every OME UnitsLength through the opener (one small file per unit)."""
    for unit, um in sorted(OME_LENGTH_UNITS_UM.items()):
        path = tmp_path / f"u{len(unit)}{ord(unit[0])}.ome.tif"
        v = 0.5 / um
        md = {"axes": "YX", "PhysicalSizeX": v, "PhysicalSizeXUnit": unit, "PhysicalSizeY": v, "PhysicalSizeYUnit": unit}
        tifffile.imwrite(path, np.zeros((16, 16), np.uint8), ome=True, metadata=md)
        with _open(path) as s:
            assert s.mpp is not None and abs(s.mpp - 0.5) < 1e-9, unit


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_open_slide_editor_dpi_stays_missing(
    tmp_path: Path, dpi: int, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pyramid(tmp_path / "d.tif", "pages", resolution=(dpi, dpi), resolutionunit="INCH")
    with caplog.at_level(logging.WARNING, logger="histoscale.slide"), _open(path) as s:
        assert s.resolution is None and s.mpp is None
        assert s.resolution_candidates and not any(c.accepted for c in s.resolution_candidates)
        with pytest.raises(histoscale.errors.MissingMppError, match=f"{dpi} dpi"):
            s.level0_mpp()
        info = histoscale.slide_info(s)
    assert "CLI: --slide-mpp; Python: slide_mpp=" in caplog.text
    assert info["mpp"] is None and all(not c["accepted"] for c in info["mpp_candidates"])
    assert "--slide-mpp" in info["mpp_chosen_because"]
    from histoscale.cli import main

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"rejected: {dpi} dpi is an image-editor/screen default" in out


def test_open_slide_no_pixel_size_is_missing(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "none.tif", "pages", resolution=None)
    with _open(path) as s:
        assert s.resolution is None
        with pytest.raises(histoscale.errors.MissingMppError, match="--slide-mpp"):
            s.level0_mpp()
    with _open(path, slide_mpp=0.25) as s:
        assert s.mpp == 0.25 and s.resolution is not None and s.resolution.source == "override"


def test_open_slide_case4_big_jpeg(big_jpeg: Path) -> None:
    with _open(big_jpeg) as s:
        assert s.dimensions == (13500, 13500) and s.level_count == 1 and s.mpp == 0.5
        assert s.resolution is not None and s.resolution.source == "metadata:jfif.density"
        region = s.read_region_at((1100, 2100), (16, 16), downsample=1.0)
        assert region.shape == (16, 16, 3) and np.abs(region.astype(int) - PURPLE).max() <= 6
