"""Shared fixtures. Keep each fixture small, documented, and cheap (session scope for files)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

# --------------------------------------------------------------------------------------------------
# synthetic slide (written with histoscale.slidewrite, read back by OpenSlide / tiffslide)

SYNTH_W, SYNTH_H = 2048, 1536
SYNTH_MPP = 0.5
#: name -> (x0, y0, x1, y1, rgb): saturated squares at known level-0 boxes (half-open)
SYNTH_SQUARES: dict[str, tuple[int, int, int, int, tuple[int, int, int]]] = {
    "yellow": (0, 0, 128, 128, (255, 220, 0)),  # touches the top-left corner (padding tests)
    "red": (256, 256, 512, 512, (230, 20, 20)),
    "green": (1024, 256, 1280, 512, (20, 200, 40)),
    "blue": (512, 1024, 768, 1280, (30, 40, 220)),
}
#: tissue-like pink ellipses: (cx, cy, rx, ry) in level-0 px
SYNTH_BLOBS: list[tuple[int, int, int, int]] = [(1550, 1100, 300, 200), (1150, 1000, 110, 90)]
SYNTH_PINK = (215, 130, 185)


def synthetic_image() -> np.ndarray:
    """(SYNTH_H, SYNTH_W, 3) uint8: white background, coloured squares, pink tissue-like blobs."""
    img = np.full((SYNTH_H, SYNTH_W, 3), 255, np.uint8)
    for x0, y0, x1, y1, rgb in SYNTH_SQUARES.values():
        img[y0:y1, x0:x1] = rgb
    for cx, cy, rx, ry in SYNTH_BLOBS:
        cv2.ellipse(img, (cx, cy), (rx, ry), 0, 0, 360, SYNTH_PINK, thickness=-1)
    return img


@pytest.fixture(scope="session")
def synthetic_array() -> np.ndarray:
    """The level-0 pixels of the synthetic slides (read-only)."""
    img = synthetic_image()
    img.setflags(write=False)
    return img


@pytest.fixture(scope="session")
def synthetic_slides(tmp_path_factory: pytest.TempPathFactory, synthetic_array: np.ndarray) -> dict[str, Path]:
    """The synthetic image written as ``{"svs": ..., "tiff": ..., "bare": ...}`` at 0.5 um/px, tile 256,
    levels 1/4/16 (2048x1536, 512x384, 128x96)."""
    from histoscale.slide.write import write_slide

    d = tmp_path_factory.mktemp("synthetic_slides")
    return {
        "svs": write_slide(d / "synth.svs", synthetic_array, mpp=SYNTH_MPP, fmt="svs"),
        "tiff": write_slide(d / "synth.tif", synthetic_array, mpp=SYNTH_MPP, fmt="tiff"),
        "bare": write_slide(d / "synth_bare.tif", synthetic_array, mpp=None, fmt="bare"),
    }


@pytest.fixture(scope="session")
def white_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An all-white 1024x768 SVS at 0.5 um/px (tissue mask must be empty)."""
    from histoscale.slide.write import write_slide

    d = tmp_path_factory.mktemp("white_slide")
    return write_slide(d / "white.svs", np.full((768, 1024, 3), 255, np.uint8), mpp=SYNTH_MPP, fmt="svs")


# --------------------------------------------------------------------------------------------------
# issue 12: a big plain JPEG slide (generators for small TIFF layouts are in _wsi_files.py)


@pytest.fixture(scope="session")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """13500 x 13500 RGB JPEG, JFIF density 50800 dpi (= 0.5 um/px); 2.8 MB on disk, ~0.7 GB RAM and
    ~1.6 s to write once per session."""
    from PIL import Image, ImageDraw

    path = tmp_path_factory.mktemp("bigjpeg") / "big.jpg"
    im = Image.new("RGB", (13500, 13500), (230, 225, 235))
    ImageDraw.Draw(im).rectangle((1000, 2000, 1299, 2199), fill=(120, 40, 160))  # _wsi_files.PURPLE
    im.save(path, quality=90, dpi=(50800, 50800))
    del im
    return path
