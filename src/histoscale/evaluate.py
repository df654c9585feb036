"""Per-class accuracy of a classifier at several scales against known labels: the paper's Table 1.

Positions are drawn once, per class, from a label map (a phantom's truth, a user's mask image, or GeoJSON
annotations), away from class boundaries and from the slide's border where the labels allow; every scale is
evaluated on the SAME positions (one read per position at its widest field of view, concentric patches shrunk
with anti-aliasing, as in the search). With ``--search`` the content-based scale search runs too and its choice
is marked, so one sees whether the search lands on the accuracy-optimal scale. A segmentation model's answer at a
position is the mean of its cells' logits over the patch (:meth:`~histoscale.models.SplitModel.patch_logits`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from histoscale._progress import progress_bar
from histoscale.errors import ConfigError
from histoscale.labels import LabelMap, load_labels
from histoscale.models import load_model
from histoscale.patches import iter_multiscale
from histoscale.scoring import softmax
from histoscale.slide import Slide, open_slide
from histoscale.units import Units, check_upsampling, grid_around, parse_scales, to_downsamples

__all__ = ["ScaleAccuracy", "evaluate_scales"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleAccuracy:
    """Accuracy per scale (rows) and class (columns), on the same labelled positions at every scale.

    ``accuracy`` (N, C): fraction of a class's positions predicted as that class (NaN: class not labelled);
    ``mean`` (N,): mean over the labelled classes (the paper's "mean"); ``overall`` (N,): over all positions.
    ``true_prob`` (N, C): mean softmax probability the model gives the true class, a smoother companion of the
    accuracy (it still moves when the accuracy saturates at 100 %); ``mean_true_prob`` (N,) its class mean.
    ``searched_index`` is the row of the scale chosen by the scale search, if it ran.
    """

    scales: np.ndarray
    units: Units
    class_names: tuple[str, ...]
    accuracy: np.ndarray
    mean: np.ndarray
    overall: np.ndarray
    counts: np.ndarray
    true_prob: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    points_xy: np.ndarray = field(repr=False)
    searched_index: int | None = None
    model_mpp: float | None = None
    slide: str = ""
    model: str = ""
    labels: str = ""
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mean_true_prob(self) -> np.ndarray:
        """Mean over the labelled classes of ``true_prob``, (N,)."""
        return np.nanmean(self.true_prob, axis=1)

    @property
    def best_index(self) -> int:
        """Row of the highest mean accuracy (the first one on ties)."""
        return int(np.nanargmax(self.mean))

    @property
    def best_rows(self) -> np.ndarray:
        """Rows tied at the highest mean accuracy (accuracy saturates at 100 % over a range of scales)."""
        return np.nonzero(self.mean >= np.nanmax(self.mean) - 1e-12)[0]

    @property
    def best_scale(self) -> float:
        return float(self.scales[self.best_index])

    @property
    def searched_scale(self) -> float | None:
        return None if self.searched_index is None else float(self.scales[self.searched_index])

    def scale_label(self, i: int) -> str:
        """'0.5 um/px (x20)' or '2 x' for row ``i``."""
        s = float(self.scales[i])
        return f"{s:.3g} um/px (x{10 / s:.3g})" if self.units == "um/px" else f"{s:.3g}x"

    def to_dict(self) -> dict[str, Any]:
        def nan_none(a: np.ndarray) -> list[Any]:
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64).ravel()]

        return {
            "slide": self.slide,
            "model": self.model,
            "labels": self.labels,
            "units": self.units,
            "seed": self.seed,
            "scales": self.scales.tolist(),
            "class_names": list(self.class_names),
            "positions_per_class": self.counts.tolist(),
            "accuracy": [dict(zip(self.class_names, nan_none(row))) for row in self.accuracy],
            "mean": nan_none(self.mean),
            "overall": nan_none(self.overall),
            "true_class_probability": [dict(zip(self.class_names, nan_none(row))) for row in self.true_prob],
            "mean_true_class_probability": nan_none(self.mean_true_prob),
            "best_scale": self.best_scale,
            "best_scales": [float(self.scales[i]) for i in self.best_rows],
            "searched_scale": self.searched_scale,
            "model_mpp": self.model_mpp,
            "timings_s": self.timings,
        }


def evaluate_scales(
    slide: Slide | str | PathLike[str],
    model: Any,
    labels: LabelMap | str | PathLike[str] | None,
    scales: str | Sequence[float] | None = None,
    *,
    points_per_class: int = 100,
    seed: int = 0,
    relative: bool = False,
    searched_scale: float | None = None,
    margin_px: float | None = None,
    slide_mpp: float | None = None,
    prefetch: int = 2,
    progress: bool = False,
) -> ScaleAccuracy:
    """Accuracy of ``model`` on ``slide`` at each of ``scales`` against ``labels`` (the paper's Table 1).

    Args:
        slide: an open :class:`Slide` or a path (``slide_mpp`` overrides its um/px).
        model: a split model, anything :func:`histoscale.load_model` accepts, or None (bundled reference).
        labels: a :class:`LabelMap`, a path for :func:`load_labels`, or None (the phantom truth beside the slide).
        scales: um/px (or downsample with ``relative`` / a slide without um/px); ``"paper"``, ascending numbers (:func:`histoscale.units.parse_scales`), or None (the search's default grid).
        points_per_class: positions drawn per labelled class (the same positions at every scale).
        searched_scale: a scale chosen by the search, added to the grid if absent and marked.
        margin_px: level-0 px every position keeps from other labels (default: half the field of view at the
            finest scale, so the finest patch is of one class).
    """
    if not hasattr(model, "patch_logits"):
        model = load_model(model)
    owns = not isinstance(slide, Slide)
    sl = open_slide(slide, mpp=slide_mpp) if owns else slide
    try:
        t0 = time.perf_counter()
        units: Units = "um/px" if (sl.mpp is not None and not relative) else "downsample"
        model_mpp = getattr(model, "mpp", None)
        if scales is None:
            grid = grid_around((model_mpp or 0.5) if units == "um/px" else 1.0)
        else:
            grid = parse_scales(scales, units=units)
        level0_mpp = sl.level0_mpp() if units == "um/px" else None
        # positions depend on the requested grid only: marking a searched scale does not move them
        base_ds = to_downsamples(grid, units, level0_mpp)
        searched_index = None
        if searched_scale is not None:
            hit = np.nonzero(np.isclose(grid, searched_scale, rtol=1e-6, atol=0))[0]
            if len(hit) == 0:
                grid = np.sort(np.append(grid, float(searched_scale)))
                hit = np.nonzero(grid == float(searched_scale))[0]
            searched_index = int(hit[0])
        ds = to_downsamples(grid, units, level0_mpp)
        check_upsampling(ds, grid, units, str(sl.path))
        label_map = labels if isinstance(labels, LabelMap) else load_labels(
            labels, slide=sl, class_names=model.class_names)
        if tuple(label_map.class_names) != tuple(model.class_names):
            raise ConfigError(f"label map {label_map.source} was built for classes {label_map.class_names}, the model "
                              f"has {model.class_names}")
        out_px = int(model.input_size)
        margin = out_px * float(base_ds.min()) / 2 if margin_px is None else float(margin_px)
        xy, truth = label_map.sample(points_per_class, seed=seed, margin_px=margin,
                                     border_px=out_px * float(base_ds.max()) / 2, size_wh=sl.dimensions)
        n, k = len(xy), len(grid)
        preds = np.empty((n, k), np.int64)
        p_true = np.empty((n, k), np.float32)
        block = max(1, 256 // k)
        t1 = time.perf_counter()
        with progress_bar(progress) as bar:
            task = bar.add_task("evaluate", total=n) if bar is not None else None
            patches = iter_multiscale(sl, xy, ds, out_px, prefetch=prefetch)
            for start in range(0, n, block):
                stack = np.stack([next(patches) for _ in range(min(block, n - start))])
                logits = model.patch_logits(stack.reshape(-1, *stack.shape[2:])).reshape(len(stack), k, -1)
                rows = slice(start, start + len(stack))
                preds[rows] = logits.argmax(axis=2)
                p_true[rows] = softmax(logits)[np.arange(len(stack)), :, truth[rows]]
                if bar is not None:
                    bar.update(task, completed=start + len(stack))
            patches.close()
        n_cls = len(model.class_names)
        counts = np.bincount(truth, minlength=n_cls)
        correct = preds == truth[:, None]
        acc = np.full((k, n_cls), np.nan)
        prob = np.full((k, n_cls), np.nan)
        for c in range(n_cls):
            if counts[c]:
                acc[:, c] = correct[truth == c].mean(axis=0)
                prob[:, c] = p_true[truth == c].mean(axis=0)
        return ScaleAccuracy(
            scales=grid, units=units, class_names=tuple(model.class_names), accuracy=acc,
            mean=np.nanmean(acc, axis=1), overall=correct.mean(axis=0), counts=counts, true_prob=prob, truth=truth,
            predictions=preds, points_xy=xy, searched_index=searched_index, model_mpp=model_mpp,
            slide=str(sl.path), model=str(getattr(model, "name", type(model).__name__)), labels=label_map.source,
            seed=seed, timings={"labels_s": t1 - t0, "read_and_model_s": time.perf_counter() - t1},
        )
    finally:
        if owns:
            sl.close()


