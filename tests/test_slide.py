"""open_slide / Slide / resample / tissue_mask / slide_info against real files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SYNTH_BLOBS, SYNTH_H, SYNTH_MPP, SYNTH_SQUARES, SYNTH_W
from histoscale.errors import ConfigError, MissingMppError, SlideError
from histoscale.patches import resample
from histoscale.slide import Resolution, open_slide, slide_info, tissue_mask

BACKENDS = ["openslide", "tiffslide"]


def _near(a: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> np.ndarray:
    """Per-pixel: colour within ``tol`` of ``rgb``."""
    return np.abs(a.astype(int) - np.array(rgb)).max(axis=-1) <= tol


# ---------------------------------------------------------------------------------------------- mpp


@pytest.mark.parametrize(
    ("fmt", "backend", "source", "vendor"),
    [
        ("svs", "openslide", "metadata:openslide.mpp-x", "aperio"),
        ("svs", "tiffslide", "metadata:tiffslide.mpp-x", "aperio"),
        ("tiff", "openslide", "tiff-resolution-tag", "generic-tiff"),
        ("tiff", "tiffslide", "tiff-resolution-tag", None),
    ],
)
def test_mpp_round_trip(synthetic_slides: dict[str, Path], fmt: str, backend: str, source: str, vendor) -> None:
    with open_slide(synthetic_slides[fmt], backend=backend) as s:
        assert s.backend == backend
        assert s.resolution == Resolution(SYNTH_MPP, SYNTH_MPP, source)
        assert s.mpp == pytest.approx(SYNTH_MPP)
        assert not s.resolution.is_anisotropic
        assert s.vendor == vendor
        assert s.objective_power == (20.0 if fmt == "svs" else None)
        assert s.downsample_for(2.0) == pytest.approx(4.0)


def test_default_backend_is_openslide(synthetic_slides: dict[str, Path]) -> None:
    for path in synthetic_slides.values():
        with open_slide(path) as s:
            assert s.backend == "openslide"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bare_has_no_mpp(synthetic_slides: dict[str, Path], backend: str) -> None:
    path = synthetic_slides["bare"]
    with open_slide(path, backend=backend) as s:
        assert s.resolution is None and s.mpp is None
        with pytest.raises(MissingMppError) as exc:
            s.downsample_for(1.0)
        msg = str(exc.value)
        assert str(path) in msg and "--slide-mpp" in msg and "slide_mpp=..." in msg and "relative" in msg
        with pytest.raises(MissingMppError):
            s.read_region_at((100, 100), 32, mpp=1.0)
        assert s.read_region_at((100, 100), 32, downsample=2.0).shape == (32, 32, 3)


def test_override(synthetic_slides: dict[str, Path]) -> None:
    with open_slide(synthetic_slides["bare"], slide_mpp=0.25) as s:
        assert s.resolution == Resolution(0.25, 0.25, "override")
        assert s.downsample_for(1.0) == pytest.approx(4.0)
    with open_slide(synthetic_slides["svs"], slide_mpp=0.3) as s:  # wins over metadata
        assert s.resolution is not None and s.resolution.source == "override" and s.mpp == 0.3
    with pytest.raises(ConfigError):
        open_slide(synthetic_slides["svs"], slide_mpp=0)


def test_anisotropic_resolution_is_kept_and_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "aniso.tif"
    img = np.full((512, 512, 3), 200, np.uint8)
    tifffile.imwrite(
        p, img, tile=(256, 256), photometric="rgb", metadata=None, resolution=(1e4 / 0.5, 1e4 / 0.6),
        resolutionunit="CENTIMETER",
    )
    with caplog.at_level(logging.WARNING, logger="histoscale.slide"):
        s = open_slide(p)
    assert s.resolution is not None
    assert (s.resolution.mpp_x, s.resolution.mpp_y) == pytest.approx((0.5, 0.6))
    assert s.resolution.is_anisotropic
    assert s.mpp == pytest.approx((0.5 * 0.6) ** 0.5)
    assert "anisotropic" in caplog.text
    s.close()


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("backend", BACKENDS)
def test_levels_and_best_level(synthetic_slides: dict[str, Path], backend: str) -> None:
    with open_slide(synthetic_slides["svs"], backend=backend) as s:
        assert s.dimensions == (SYNTH_W, SYNTH_H)
        assert s.level_count == 3
        assert s.level_dimensions == ((2048, 1536), (512, 384), (128, 96))
        assert s.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        expected = {0.5: 0, 1.0: 0, 3.9: 0, 3.9999: 1, 4.0: 1, 10.0: 1, 15.99: 2, 16.0: 2, 500.0: 2}
        for ds, level in expected.items():
            assert s.best_level(ds) == level, ds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["svs", "tiff"])
def test_read_region_at_content(synthetic_slides: dict[str, Path], backend: str, fmt: str) -> None:
    x0, y0, x1, y1, red = SYNTH_SQUARES["red"]
    with open_slide(synthetic_slides[fmt], backend=backend) as s:
        # 2x coarser than level 0: 200 px output span 400 level-0 px centred on the square's centre
        out = s.read_region_at(((x0 + x1) / 2, (y0 + y1) / 2), 200, mpp=2 * SYNTH_MPP)
        assert out.shape == (200, 200, 3) and out.dtype == np.uint8
        is_red = _near(out, red)
        cols, rows = np.flatnonzero(is_red[100]), np.flatnonzero(is_red[:, 100])
        # the 256-px square becomes 128 output px centred in the patch (JPEG/anti-aliasing edges +-2)
        for idx in (cols, rows):
            assert abs(len(idx) - 128) <= 3
            assert abs((idx[0] + idx[-1] + 1) / 2 - 100) <= 1.0
        assert _near(out[:30, :30], (255, 255, 255)).all()
        # through level 1 (downsample 8 -> level 4 x2): the square is 32 px wide, on the right spot
        out8 = s.read_region_at((384.0, 384.0), (64, 48), downsample=8.0)
        assert out8.shape == (48, 64, 3)
        cols = np.flatnonzero(_near(out8[24], red, tol=10))
        assert abs(len(cols) - 32) <= 2 and abs((cols[0] + cols[-1] + 1) / 2 - 32) <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_at_shapes_and_white_padding(synthetic_slides: dict[str, Path], backend: str) -> None:
    yellow = SYNTH_SQUARES["yellow"][4]
    with open_slide(synthetic_slides["svs"], backend=backend) as s:
        for size, ds, center in [((37, 23), 3.3, (1000.7, 800.2)), ((1, 1), 1.0, (5, 5)), ((300, 10), 17.0, (0, 0))]:
            assert s.read_region_at(center, size, downsample=ds).shape == (size[1], size[0], 3)
        # centred on the slide corner: the top-left quadrant is outside -> exactly white
        out = s.read_region_at((0.0, 0.0), 100, downsample=2.0)
        assert (out[:48, :] == 255).all() and (out[:, :48] == 255).all()
        assert _near(out[52:, 52:], yellow).all()  # yellow square [0,128)^2 -> output [50,114)
        assert (s.read_region_at((-5000, -5000), (16, 8), downsample=1.0) == 255).all()
        assert (s.read_region_at((SYNTH_W + 900, 10), 16, downsample=4.0) == 255).all()
        with pytest.raises(ConfigError):
            s.read_region_at((0, 0), 10)
        with pytest.raises(ConfigError):
            s.read_region_at((0, 0), 10, mpp=1.0, downsample=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_level(synthetic_slides: dict[str, Path], backend: str) -> None:
    x0, y0, _, _, red = SYNTH_SQUARES["red"]
    with open_slide(synthetic_slides["tiff"], backend=backend) as s:
        raw = s.read_level(1, (x0, y0), (64, 64))  # level-0 location, level-1 size
        assert raw.shape == (64, 64, 3) and _near(raw, red).all()
        edge = s.read_level(1, (SYNTH_W - 40, 0), (20, 4))  # 10 level-1 px inside, 10 outside
        assert (edge[:, 10:] == 255).all() and _near(edge[:, :10], (255, 255, 255), tol=3).all()
        with pytest.raises(ConfigError):
            s.read_level(3, (0, 0), (4, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_thumbnail(synthetic_slides: dict[str, Path], backend: str) -> None:
    x0, y0, x1, y1, green = SYNTH_SQUARES["green"]
    with open_slide(synthetic_slides["svs"], backend=backend) as s:
        thumb, ds = s.thumbnail(1500)
        assert thumb.shape == (1125, 1500, 3) and ds == pytest.approx(2048 / 1500)
        assert _near(thumb[int((y0 + y1) / 2 / ds), int((x0 + x1) / 2 / ds)], green).all()
        level, ds = s.thumbnail(1024)  # a level within 2x of the asked size comes as it is: 16x fewer pixels
        assert level.shape == (384, 512, 3) and ds == pytest.approx(4.0)
        small, ds = s.thumbnail(100)
        assert small.shape == (75, 100, 3) and ds == pytest.approx(20.48)
        big, ds = s.thumbnail(5000)  # never enlarged
        assert big.shape == (SYNTH_H, SYNTH_W, 3) and ds == 1.0


# ------------------------------------------------------------------------------------------- tissue


def test_tissue_mask_finds_blobs(synthetic_slides: dict[str, Path]) -> None:
    with open_slide(synthetic_slides["svs"]) as s:
        tm = tissue_mask(s, max_side=512)
    assert tm.mask.dtype == bool and tm.mask.shape == (384, 512)
    assert tm.downsample == pytest.approx(4.0) and tm.mpp == pytest.approx(2.0)
    for cx, cy, rx, _ry in SYNTH_BLOBS:
        assert tm.mask[int(cy / 4), int(cx / 4)]
        assert tm.mask[int(cy / 4), int((cx + 0.8 * rx) / 4)]
    assert not tm.mask[int(200 / 4), int(1800 / 4)]  # white background
    expected = sum(np.pi * rx * ry for _, _, rx, ry in SYNTH_BLOBS)
    expected += sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1, _ in SYNTH_SQUARES.values())
    assert tm.fraction == pytest.approx(expected / (SYNTH_W * SYNTH_H), rel=0.05)


def test_tissue_mask_empty_on_white(white_slide: Path) -> None:
    with open_slide(white_slide) as s:
        tm = tissue_mask(s)
    assert not tm.mask.any() and tm.fraction == 0.0


def test_tissue_mask_removes_specks(tmp_path: Path) -> None:
    img = np.full((400, 400, 3), 255, np.uint8)
    img[100:300, 100:300] = (200, 100, 160)
    img[10:12, 10:12] = (200, 100, 160)  # 4-px speck of "tissue"
    img[190:192, 190:192] = 255  # 4-px hole inside tissue
    p = tmp_path / "speck.png"
    Image.fromarray(img).save(p)
    with open_slide(p) as s:
        tm = tissue_mask(s, min_object_px=16)
    assert not tm.mask[11, 11] and tm.mask[191, 191] and tm.mask[150, 150]


# -------------------------------------------------------------------------------------- plain images


def test_png_single_level(tmp_path: Path, synthetic_array: np.ndarray) -> None:
    small = np.ascontiguousarray(synthetic_array[:512, :768])
    p = tmp_path / "s.png"
    Image.fromarray(small).save(p, dpi=(25400 / 0.5, 25400 / 0.5))  # pHYs in pixels per metre
    with open_slide(p) as s:
        assert s.backend == "image" and s.level_count == 1 and s.dimensions == (768, 512)
        assert s.level_downsamples == (1.0,)
        assert s.resolution is not None and s.resolution.source == "metadata:png.pHYs"
        assert s.mpp == pytest.approx(0.5, rel=1e-3)
        assert np.array_equal(s.read_level(0, (0, 0), (768, 512)), small)
        out = s.read_region_at((384, 384), 64, downsample=4.0)  # red square centre
        assert _near(out[32, 32], SYNTH_SQUARES["red"][4], tol=0).all()
    q = tmp_path / "nodpi.png"
    Image.fromarray(small).save(q)
    with open_slide(q) as s:
        assert s.resolution is None


def test_screen_dpi_is_not_a_resolution(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "screen.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p, dpi=(72, 72))
    with caplog.at_level(logging.WARNING, logger="histoscale.slide"):
        s = open_slide(p)
    assert s.resolution is None and "DPI default" in caplog.text


def test_jpeg_density_and_rgba_png(tmp_path: Path) -> None:
    p = tmp_path / "s.jpg"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(p, dpi=(50800, 50800), quality=95)
    with open_slide(p) as s:
        assert s.resolution is not None and s.resolution.source == "metadata:jfif.density"
        assert s.mpp == pytest.approx(0.5)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red | fully transparent black -> white
    q = tmp_path / "a.png"
    Image.fromarray(rgba).save(q)
    with open_slide(q) as s:
        px = s.read_level(0, (0, 0), (20, 20))
    assert (px[:, :10] == (255, 0, 0)).all() and (px[:, 10:] == 255).all()


def test_stripped_tiff_falls_back_to_tiffslide(tmp_path: Path) -> None:
    p = tmp_path / "strips.tif"
    img = np.zeros((64, 96, 3), np.uint8)
    img[:, 48:] = (0, 0, 255)
    tifffile.imwrite(p, img, photometric="rgb", resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    with open_slide(p) as s:  # OpenSlide rejects untiled TIFFs
        assert s.backend == "tiffslide"
        assert s.resolution == Resolution(1.0, 1.0, "tiff-resolution-tag")
        assert (s.read_level(0, (40, 0), (16, 4))[:, 8:] == (0, 0, 255)).all()
    with open_slide(p, backend="image") as s:
        assert s.resolution == Resolution(1.0, 1.0, "tiff-resolution-tag")
        assert np.array_equal(s.read_level(0, (0, 0), (96, 64)), img)


def test_real_pixels_immunohistochemistry(tmp_path: Path) -> None:
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry()
    p = tmp_path / "ihc.png"
    Image.fromarray(ihc).save(p)
    with open_slide(p) as s:
        assert s.backend == "image" and s.dimensions == (512, 512) and s.mpp is None
        thumb, ds = s.thumbnail(128)
        assert thumb.shape == (128, 128, 3) and ds == 4.0
        # area averaging: the thumbnail mean equals the image mean
        assert np.abs(thumb.mean(axis=(0, 1)) - ihc.mean(axis=(0, 1))).max() < 1.0
        tm = tissue_mask(s, max_side=256)
        assert 0.3 < tm.fraction <= 1.0
        patch = s.read_region_at((256, 256), 64, downsample=2.0)
        ref = resample(ihc[192:320, 192:320], (64, 64))
        assert np.array_equal(patch, ref)


# -------------------------------------------------------------------------------------------- errors


def test_open_errors(tmp_path: Path, synthetic_slides: dict[str, Path]) -> None:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope.svs", "does not exist")
    cases["dir"] = (tmp_path, "is a directory")
    empty = tmp_path / "empty.svs"
    empty.touch()
    cases["empty"] = (empty, "is empty (0 bytes)")
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n")
    cases["text"] = (text, "not a slide or image file")
    data = synthetic_slides["svs"].read_bytes()
    trunc = tmp_path / "trunc.svs"
    trunc.write_bytes(data[: len(data) // 2])
    cases["truncated"] = (trunc, "truncated")
    cut = tmp_path / "cut_ifd.svs"
    with tifffile.TiffFile(synthetic_slides["svs"]) as tf:
        cut.write_bytes(data[: tf.pages[1].offset])  # ends exactly where page 1's directory starts
    cases["cut ifd"] = (cut, "truncated or damaged")
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"\xff" * 64)
    cases["damaged"] = (garbage, "damaged TIFF")
    for name, (path, needle) in cases.items():
        with pytest.raises(SlideError) as exc:
            open_slide(path)
        assert str(path) in str(exc.value), name
        assert needle in str(exc.value), (name, str(exc.value))
    with pytest.raises(SlideError) as exc:
        open_slide(text, backend="openslide")
    assert "OpenSlide does not recognise" in str(exc.value)


def test_closed_slide_and_info(synthetic_slides: dict[str, Path]) -> None:
    s = open_slide(synthetic_slides["svs"])
    info = slide_info(s, tissue=True)
    json.dumps(info)
    assert info["backend"] == "openslide" and info["vendor"] == "aperio"
    assert info["mpp"] == pytest.approx(SYNTH_MPP) and info["mpp_source"] == "metadata:openslide.mpp-x"
    assert [lv["downsample"] for lv in info["levels"]] == pytest.approx([1, 4, 16])
    assert info["objective_power"] == 20.0 and 0.05 < info["tissue_fraction"] < 0.3
    s.close()
    s.close()
    with pytest.raises(SlideError, match="closed"):
        s.read_level(0, (0, 0), (4, 4))
    with open_slide(synthetic_slides["bare"]) as b:
        info = slide_info(b)
        assert info["mpp"] is None and info["mpp_source"] is None and "tissue_fraction" not in info


# ------------------------------------------------------------------------------------------ resample


def test_resample() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    rgb = np.repeat(checker[:, :, None], 3, axis=2)
    down = resample(rgb, (16, 16))
    assert down.shape == (16, 16, 3) and down.dtype == np.uint8
    assert np.abs(down.astype(int) - 127.5).max() <= 1  # area averaging, no aliasing
    up = resample(rgb[:4, :4], (8, 8))
    assert up.shape == (8, 8, 3)
    mixed = resample(rgb, (16, 100))  # shrink x, grow y
    assert mixed.shape == (100, 16, 3) and np.abs(mixed.astype(int) - 127.5).max() <= 1
    assert resample(rgb, (64, 64)) is rgb
    with pytest.raises(ConfigError):
        resample(rgb, (0, 5))


# ----------------------------------------------------------------------------------------- precision


@pytest.fixture(scope="module")
def ramp_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256x64 image whose red channel is the column index: value == level-0 x of the pixel."""
    img = np.zeros((64, 256, 3), np.uint8)
    img[:, :, 0] = np.arange(256, dtype=np.uint8)[None, :]
    p = tmp_path_factory.mktemp("ramp") / "ramp.png"
    Image.fromarray(img).save(p)
    return p


