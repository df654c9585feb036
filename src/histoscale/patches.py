"""Multiscale patches: for one point, N concentric patches at N scales, all resampled to the model's input size.

Each point is read once per group of nearby scales (one read for a usual grid of up to 2 octaves), at the group's
widest field of view, from the pyramid level just finer than its finest scale; the patches are crops of that read
(a :class:`Region`), each shrunk with anti-aliasing, here on the CPU, or on the model's device for a model that
resamples there. Reading the next points overlaps inference through a small thread pool (OpenSlide and tifffile
release the GIL while decoding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import cv2
import numpy as np

from histoscale.errors import ConfigError

__all__ = [
    "MAX_SCALE_RATIO_PER_READ", "WHOLE_FACTOR_TAPS", "LevelReader", "Region", "filter_alike", "is_whole_factor",
    "iter_multiscale", "read_multiscale", "read_regions", "resample",
]

T = TypeVar("T")


class LevelReader(Protocol):
    """What patches need of a slide (:class:`histoscale.slide.Slide` is one): its pyramid and level reads."""

    level_downsamples: tuple[float, ...]

    def best_level(self, downsample: float) -> int: ...

    def read_level(self, level: int, location_xy: tuple[float, float], size_wh: tuple[int, int]) -> np.ndarray: ...


def resample(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize ``image`` to exactly ``size_wh = (width, height)`` with anti-aliasing.

    The project's one resampler: area averaging (``cv2.INTER_AREA``) along axes that shrink, bilinear
    (``cv2.INTER_LINEAR``) along axes that grow. uint8 in, uint8 out (other cv2 dtypes pass through).
    Returns the input itself when it already has the requested size.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    if w < 1 or h < 1:
        raise ConfigError(f"resample size must be positive, got {(w, h)}")
    ih, iw = image.shape[:2]
    if (iw, ih) == (w, h):
        return image
    if (w <= iw) == (h <= ih):
        interp = cv2.INTER_AREA if w <= iw else cv2.INTER_LINEAR
        return cv2.resize(image, (w, h), interpolation=interp)
    # one axis shrinks, the other grows: shrink first with area averaging, then grow bilinearly
    if w < iw:
        image = cv2.resize(image, (w, ih), interpolation=cv2.INTER_AREA)
    else:
        image = cv2.resize(image, (iw, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


# Area averaging at a non-integer factor straddles pixel edges, which widens its kernel by 1/6 input px^2 on average
# over the phases; at a whole factor (the slide's own pixels at 1, exact 2x2 binning at 2) it does not, and those
# patches came out sharper than their neighbours and scored higher (BENCHMARKS, "Why it fails", item 1). Crops at a
# whole factor are first widened as much by a 3-tap filter of variance 1/6, so that every scale is filtered alike.
WHOLE_FACTOR_TAPS = (1 / 12, 5 / 6, 1 / 12)
_TAPS = np.array(WHOLE_FACTOR_TAPS, np.float32)


def is_whole_factor(side: int, out_px: int) -> bool:
    """Whether a crop of ``side`` px resampled to ``out_px`` is the slide's own pixels or an exact binning."""
    return side >= out_px and side % out_px == 0


def filter_alike(crop: np.ndarray, out_px: int) -> np.ndarray:
    """``crop`` (side, side, 3), filtered with :data:`WHOLE_FACTOR_TAPS` (float32) when its resampling to ``out_px``
    is by a whole factor, else unchanged."""
    if not is_whole_factor(crop.shape[0], out_px):
        return crop
    return cv2.sepFilter2D(crop.astype(np.float32), -1, _TAPS, _TAPS, borderType=cv2.BORDER_REFLECT_101)


# A wide scan (e.g. 0.5..16 level-0 px per output px) read in one piece would pull a huge level-0 region; scales
# within this ratio of each other share one read, each group from the pyramid level that serves its finest scale.
MAX_SCALE_RATIO_PER_READ = 4.0


