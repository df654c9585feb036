"""Faults real slides carry (issue 28): stacks and fluorescence in OME-TIFF, bit depths, damaged and missing tiles,
Aperio fields written with a decimal comma, rectangular pixels, files cut short.

Every file is small, written here with tifffile (or :func:`histoscale.slide.write_slide`) and read back through
the real backends; each case's expected outcome is the one issue 28 gives.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _wsi_files import (
    PURPLE,
    damage_tiles,
    drop_tiles,
    level_page,
    tissue_blocks,
    write_ome_fluorescence,
    write_ome_zstack,
)
from histoscale import SearchConfig, find_scale, run_cohort
from histoscale.cli import main
from histoscale.errors import ConfigError, DamagedTileError, ScaleSearchError, SlideError
from histoscale.slide import open_slide, tissue_mask, write_slide

SIZE, TILE = 1536, 128  # 12 x 12 = 144 level-0 tiles


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------ 1, 2: stacks, channels, bit depth


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled-subifd", "stripped"])
def test_fluorescence_ome_is_refused_as_not_brightfield(tmp_path: Path, tiled: bool,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A CYX uint16 fluorescence OME-TIFF neither crashes (TiffFrame pages) nor is searched as if it were H&E."""
    path = write_ome_fluorescence(tmp_path / "fluo.ome.tif", tiled=tiled)
    with pytest.raises(SlideError, match=r"fluo\.ome\.tif is not a brightfield RGB image: it holds 3 channels "
                       r"\(DAPI, FITC, TRITC\) of uint16.*export an RGB rendering"):
        open_slide(path)
    for command in ("info", "search"):
        code, _out, err = run_cli(capsys, command, path)
        assert code == 2, err
        assert "Traceback" not in err and "not a brightfield RGB image" in err
        assert len(err.strip().splitlines()) == 1, err


def test_brightfield_zstack_opens_at_first_plane_or_the_one_named(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = write_ome_zstack(tmp_path / "z.ome.tif", planes=2)
    with caplog.at_level(logging.WARNING, logger="histoscale"), open_slide(path) as slide:
        assert slide.level_count == 3 and slide.mpp == pytest.approx(0.5)
        assert tuple(slide.read_level(0, (0, 0), (1, 1))[0, 0]) == (200, 200, 200)
        assert tuple(slide.read_level(2, (192, 192), (1, 1))[0, 0]) == PURPLE
    assert "stack of 2 images (2 focal planes): reading the first" in caplog.text
    assert "plane=k" in caplog.text
    with open_slide(path, plane=1) as slide:
        assert tuple(slide.read_level(0, (0, 0), (1, 1))[0, 0]) == (210, 210, 210)
        assert tuple(slide.read_level(1, (0, 0), (1, 1))[0, 0]) == (210, 210, 210)
    with pytest.raises(ConfigError, match=r"plane=2 is out of range.*2 focal planes"):
        open_slide(path, plane=2)


def test_plane_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   caplog: pytest.LogCaptureFixture) -> None:
    """``--plane k`` reads plane k (no warning about the stack); out of range, one line naming the flag."""
    path = write_ome_zstack(tmp_path / "z.ome.tif", planes=2)
    with caplog.at_level(logging.WARNING, logger="histoscale"):
        code, out, err = run_cli(capsys, "info", path, "--plane", 1)
    assert code == 0, err
    assert "reading the first" not in caplog.text and "mpp: 0.5" in out
    code, _out, err = run_cli(capsys, "info", path, "--plane", 5)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--plane: plane=5 is out of range for" in err and "it holds 2 plane(s)" in err


def test_classify_from_a_search_reads_the_plane_and_region_the_search_read() -> None:
    from argparse import Namespace

    from histoscale.cli.classify import _searched_choice

    doc = {"arguments": {"plane": 1, "region": None}}
    args = Namespace(from_search="s/result.json")
    assert _searched_choice(args, doc, {}) == {"plane": 1}
    assert _searched_choice(args, doc, {"plane": 1, "region": 0}) == {"plane": 1, "region": 0}
    with pytest.raises(ConfigError, match=r"--plane 0 is not the plane the search s/result\.json read \(1\): drop "
                       r"--plane, or search that plane first"):
        _searched_choice(args, doc, {"plane": 0})