@pytest.mark.parametrize("cx", [100.0, 100.25, 100.5, 101.75, 127.3])
@pytest.mark.parametrize("ds", [1.0, 2.5, 4.0])
def test_read_region_at_is_centred(ramp_png: Path, cx: float, ds: float) -> None:
    with open_slide(ramp_png) as s:
        out = s.read_region_at((cx, 32.0), (16, 4), downsample=ds)[..., 0].astype(float)
    # output pixel i spans level-0 [cx - 8*ds + i*ds, + ds): its mean ramp value is that start + ds/2 - 0.5
    expected = cx - 8 * ds + np.arange(16) * ds + ds / 2 - 0.5
    # documented precision: FOV edges within 0.5 level px (+ uint8 rounding)
    assert np.abs(out[1] - expected).max() <= 1.0


def test_thumbnail_strips_match_single_read(synthetic_slides: dict[str, Path], monkeypatch) -> None:
    import histoscale.slide._slide as slide_mod

    with open_slide(synthetic_slides["tiff"]) as s:
        whole, ds = s.thumbnail(300)
        monkeypatch.setattr(slide_mod, "_STRIP_BYTES", 4 * 512 * 40)  # ~40 level rows per strip
        strips, ds2 = s.thumbnail(300)
    assert ds == ds2 and strips.shape == whole.shape
    assert np.abs(strips.astype(int) - whole.astype(int)).mean() < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_level_pixels_with_non_integer_downsample(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(0)
    lv0 = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    lv1 = rng.integers(0, 256, (200, 333, 3), dtype=np.uint8)  # downsample ~3.0015
    p = tmp_path / "odd.tif"
    with tifffile.TiffWriter(p) as tw:  # uncompressed tiles: pixels compare exactly
        tw.write(lv0, tile=(64, 64), photometric="rgb", metadata=None)
        tw.write(lv1, tile=(64, 64), photometric="rgb", metadata=None, subfiletype=1)
    with open_slide(p, backend=backend) as s:
        assert s.level_count == 2 and 3.0 < s.level_downsamples[1] < 3.01
        got = s._read_level_px(1, 117, 51, 40, 30)
        if backend == "tiffslide":
            assert np.array_equal(got, lv1[51:81, 117:157])
        else:  # OpenSlide: sub-pixel residual < 0.5/downsample px, bilinear -> close, not exact
            assert np.abs(got.astype(int) - lv1[51:81, 117:157]).mean() < 20
