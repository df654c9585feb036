"""A Leica SCN whose scanned regions differ in resolution (issue 28, 'Also'): OpenSlide and tiffslide refuse such a
file, so histoscale reads one region alone through tifffile. ``info`` names every region and the one read, the open
warns naming the regions left unread, ``open_slide(..., region=k)`` picks one.

The SCN is written here with tifffile as Leica's scanners lay it out: a BigTIFF whose first page (the macro image,
tiled) holds the XML (``<scn>``, one ``<collection>`` of ``<image>``s, each with its ``<pixels>`` levels naming
their IFD and its ``<view>`` on the glass in nm). The same file with regions of one resolution is opened by
OpenSlide's Leica reader, which proves the layout is the one it reads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide

from histoscale.cli import main
from histoscale.errors import ConfigError
from histoscale.slide import open_slide, slide_info

_XMLNS = "http://www.leica-microsystems.com/scn/2010/10/01"
GLASS_NM = (2_000_000, 4_000_000)  # the collection: 2 x 4 mm of glass
MACRO_MPP = 16.0
A_LEVELS, B_LEVELS = ((512, 512), (256, 256)), ((256, 384), (128, 192))  # (width, height) px per level
A_RGB, B_RGB = (180, 100, 180), (100, 100, 200)
A_AT_NM, B_AT_NM = (200_000, 200_000), (200_000, 2_000_000)


def _image_xml(name: str | None, levels: tuple[tuple[int, int], ...], first_ifd: int,
               view: tuple[int, int, int, int]) -> str:
    dims = "".join(f'<dimension sizeX="{w}" sizeY="{h}" r="{r}" ifd="{first_ifd + r}"/>'
                   for r, (w, h) in enumerate(levels))
    sx, sy, ox, oy = view
    named = f' name="{name}"' if name else ""
    return (
        f'<image{named} uuid="urn:uuid:{first_ifd}"><creationDate>2013-01-01T00:00:00.00Z</creationDate>'
        '<device model="Leica SCN400;Leica SCN" version="1.5.0.9843 2012/07/05 13:18:14"/>'
        f'<pixels sizeX="{levels[0][0]}" sizeY="{levels[0][1]}">{dims}</pixels>'
        f'<view sizeX="{sx}" sizeY="{sy}" offsetX="{ox}" offsetY="{oy}" spacingZ="0"/>'
        "<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings><illuminationSettings>"
        "<numericalAperture>0.4</numericalAperture><illuminationSource>brightfield</illuminationSource>"
        "</illuminationSettings></scanSettings></image>"
    )


def write_scn(path: Path, mpp_a: float, mpp_b: float, *, resolution_tags: bool = True) -> Path:
    """Two scanned regions ('A' at ``mpp_a``, 'B' at ``mpp_b`` um/px, 2 levels each) and a macro image of the
    whole glass (IFD 0, unnamed, as the scanner writes it); XResolution tags in pixels per cm on every page unless
    ``resolution_tags`` is False (the XML alone then says the pixel size)."""
    macro = (GLASS_NM[0] // int(MACRO_MPP * 1000), GLASS_NM[1] // int(MACRO_MPP * 1000))
    views = [(*GLASS_NM, 0, 0)]
    for (w, h), mpp, at in ((A_LEVELS[0], mpp_a, A_AT_NM), (B_LEVELS[0], mpp_b, B_AT_NM)):
        views.append((round(w * mpp * 1000), round(h * mpp * 1000), *at))
    xml = (
        f'<?xml version="1.0" encoding="utf-8"?><scn xmlns="{_XMLNS}"><collection name="test" uuid="urn:uuid:c" '
        f'sizeX="{GLASS_NM[0]}" sizeY="{GLASS_NM[1]}"><barcode>HS-28</barcode>'
        + _image_xml(None, (macro,), 0, views[0]) + _image_xml("A", A_LEVELS, 1, views[1])
        + _image_xml("B", B_LEVELS, 1 + len(A_LEVELS), views[2]) + "</collection></scn>"
    )
    pages = [(macro, MACRO_MPP, (230, 230, 230))]
    pages += [(wh, mpp_a * 2**r, A_RGB) for r, wh in enumerate(A_LEVELS)]
    pages += [(wh, mpp_b * 2**r, B_RGB) for r, wh in enumerate(B_LEVELS)]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ((w, h), mpp, rgb) in enumerate(pages):
            tags = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if resolution_tags else {}
            tw.write(np.full((h, w, 3), rgb, np.uint8), tile=(64, 64), photometric="rgb", compression="jpeg",
                     description=xml if i == 0 else None, metadata=None, **tags)
    return path


@pytest.fixture(scope="module")
def scn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Region A at 0.5 um/px, region B at 1 um/px."""
    return write_scn(tmp_path_factory.mktemp("scn") / "two-resolutions.scn", 0.5, 1.0)


