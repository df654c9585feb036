"""Generators for slide-layout tests: every file is written by tifffile/Pillow into tmp_path (small images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

PURPLE = (120, 40, 160)


def image(h: int, w: int, fill: tuple[int, int, int] = (200, 200, 200)) -> np.ndarray:
    """Mostly uniform RGB image (compresses fast) with a purple block in the upper-left quadrant."""
    a = np.empty((h, w, 3), np.uint8)
    a[...] = fill
    a[h // 4 : h // 2, w // 4 : w // 2] = PURPLE
    return a


def write_pyramid(
    path: Path,
    layout: str,
    *,
    size: int = 512,
    levels: int = 3,
    tile: int = 128,
    label_at: int | None = None,
    label_shape: tuple[int, int] = (300, 100),
    label_description: str | None = "label",
    resolution: tuple[float, float] | None = (20000, 20000),
    resolutionunit: str = "CENTIMETER",
    ome_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a tiled RGB pyramid in one of these layouts:

    * ``pages``: levels in the main IFD chain, reduced levels with NewSubfileType = 1;
    * ``pages-noflag``: same without the reduced-image bit;
    * ``subifd``: plain TIFF, reduced levels as SubIFDs of page 0;
    * ``ome``: OME-TIFF, reduced levels as SubIFDs (OME pyramid convention), pixel size in OME-XML;
    * ``ome-series``: OME-TIFF with each level as its own OME Image.

    ``label_at``: insert a stripped label page before main-chain level ``label_at`` (``levels`` = last).
    """
    lv = [image(size >> i, size >> i) for i in range(levels)]
    label = image(*label_shape, fill=(250, 250, 250))
    res = dict(resolution=resolution, resolutionunit=resolutionunit) if resolution else {}
    ome = layout.startswith("ome")
    with tifffile.TiffWriter(path, ome=ome) as tw:

        def put_label() -> None:
            tw.write(label, photometric="rgb", metadata=None, description=label_description, rowsperstrip=64)

        if layout in ("pages", "pages-noflag"):
            for i, a in enumerate(lv):
                if label_at == i:
                    put_label()
                flag = 1 if i and layout == "pages" else 0
                tw.write(a, tile=(tile, tile), photometric="rgb", metadata=None, subfiletype=flag, **res)
            if label_at == levels:
                put_label()
        elif layout in ("subifd", "ome"):
            if label_at == 0:
                put_label()
            md = ({"axes": "YXS"} | (ome_metadata or {})) if ome else None
            tw.write(lv[0], subifds=levels - 1, tile=(tile, tile), photometric="rgb", metadata=md, **res)
            for a in lv[1:]:
                tw.write(a, tile=(tile, tile), photometric="rgb", subfiletype=1, metadata=None)
            if label_at is not None and label_at > 0:
                put_label()
        elif layout == "ome-series":
            for a in lv:
                tw.write(
                    a, tile=(tile, tile), photometric="rgb", metadata={"axes": "YXS"} | (ome_metadata or {}), **res
                )
        else:
            raise ValueError(layout)
    return path


def write_aperio(path: Path, mpp: float = 0.499) -> Path:
    """Aperio SVS layout: base (tiled), thumbnail (stripped), 2 reduced levels, label, macro; 72 dpi tags."""
    lv = [image(512 >> i, 512 >> i) for i in range(3)]
    head = "Aperio Image Library v12.0.15\r\n"
    kw: dict[str, Any] = dict(photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            lv[0],
            tile=(128, 128),
            description=head + f"512x512 (128x128) RAW|AppMag = 20|MPP = {mpp}",
            resolution=(72, 72),
            resolutionunit="INCH",
            **kw,
        )
        tw.write(image(128, 128), description=head + "512x512 -> 128x128", **kw)
        for a in lv[1:]:
            tw.write(a, tile=(128, 128), description=head, **kw)
        tw.write(image(100, 90), subfiletype=1, description=head + "label 90x100", **kw)
        tw.write(image(100, 300), subfiletype=9, description=head + "macro 300x100", **kw)
    return path