def test_plane_of_a_single_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((256, 256, 3), 220, np.uint8), tile=(128, 128), photometric="rgb")
    with pytest.raises(ConfigError, match="out of range.*holds 1 plane"):
        open_slide(path, plane=1)
    with open_slide(path, plane=0) as slide:
        assert slide.dimensions == (256, 256)


@pytest.mark.parametrize("layout", ["tiled-tiff", "ome-subifd"])
def test_16bit_rgb_brightfield_is_scaled_not_refused(tmp_path: Path, layout: str) -> None:
    """16-bit RGB reads as 8 bits the way libtiff (OpenSlide) scales it, v * 255 / 65535 rounded, on every path."""
    img = np.full((512, 512, 3), 60000, np.uint16)
    img[128:256, 128:256] = np.array(PURPLE, np.uint16) * 257
    path = tmp_path / f"rgb16-{layout}.tif"
    if layout == "tiled-tiff":
        tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", resolution=(2e4, 2e4),
                         resolutionunit="CENTIMETER")
    else:
        with tifffile.TiffWriter(path, ome=True) as tw:
            tw.write(img, subifds=1, tile=(128, 128), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
            tw.write(img[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb", metadata=None)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert tuple(slide.read_level(0, (0, 0), (1, 1))[0, 0]) == (233, 233, 233)  # 60000 * 255 / 65535
        assert tuple(slide.read_level(0, (200, 200), (1, 1))[0, 0]) == PURPLE


def test_grey_16bit_single_channel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dapi.tif"
    tifffile.imwrite(path, np.zeros((256, 256), np.uint16), tile=(128, 128))
    with pytest.raises(SlideError, match=r"not a brightfield RGB image: it holds one channel of uint16"):
        open_slide(path)


# ------------------------------------------------------------------------------------- 4: missing tiles


def glass_tiles(margin: int = 2) -> list[int]:
    """Indices of the level-0 tiles of :func:`tissue_blocks` (12 x 12 tiles) that hold only glass: 80 of 144."""
    n = SIZE // TILE
    return [i for i in range(n * n) if not (margin <= i % n < n - margin and margin <= i // n < n - margin)]


def write_sparse(path: Path, layout: str) -> Path:
    """A JPEG pyramid (downsamples 1, 4) whose 80 glass tiles at level 0 are not stored (offset 0, byte count 0)."""
    img = tissue_blocks(SIZE, TILE, margin=2)
    if layout == "svs":
        write_slide(path, img, mpp=0.5, fmt="svs", tile=TILE, downsamples=[1, 4])
    elif layout == "tiled-tiff":
        write_slide(path, img, mpp=0.5, fmt="tiff", tile=TILE, downsamples=[1, 4])
    else:
        with tifffile.TiffWriter(path, ome=True) as tw:
            tw.write(img, subifds=1, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
            tw.write(img[::4, ::4], subfiletype=1, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                     metadata=None)
    return drop_tiles(path, 0, glass_tiles())


@pytest.mark.parametrize(("layout", "backend"), [
    ("tiled-tiff", "openslide"), ("tiled-tiff", "tiffslide"), ("tiled-tiff", "tifffile"),
    ("svs", "openslide"), ("svs", "tiffslide"),
    ("ome-subifd", None), ("ome-subifd", "tifffile"),
])
def test_missing_tiles_read_as_glass_on_every_backend(tmp_path: Path, layout: str, backend: str | None) -> None:
    path = write_sparse(tmp_path / f"sparse-{layout}.{'svs' if layout == 'svs' else 'tif'}", layout)
    with open_slide(path, backend=backend) as slide:
        assert backend is None or slide.backend == backend
        assert slide.read_level(0, (0, 0), (2 * TILE, 2 * TILE)).min() == 255  # 4 missing tiles
        # a box across missing and stored tiles: the stored ones keep their tissue
        box = slide.read_level(0, (TILE + 10, 5 * TILE), (2 * TILE, 10))
        assert box[:, : TILE - 10].min() == 255 and box[:, TILE:].mean() < 200
        assert slide.read_region_at((SIZE / 2, 40), 64, downsample=2.0).min() == 255
        assert tissue_mask(slide).fraction == pytest.approx((8 * 8) / 144, abs=0.05)


# ------------------------------------------------------------------------------------- 3: damaged tiles

DAMAGED = [26, 40, 77]  # tissue tiles of the 12 x 12 level-0 grid of :func:`write_damaged`


def write_damaged(path: Path, how: str, tiles: list[int] = DAMAGED) -> Path:
    """SVS, 3072 x 3072 px at 0.5 um/px, 256 px JPEG tiles (144 at level 0), ``tiles`` of level 0 damaged."""
    img = tissue_blocks(3072, 256, margin=1)
    write_slide(path, img, mpp=0.5, fmt="svs", tile=256, downsamples=[1, 4])
    return damage_tiles(path, 0, tiles, how)


def tile_xy(index: int) -> tuple[int, int]:
    return (index % 12) * 256, (index // 12) * 256


@pytest.mark.parametrize("how", ["zeros", "noise"])
@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "tifffile"])
def test_damaged_tile_is_named_recorded_and_the_rest_reads(tmp_path: Path, how: str, backend: str) -> None:
    path = write_damaged(tmp_path / f"damaged-{how}.svs", how)
    with open_slide(path, backend=backend) as slide:
        for _ in range(2):  # and again: a reader (OpenSlide) that failed once still reads
            with pytest.raises(DamagedTileError, match=r"damaged-.*\.svs has damaged data at level 0") as err:
                slide.read_level(0, tile_xy(26), (256, 256))
            assert err.value.level == 0
            assert slide.read_level(0, tile_xy(30), (256, 256)).mean() < 200  # tissue, undamaged
        x, y = tile_xy(26)
        assert slide.damaged_tiles == [(0, x, y, 256, 256)]
        assert tissue_mask(slide).fraction > 0.5  # the thumbnail comes from level 1, undamaged


def test_direct_tile_reads_say_which_tile(tmp_path: Path) -> None:
    """SVS tiles are decoded directly (histoscale.slide._tiles): the error names the tile, column and row."""
    path = write_damaged(tmp_path / "damaged.svs", "noise")
    with open_slide(path) as slide:
        with pytest.raises(DamagedTileError, match=r"tile 40 \(column 4, row 3; x=1024 y=768, 256x256 level px\)"):
            slide.read_region_at((1100, 800), 64, downsample=1.0)


def test_openslide_reads_on_after_its_own_read_fails(tmp_path: Path) -> None:
    """A level with a missing tile is read by OpenSlide itself, whose handle refuses every read after a failed one:
    a fresh handle reads the rest."""
    path = drop_tiles(write_damaged(tmp_path / "damaged.svs", "noise"), 0, [0])
    with tifffile.TiffFile(path, mode="r+b") as tf:  # noise inside, an intact end: only the decoder can tell
        page = level_page(tf, 0)
        tf.filehandle.seek(page.dataoffsets[26] + page.databytecounts[26] - 2)
        tf.filehandle.write(b"\xff\xd9")
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        with pytest.raises(DamagedTileError, match="OpenSlideError"):
            slide.read_level(0, tile_xy(26), (256, 256))
        assert slide.read_level(0, tile_xy(30), (256, 256)).mean() < 200
        assert slide.read_level(0, (0, 0), (256, 256)).min() == 255


@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "tifffile"])
def test_a_tile_cut_short_is_damaged_though_it_decodes(tmp_path: Path, backend: str) -> None:
    """A tile cut short decodes as far as its data goes, grey after that, without an error on any reader
    (libjpeg-turbo's leniency): its bytes stop before the JPEG end marker, so it is named as damaged."""
    path = write_damaged(tmp_path / "cut.svs", "cut")
    with open_slide(path, backend=backend) as slide:
        with pytest.raises(DamagedTileError, match=r"cut\.svs has damaged data at level 0 in tile 26 \(column 2, row 2; "
                           r"x=512 y=512, 256x256 level px\): its \d+ bytes do not end with the codestream's end "
                           r"marker \(cut short or overwritten\)"):
            slide.read_level(0, (500, 500), (64, 64))
        assert slide.damaged_tiles == [(0, 512, 512, 256, 256)]
        assert slide.read_level(0, tile_xy(30), (256, 256)).mean() < 200  # the others read


def test_a_writer_that_ends_no_tile_with_the_marker_is_not_called_damaged(tmp_path: Path) -> None:
    """Were a writer to end its JPEG tiles without FFD9 (against the specification), every tile would look cut:
    the check looks at the level's fullest tiles first and stays off for such a writer."""
    path = write_damaged(tmp_path / "no-eoi.svs", "zeros", tiles=[])
    with tifffile.TiffFile(path, mode="r+b") as tf:
        page = level_page(tf, 0)
        page.tags["TileByteCounts"].overwrite([c - 2 if c else 0 for c in page.databytecounts])
    with open_slide(path, backend="tiffslide") as slide:  # (OpenSlide's own JPEG reads stall on such tiles)
        assert slide.read_level(0, tile_xy(26), (256, 256)).mean() < 200
        assert slide.damaged_tiles == []


def test_slide_whose_reads_mostly_fail_is_called_damaged(tmp_path: Path) -> None:
    path = write_damaged(tmp_path / "ruined.svs", "zeros", tiles=list(range(13, 131)))
    with open_slide(path) as slide:
        with pytest.raises(SlideError) as err:
            for t in range(13, 131):
                try:
                    slide.read_level(0, tile_xy(t), (256, 256))
                except DamagedTileError:
                    continue
        assert not isinstance(err.value, DamagedTileError)
        message = str(err.value)
        assert "ruined.svs is damaged: 8 of its 8 reads so far met damaged tiles" in message
        assert "Copy the file again" in message and "export or scan it again" in message


@pytest.fixture(scope="module")
def phantom_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom SVS as issue 28 item 3 gives it: 3072 x 3072 px at 0.5 um/px, 256 px JPEG tiles (144 at level
    0), downsamples 1 and 4; tissue the phantom model knows, so that its answer can be checked."""
    from histoscale.phantom import write_phantom

    folder = tmp_path_factory.mktemp("phantom-svs")
    return write_phantom(folder / "clean.svs", mpp=0.5, size_px_wh=(3072, 3072), fmt="svs", tile=256,
                         downsamples=(1, 4), seed=3).slide_path


SEARCH_DAMAGED = [40, 65, 100]  # tissue tiles of the phantom's 12 x 12 level-0 grid


def damaged_copy(source: Path, path: Path, how: str, tiles: list[int] = SEARCH_DAMAGED) -> Path:
    shutil.copyfile(source, path)
    return damage_tiles(path, 0, tiles, how)


@pytest.mark.parametrize("how", ["cut", "zeros", "noise"])
def test_search_skips_the_points_on_damaged_tiles_and_answers(phantom_svs: Path, tmp_path: Path, how: str) -> None:
    path = damaged_copy(phantom_svs, tmp_path / f"damaged-{how}.svs", how)
    result = find_scale(path, model="phantom", points=24, ruler=False)
    assert result.points_damaged >= 1 and result.points_used + result.points_damaged == 24
    assert len(result.points_xy) == len(result.curves) == result.points_used
    assert {t[:3] for t in result.damaged_tiles} <= {(0, *tile_xy(t)) for t in SEARCH_DAMAGED}
    assert result.check.status == "OK" and result.check.implied_mpp == pytest.approx(0.5, rel=0.2)
    caveat = f"{result.points_damaged} of 24 points skipped: their patches touch damaged tiles of the file (level 0 x="
    assert any(c.startswith(caveat) for c in result.caveats()), result.caveats()


def test_search_cli_says_how_many_points_and_which_tiles(phantom_svs: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = damaged_copy(phantom_svs, tmp_path / "damaged.svs", "noise")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "search", path, "--model", "phantom", "--no-ruler", "--points", "24",
                                "--out", out)
    assert code == 0, err
    saved = json.loads((out / "result.json").read_text())
    assert saved["points_damaged"] >= 1 and saved["points_used"] + saved["points_damaged"] == 24
    assert saved["damaged_tiles"] and saved["damaged_tiles"][0].keys() == {"level", "x", "y", "width", "height"}
    assert any("points skipped: their patches touch damaged tiles" in c for c in saved["caveats"])
    assert "points skipped: their patches touch damaged tiles of the file (level 0 x=" in stdout


def test_search_on_a_slide_whose_reads_mostly_fail_says_it_is_damaged(phantom_svs: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = damaged_copy(phantom_svs, tmp_path / "ruined.svs", "zeros", tiles=list(range(13, 131)))
    code, _out, err = run_cli(capsys, "search", path, "--model", "phantom", "--no-ruler", "--points", "24")
    assert code == 2 and "Traceback" not in err
    assert "ruined.svs is damaged" in err and "Copy the file again" in err
    # too few points for the slide's own rule (8 failed reads): most points damaged is said the same way
    with pytest.raises(ScaleSearchError, match=r"ruined\.svs is damaged: 4 of the 4 points read touch tiles that "
                       r"do not decode\. Copy the file again"):
        find_scale(path, model="phantom", points=4, ruler=False)


def test_cohort_with_a_damaged_slide_answers_for_both(phantom_svs: Path, tmp_path: Path) -> None:
    damaged = damaged_copy(phantom_svs, tmp_path / "damaged.svs", "zeros")
    summary = run_cohort([{"slide": str(phantom_svs), "id": "clean"}, {"slide": str(damaged), "id": "damaged"}],
                         model_spec="phantom", out_dir=tmp_path / "cohort", workers=1, figures=False,
                         search=SearchConfig(points=24, ruler=False))
    rows = {r["id"]: r for r in summary.rows}
    assert rows["clean"]["flag"] == rows["damaged"]["flag"] == "OK", rows
    assert "points skipped: their patches touch damaged tiles" in rows["damaged"]["message"]
    assert "damaged" not in rows["clean"]["message"]


# ------------------------------------------------------------------------ 5: small biopsies on much glass

BIOPSY_SIDE, BIOPSY_MPP = 8192, 0.5
FRAGMENTS_AT = ((1500, 2000), (5000, 4800))  # level-0 (x, y) of the two fragments' corners
FRAGMENT_WH = (1200, 1000)  # 0.6 x 0.5 mm at 0.5 um/px: with both, 3.6% of the slide is tissue


def _biopsy_slide(path: Path, fragments: list[np.ndarray]) -> Path:
    canvas = np.full((BIOPSY_SIDE, BIOPSY_SIDE, 3), 255, np.uint8)
    for (x, y), tissue in zip(FRAGMENTS_AT, fragments, strict=True):
        canvas[y : y + tissue.shape[0], x : x + tissue.shape[1]] = tissue
    return write_slide(path, canvas, mpp=BIOPSY_MPP, fmt="svs")


@pytest.fixture(scope="module")
def phantom_biopsy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Issue 28 item 5's slide: 8192 x 8192 px at 0.5 um/px (correct), two phantom tissue fragments of 0.6 x 0.5 mm
    on glass."""
    from histoscale.phantom import PhantomSpec, render_region

    spec = PhantomSpec(width_um=BIOPSY_SIDE * BIOPSY_MPP, height_um=BIOPSY_SIDE * BIOPSY_MPP, seed=5)
    fragments = [render_region(spec, x * BIOPSY_MPP, y * BIOPSY_MPP, FRAGMENT_WH, BIOPSY_MPP) for x, y in FRAGMENTS_AT]
    return _biopsy_slide(tmp_path_factory.mktemp("biopsy") / "biopsy.svs", fragments)


@pytest.mark.parametrize(("points", "seed"), [(20, 0), (20, 1), (20, 2), (60, 0)])
def test_small_phantom_biopsy_is_not_flagged(phantom_biopsy: Path, points: int, seed: int) -> None:
    """The issue's inputs (the phantom model, as when it was filed): seeds 0 and 1 were +0.8 / +0.9 steps and seed 2
    MISMATCH (implied 0.629) at 20 points, +0.6 to +1.0 at 60. A correct small biopsy is never MISMATCH; where the
    model's answer is off by more than a step, the status says why it does not assert it."""
    result = find_scale(phantom_biopsy, "phantom", points=points, seed=seed)
    check = result.check
    off = math.log2(check.implied_mpp / BIOPSY_MPP) / 0.25
    assert check.status != "MISMATCH", (off, check.reason)
    assert abs(off) <= 2.0, off
    if check.status == "OK":
        lo, hi = check.implied_interval
        assert lo <= BIOPSY_MPP <= hi or abs(off) <= 1.0
    else:
        assert check.status == "INCONCLUSIVE" and check.reason


def test_small_phantom_biopsy_model_alone_is_not_flagged_on_the_issues_seeds(phantom_biopsy: Path) -> None:
    """Without the nuclei's ruler the model's own interval must hold the declared value on the issue's seeds."""
    for seed in (0, 1, 2):
        check = find_scale(phantom_biopsy, "phantom", points=20, seed=seed, ruler=False).check
        assert check.status != "MISMATCH", (seed, check.implied_mpp, check.reason)


def test_small_real_biopsy_is_not_flagged_by_the_default_model(tmp_path: Path) -> None:
    """The same kind on real tissue: two fragments of the CMU-1 region (the packaged demo image, 0.499 um/px) on
    8192 px of glass, declared 0.5; the default model and search, 20 points, three seeds."""
    from importlib.resources import files

    with open_slide(Path(str(files("histoscale") / "assets" / "demo" / "cmu-1-small-region.svs"))) as cmu:
        w, h = FRAGMENT_WH
        fragments = [cmu.read_level(0, xy, (w, h)) for xy in ((900, 1950), (750, 750))]
    path = _biopsy_slide(tmp_path / "real-biopsy.svs", fragments)
    for seed in (0, 1, 2):
        result = find_scale(path, points=20, seed=seed)
        assert result.check.status != "MISMATCH", (seed, result.check.implied_mpp, result.check.reason)
        assert abs(math.log2(result.check.implied_mpp / BIOPSY_MPP)) <= 0.5, (seed, result.check.implied_mpp)


# ------------------------------------------------------------------------------------------------- also


@pytest.mark.parametrize("backend", ["openslide", "tiffslide", "tifffile"])
def test_aperio_mpp_with_a_decimal_comma(tmp_path: Path, backend: str) -> None:
    from _wsi_files import write_aperio

    path = write_aperio(tmp_path / "comma.svs", mpp="0,500000")  # type: ignore[arg-type]
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp == pytest.approx(0.5)


def test_rectangular_pixels_are_named_so_with_the_resampling(tmp_path: Path) -> None:
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(path, np.full((256, 256, 3), 220, np.uint8), tile=(128, 128), photometric="rgb",
                     resolution=(40000, 20000), resolutionunit="CENTIMETER")  # 0.25 um wide, 0.5 um tall
    with open_slide(path) as slide, pytest.raises(SlideError) as err:
        slide.level0_mpp()
    message = str(err.value)
    assert "rectangular pixels, 0.25 um wide and 0.5 um tall" in message and "contradictory" not in message
    assert "square pixels of 0.5 um (e.g. vips resize SLIDE OUT.tif 0.5 --vscale 1)" in message


@pytest.mark.parametrize("keep", [4, 8, 100])
def test_tiff_cut_short_mid_write_says_what_is_wrong(tmp_path: Path, keep: int) -> None:
    whole = write_slide(tmp_path / "whole.svs", tissue_blocks(512, 128, 1), mpp=0.5, fmt="svs", tile=128)
    path = tmp_path / "cut.svs"
    path.write_bytes(whole.read_bytes()[:keep])
    with pytest.raises(SlideError) as err:
        open_slide(path)
    message = str(err.value)
    assert str(path) in message and ("damaged TIFF file: its header points to" in message or "cannot be read" in message)
    assert "copy it again" in message or "re-copy the file" in message
