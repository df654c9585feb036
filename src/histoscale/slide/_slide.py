"""The open slide: pyramid geometry, resolution, white-padded reads at physical scale, thumbnails."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from histoscale.errors import ConfigError, DamagedTileError, MissingMppError, SlideError
from histoscale.patches import resample
from histoscale.slide._backends import Backend
from histoscale.slide._scn import SlideRegion
from histoscale.slide._tiles import CutTiles
from histoscale.slide.resolution import Candidate, Resolution, as_positive

__all__ = ["Slide"]

logger = logging.getLogger(__name__)

_LEVEL_MATCH_RTOL = 1e-3
_STRIP_BYTES = 64 * 2**20  # bounded memory when reading whole levels (thumbnails)
# A slide is called damaged, not merely holding a few damaged tiles, once this many reads failed and they are more
# than half of its reads so far: a search then stops instead of skipping most of its points.
_DAMAGED_MIN_FAILED = 8
_DAMAGE_BLOCK = 256  # px of a level read one by one around damaged tiles in a thumbnail (a common tile side)


class Slide:
    """An open slide: pyramid geometry, resolution, and white-padded reads. Use as a context manager."""

    def __init__(
        self,
        path: Path,
        impl: Backend,
        resolution: Resolution | None,
        *,
        candidates: tuple[Candidate, ...] = (),
        associated: tuple[str, ...] = (),
        regions: tuple[SlideRegion, ...] = (),
        region: int | None = None,
        cut_tiles: CutTiles | None = None,
    ) -> None:
        self.path = path
        self._impl: Backend | None = impl
        self.backend: str = impl.name
        self.level_dimensions: tuple[tuple[int, int], ...] = impl.level_dimensions
        self.level_downsamples: tuple[float, ...] = impl.level_downsamples
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.level_count: int = len(self.level_dimensions)
        self.resolution = resolution
        #: every pixel-size candidate the file carries, best first, rejected ones with their reason
        self.resolution_candidates: tuple[Candidate, ...] = candidates
        #: names of the associated images (label, macro, thumbnail, ...) that are not the slide
        self.associated_images: tuple[str, ...] = associated
        #: the scanned regions of a Leica SCN (empty for other files), and the index of the one read (None: every
        #: region at once, placed on the glass's coordinates, or a file without regions)
        self.regions: tuple[SlideRegion, ...] = regions
        self.region: int | None = region
        self.objective_power: float | None = impl.objective_power
        self.vendor: str | None = impl.vendor
        self.properties: Mapping[str, str] = MappingProxyType(dict(impl.properties))
        self._thumbnails: dict[int, tuple[np.ndarray, float]] = {}
        self._cut_tiles = cut_tiles  # tiles whose data stops short decode as grey without an error: checked first
        self._reads = 0
        self._failed_reads = 0
        #: the damaged tiles reads have met, as (level, x, y, width, height) in pixels of that level (the whole
        #: box read where the reader cannot say which tile), in the order met
        self.damaged_tiles: list[tuple[int, int, int, int, int]] = []

    # -- lifecycle
    def close(self) -> None:
        """Release the backend (idempotent)."""
        if self._impl is not None:
            self._impl.close()
            self._impl = None
        if self._cut_tiles is not None:
            self._cut_tiles.close()
        self._thumbnails.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions={self.dimensions}, "
            f"levels={self.level_count}, mpp={self.mpp})"
        )

    # -- resolution
    @property
    def mpp(self) -> float | None:
        """Level-0 um/px (geometric mean of x and y), or None when the slide declares none."""
        return self.resolution.mpp if self.resolution is not None else None

    def level0_mpp(self) -> float:
        """The one um/px that converts physical scales on this slide (both axes), for :mod:`histoscale.units`.

        Raises:
            MissingMppError: the slide has no resolution (and none was passed to :func:`open_slide`).
            SlideError: the slide declares rectangular pixels (x and y um/px differ by more than
                ``ANISOTROPY_TOLERANCE``) and no override was given: one number cannot convert both axes.
        """
        res = self.resolution
        if res is None:
            found = "; ".join(str(c) for c in self.resolution_candidates)
            raise MissingMppError(
                f"slide {self.path} has no um/px metadata{f' (found only: {found})' if found else ''}: give it "
                "(CLI: --slide-mpp; Python: slide_mpp=...) "
                "or use relative downsample units (--relative; Python: relative=True)"
            )
        if res.is_anisotropic and res.source != "override":
            hscale, vscale = min(1.0, res.mpp_x / res.mpp_y), min(1.0, res.mpp_y / res.mpp_x)
            raise SlideError(
                f"slide {self.path} has rectangular pixels, {res.mpp_x:.4g} um wide and {res.mpp_y:.4g} um tall "
                f"({res.source}), and histoscale cannot read square fields of view in um from them: resample it to "
                f"square pixels of {max(res.mpp_x, res.mpp_y):.4g} um (e.g. vips resize SLIDE OUT.tif {hscale:.6g} "
                f"--vscale {vscale:.6g}) and search that, or search in downsample units (--relative; Python: "
                "relative=True), whose fields of view are square in pixels, not in um"
            )
        return res.mpp

    def downsample_for(self, mpp: float) -> float:
        """Level-0 pixels per output pixel for an output resolution of ``mpp`` um/px (see :meth:`level0_mpp`)."""
        if as_positive(mpp) is None:
            raise ConfigError(f"mpp must be a positive number of um/px, got {mpp!r}")
        return float(mpp) / self.level0_mpp()

    def best_level(self, downsample: float) -> int:
        """Index of the coarsest level that is still at least as fine as ``downsample`` (level-0 px per
        output px), with a 1e-3 relative tolerance so a level reported as 3.9999 serves 4."""
        best, best_ds = 0, self.level_downsamples[0]
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1.0 + _LEVEL_MATCH_RTOL) and d > best_ds:
                best, best_ds = i, d
        return best

    # -- pixels
    def _backend(self) -> Backend:
        if self._impl is None:
            raise SlideError(f"slide {self.path} is closed")
        return self._impl

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < self.level_count:
            raise ConfigError(f"level {level} out of range for {self.path} ({self.level_count} levels)")

    def _read_level_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 box at integer pixels of ``level``; white outside the level."""
        impl = self._backend()
        out = np.full((h, w, 3), 255, np.uint8)
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        self._reads += 1
        try:
            if self._cut_tiles is not None:
                self._cut_tiles.check(level, x0, y0, x1 - x0, y1 - y0)
            box = impl.read_px(level, x0, y0, x1 - x0, y1 - y0)
        except DamagedTileError as err:
            raise self._damaged(err) from err
        except OSError as err:  # the file itself (gone, unreadable), not its data
            raise SlideError(
                f"failed to read slide {self.path} at level {level}, box x={x0} y={y0} w={x1 - x0} h={y1 - y0} "
                f"(level px): {type(err).__name__}: {err}"
            ) from err
        except Exception as err:  # the readers' decoders raise their own classes on data that does not decode
            damaged = DamagedTileError(
                f"slide {self.path} has damaged data at level {level} in box x={x0} y={y0} w={x1 - x0} h={y1 - y0} "
                f"(level px): {type(err).__name__}: {err}", level=level, box=(x0, y0, x1 - x0, y1 - y0),
            )
            raise self._damaged(damaged) from err
        out[y0 - y : y1 - y, x0 - x : x1 - x] = box
        return out

    def _damaged(self, err: DamagedTileError) -> SlideError:
        """Record a damaged tile; the error to raise: ``err``, or, once most reads fail, one that the file is
        damaged."""
        tile = (err.level, *err.box)
        if tile not in self.damaged_tiles:
            self.damaged_tiles.append(tile)
        self._failed_reads += 1
        failed = self._failed_reads
        if failed >= _DAMAGED_MIN_FAILED and failed > self._reads / 2:
            return SlideError(
                f"slide {self.path} is damaged: {failed} of its {self._reads} reads so far met damaged tiles "
                f"(first: {err}). Copy the file again and compare its checksum with the source's, or export or scan "
                "it again"
            )
        return err

    def read_level(self, level: int, location_xy: tuple[float, float], size_wh: tuple[int, int]) -> np.ndarray:
        """Raw pixels of one level as (h, w, 3) uint8, white outside the slide.

        ``location_xy`` is the top-left in level-0 px (OpenSlide's rule); it is snapped to the nearest
        whole pixel of ``level`` (OpenSlide would otherwise interpolate a sub-pixel shift, slower and
        blurred). ``size_wh`` is in pixels of ``level``.
        """
        self._check_level(level)
        w, h = int(size_wh[0]), int(size_wh[1])
        if w < 0 or h < 0:
            raise ConfigError(f"read size must be non-negative, got {(w, h)}")
        ds = self.level_downsamples[level]
        return self._read_level_px(level, round(location_xy[0] / ds), round(location_xy[1] / ds), w, h)

    def read_region_at(
        self,
        center_xy: tuple[float, float],
        size_px: int | tuple[int, int],
        *,
        mpp: float | None = None,
        downsample: float | None = None,
    ) -> np.ndarray:
        """Field of view centred on ``center_xy`` (level-0 px, continuous) as (h, w, 3) uint8.

        Exactly one of ``mpp`` (um/px of the output) or ``downsample`` (level-0 px per output px).
        The output is exactly ``size_px`` = (w, h) (or w = h = int) pixels and covers
        ``w*downsample x h*downsample`` level-0 px. The box is read from :meth:`best_level` (the
        level just finer than asked) on whole level pixels, then resampled with :func:`resample`.

        Precision: each edge of the field of view is within 0.5 px of the chosen level (hence at most
        0.5 output px, less when the level is finer than the output) of its exact position; on
        OpenSlide levels with a non-integer downsample add < 0.5/downsample level px.
        """
        if (mpp is None) == (downsample is None):
            raise ConfigError("read_region_at needs exactly one of mpp= (um/px) or downsample=")
        if isinstance(size_px, (int, np.integer)):
            ow = oh = int(size_px)
        else:
            ow, oh = int(size_px[0]), int(size_px[1])
        if ow < 1 or oh < 1:
            raise ConfigError(f"region size must be positive, got {(ow, oh)}")
        d = self.downsample_for(mpp) if mpp is not None else as_positive(downsample)
        if d is None:
            raise ConfigError(f"downsample must be a positive number, got {downsample!r}")
        level = self.best_level(d)
        ds = self.level_downsamples[level]
        cx, cy = float(center_xy[0]), float(center_xy[1])
        # field of view in continuous level coordinates
        fx0, fx1 = (cx - ow * d / 2) / ds, (cx + ow * d / 2) / ds
        fy0, fy1 = (cy - oh * d / 2) / ds, (cy + oh * d / 2) / ds
        bx0, by0 = math.floor(fx0 + 0.5), math.floor(fy0 + 0.5)
        bw, bh = max(1, math.floor(fx1 + 0.5) - bx0), max(1, math.floor(fy1 + 0.5) - by0)
        box = self._read_level_px(level, bx0, by0, bw, bh)
        return resample(box, (ow, oh))

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longer side is ``max_side`` (never enlarged) and its downsample
        (level-0 px per thumbnail px, exact along the longer side). Read from the coarsest adequate
        level in horizontal strips (bounded memory), then resampled.

        A pyramid level between ``max_side / 2`` and ``max_side`` is returned as it is (a smaller
        thumbnail): the next finer level would cost 16x the pixels for a picture barely sharper.

        Read once per ``max_side`` and kept until the slide is closed (the tissue mask and the report's overview
        use the same one): the array is read-only."""
        if max_side < 1:
            raise ConfigError(f"max_side must be positive, got {max_side}")
        max_side = int(max_side)
        if max_side not in self._thumbnails:
            thumb, scale = self._read_thumbnail(max_side)
            thumb.flags.writeable = False
            self._thumbnails[max_side] = (thumb, scale)
        return self._thumbnails[max_side]

    def _read_thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        w0, h0 = self.dimensions
        scale = max(1.0, max(w0, h0) / max_side)
        for lw, lh in reversed(self.level_dimensions):
            if max(lw, lh) >= max_side / 2:
                scale = max(scale, max(w0, h0) / max(lw, lh))
                break
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        level = self.best_level(scale)
        lw, lh = self.level_dimensions[level]
        out = np.empty((th, tw, 3), np.uint8)
        level_rows = max(1, _STRIP_BYTES // (4 * lw))
        out_rows = max(1, int(level_rows * th / lh))
        for r0 in range(0, th, out_rows):
            r1 = min(th, r0 + out_rows)
            y0, y1 = round(r0 * lh / th), round(r1 * lh / th)
            try:
                block = self._read_level_px(level, 0, y0, lw, max(1, y1 - y0))
            except DamagedTileError:
                block = self._read_around_damage(level, y0, max(1, y1 - y0))
            out[r0:r1] = resample(block, (tw, r1 - r0))
        return out, scale

    def _read_around_damage(self, level: int, y: int, h: int) -> np.ndarray:
        """The rows ``y .. y + h`` of ``level`` read in blocks, damaged blocks left white (glass: no point is placed
        there), so that a few damaged tiles do not cost the slide its thumbnail and tissue mask."""
        lw = self.level_dimensions[level][0]
        out = np.full((h, lw, 3), 255, np.uint8)
        side = _DAMAGE_BLOCK
        for by in range(0, h, side):
            for bx in range(0, lw, side):
                bw, bh = min(side, lw - bx), min(side, h - by)
                try:
                    out[by : by + bh, bx : bx + bw] = self._read_level_px(level, bx, y + by, bw, bh)
                except DamagedTileError as err:
                    logger.warning("%s; the thumbnail shows it as glass", err)
        return out

