"""Direct tile decoding of tiled TIFF pyramids (SVS, plain tiled TIFF): each tile a box touches is read with one
``os.pread`` and decoded by tifffile's codec (imagecodecs, GIL released), without OpenSlide's ARGB conversion and
compositing; less than half the CPU of ``openslide.read_region`` per box on JPEG tiles (BENCHMARKS.md, "Speed").

It serves a level only where it gives OpenSlide's pixels: the level's downsample is a whole number (elsewhere
OpenSlide interpolates the sub-pixel offset of a level-0 origin), it is a tiled, chunky, 8-bit RGB (or JPEG YCbCr)
page of the file with exactly the level's size and no empty tile, and its tile with the most data decodes to exactly
what OpenSlide reads there (checked once, at the first read). Other levels, and other files, keep OpenSlide.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscale.errors import DamagedTileError

__all__ = ["CutTiles", "MissingTiles", "TileReader"]

logger = logging.getLogger(__name__)

_PROBES = 3  # the fullest tiles tried, in turn, for the one that checks a level against the reader
_RGB, _YCBCR = 2, 6  # TIFF photometric interpretations
_JPEG = (6, 7, 33007)  # TIFF compressions whose YCbCr the JPEG codec itself converts (old JPEG, JPEG, Aperio)
# Compressions whose tiles are codestreams ending with the marker FFD9 (JPEG EOI, JPEG 2000 EOC), which the coded
# data cannot contain (JPEG stuffs a 0 after every FF; JPEG 2000 never lets FF precede a byte above 8F): JPEG,
# Aperio JPEG, Aperio JPEG 2000 (YCbCr, RGB), JPEG 2000.
_ENDS_WITH_FFD9 = (7, 33007, 33003, 33005, 34712)
_TAIL = 16  # bytes searched for the end marker: some writers pad a codestream


def _damaged_tile(
    path: Path, level: int, index: int, across: int, tile_w: int, tile_h: int, what: str,
) -> DamagedTileError:
    """The error for tile ``index`` of ``level`` (``across`` tiles a row); ``what`` follows the tile's place and
    says what is wrong with it."""
    x, y = (index % across) * tile_w, (index // across) * tile_h
    return DamagedTileError(
        f"slide {path} has damaged data at level {level} in tile {index} (column {index % across}, row "
        f"{index // across}; x={x} y={y}, {tile_w}x{tile_h} level px){what}", level=level, box=(x, y, tile_w, tile_h),
    )


@dataclass(frozen=True)
class _Level:
    page: Any  # tifffile.TiffPage: its ``decode`` closure
    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int  # tiles per row
    offsets: tuple[int, ...]
    counts: tuple[int, ...]


class TileReader:
    """Boxes of a tiled TIFF's levels, tile by tile. Thread-safe: positioned reads, no shared file offset."""

    def __init__(self, path: Path, levels: dict[int, _Level], tiff: Any) -> None:
        self.path = path
        self._levels = levels
        #: the level indices this reader serves
        self.levels = frozenset(levels)
        self._tiff = tiff
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def open(
        cls, path: Path, level_dimensions: tuple[tuple[int, int], ...], level_downsamples: tuple[float, ...],
        reference: Callable[[int, int, int, int, int], np.ndarray],
    ) -> TileReader | None:
        """The reader of the levels of ``path`` with a whole-number downsample when each matches a tiled page and
        decodes as ``reference(level, x, y, w, h)`` (the current backend's read) does on its fullest tile; None when
        one does not, or none has a whole downsample (the reason is logged)."""
        import tifffile

        try:
            tiff = tifffile.TiffFile(path)
        except Exception as err:  # noqa: BLE001 - not ours to judge: the current backend keeps reading
            logger.debug("direct tile reads off for %s: %s", path, err)
            return None
        reader: TileReader | None = None
        try:
            whole = [i for i, ds in enumerate(level_downsamples) if float(ds).is_integer()]
            levels = {i: cls._level(tiff, *level_dimensions[i]) for i in whole}
            if levels and all(level is not None for level in levels.values()):
                reader = cls(path, levels, tiff)  # type: ignore[arg-type]
                if not all(reader._agrees(i, reference) for i in levels):
                    reader.close()
                    reader = None
            else:
                logger.debug("direct tile reads off for %s: a level is not a plain tiled 8-bit RGB page", path)
        except Exception as err:  # noqa: BLE001 - an unusual file keeps its usual reader
            logger.debug("direct tile reads off for %s: %s: %s", path, type(err).__name__, err)
            if reader is not None:
                reader.close()
            reader = None
        if reader is None:
            tiff.close()
        return reader

    @staticmethod
    def _level(tiff: Any, width: int, height: int) -> _Level | None:
        for page in tiff.pages:
            if (int(page.imagewidth), int(page.imagelength)) != (width, height) or not page.is_tiled:
                continue
            plain = (
                page.planarconfig == 1 and page.bitspersample == 8 and page.samplesperpixel == 3
                and not page.extrasamples and page.imagedepth == 1
                and (page.photometric == _RGB or (page.photometric == _YCBCR and page.compression in _JPEG))
            )
            counts = tuple(int(c) for c in page.databytecounts)
            if not plain or not counts or min(counts) == 0:
                return None
            return _Level(
                page, width, height, int(page.tilewidth), int(page.tilelength),
                -(-width // int(page.tilewidth)), tuple(int(o) for o in page.dataoffsets), counts,
            )
        return None

    def _agrees(self, level: int, reference: Callable[[int, int, int, int, int], np.ndarray]) -> bool:
        lv = self._levels[level]
        # the fullest tile that decodes: a damaged one says nothing of the others (and would put OpenSlide, the
        # reference, in its error state)
        for index in np.argsort(lv.counts)[::-1][:_PROBES]:
            x, y = (int(index) % lv.across) * lv.tile_w, (int(index) // lv.across) * lv.tile_h
            w, h = min(lv.tile_w, lv.width - x), min(lv.tile_h, lv.height - y)
            try:
                ours = self.read(level, x, y, w, h)
            except DamagedTileError:
                continue
            break
        else:
            return False
        same = bool(np.array_equal(ours, reference(level, x, y, w, h)))
        if not same:
            logger.debug("direct tile reads off for %s: level %d decodes differently from the reader", self.path, level)
        return same

    def _tile(self, level: int, lv: _Level, index: int) -> np.ndarray:
        data = os.pread(self._fd, lv.counts[index], lv.offsets[index])
        try:
            tile = lv.page.decode(data, index, jpegtables=lv.page.jpegtables)[0]
        except Exception as err:  # imagecodecs raises its own error classes per codec
            raise _damaged_tile(self.path, level, index, lv.across, lv.tile_w, lv.tile_h,
                                f", which does not decode: {type(err).__name__}: {err}") from err
        return tile.reshape(tile.shape[-3:])  # (1, 1, h, w, 3) or (h, w, 3) by tifffile version

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """An in-bounds box in integer pixels of ``level`` (one of :attr:`levels`) as (h, w, 3) uint8."""
        lv = self._levels[level]
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(y // lv.tile_h, (y + h - 1) // lv.tile_h + 1):
            for tx in range(x // lv.tile_w, (x + w - 1) // lv.tile_w + 1):
                tile = self._tile(level, lv, ty * lv.across + tx)
                x0, y0 = tx * lv.tile_w, ty * lv.tile_h
                ax0, ay0 = max(x, x0), max(y, y0)
                ax1, ay1 = min(x + w, x0 + lv.tile_w), min(y + h, y0 + lv.tile_h)
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tile[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, :3]
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._tiff.close()


class MissingTiles:
    """The tiles a TIFF's levels do not store (offset and byte count 0: a sparse writer leaves glass out).

    tifffile (hence tiffslide) reads a missing tile as 0, black; OpenSlide as transparent, which reads as white.
    A missing tile is glass, so the tifffile-based backends paint it white: tissue detection, crops and
    ``classify`` then see glass on every backend.
    """

    def __init__(self, grids: dict[int, tuple[int, int, np.ndarray]]) -> None:
        #: level -> (tile width, tile height, (rows, columns) bool grid, True where the tile is missing)
        self._grids = grids

    @classmethod
    def find(cls, series: Any, level_dimensions: tuple[tuple[int, int], ...]) -> MissingTiles | None:
        """The missing tiles of each level of a tifffile series (its ``levels`` are the slide's, in order); None
        when every tile is stored."""
        grids: dict[int, tuple[int, int, np.ndarray]] = {}
        for i, (lvl, (width, height)) in enumerate(zip(series.levels, level_dimensions)):
            page = lvl.keyframe
            if not page.is_tiled:
                continue
            tw, th = int(page.tilewidth), int(page.tilelength)
            rows, cols = -(-height // th), -(-width // tw)
            counts = np.asarray(page.databytecounts)
            if counts.size != rows * cols:  # planar samples or depth: not a layout a brightfield slide has
                continue
            empty = counts.reshape(rows, cols) == 0
            if empty.any():
                grids[i] = (tw, th, empty)
        return cls(grids) if grids else None

    def paint(self, level: int, x: int, y: int, box: np.ndarray) -> np.ndarray:
        """``box`` ((h, w, 3) uint8 read at ``x, y`` of ``level``) with its missing tiles' pixels white."""
        if level not in self._grids:
            return box
        tw, th, empty = self._grids[level]
        h, w = box.shape[:2]
        ty0, tx0 = y // th, x // tw
        hits = np.argwhere(empty[ty0 : (y + h - 1) // th + 1, tx0 : (x + w - 1) // tw + 1])
        if hits.size == 0:
            return box
        out = box if box.flags.writeable else box.copy()
        for ty, tx in hits + (ty0, tx0):
            y0, x0 = max(ty * th - y, 0), max(tx * tw - x, 0)
            out[y0 : (ty + 1) * th - y, x0 : (tx + 1) * tw - x] = 255
        return out



class CutTiles:
    """Tiles whose stored data stops before their codestream's end marker: a copy, or a writer, that lost the end
    of a tile. libjpeg-turbo decodes such a tile as far as its data goes and fills the rest with grey, on every
    backend and without an error; this check reads the last bytes of each tile a read touches (once per tile) and
    reports a cut one as damaged, naming it.
    """

    def __init__(self, path: Path, grids: dict[int, tuple[int, int, int, np.ndarray, np.ndarray]]) -> None:
        #: level -> (tile width, tile height, tiles per row, offsets, byte counts)
        self._grids = grids
        self._path = path
        self._fd = -1  # opened at the first check: a slide that is never read holds no descriptor for it
        self._whole: set[tuple[int, int]] = set()  # (level, tile) found whole
        self._probed: set[int] = set()  # levels whose writer was checked to end its tiles with the marker
        self._lock = threading.Lock()

    @classmethod
    def find(cls, path: Path, series: Any, level_dimensions: tuple[tuple[int, int], ...]) -> CutTiles | None:
        """The check for the levels of a tifffile ``series`` that are the slide's levels (same sizes, in order)
        and hold tiles of a compression ending with FFD9; None when there are none."""
        grids: dict[int, tuple[int, int, int, np.ndarray, np.ndarray]] = {}
        if len(series.levels) != len(level_dimensions):
            return None
        for i, (lvl, (width, height)) in enumerate(zip(series.levels, level_dimensions)):
            page = lvl.keyframe
            if (int(page.imagewidth), int(page.imagelength)) != (width, height) or not page.is_tiled:
                continue
            if page.compression not in _ENDS_WITH_FFD9:
                continue
            tw, th = int(page.tilewidth), int(page.tilelength)
            counts = np.asarray(page.databytecounts, np.int64)
            if counts.size != -(-height // th) * -(-width // tw):
                continue
            grids[i] = (tw, th, -(-width // tw), np.asarray(page.dataoffsets, np.int64), counts)
        return cls(path, grids) if grids else None

    def _ends(self, offset: int, count: int) -> bool:
        tail = min(count, _TAIL)
        return b"\xff\xd9" in os.pread(self._fd, tail, offset + count - tail)

    def _writer_ends_tiles(self, grid: tuple[int, int, int, np.ndarray, np.ndarray]) -> bool:
        """Whether the writer of a level ends its tiles with the marker, as the codecs' specifications ask: its
        fullest tiles, the least likely to be damaged, tell (a writer that does not would have every tile flagged)."""
        _, _, _, offsets, counts = grid
        fullest = np.argsort(counts)[::-1][:_PROBES]
        return any(self._ends(int(offsets[i]), int(counts[i])) for i in fullest if counts[i] > 0)

    def check(self, level: int, x: int, y: int, w: int, h: int) -> None:
        """Raise :class:`DamagedTileError` for the first cut tile of ``level`` that the in-bounds box touches."""
        grid = self._grids.get(level)
        if grid is None:
            return
        with self._lock:  # reads come from several threads; the first of a level probes its writer
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_RDONLY)
            if level not in self._probed:
                self._probed.add(level)
                if not self._writer_ends_tiles(grid):
                    logger.debug("cut-tile check off for level %d of %s: its fullest tiles end without FFD9", level,
                                 self._path)
                    del self._grids[level]
            if level not in self._grids:
                return
        tw, th, across, offsets, counts = grid
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                index = ty * across + tx
                count = int(counts[index])
                if count == 0 or (level, index) in self._whole:  # a missing tile is glass, not damage
                    continue
                if not self._ends(int(offsets[index]), count):
                    raise _damaged_tile(self._path, level, index, across, tw, th, f": its {count} bytes do not end "
                                        "with the codestream's end marker (cut short or overwritten)")
                self._whole.add((level, index))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