@dataclass(frozen=True)
class Region:
    """One read of one point: ``pixels`` (h, w, 3) uint8 of one pyramid level and ``boxes`` (k, 3) int, the crops
    (left, top, side in region px) of the k scales it serves, each to be resampled to the model's input size."""

    pixels: np.ndarray
    boxes: np.ndarray

    def patches(self, out_px: int, out: np.ndarray | None = None) -> np.ndarray:
        """The k patches (k, out_px, out_px, 3) uint8, resampled on the CPU with :func:`resample` (into ``out``),
        crops at a whole factor filtered alike first (:func:`filter_alike`)."""
        if out is None:
            out = np.empty((len(self.boxes), out_px, out_px, 3), dtype=np.uint8)
        for i, (left, top, side) in enumerate(self.boxes):
            patch = resample(filter_alike(self.pixels[top : top + side, left : left + side], out_px), (out_px, out_px))
            out[i] = np.rint(patch) if patch.dtype != np.uint8 else patch
        return out


def read_regions(slide: LevelReader, center_xy: Sequence[float], downsamples: np.ndarray, out_px: int) -> list[Region]:
    """The reads behind :func:`read_multiscale`, not resampled: for a model that resamples on its own device."""
    downsamples = np.asarray(downsamples, dtype=np.float64)
    regions = []
    start = 0
    while start < len(downsamples):
        stop = start + 1
        while stop < len(downsamples) and downsamples[stop] <= downsamples[start] * MAX_SCALE_RATIO_PER_READ * (1 + 1e-9):
            stop += 1
        regions.append(_read_group(slide, center_xy, downsamples[start:stop], out_px))
        start = stop
    return regions


def read_multiscale(slide: LevelReader, center_xy: Sequence[float], downsamples: np.ndarray, out_px: int) -> np.ndarray:
    """Patches (N, out_px, out_px, 3) uint8 centred on ``center_xy`` (level-0 px).

    ``downsamples`` (N,) ascending, level-0 px per output px: patch i spans ``out_px * downsamples[i]`` level-0 px.
    Scales within :data:`MAX_SCALE_RATIO_PER_READ` of each other are cropped from one read at the pyramid level
    just finer than the group's finest scale, so a wide range costs a few small reads, not one huge one.
    """
    patches = np.empty((len(downsamples), out_px, out_px, 3), dtype=np.uint8)
    start = 0
    for region in read_regions(slide, center_xy, downsamples, out_px):
        region.patches(out_px, patches[start : start + len(region.boxes)])
        start += len(region.boxes)
    return patches


def _read_group(slide: LevelReader, center_xy: Sequence[float], downsamples: np.ndarray, out_px: int) -> Region:
    level = slide.best_level(float(downsamples.min()))
    level_ds = float(slide.level_downsamples[level])
    cx, cy = (float(c) / level_ds for c in center_xy)  # centre in this level's px
    half = out_px * float(downsamples.max()) / level_ds / 2 + 1  # +1 px: room for rounding the crop boxes
    # Integer origin in level px, so OpenSlide reads tile-aligned at coarse levels (3-4x faster than unaligned).
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    side = math.ceil(cx + half) - x0
    region = slide.read_level(level, (round(x0 * level_ds), round(y0 * level_ds)), (side, side))
    boxes = []
    for ds in downsamples:
        r = out_px * ds / level_ds / 2
        boxes.append((round(cx - r - x0), round(cy - r - y0), max(1, round(2 * r))))
    return Region(region, np.array(boxes, dtype=np.int64).reshape(-1, 3))


def iter_multiscale(
    slide: LevelReader, centers: np.ndarray, downsamples: np.ndarray, out_px: int, *, prefetch: int = 4,
    read: Callable[[LevelReader, Sequence[float], np.ndarray, int], T] = read_multiscale,  # type: ignore[assignment]
) -> Iterator[T]:
    """Yield ``read(slide, centre, downsamples, out_px)`` (default :func:`read_multiscale`; :func:`read_regions`
    for a model that resamples on its device) for each centre in order, reading up to ``prefetch`` points ahead."""
    if prefetch <= 0:
        for c in centers:
            yield read(slide, c, downsamples, out_px)
        return
    with ThreadPoolExecutor(max_workers=min(prefetch, 2), thread_name_prefix="histoscale-read") as pool:
        pending: list[Future[T]] = []
        it = iter(centers)
        for c in it:
            pending.append(pool.submit(read, slide, c, downsamples, out_px))
            if len(pending) >= prefetch:
                break
        while pending:
            done = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(read, slide, nxt, downsamples, out_px))
            yield done.result()
