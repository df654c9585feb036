"""Sliding-window classification of a whole slide at a chosen scale: the paper's coarse segmentation map (Fig. 3).

The model sees windows of ``input_size`` px at ``downsample`` level-0 px per model px, laid on a grid of
``stride`` model px (default half a window). The class probabilities of every window (softmax of its logits) are
averaged into the grid *cells* it covers: cell ``(r, c)`` spans level-0 px
``[c * cell, (c + 1) * cell) x [r * cell, (r + 1) * cell)`` with ``cell = stride * downsample``, and a window
contributes to the cells whose centres lie inside it. Only the (rows, cols, C) probability grid lives in memory.

Background: windows whose centre is off the tissue mask are not run. Cells no window reached have probability 0
for every class, coverage 0 and class index ``-1`` ("not tissue / not classified"): the model's own background
class, if it has one, is only called on windows that the tissue mask let through. Pass ``mask=False`` to run
every window of the slide.

A segmentation model (a 1x1-convolution head) gives one answer per window, the mean of its cells' logits
(:meth:`~histoscale.models.SplitModel.patch_logits`), so the map has the window grid's resolution.

Streaming: window rows are processed top to bottom; their pixels come from a rolling band of ``input_size``
model-px rows, extended by ``stride`` new rows per window row, read from the pyramid level just finer than the
model scale in column chunks of at most ``MAX_READ_PX`` level px and resampled once (area averaging). Each
level pixel inside the tissue rows is read about once; peak memory is the band plus one chunk, whatever the
slide's size.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import Any, Literal

import numpy as np

from histoscale._progress import progress_bar
from histoscale.errors import ConfigError, MissingMppError
from histoscale.models import load_model
from histoscale.patches import resample
from histoscale.scoring import softmax
from histoscale.slide import Slide, TissueMask, open_slide, tissue_mask
from histoscale.units import check_upsampling, to_downsamples

__all__ = ["ClassMap", "class_colours", "classify_slide", "declared_mpp"]

logger = logging.getLogger(__name__)

MAX_READ_PX = 4096  # widest single read_level call, in level px (bounded memory per read)
UNKNOWN = -1  # class index of cells no window reached (off tissue)

# Fixed colours for the paper's / phantom's classes; anything else gets tab10 colours by index.
_NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "AT": (233, 150, 200),
    "BG": (190, 190, 190),
    "LP": (60, 40, 160),
    "MM": (200, 60, 90),
    "TUM": (120, 20, 70),
}
_TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def class_colours(class_names: Sequence[str]) -> list[tuple[int, int, int]]:
    """One RGB colour (0..255) per class: fixed for the paper's classes (AT BG LP MM TUM), tab10 otherwise."""
    return [_NAMED_COLOURS.get(str(n).upper(), _TAB10[i % len(_TAB10)]) for i, n in enumerate(class_names)]