def write_ome_fluorescence(path: Path, *, tiled: bool = True, size: int = 512, seed: int = 0) -> Path:
    """Fluorescence OME-TIFF: CYX, 3 channels DAPI/FITC/TRITC, uint16 holding 12-bit values, 0.5 um/px.

    ``tiled``: 128 px tiles with 2 reduced levels in SubIFDs (the planes past the first are TiffFrames once
    tifffile has read the series); else one stripped level.
    """
    data = np.random.default_rng(seed).integers(0, 4096, (3, size, size)).astype(np.uint16)
    md = {"axes": "CYX", "Channel": {"Name": ["DAPI", "FITC", "TRITC"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path, ome=True) as tw:
        if not tiled:
            tw.write(data, metadata=md, photometric="minisblack")
            return path
        tw.write(data, subifds=2, tile=(128, 128), metadata=md, photometric="minisblack")
        for i in (1, 2):
            tw.write(data[:, :: 2**i, :: 2**i], tile=(128, 128), subfiletype=1, metadata=None, photometric="minisblack")
    return path


def write_ome_zstack(path: Path, *, planes: int = 2, size: int = 512) -> Path:
    """Brightfield RGB OME-TIFF with ``planes`` focal planes (ZYXS), 0.5 um/px, 2 reduced levels in SubIFDs.

    Plane k is filled with grey ``200 + 10 k`` around the purple block of :func:`image`, so a read tells which
    plane it came from.
    """
    stack = np.stack([image(size, size, fill=(200 + 10 * k,) * 3) for k in range(planes)])
    md = {"axes": "ZYXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(stack, subifds=2, tile=(128, 128), metadata=md, photometric="rgb")
        for i in (1, 2):
            tw.write(stack[:, :: 2**i, :: 2**i], tile=(128, 128), subfiletype=1, metadata=None, photometric="rgb")
    return path


def tissue_blocks(size: int, tile: int, margin: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 glass (white) with textured pink-purple tissue on the tiles at least ``margin`` tiles
    from the border, so that every tile is either all glass or all tissue."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    a, b = margin * tile, size - margin * tile
    img[a:b, a:b] = rng.integers(90, 210, (b - a, b - a, 3), dtype=np.uint8) // np.array([1, 2, 1], np.uint8)
    return img


def level_page(tf: tifffile.TiffFile, level: int) -> Any:
    """The TiffPage of pyramid ``level`` of series 0 (main chain or SubIFD)."""
    return tf.series[0].levels[level].keyframe


def drop_tiles(path: Path, level: int, indices: list[int]) -> Path:
    """Make tiles of ``level`` missing, as a sparse writer leaves glass: TileOffsets and TileByteCounts 0."""
    with tifffile.TiffFile(path, mode="r+b") as tf:
        page = level_page(tf, level)
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        for i in indices:
            offsets[i] = counts[i] = 0
        page.tags["TileOffsets"].overwrite(offsets)
        page.tags["TileByteCounts"].overwrite(counts)
    return path


def damage_tiles(path: Path, level: int, indices: list[int], how: str, seed: int = 0) -> Path:
    """Damage the stored data of tiles of ``level`` in place: ``"cut"`` (byte count cut to a quarter, as a copy
    that lost the end of a tile), ``"zeros"`` (the data overwritten with zeros) or ``"noise"`` (random bytes
    over the second half of the data, the JPEG scan data)."""
    rng = np.random.default_rng(seed)
    with tifffile.TiffFile(path, mode="r+b") as tf:
        page = level_page(tf, level)
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        fh = tf.filehandle
        for i in indices:
            if how == "cut":
                counts[i] //= 4
            elif how == "zeros":
                fh.seek(offsets[i])
                fh.write(bytes(counts[i]))
            elif how == "noise":
                half = counts[i] // 2
                fh.seek(offsets[i] + half)
                fh.write(rng.integers(0, 256, counts[i] - half, dtype=np.uint8).tobytes())
            else:
                raise ValueError(how)
        if how == "cut":
            page.tags["TileByteCounts"].overwrite(counts)
    return path