@pytest.fixture(scope="module")
def scn_one_resolution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scn(tmp_path_factory.mktemp("scn") / "one-resolution.scn", 0.5, 0.5)


def colour(slide: object, level: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in slide.read_level(level, (8, 8), (1, 1))[0, 0])  # type: ignore[attr-defined]


def test_openslide_reads_the_file_and_refuses_regions_of_two_resolutions(scn: Path, scn_one_resolution: Path) -> None:
    """OpenSlide's Leica reader opens the layout (one resolution: regions placed on the glass, macro associated);
    with two resolutions it recognises the file and refuses it, as tiffslide does."""
    with openslide.OpenSlide(str(scn_one_resolution)) as osr:
        assert osr.properties["openslide.vendor"] == "leica"
        assert osr.level_dimensions[0] == (4000, 8000)  # the 2 x 4 mm of glass at 0.5 um/px
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert list(osr.associated_images) == ["macro"]
    assert openslide.OpenSlide.detect_format(str(scn)) == "leica"
    with pytest.raises(openslide.OpenSlideError, match="Inconsistent main image resolutions"):
        openslide.OpenSlide(str(scn))
    with tiffslide.TiffSlide(str(scn)) as ts, pytest.raises(ValueError, match="vary too much in resolution"):
        ts.level_dimensions  # noqa: B018 (tiffslide parses the XML at the first look)


def test_default_open_reads_the_largest_region_and_warns_naming_both(scn: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="histoscale"), open_slide(scn) as slide:
        assert (slide.backend, slide.region, slide.dimensions, slide.level_count) == ("tifffile", 0, (512, 512), 2)
        assert slide.mpp == pytest.approx(0.5)
        assert np.allclose(colour(slide), A_RGB, atol=4)
        assert [r.name for r in slide.regions] == ["A", "B"]
        assert slide.associated_images == ("macro",)
    warning = caplog.text
    assert "two-resolutions.scn holds 2 scanned regions (no reader shows them as one image: different " \
           "resolutions, 0.5, 1 um/px)" in warning
    assert "reading region 0 'A': 512x512 px at 0.5 um/px; not read: region 1 'B': 256x384 px at 1 um/px" in warning
    assert "open_slide(..., region=k), k in 0..1" in warning