@dataclass(frozen=True)
class ClassMap:
    """Class probabilities of a slide on the stride grid.

    ``probabilities`` (rows, cols, C) float32: mean softmax of the windows covering each cell (0 where none);
    ``coverage`` (rows, cols) uint16: how many windows were averaged; ``class_index`` (rows, cols) int16: the
    argmax, ``-1`` where coverage is 0. Cell ``(r, c)`` covers level-0 px ``origin + [c, c+1) * cell_px`` in x and
    likewise in y. ``scale`` is in ``units`` ("um/px" or "downsample"); ``downsample`` is level-0 px per model px.
    ``slide_mpp`` is the level-0 um/px that a um/px scale and every area in mm^2 use, ``slide_mpp_source`` where it
    came from (a metadata key, or the override's description), ``declared_mpp`` what the slide file declares (None:
    nothing), which differs from ``slide_mpp`` when an override replaced it.
    """

    probabilities: np.ndarray = field(repr=False)
    coverage: np.ndarray = field(repr=False)
    class_index: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    origin_xy: tuple[float, float]
    cell_px: float
    stride_px: int
    patch_px: int
    scale: float
    units: Literal["um/px", "downsample"]
    downsample: float
    slide_mpp: float | None
    slide_size_wh: tuple[int, int]
    slide: str = ""
    model: str = ""
    windows: int = 0
    declared_mpp: float | None = None
    slide_mpp_source: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the grid."""
        return self.class_index.shape  # type: ignore[return-value]

    @property
    def cell_um(self) -> float | None:
        """Side of one cell in um, when the slide's um/px is known."""
        return None if self.slide_mpp is None else self.cell_px * self.slide_mpp

    @property
    def mpp_replaced(self) -> bool:
        """True when the um/px used is not the one the slide declares (an override replaced it)."""
        return self.slide_mpp is not None and self.slide_mpp != self.declared_mpp

    def class_at(self, xy: np.ndarray) -> np.ndarray:
        """Class index (-1: not classified) at level-0 points ``xy`` (n, 2); points off the grid give -1."""
        xy = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        col = np.floor((xy[:, 0] - self.origin_xy[0]) / self.cell_px).astype(np.int64)
        row = np.floor((xy[:, 1] - self.origin_xy[1]) / self.cell_px).astype(np.int64)
        rows, cols = self.shape
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        out = np.full(len(xy), UNKNOWN, dtype=np.int64)
        out[inside] = self.class_index[row[inside], col[inside]]
        return out

    def cell_areas_px(self) -> np.ndarray:
        """Level-0 px^2 of each cell inside the slide (edge cells are clipped to the slide)."""
        rows, cols = self.shape
        w, h = self.slide_size_wh
        xs = np.clip(self.origin_xy[0] + np.arange(cols + 1) * self.cell_px, 0, w)
        ys = np.clip(self.origin_xy[1] + np.arange(rows + 1) * self.cell_px, 0, h)
        return np.outer(np.diff(ys), np.diff(xs))

    def class_areas(self) -> dict[str, dict[str, float | None]]:
        """Per class: level-0 px^2, mm^2 at :attr:`slide_mpp` (None without um/px) and the fraction of the
        classified area."""
        areas = self.cell_areas_px()
        classified = float(areas[self.class_index >= 0].sum())
        out: dict[str, dict[str, float | None]] = {}
        for c, name in enumerate(self.class_names):
            px2 = float(areas[self.class_index == c].sum())
            mm2 = None if self.slide_mpp is None else px2 * (self.slide_mpp * 1e-3) ** 2
            out[name] = {"area_px2": px2, "area_mm2": mm2, "fraction": px2 / classified if classified else 0.0}
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (what classify.json holds)."""
        rows, cols = self.shape
        return {
            "slide": self.slide,
            "model": self.model,
            "scale": self.scale,
            "units": self.units,
            "downsample": self.downsample,
            "slide_mpp": self.slide_mpp,  # the um/px of the scale and of every area in mm^2
            "slide_mpp_source": self.slide_mpp_source,
            "declared_mpp": self.declared_mpp,
            "slide_mpp_replaced": self.mpp_replaced,
            "slide_size_wh": list(self.slide_size_wh),
            "patch_px": self.patch_px,
            "stride_px": self.stride_px,
            "grid_rows_cols": [rows, cols],
            "origin_xy_level0": list(self.origin_xy),
            "cell_px_level0": self.cell_px,
            "cell_um": self.cell_um,
            "windows": self.windows,
            "classified_cells": int((self.class_index >= 0).sum()),
            "class_names": list(self.class_names),
            "classes": self.class_areas(),
            "timings_s": self.timings,
        }


# ----------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------
def _resolve_downsample(
    slide: Slide, model: Any, mpp: float | None, downsample: float | None
) -> tuple[float, float, Literal["um/px", "downsample"]]:
    """(level-0 px per model px, scale value, units) from the arguments, or the model's training um/px."""
    if mpp is not None and downsample is not None:
        raise ConfigError("give the scale either as mpp= (um/px) or as downsample=, not both")
    if downsample is not None:
        if not (math.isfinite(downsample) and downsample > 0):
            raise ConfigError(f"downsample must be a positive number of level-0 px per model px, got {downsample}")
        ds = np.array([float(downsample)])
        check_upsampling(ds, ds, "downsample", str(slide.path))
        return float(downsample), float(downsample), "downsample"
    if mpp is None:
        mpp = getattr(model, "mpp", None)
        if mpp is None:
            raise ConfigError(
                f"model {getattr(model, 'name', '?')!r} does not declare its training um/px: give the scale "
                "(--mpp or --downsample), or run `histoscale search` and pass --from-search result.json"
            )
        if slide.mpp is None:
            raise MissingMppError(
                f"slide {slide.path} declares no um/px, so the model's training {mpp:g} um/px cannot be located on it: "
                "pass --slide-mpp, a relative --downsample, or --from-search result.json of `histoscale search`"
            )
    if not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number of um/px, got {mpp}")
    ds = to_downsamples(np.array([float(mpp)]), "um/px", slide.level0_mpp())
    check_upsampling(ds, np.array([float(mpp)]), "um/px", str(slide.path))
    return float(ds[0]), float(mpp), "um/px"


