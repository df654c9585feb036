"""Resolution conventions: pure parsers, files generated with tifffile/Pillow, and how OpenSlide 4 /
tiffslide 3 report the same files."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from _wsi_files import image, write_aperio, write_pyramid
from histoscale.slide._conventions import (
    EDITOR_DEFAULT_DPI,
    OME_LENGTH_UNITS_UM,
    Candidate,
    candidates_from_tifffile,
    choose,
    from_dicom_pixel_spacing,
    from_imagej,
    from_jfif,
    from_ome_xml,
    from_png_phys,
    from_properties,
    from_tiff_tags,
    from_vendor_keys,
)
from histoscale.slide._plain_image import jpeg_size_and_density, png_size_and_density
from histoscale.slide._tiff_layout import inspect_tiff

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")


def chosen_mpp(cands: list[Candidate]) -> tuple[float, float] | None:
    c, _ = choose(cands)
    return None if c is None else (c.mpp_x, c.mpp_y)


def tiff_choice(path: Path) -> Candidate | None:
    layout = inspect_tiff(path)
    with tifffile.TiffFile(path) as tf:
        return choose(candidates_from_tifffile(tf, layout.series_index))[0]


def ome_xml(sx: object, sy: object, unit: str | None) -> str:
    u = "" if unit is None else f' PhysicalSizeXUnit="{unit}" PhysicalSizeYUnit="{unit}"'
    return (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels '
        f'SizeX="64" SizeY="64" PhysicalSizeX="{sx}" PhysicalSizeY="{sy}"{u}/></Image></OME>'
    )


# ------------------------------------------------------------------------------------------------
# issue 12 cases 1 and 2


def test_issue_case1_ome_subifd_pyramid_mpp_from_ome_xml(tmp_path: Path) -> None:
    """2048^2 OME-TIFF, 2 SubIFD levels, PhysicalSize 0.5 µm, tags 1/1 NONE -> 0.5 from OME-XML."""
    path = write_pyramid(
        tmp_path / "case1.ome.tif",
        "ome",
        size=2048,
        tile=256,
        resolution=None,
        ome_metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"},
    )
    with tifffile.TiffFile(path) as tf:  # the tags really are 1/1 NONE
        tags = tf.pages.first.tags
        assert tags["XResolution"].value == (1, 1) and int(tags["ResolutionUnit"].value) == 1
        chosen, cands = choose(candidates_from_tifffile(tf, 0))
    assert chosen is not None and chosen.kind == "ome"
    assert (chosen.mpp_x, chosen.mpp_y) == (0.5, 0.5)
    assert chosen.source == "OME-XML PhysicalSizeX/Y (µm)"
    rejected = [c for c in cands if not c.accepted]
    assert [c.reason for c in rejected] == ["ResolutionUnit NONE: no physical unit"]
    # what the readers make of it (recorded in NOTES.md)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_count == 3
        assert ts.properties["tiffslide.mpp-x"] is None  # tiffslide 3 does not read OME-XML
        assert ts.properties["tiff.ResolutionUnit"] == "NONE"
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.level_count == 1  # SubIFDs unseen
        assert "openslide.mpp-x" not in osr.properties
        assert not any(k.startswith("ome") for k in osr.properties)


def test_issue_case2_imagej_micron(tmp_path: Path) -> None:
    """ImageJ TIFF: XResolution 2 px/unit, ResolutionUnit NONE, unit=micron -> 0.5 um/px."""
    path = tmp_path / "case2.tif"
    tifffile.imwrite(path, image(64, 64)[..., 0], imagej=True, resolution=(2, 2), metadata={"unit": "micron"})
    with tifffile.TiffFile(path) as tf:
        assert int(tf.pages.first.tags["ResolutionUnit"].value) == 1
        chosen, cands = choose(candidates_from_tifffile(tf, 0))
    assert chosen is not None and chosen.kind == "imagej" and (chosen.mpp_x, chosen.mpp_y) == (0.5, 0.5)
    assert [c.kind for c in cands] == ["imagej", "tiff"] and not cands[1].accepted
    with tiffslide.TiffSlide(path) as ts:
        assert ts.properties["tiffslide.mpp-x"] is None  # tiffslide ignores the ImageJ unit
    assert openslide.OpenSlide.detect_format(str(path)) is None  # stripped: not a slide to OpenSlide


# ------------------------------------------------------------------------------------------------
# OME-XML, every unit of UnitsLength


@pytest.mark.parametrize("unit", sorted(OME_LENGTH_UNITS_UM))
def test_ome_every_unit_pure(unit: str) -> None:
    value = 0.5 / OME_LENGTH_UNITS_UM[unit]
    (c,) = from_ome_xml(ome_xml(repr(value), repr(value), unit))
    assert c.accepted and math.isclose(c.mpp_x, 0.5, rel_tol=1e-9) and math.isclose(c.mpp_y, 0.5, rel_tol=1e-9)
    assert unit in c.source


@pytest.mark.parametrize("unit", sorted(OME_LENGTH_UNITS_UM))
def test_ome_every_unit_file(tmp_path: Path, unit: str) -> None:
    value = 0.5 / OME_LENGTH_UNITS_UM[unit]
    path = tmp_path / "u.ome.tif"
    md = {
        "axes": "YX",
        "PhysicalSizeX": value,
        "PhysicalSizeXUnit": unit,
        "PhysicalSizeY": value,
        "PhysicalSizeYUnit": unit,
    }
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), ome=True, metadata=md)
    c = tiff_choice(path)
    assert c is not None and c.kind == "ome" and math.isclose(c.mpp, 0.5, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        (None, 0.25, 0.25),  # absent unit attribute = micrometre
        ("um", 0.25, 0.25),
        ("micron", 0.25, 0.25),
        ("\u03bcm", 0.25, 0.25),  # Greek mu
        ("\u212b", 2500.0, 0.25),  # ANGSTROM SIGN
        ("nm", 250.0, 0.25),
        ("in", 0.25 / 25400, 0.25),
        ("thou", 0.01, 0.254),
        ("li", 0.0001, 0.21166666666666667),  # line = 1/12 inch
        ("pt", 0.001, 0.35277777777777775),  # point = 1/72 inch
    ],
)
def test_ome_aliases_and_imperial(unit: str | None, value: float, expected: float) -> None:
    (c,) = from_ome_xml(ome_xml(value, value, unit))
    assert c.accepted and math.isclose(c.mpp, expected, rel_tol=1e-9)


@pytest.mark.parametrize("unit", ["Pixel", "ReferenceFrame", "furlong"])
def test_ome_non_physical_unit_rejected(unit: str) -> None:
    (c,) = from_ome_xml(ome_xml(1, 1, unit))
    assert not c.accepted and "not a physical length" in (c.reason or "")


def test_ome_implausible_and_missing() -> None:
    (c,) = from_ome_xml(ome_xml(0.5, 0.5, "mm"))  # 500 um/px
    assert not c.accepted and "plausible" in (c.reason or "")
    assert from_ome_xml('<OME><Image><Pixels SizeX="4" SizeY="4"/></Image></OME>') == []
    (bad,) = from_ome_xml("<OME><Image")
    assert not bad.accepted and "does not parse" in (bad.reason or "")


def test_ome_largest_image_wins_and_index() -> None:
    xml = (
        "<OME>"
        '<Image><Pixels SizeX="100" SizeY="300" PhysicalSizeX="20" PhysicalSizeY="20"/></Image>'
        '<Image><Pixels SizeX="4096" SizeY="4096" PhysicalSizeX="0.25" PhysicalSizeY="0.26"/></Image>'
        "</OME>"
    )
    (c,) = from_ome_xml(xml)
    assert (c.mpp_x, c.mpp_y) == (0.25, 0.26) and c.note is None  # 4 %: not anisotropic
    (c0,) = from_ome_xml(xml, image_index=0)
    assert c0.mpp == 20


# ------------------------------------------------------------------------------------------------
# ImageJ


@pytest.mark.parametrize(
    ("unit", "px_per_unit", "expected"),
    [
        ("micron", 2, 0.5),
        ("um", 2, 0.5),
        ("\\u00B5m", 2, 0.5),  # how ImageJ itself writes µ (descriptions are ASCII)
        ("nm", 0.002, 0.5),
        ("mm", 2000, 0.5),
        ("cm", 20000, 0.5),
        ("inch", 50800, 0.5),
    ],
)
def test_imagej_units_file(tmp_path: Path, unit: str, px_per_unit: float, expected: float) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, np.zeros((16, 16), np.uint8), imagej=True, resolution=(px_per_unit, px_per_unit), metadata={"unit": unit}
    )
    c = tiff_choice(path)
    assert c is not None and c.kind == "imagej" and math.isclose(c.mpp, expected, rel_tol=1e-6)


def test_imagej_rejections() -> None:
    (c,) = from_imagej("ImageJ=1.54f\nunit=pixel\n", (1, 1), (1, 1))
    assert not c.accepted and "not a physical length" in (c.reason or "")
    (c,) = from_imagej("ImageJ=1.54f\nunit=inch\n", (72, 1), (72, 1))  # ImageJ's view of a 72 dpi file
    assert not c.accepted and "72 dpi" in (c.reason or "")
    assert from_imagej("ImageJ=1.54f\nimages=1\n", (2, 1), (2, 1)) == []  # uncalibrated
    assert from_imagej("not imagej", (2, 1), (2, 1)) == []
    (c,) = from_imagej("ImageJ=1.54f\nunit=micron\nyunit=nm\n", (2, 1), (0.002, 1))
    assert c.accepted and (c.mpp_x, c.mpp_y) == (0.5, 0.5)
    (c,) = from_imagej("ImageJ=1.54f\nunit=\u00b5m\n", 2, 2)  # decoded micro sign, as a str
    assert c.accepted and c.mpp == 0.5


# ------------------------------------------------------------------------------------------------
# TIFF tags


@pytest.mark.parametrize(("unit", "res"), [("CENTIMETER", 20000), ("INCH", 50800)])
def test_tiff_tags_cm_vs_inch_file(tmp_path: Path, unit: str, res: float) -> None:
    path = write_pyramid(tmp_path / "t.tif", "pages", resolution=(res, res), resolutionunit=unit)
    c = tiff_choice(path)
    assert c is not None and c.kind == "tiff" and c.mpp == 0.5
    assert ("cm" if unit == "CENTIMETER" else "inch") in c.source
    # OpenSlide 4.0.1 generic-tiff derives the same number from either unit
    with openslide.OpenSlide(str(path)) as osr:
        assert float(osr.properties["openslide.mpp-x"]) == 0.5
        chosen, _ = choose(from_properties(dict(osr.properties)))
        assert chosen is not None and chosen.kind == "tiff" and chosen.mpp == 0.5


@pytest.mark.parametrize("dpi", EDITOR_DEFAULT_DPI)
@pytest.mark.parametrize("unit", ["INCH", "CENTIMETER"])
def test_tiff_editor_default_dpi_rejected_file(tmp_path: Path, dpi: float, unit: str) -> None:
    per_unit = dpi if unit == "INCH" else round(dpi / 2.54, 2)  # 28.35 px/cm is 72 dpi
    path = write_pyramid(tmp_path / "d.tif", "pages", resolution=(per_unit, per_unit), resolutionunit=unit)
    with tifffile.TiffFile(path) as tf:
        chosen, (cand,) = choose(candidates_from_tifffile(tf, 0))
    assert chosen is None and not cand.accepted and f"{dpi:g} dpi" in (cand.reason or "")
    with openslide.OpenSlide(str(path)) as osr:  # OpenSlide reports it as an mpp anyway ...
        props = dict(osr.properties)
    assert float(props["openslide.mpp-x"]) > 25
    chosen, cands = choose(from_properties(props))  # ... and we reject it as a tag-derived value
    assert chosen is None and all(c.kind == "tiff" for c in cands)


def test_tiff_tags_pure() -> None:
    (c,) = from_tiff_tags((2, 1), (2, 1), 1)
    assert not c.accepted and c.reason == "ResolutionUnit NONE: no physical unit"
    (c,) = from_tiff_tags(1000, 1000, None)  # absent unit = inch (TIFF 6.0): 25.4 um/px
    assert not c.accepted and "coarser than 25" in (c.reason or "")
    (c,) = from_tiff_tags((20000, 1), (10000, 1), 3)
    assert c.accepted and (c.mpp_x, c.mpp_y) == (0.5, 1.0) and "anisotropic" in (c.note or "")
    (c,) = from_tiff_tags((0, 1), (0, 1), 3)
    assert not c.accepted
    (c,) = from_tiff_tags(2, 2, 5)  # tifffile's non-standard MICROMETER
    assert c.accepted and c.mpp == 0.5
    assert from_tiff_tags(None, None, 2) == []
    (c,) = from_tiff_tags(1e9, 1e9, 3)  # 1e-5 um/px
    assert not c.accepted and "plausible" in (c.reason or "")


# ------------------------------------------------------------------------------------------------
# JPEG JFIF and PNG pHYs


@pytest.mark.parametrize(("dpi", "ok"), [(50800, True), (25400, True), (72, False), (96, False), (300, False)])
def test_jpeg_jfif_density_file(tmp_path: Path, dpi: int, ok: bool) -> None:
    path = tmp_path / "i.jpg"
    Image.fromarray(image(32, 32)).save(path, dpi=(dpi, dpi))
    cands = jpeg_size_and_density(path).candidates()
    assert [c.accepted for c in cands] == [ok]
    if ok:
        assert math.isclose(cands[0].mpp, 25400 / dpi)


def test_jpeg_jfif_dots_per_cm_and_no_unit(tmp_path: Path) -> None:
    path = tmp_path / "cm.jpg"
    Image.fromarray(image(32, 32)).save(path, dpi=(20000, 20000))
    data = bytearray(path.read_bytes())
    assert data[6:11] == b"JFIF\x00"
    data[13] = 2  # units byte: dots per cm -> 20000 dots/cm = 0.5 um/px
    path.write_bytes(bytes(data))
    (c,) = jpeg_size_and_density(path).candidates()
    assert c.accepted and c.mpp == 0.5 and "dots/cm" in c.source
    data[13] = 0
    path.write_bytes(bytes(data))
    (c,) = jpeg_size_and_density(path).candidates()
    assert not c.accepted and "no physical unit" in (c.reason or "")
    assert from_jfif(None, None, None) == []


@pytest.mark.parametrize(("dpi", "ok"), [(50800, True), (72, False), (96, False), (300, False), (600, False)])
def test_png_phys_file(tmp_path: Path, dpi: int, ok: bool) -> None:
    path = tmp_path / "i.png"
    Image.fromarray(image(32, 32)).save(path, dpi=(dpi, dpi))  # pHYs px/m = round(dpi / 0.0254)
    hdr = png_size_and_density(path)
    assert hdr.phys_unit == 1
    (c,) = hdr.candidates()
    assert c.accepted is ok
    if ok:
        assert math.isclose(c.mpp, 0.5)


def test_png_phys_pure() -> None:
    (c,) = from_png_phys(2835, 2835, 0)
    assert not c.accepted and "no physical unit" in (c.reason or "")
    (c,) = from_png_phys(4_000_000, 4_000_000, 1)
    assert c.accepted and c.mpp == 0.25
    assert from_png_phys(None, None, None) == []


# ------------------------------------------------------------------------------------------------
# DICOM PixelSpacing


class FakeDataset:
    """Attribute access like pydicom.Dataset."""

    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    "value",
    [
        "0.0005\\0.00025",
        ["0.0005", "0.00025"],
        (0.0005, 0.00025),
        {"PixelSpacing": [0.0005, 0.00025]},
        {"00280030": {"vr": "DS", "Value": [0.0005, 0.00025]}},  # DICOM JSON model
        {"SharedFunctionalGroupsSequence": [{"PixelMeasuresSequence": [{"PixelSpacing": [0.0005, 0.00025]}]}]},
        FakeDataset(PixelSpacing=[0.0005, 0.00025]),
        FakeDataset(
            SharedFunctionalGroupsSequence=[
                FakeDataset(PixelMeasuresSequence=[FakeDataset(PixelSpacing=["0.0005", "0.00025"])])
            ]
        ),
    ],
)
def test_dicom_pixel_spacing_row_col_order(value: object) -> None:
    (c,) = from_dicom_pixel_spacing(value)
    # row spacing (y) first, column spacing (x) second
    assert c.accepted and math.isclose(c.mpp_y, 0.5) and math.isclose(c.mpp_x, 0.25) and "anisotropic" in (c.note or "")


def test_dicom_bad_values() -> None:
    assert from_dicom_pixel_spacing({}) == []
    (c,) = from_dicom_pixel_spacing("a\\b")
    assert not c.accepted
    (c,) = from_dicom_pixel_spacing("1\\2\\3")
    assert not c.accepted and "2 values" in (c.reason or "")
    (c,) = from_dicom_pixel_spacing("0.00025")  # one value: square pixels assumed, noted
    assert c.accepted and c.mpp == 0.25 and "square" in (c.note or "")


# ------------------------------------------------------------------------------------------------
# vendor keys and reader properties


def test_vendor_keys_pure() -> None:
    props = {
        "aperio.MPP": "0.2520",
        "aperio.AppMag": "40",
        "openslide.objective-power": "40",
        "ventana.ScanRes": "0.25",
        "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X": "0.243",
        "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_Y": "0.244",
        "philips.DICOM_PIXEL_SPACING": '"0.000250" "0.000240"',
        "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]": "0.00026",
        "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[1]": "0.00027",
        "hamamatsu.XResolution": "40000",
        "hamamatsu.YResolution": "40000",
        "hamamatsu.ResolutionUnit": "centimeter",
    }
    got = {c.source: (round(c.mpp_x, 6), round(c.mpp_y, 6)) for c in from_vendor_keys(props)}
    assert got == {
        "aperio.MPP": (0.252, 0.252),
        "ventana.ScanRes": (0.25, 0.25),
        "mirax MICROMETER_PER_PIXEL_X/Y": (0.243, 0.244),
        "philips.DICOM_PIXEL_SPACING (mm, y x)": (0.24, 0.25),
        "dicom PixelSpacing (mm, row\\col)": (0.27, 0.26),
        "hamamatsu.XResolution/YResolution (cm)": (0.25, 0.25),
    }
    assert all(c.kind == "vendor" for c in from_vendor_keys(props))
    assert from_vendor_keys({"openslide.objective-power": "20", "aperio.AppMag": "20"}) == []


def test_reader_mpp_kind_by_vendor() -> None:
    generic = {
        "openslide.vendor": "generic-tiff",
        "openslide.mpp-x": "0.5",
        "openslide.mpp-y": "0.5",
        "tiff.XResolution": "20000",
        "tiff.YResolution": "20000",
        "tiff.ResolutionUnit": "centimeter",
    }
    kinds = [c.kind for c in from_properties(generic)]
    assert kinds == ["tiff", "tiff"]  # openslide.mpp-x is the tag value, judged as such
    ts_generic = {
        "tiffslide.vendor": None,
        "tiffslide.mpp-x": 352.77,
        "tiffslide.mpp-y": 352.77,
        "tiff.XResolution": 72.0,
        "tiff.YResolution": 72.0,
        "tiff.ResolutionUnit": "INCH",
    }
    chosen, cands = choose(from_properties(ts_generic))
    assert chosen is None and len(cands) == 2 and all("72 dpi" in (c.reason or "") for c in cands)
    aperio = {
        "openslide.vendor": "aperio",
        "openslide.mpp-x": "0.499",
        "openslide.mpp-y": "0.499",
        "aperio.MPP": "0.499",
        "tiff.XResolution": "72",
        "tiff.YResolution": "72",
        "tiff.ResolutionUnit": "inch",
    }
    chosen, cands = choose(from_properties(aperio))
    assert chosen is not None and chosen.source == "openslide.mpp-x/openslide.mpp-y (aperio)" and chosen.mpp == 0.499
    assert [c.accepted for c in cands] == [True, True, False]


def test_aperio_file_through_both_readers(tmp_path: Path) -> None:
    path = write_aperio(tmp_path / "a.svs")
    with openslide.OpenSlide(str(path)) as osr:
        os_props = dict(osr.properties)
    with tiffslide.TiffSlide(path) as ts:
        ts_props = {k: v for k, v in ts.properties.items() if v is not None}
    for props in (os_props, ts_props):
        chosen, _ = choose(from_properties(props))
        assert chosen is not None and chosen.kind == "vendor" and chosen.mpp == 0.499
    assert os_props["aperio.MPP"] == "0.499" and os_props["tiff.XResolution"] == "72"


# ------------------------------------------------------------------------------------------------
# choose()


def test_choose_precedence_and_report(caplog: pytest.LogCaptureFixture) -> None:
    c = {
        k: Candidate(v, v, k, k)
        for k, v in [
            ("png", 0.9),
            ("jfif", 0.8),
            ("tiff", 0.7),
            ("dicom", 0.6),
            ("imagej", 0.5),
            ("ome", 0.4),
            ("vendor", 0.25),
        ]
    }
    bad = Candidate(None, None, "x", "vendor", accepted=False, reason="r")
    order = ["vendor", "ome", "imagej", "dicom", "tiff", "jfif", "png"]
    for i, k in enumerate(order):
        pool = [c[j] for j in order[i:]] + [bad]
        chosen, ranked = choose(reversed(pool))
        assert chosen is c[k]
        assert len(ranked) == len(pool)
    with caplog.at_level(logging.WARNING, logger="slide.resolution"):
        choose([c["tiff"], c["ome"]])
    assert "disagree" in caplog.text
    assert choose([bad]) == (None, [bad])
    assert choose([]) == (None, [])


def test_str_of_candidates() -> None:
    (c,) = from_tiff_tags(72, 72, 2)
    assert str(c).startswith("TIFF XResolution/YResolution (inch): 352.778 x 352.778 um/px, rejected: 72 dpi")


def test_no_warnings_from_pure_functions() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_ome_xml(ome_xml(0.5, 0.5, "µm"))
        from_imagej("ImageJ=1\nunit=um\n", 2, 2)