def test_info_names_every_region_and_the_one_read(scn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(scn)]) == 0
    out = capsys.readouterr().out
    assert "region 0: 'A' 512x512 px at 0.5 um/px, at (0.2, 0.2) mm on the glass\n" in out
    assert "region 1: 'B' 256x384 px at 1 um/px, at (0.2, 2) mm on the glass, NOT READ" in out
    assert "region_read: region 0 alone; not read: 1 (pick one with open_slide(..., region=k))" in out
    assert main(["info", str(scn), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [(r["region"], r["width"], r["height"], r["mpp_x"], r["read"]) for r in info["regions"]] == [
        (0, 512, 512, pytest.approx(0.5), True), (1, 256, 384, pytest.approx(1.0), False)]


def test_region_1_opens_the_second_region_at_its_own_mpp(scn: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="histoscale"), open_slide(scn, region=1) as slide:
        assert (slide.backend, slide.region, slide.dimensions, slide.level_count) == ("tifffile", 1, (256, 384), 2)
        assert slide.mpp == pytest.approx(1.0) and slide.resolution is not None
        assert slide.resolution.source == "metadata:Leica SCN XML (region 1: view nm / pixels)"
        assert [c.kind for c in slide.resolution_candidates] == ["vendor", "tiff"]  # the tags agree
        assert slide.level_downsamples == (1.0, 2.0)
        assert np.allclose(colour(slide, 1), B_RGB, atol=4)
        assert slide_info(slide)["region_read"] == "region 1 alone; not read: 0 (pick one with open_slide(..., " \
                                                   "region=k))"
    assert "scanned regions" not in caplog.text  # picked: nothing to warn about


@pytest.mark.parametrize("region", [None, 0, 1])
def test_regions_without_resolution_tags_take_their_um_px_from_the_xml(tmp_path: Path, region: int | None) -> None:
    """A Leica SCN whose pages carry no resolution tags: the XML's view (nm) over each region's pixels is the
    pixel size, for the region read alone, as it is for the regions listed by ``info``."""
    path = write_scn(tmp_path / "no-tags.scn", 0.5, 1.0, resolution_tags=False)
    with open_slide(path, region=region) as slide:
        expected = {None: 0.5, 0: 0.5, 1: 1.0}[region]  # default: the largest region, A
        assert slide.mpp == pytest.approx(expected)
        assert slide.resolution is not None and "Leica SCN XML" in slide.resolution.source
    one = write_scn(tmp_path / "no-tags-one.scn", 0.5, 0.5, resolution_tags=False)
    with open_slide(one) as slide:  # regions of one resolution, placed on the glass by OpenSlide
        assert slide.backend == "openslide" and slide.mpp == pytest.approx(0.5)


def test_region_on_the_command_line(scn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(scn), "--region", "1"]) == 0
    out = capsys.readouterr().out
    assert "region_read: region 1 alone" in out and "mpp: 1" in out
    assert main(["info", str(scn), "--region", "4"]) == 2
    err = capsys.readouterr().err
    assert "--region: region=4 is out of range for" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("region", [2, -1])
def test_out_of_range_region_names_the_file_and_the_choices(scn: Path, region: int) -> None:
    with pytest.raises(ConfigError, match=(
        rf"region={region} is out of range for \S*two-resolutions\.scn: it holds 2 scanned region\(s\), numbered "
        r"0\.\.1 \(region 0 'A': 512x512 px at 0\.5 um/px; region 1 'B': 256x384 px at 1 um/px\)"
    )):
        open_slide(scn, region=region)


def test_region_of_a_file_without_regions(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), tile=(128, 128), photometric="rgb")
    with open_slide(path, region=0) as slide:
        assert slide.regions == () and slide.region is None and slide_info(slide)["region_read"] is None
    with pytest.raises(ConfigError, match=r"region=1 is out of range for \S*plain\.tif: it holds one image, region 0"):
        open_slide(path, region=1)


def test_regions_of_one_resolution_open_as_one_through_openslide(scn_one_resolution: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Nothing is dropped when OpenSlide places the regions on the glass; a region can still be read alone."""
    with caplog.at_level(logging.WARNING, logger="histoscale"), open_slide(scn_one_resolution) as slide:
        assert (slide.backend, slide.region, slide.dimensions) == ("openslide", None, (4000, 8000))
        assert slide_info(slide)["region_read"] == "all 2, placed on the glass's coordinates"
        # region A's first pixel, 0.2 mm into the glass at 0.5 um/px
        assert np.allclose(slide.read_level(0, (400, 400), (1, 1))[0, 0], A_RGB, atol=4)
    assert "scanned regions" not in caplog.text
    with open_slide(scn_one_resolution, region=1) as slide:
        assert (slide.backend, slide.region, slide.dimensions) == ("tifffile", 1, (256, 384))
        assert slide.mpp == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="region=1 of .* is read alone through tifffile; backend='openslide'"):
        open_slide(scn_one_resolution, region=1, backend="openslide")