def _active_windows(
    slide: Slide, mask: TissueMask | None, ds: float, patch: int, stride: int, rows: int, cols: int, k: int
) -> tuple[np.ndarray, int, int]:
    """Bool (rows + k - 1, cols + k - 1): windows whose centre is on the slide (and the tissue); window (a, b)
    starts at model px ((b - k + 1) * stride, (a - k + 1) * stride). Returns it and the row/column offset."""
    off = k - 1
    wy = (np.arange(-off, rows) * stride + patch / 2) * ds  # window centres, level-0 px
    wx = (np.arange(-off, cols) * stride + patch / 2) * ds
    w0, h0 = slide.dimensions
    on = ((wy >= 0) & (wy < h0))[:, None] & ((wx >= 0) & (wx < w0))[None, :]
    if mask is not None:
        mh, mw = mask.mask.shape
        my = np.clip((wy / mask.downsample).astype(np.int64), 0, mh - 1)
        mx = np.clip((wx / mask.downsample).astype(np.int64), 0, mw - 1)
        on &= mask.mask[np.ix_(my, mx)]
    return on, off, off


class _BandReader:
    """Model-px rows of a fixed column span, read from one pyramid level and resampled, with a rolling buffer."""

    def __init__(self, slide: Slide, ds: float, x_lo: int, x_hi: int) -> None:
        self.slide = slide
        self.level = slide.best_level(ds)
        self.level_ds = float(slide.level_downsamples[self.level])
        self.ratio = ds / self.level_ds  # level px per model px
        self.x_lo, self.x_hi = x_lo, x_hi
        self.chunk = max(1, int(MAX_READ_PX / self.ratio))  # model px per column chunk
        self.y0 = 0
        self.buf = np.zeros((0, x_hi - x_lo, 3), np.uint8)

    def _read(self, y0: int, y1: int) -> np.ndarray:
        """Model rows [y0, y1) over [x_lo, x_hi), uint8 (y1 - y0, x_hi - x_lo, 3)."""
        out = np.empty((y1 - y0, self.x_hi - self.x_lo, 3), np.uint8)
        r = self.ratio
        ly0, ly1 = math.floor(y0 * r), max(math.floor(y0 * r) + 1, math.ceil(y1 * r))
        for cx0 in range(self.x_lo, self.x_hi, self.chunk):
            cx1 = min(self.x_hi, cx0 + self.chunk)
            lx0, lx1 = math.floor(cx0 * r), max(math.floor(cx0 * r) + 1, math.ceil(cx1 * r))
            region = self.slide.read_level(
                self.level, (lx0 * self.level_ds, ly0 * self.level_ds), (lx1 - lx0, ly1 - ly0)
            )
            out[:, cx0 - self.x_lo : cx1 - self.x_lo] = resample(region, (cx1 - cx0, y1 - y0))
        return out

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Model rows [y0, y1), reusing the rows already read when the requests move down the slide."""
        b0, b1 = self.y0, self.y0 + len(self.buf)
        if b0 <= y0 < b1 and y1 >= b1:
            keep = self.buf[y0 - b0 :]
            self.buf = np.concatenate([keep, self._read(b1, y1)]) if y1 > b1 else keep
        else:
            self.buf = self._read(y0, y1)
        self.y0 = y0
        return self.buf


def classify_slide(
    slide: Slide | str | PathLike[str],
    model: Any = None,
    *,
    mpp: float | None = None,
    downsample: float | None = None,
    stride: int | None = None,
    mask: TissueMask | bool = True,
    batch: int | None = None,
    slide_mpp: float | None = None,
    slide_mpp_source: str | None = None,
    progress: bool = False,
) -> ClassMap:
    """Classify ``slide`` with ``model`` by sliding windows at one scale; returns a :class:`ClassMap`.

    Args:
        slide: an open :class:`Slide`, or a path (opened with ``slide_mpp`` as its um/px override).
        model: a split model (:func:`histoscale.load_model`), anything it accepts, or None (bundled reference).
        mpp: the scale in um/px (needs the slide's um/px); or ``downsample``: level-0 px per model px.
            Neither: the model's training um/px.
        stride: window step in model px, 1..input_size (default input_size // 2).
        mask: True computes the tissue mask; a :class:`TissueMask` is used as given; False runs every window.
        batch: windows gathered (across rows) per model call; default the model's ``batch_size`` (or 64).
        slide_mpp: level-0 um/px replacing the slide's declared one (when ``slide`` is a path).
        slide_mpp_source: what the slide's um/px override is, for the map's ``slide_mpp_source`` (e.g. "implied by
            the content"); default "override" (the slide's own metadata key when it was not overridden).
        progress: show a rich progress bar over window rows.

    Raises:
        MissingMppError: absolute scale asked of a slide without um/px. ConfigError: bad arguments.
    """
    if not hasattr(model, "patch_logits"):
        model = load_model(model)
    owns = not isinstance(slide, Slide)
    the_slide = open_slide(slide, slide_mpp=slide_mpp) if owns else slide
    try:
        cmap = _classify(the_slide, model, mpp=mpp, downsample=downsample, stride=stride, mask=mask,
                         batch=batch, progress=progress)
        if slide_mpp_source is not None and cmap.slide_mpp_source == "override":
            cmap = replace(cmap, slide_mpp_source=slide_mpp_source)
        return cmap
    finally:
        if owns:
            the_slide.close()


def _classify(
    slide: Slide, model: Any, *, mpp: float | None, downsample: float | None, stride: int | None,
    mask: TissueMask | bool, batch: int | None, progress: bool,
) -> ClassMap:
    t0 = time.perf_counter()
    ds, scale, units = _resolve_downsample(slide, model, mpp, downsample)
    patch = int(model.input_size)
    stride = patch // 2 if stride is None else int(stride)
    if not 1 <= stride <= patch:
        raise ConfigError(f"stride must be between 1 and the patch size {patch} model px (got {stride})")
    batch = int(getattr(model, "batch_size", 64)) if batch is None else int(batch)
    if batch < 1:
        raise ConfigError(f"batch must be at least 1 (got {batch})")
    k = math.ceil(patch / stride - 0.5)  # cells per window side: those whose centre lies inside the window
    w0, h0 = slide.dimensions
    rows, cols = math.ceil(h0 / (stride * ds)), math.ceil(w0 / (stride * ds))
    if rows * cols > 50_000_000:
        raise ConfigError(
            f"{slide.path}: a {rows}x{cols} grid at stride {stride} px and {scale:g} {units} is too fine; "
            "use a larger --stride or a coarser scale"
        )
    the_mask = tissue_mask(slide) if mask is True else (mask if isinstance(mask, TissueMask) else None)
    active, _, _ = _active_windows(slide, the_mask, ds, patch, stride, rows, cols, k)
    n_classes = len(model.class_names)
    probs = np.zeros((rows, cols, n_classes), np.float32)
    coverage = np.zeros((rows, cols), np.uint16)
    timings = {"mask_s": time.perf_counter() - t0, "read_s": 0.0, "model_s": 0.0}
    windows = 0
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (window row, window columns, patches)

    def flush() -> None:
        nonlocal windows
        if not pending:
            return
        t = time.perf_counter()
        p_all = softmax(model.patch_logits(np.concatenate([patches for _, _, patches in pending]))).astype(np.float32)
        start = 0
        for a, part, _ in pending:
            p = p_all[start : start + len(part)]
            start += len(part)
            for dr in range(k):
                r = a - (k - 1) + dr
                if not 0 <= r < rows:
                    continue
                for dc in range(k):
                    c = part - (k - 1) + dc
                    ok = (c >= 0) & (c < cols)
                    np.add.at(probs[r], c[ok], p[ok])
                    np.add.at(coverage[r], c[ok], 1)
        windows += start
        pending.clear()
        timings["model_s"] += time.perf_counter() - t

    if active.any():
        a_cols = np.nonzero(active.any(axis=0))[0]
        x_lo = int((a_cols[0] - (k - 1)) * stride)
        x_hi = int((a_cols[-1] - (k - 1)) * stride + patch)
        reader = _BandReader(slide, ds, x_lo, x_hi)
        active_rows = np.nonzero(active.any(axis=1))[0]
        n_pending = 0
        with progress_bar(progress) as bar:
            task = bar.add_task("classify", total=len(active_rows)) if bar is not None else None
            for done, a in enumerate(active_rows):
                y0 = int((a - (k - 1)) * stride)
                t1 = time.perf_counter()
                band = reader.rows(y0, y0 + patch)
                b_idx = np.nonzero(active[a])[0]
                starts = (b_idx - (k - 1)) * stride - x_lo
                timings["read_s"] += time.perf_counter() - t1
                pos = 0
                while pos < len(b_idx):  # windows go to the model in batches of `batch`, across rows
                    take = min(batch - n_pending, len(b_idx) - pos)
                    crops = [band[:, x : x + patch] for x in starts[pos : pos + take]]
                    pending.append((int(a), b_idx[pos : pos + take], np.stack(crops)))
                    n_pending += take
                    pos += take
                    if n_pending >= batch:
                        flush()
                        n_pending = 0
                if bar is not None:
                    bar.update(task, completed=done + 1)
            flush()
    covered = coverage > 0
    probs[covered] /= coverage[covered, None]
    index = np.where(covered, probs.argmax(axis=2), UNKNOWN).astype(np.int16)
    timings["total_s"] = time.perf_counter() - t0
    logger.info("classified %s: %d windows on a %dx%d grid in %.1f s", slide.path, windows, rows, cols,
                timings["total_s"])
    return ClassMap(
        probabilities=probs, coverage=coverage, class_index=index, class_names=tuple(model.class_names),
        origin_xy=(0.0, 0.0), cell_px=float(stride * ds), stride_px=stride, patch_px=patch, scale=scale,
        units=units, downsample=float(ds), slide_mpp=slide.mpp, slide_size_wh=(int(w0), int(h0)),
        slide=str(slide.path), model=str(getattr(model, "name", type(model).__name__)), windows=windows,
        timings=timings, declared_mpp=declared_mpp(slide),
        slide_mpp_source=None if slide.resolution is None else slide.resolution.source,
    )


def declared_mpp(slide: Slide) -> float | None:
    """The level-0 um/px the slide file declares (the best accepted candidate), whatever override it was opened
    with; None when it declares none."""
    if slide.resolution is not None and slide.resolution.source != "override":
        return slide.mpp
    found = next((c for c in slide.resolution_candidates if c.accepted and c.mpp_x and c.mpp_y), None)
    return None if found is None else math.sqrt(found.mpp_x * found.mpp_y)


