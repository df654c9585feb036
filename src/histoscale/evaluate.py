"""Per-class accuracy of a classifier at several scales against known labels: the paper's Table 1.

Positions are drawn once, per class, from a label map (a phantom's truth, a user's mask image, or GeoJSON
annotations), away from class boundaries and from the slide's border where the labels allow; every scale is
evaluated on the SAME positions (one read per position at its widest field of view, concentric patches shrunk
with anti-aliasing, as in the search). With ``--search`` the content-based scale search runs too and its choice
is marked, so one sees whether the search lands on the accuracy-optimal scale.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoscale.errors import ConfigError, MissingMppError
from histoscale.slide import Slide, open_slide

__all__ = [
    "UNLABELLED",
    "LabelMap",
    "ScaleAccuracy",
    "accuracy_csv",
    "evaluate_scales",
    "load_labels",
    "parse_scales",
    "plot_accuracy",
    "register_cli",
    "write_evaluate_report",
]

logger = logging.getLogger(__name__)

UNLABELLED = 255  # label value meaning "no label here" in mask images (the usual ignore index)
MAX_RASTER_SIDE = 4096  # GeoJSON annotations are rasterised at most this many px along the slide's longer side

Units = Literal["um/px", "downsample"]


# ----------------------------------------------------------------------------------------------------------
# label maps
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelMap:
    """Known classes over a slide: ``labels`` (h, w) uint8 holds a MODEL class index per label px, or
    ``UNLABELLED`` (255); label px ``(i, j)`` covers level-0 px ``[i*dx, (i+1)*dx) x [j*dy, (j+1)*dy)`` with
    ``(dx, dy) = downsample_xy``. ``kind`` is ``phantom``, ``mask`` or ``geojson``; ``source`` the file."""

    labels: np.ndarray = field(repr=False)
    downsample_xy: tuple[float, float]
    class_names: tuple[str, ...]
    source: str
    kind: str

    def counts(self) -> np.ndarray:
        """Labelled label px per model class, (C,)."""
        return np.bincount(self.labels[self.labels != UNLABELLED].ravel(), minlength=len(self.class_names))[
            : len(self.class_names)
        ]

    def class_at(self, xy: np.ndarray) -> np.ndarray:
        """Label (model class index, or UNLABELLED) at level-0 points ``xy`` (n, 2); outside the map: UNLABELLED."""
        xy = np.atleast_2d(np.asarray(xy, np.float64))
        h, w = self.labels.shape
        i = np.floor(xy[:, 0] / self.downsample_xy[0]).astype(np.int64)
        j = np.floor(xy[:, 1] / self.downsample_xy[1]).astype(np.int64)
        inside = (i >= 0) & (i < w) & (j >= 0) & (j < h)
        out = np.full(len(xy), UNLABELLED, np.int64)
        out[inside] = self.labels[j[inside], i[inside]]
        return out

    def sample(
        self,
        points_per_class: int,
        *,
        seed: int = 0,
        margin_px: float = 0.0,
        border_px: float = 0.0,
        size_wh: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``points_per_class`` level-0 positions per class: ``(xy (n, 2) float64, class (n,) int64)``.

        Positions lie at least ``margin_px`` level-0 px from any other label (so the patch there is of one
        class) and ``border_px`` inside the slide (``size_wh``) where the class allows it; otherwise the
        constraint is relaxed for that class and a warning logged. Distinct label px are drawn without
        replacement while there are enough, each jittered inside its px. Reproducible from ``seed``.
        """
        from scipy import ndimage

        if points_per_class < 1:
            raise ConfigError(f"points per class must be at least 1 (got {points_per_class})")
        rng = np.random.default_rng(seed)
        dx, dy = self.downsample_xy
        xs, ys, cs = [], [], []
        for c, name in enumerate(self.class_names):
            own = self.labels == c
            if not own.any():
                continue
            j, i = np.nonzero(own)
            cx, cy = (i + 0.5) * dx, (j + 0.5) * dy
            keep = np.ones(len(i), bool)
            if margin_px > 0:
                dist = ndimage.distance_transform_edt(own, sampling=(dy, dx))
                pure = dist[j, i] >= margin_px
                if pure.any():
                    keep &= pure
                else:
                    logger.warning("class %s has no labelled area %.0f px from other labels in %s: using its "
                                   "boundary positions too", name, margin_px, self.source)
            if size_wh is not None and border_px > 0:
                bw, bh = min(border_px, size_wh[0] / 2), min(border_px, size_wh[1] / 2)
                inside = (cx >= bw) & (cx <= size_wh[0] - bw) & (cy >= bh) & (cy <= size_wh[1] - bh)
                if (keep & inside).any():
                    keep &= inside
                else:
                    logger.warning("class %s has no labelled area %.0f px inside the slide border: patches there "
                                   "are padded with white", name, border_px)
            idx = np.nonzero(keep)[0]
            pick = rng.choice(idx, size=points_per_class, replace=len(idx) < points_per_class)
            jitter = rng.random((points_per_class, 2)) - 0.5
            xs.append(cx[pick] + jitter[:, 0] * dx)
            ys.append(cy[pick] + jitter[:, 1] * dy)
            cs.append(np.full(points_per_class, c, np.int64))
        if not cs:
            raise ConfigError(f"label map {self.source} labels none of the model's classes "
                              f"({', '.join(self.class_names)})")
        xy = np.stack([np.concatenate(xs), np.concatenate(ys)], axis=1)
        if size_wh is not None:
            xy = np.clip(xy, 0, np.array(size_wh, np.float64) - 1e-6)
        return xy, np.concatenate(cs)


def _map_names(names: Sequence[str], class_names: Sequence[str], source: Path, present: Sequence[int] | None = None) -> np.ndarray:
    """Lookup table: label-file class index -> model class index; error listing names the model lacks."""
    model = [str(n) for n in class_names]
    lower = {n.lower(): i for i, n in enumerate(model)}
    used = range(len(names)) if present is None else [i for i in present if i < len(names)]
    unknown = sorted({str(names[i]) for i in used if str(names[i]).lower() not in lower})
    if unknown:
        raise ConfigError(
            f"labels {source} use class names the model does not have: {', '.join(unknown)}; the model's classes "
            f"are {', '.join(model)} (rename the labels to match)"
        )
    lut = np.full(256, UNLABELLED, np.uint8)
    for i, n in enumerate(names):
        if str(n).lower() in lower:
            lut[i] = lower[str(n).lower()]
    return lut


def _read_index_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError) as err:
        raise ConfigError(f"label mask {path} cannot be read as an image: {err}") from err
    if mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1") or arr.ndim != 2:
        raise ConfigError(
            f"label mask {path} is a {mode} image: it must hold one integer class index per px (8-bit grey or "
            f"palette PNG, {UNLABELLED} = unlabelled), not colours"
        )
    return arr.astype(np.int64)


def _check_fit(path: Path, size_wh: tuple[int, int], lw: int, lh: int, dx: float, dy: float) -> None:
    w0, h0 = size_wh
    tol_x, tol_y = max(dx, 0.01 * w0), max(dy, 0.01 * h0)
    if abs(lw * dx - w0) > tol_x or abs(lh * dy - h0) > tol_y:
        raise ConfigError(
            f"label map {path} is {lw}x{lh} px at {dx:.4g} level-0 px per label px, covering {lw * dx:.0f}x{lh * dy:.0f} "
            f"level-0 px, but the slide is {w0}x{h0} px: the labels must cover the whole slide (check the file is "
            "for this slide, and --labels-mpp / --labels-downsample)"
        )


def _phantom_labels(json_path: Path, slide: Slide, class_names: Sequence[str]) -> LabelMap:
    try:
        doc = json.loads(json_path.read_text())
        labels_path = json_path.with_name(str(doc["labels"]))
        ds = float(doc["labels_mpp"]) / float(doc["mpp"])
        names = [str(n) for n in doc["class_names"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"phantom truth {json_path} is unreadable or incomplete ({err}); write the phantom "
                          "again with `histoscale phantom`") from err
    if not labels_path.is_file():
        raise ConfigError(f"phantom truth {json_path} names label map {labels_path}, which does not exist")
    raw = _read_index_image(labels_path)
    _check_fit(labels_path, slide.dimensions, raw.shape[1], raw.shape[0], ds, ds)
    present = np.unique(raw).tolist()
    if max(present) >= len(names):
        raise ConfigError(f"phantom labels {labels_path} hold class index {max(present)} but {json_path} names only "
                          f"{len(names)} classes")
    lut = _map_names(names, class_names, json_path, present)
    if slide.mpp is not None and abs(slide.mpp / float(doc["mpp"]) - 1) > 0.01:
        logger.warning("slide %s declares %.4g um/px but its phantom truth says %.4g um/px", slide.path, slide.mpp,
                       float(doc["mpp"]))
    return LabelMap(lut[raw], (ds, ds), tuple(class_names), str(json_path), "phantom")


def _mask_labels(
    path: Path, slide: Slide, class_names: Sequence[str], labels_mpp: float | None, labels_downsample: float | None
) -> LabelMap:
    raw = _read_index_image(path)
    lh, lw = raw.shape
    w0, h0 = slide.dimensions
    if labels_mpp is not None and labels_downsample is not None:
        raise ConfigError("give the label mask's scale as --labels-mpp or as --labels-downsample, not both")
    if labels_mpp is not None:
        if slide.mpp is None:
            raise MissingMppError(f"slide {slide.path} declares no um/px, so --labels-mpp cannot place {path} on it: "
                                  "pass --slide-mpp, or give --labels-downsample instead")
        dx = dy = float(labels_mpp) / slide.mpp
    elif labels_downsample is not None:
        dx = dy = float(labels_downsample)
    else:
        dx, dy = w0 / lw, h0 / lh
        if abs(h0 / dx - lh) > 1.0 + 0.01 * lh:
            raise ConfigError(
                f"label mask {path} is {lw}x{lh} px (aspect {lw / lh:.3f}) but slide {slide.path} is {w0}x{h0} px "
                f"(aspect {w0 / h0:.3f}): a mask must cover the whole slide at one downsample; resize it to the "
                f"slide's aspect (e.g. {round(w0 / dx)}x{round(h0 / dx)}), or give --labels-mpp / --labels-downsample"
            )
    _check_fit(path, slide.dimensions, lw, lh, dx, dy)
    n = len(class_names)
    bad = sorted(int(v) for v in np.unique(raw) if (v < 0 or v >= n) and v != UNLABELLED)
    if bad:
        raise ConfigError(
            f"label mask {path} holds class indices {bad[:10]}{' ...' if len(bad) > 10 else ''} but the model has "
            f"{n} classes (0..{n - 1}: {', '.join(class_names)}); use {UNLABELLED} for unlabelled px"
        )
    return LabelMap(raw.astype(np.uint8), (dx, dy), tuple(class_names), str(path), "mask")


def _feature_class(props: Any) -> str | None:
    if not isinstance(props, dict):
        return None
    c = props.get("classification")
    if isinstance(c, dict) and c.get("name"):
        return str(c["name"])
    if isinstance(c, str) and c:
        return c
    for key in ("class", "label", "class_name"):
        if isinstance(props.get(key), str) and props[key]:
            return str(props[key])
    return None


def _geojson_labels(path: Path, doc: Any, slide: Slide, class_names: Sequence[str]) -> LabelMap:
    import cv2
    from shapely.geometry import box, shape
    from shapely.validation import make_valid

    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        raise ConfigError(f"annotations {path} are not a GeoJSON FeatureCollection, Feature or list of features")
    items: list[tuple[str, Any]] = []
    unclassified = 0
    for k, f in enumerate(features):
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            continue
        name = _feature_class(f.get("properties"))
        if name is None:
            unclassified += 1
            continue
        try:
            geom = shape(f["geometry"])
        except Exception as err:  # shapely raises several types for malformed geometry
            raise ConfigError(f"annotations {path}: feature {k} has an invalid geometry ({err})") from err
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            logger.warning("annotations %s: skipping feature %d (%s, not an area)", path, k, geom.geom_type)
            continue
        items.append((name, geom if geom.is_valid else make_valid(geom)))
    if unclassified:
        logger.warning("annotations %s: %d features without a classification were skipped", path, unclassified)
    if not items:
        raise ConfigError(f"annotations {path} have no classified polygons: give each annotation a class "
                          "(properties.classification.name, as QuPath exports)")
    names = sorted({n for n, _ in items})
    lut = _map_names(names, class_names, path)
    w0, h0 = slide.dimensions
    bounds = box(0, 0, w0, h0)
    if not any(g.intersects(bounds) for _, g in items):
        raise ConfigError(f"annotations {path} lie entirely outside slide {slide.path} ({w0}x{h0} px): coordinates "
                          "must be level-0 px of this slide")
    ds = max(1.0, max(w0, h0) / MAX_RASTER_SIDE)
    lw, lh = max(1, math.ceil(w0 / ds)), max(1, math.ceil(h0 / ds))
    labels = np.full((lh, lw), UNLABELLED, np.uint8)

    def ring(coords: Any) -> np.ndarray:
        # label px (i, j) has its centre at ((i + .5) ds, (j + .5) ds); cv2 fills around integer centres
        return np.round((np.asarray(coords)[:, :2] / ds - 0.5) * 16).astype(np.int32)

    for name, geom in items:
        polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
        m = np.zeros((lh, lw), np.uint8)
        cv2.fillPoly(m, [ring(p.exterior.coords) for p in polys], 1, lineType=cv2.LINE_8, shift=4)
        holes = [ring(r.coords) for p in polys for r in p.interiors]
        if holes:
            cv2.fillPoly(m, holes, 0, lineType=cv2.LINE_8, shift=4)
        labels[m > 0] = lut[names.index(name)]
    return LabelMap(labels, (w0 / lw, h0 / lh), tuple(class_names), str(path), "geojson")


def _phantom_sidecar(slide_path: Path) -> Path | None:
    for stem in (slide_path.name.split(".")[0], slide_path.stem):
        p = slide_path.with_name(stem + ".phantom.json")
        if p.is_file():
            return p
    return None


def load_labels(
    path: str | PathLike[str] | None,
    *,
    slide: Slide,
    class_names: Sequence[str],
    labels_mpp: float | None = None,
    labels_downsample: float | None = None,
) -> LabelMap:
    """Read known labels for ``slide`` and map them onto the model's ``class_names``.

    ``path``: a phantom's ``<stem>.phantom.json`` (or its ``.labels.png``; None looks for the sidecar beside the
    slide); a mask image of integer class indices of the model (``UNLABELLED`` = 255 for no label), covering
    the whole slide at ``labels_mpp`` um/px, ``labels_downsample`` level-0 px per px, or (neither) the
    downsample implied by its size, which must match the slide's aspect; or GeoJSON polygons in level-0 px
    with QuPath-style ``properties.classification.name`` naming model classes.

    Raises:
        ConfigError: missing file, wrong size or aspect, class indices beyond the model's, unknown class names.
    """
    if path is None:
        found = _phantom_sidecar(Path(slide.path))
        if found is None:
            raise ConfigError(f"no labels given and no phantom truth <stem>.phantom.json beside {slide.path}: pass "
                              "--labels (a phantom JSON, a class-index mask image, or GeoJSON annotations)")
        return _phantom_labels(found, slide, class_names)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labels {p} do not exist: give a phantom .phantom.json, a class-index mask image, or "
                          "GeoJSON annotations")
    if p.suffix.lower() in (".json", ".geojson"):
        try:
            doc = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"labels {p} are not readable JSON ({err})") from err
        if isinstance(doc, dict) and (doc.get("kind") == "histoscale-phantom" or "labels_mpp" in doc):
            return _phantom_labels(p, slide, class_names)
        return _geojson_labels(p, doc, slide, class_names)
    if p.name.endswith(".labels.png"):
        sidecar = p.with_name(p.name[: -len(".labels.png")] + ".phantom.json")
        if sidecar.is_file() and labels_mpp is None and labels_downsample is None:
            return _phantom_labels(sidecar, slide, class_names)
    return _mask_labels(p, slide, class_names, labels_mpp, labels_downsample)


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------
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


def parse_scales(scales: str | Sequence[float] | None, *, center: float, units: Units) -> np.ndarray:
    """Scales to evaluate, ascending: None (the search's default grid around ``center``), ``"paper"``, or
    comma-separated / a sequence of positive numbers (one or more; sorted, duplicates dropped)."""
    from histoscale.search import make_grid, scale_values

    if scales is None or (isinstance(scales, str) and scales.strip().lower() == "paper"):
        return make_grid(scales, center=center, units=units)
    values = scale_values(scales)
    grid = np.unique(np.asarray(values, np.float64))
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ConfigError(f"scales must be one or more positive numbers ({units}), got {values}")
    return grid


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
        scales: um/px (or downsample with ``relative`` / a slide without um/px); see :func:`parse_scales`.
        points_per_class: positions drawn per labelled class (the same positions at every scale).
        searched_scale: a scale chosen by the search, added to the grid if absent and marked.
        margin_px: level-0 px every position keeps from other labels (default: half the field of view at the
            finest scale, so the finest patch is of one class).
    """
    from histoscale.models import load_model
    from histoscale.patches import iter_multiscale
    from histoscale.search import progress_bar

    if not hasattr(model, "logits"):
        model = load_model(model)
    owns = not isinstance(slide, Slide)
    sl = open_slide(slide, mpp=slide_mpp) if owns else slide
    try:
        t0 = time.perf_counter()
        units: Units = "um/px" if (sl.mpp is not None and not relative) else "downsample"
        model_mpp = getattr(model, "mpp", None)
        grid = parse_scales(scales, center=(model_mpp or 0.5) if units == "um/px" else 1.0, units=units)
        # positions depend on the requested grid only: marking a searched scale does not move them
        base_ds = grid / sl.mpp if units == "um/px" else grid.copy()
        searched_index = None
        if searched_scale is not None:
            hit = np.nonzero(np.isclose(grid, searched_scale, rtol=1e-6, atol=0))[0]
            if len(hit) == 0:
                grid = np.sort(np.append(grid, float(searched_scale)))
                hit = np.nonzero(grid == float(searched_scale))[0]
            searched_index = int(hit[0])
        ds = grid / sl.mpp if units == "um/px" else grid.copy()
        if ds.min() < 0.25:
            logger.warning("scale %.3g %s upsamples %s more than 4x", grid[0], units, sl.path)
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
                logits = model.logits(stack.reshape(-1, *stack.shape[2:])).reshape(len(stack), k, -1)
                rows = slice(start, start + len(stack))
                preds[rows] = logits.argmax(axis=2)
                z = np.exp(logits - logits.max(axis=2, keepdims=True))
                p_true[rows] = (z / z.sum(axis=2, keepdims=True))[np.arange(len(stack)), :, truth[rows]]
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


# ----------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return "" if not np.isfinite(v) else f"{100 * v:.2f}"


def accuracy_csv(result: ScaleAccuracy) -> str:
    """One row per scale: scale, units, magnification label, accuracy % per class, mean, overall, flags."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["scale", "units", "magnification", *result.class_names, "mean", "overall", "searched", "best_mean"])
    for i, s in enumerate(result.scales):
        mag = f"x{10 / s:.3g}" if result.units == "um/px" else ""
        w.writerow([f"{s:.6g}", result.units, mag, *(_pct(v) for v in result.accuracy[i]), _pct(result.mean[i]),
                    _pct(result.overall[i]), int(i == result.searched_index), int(i in result.best_rows)])
    w.writerow(["positions", "", "", *(int(c) for c in result.counts), int(result.counts.sum()), int(result.counts.sum()),
                "", ""])
    return buf.getvalue()


def rich_table(result: ScaleAccuracy) -> Any:
    """The paper's Table 1 as a rich Table: rows = scale, columns = classes + mean (accuracy, %)."""
    from rich.table import Table

    unit = "um/px" if result.units == "um/px" else "downsample"
    counts = ", ".join(f"{n} {c}" for c, n in zip(result.class_names, result.counts))
    table = Table(title=f"patch accuracy, % ({Path(result.slide).name}, {result.model})",
                  caption=f"positions: {counts}")
    table.add_column(unit, justify="right", no_wrap=True)
    for name in result.class_names:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("mean", justify="right", style="bold", no_wrap=True)
    table.add_column("", justify="left", no_wrap=True)
    for i in range(len(result.scales)):
        marks = []
        if i in result.best_rows:
            marks.append("best")
        if i == result.searched_index:
            marks.append("<- search")
        if result.model_mpp is not None and result.units == "um/px" and np.isclose(result.scales[i], result.model_mpp):
            marks.append("training")
        row_style = "bold green" if i == result.searched_index else None
        s = float(result.scales[i])
        label = f"{s:.3g} (x{10 / s:.3g})" if result.units == "um/px" else f"{s:.3g}"
        table.add_row(label, *(_pct(v) or "-" for v in result.accuracy[i]), _pct(result.mean[i]),
                      ", ".join(marks), style=row_style)
    return table


def plot_accuracy(result: ScaleAccuracy) -> bytes:
    """Mean and per-class accuracy against scale (log x), with the searched scale as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histoscale.classify import class_colours
    from histoscale.report import figure_png

    fig, ax = plt.subplots(figsize=(6, 3.6))
    colours = np.array(class_colours(result.class_names)) / 255
    for c, name in enumerate(result.class_names):
        if result.counts[c]:
            ax.plot(result.scales, 100 * result.accuracy[:, c], "o-", color=colours[c], lw=1, ms=3, label=name)
    ax.plot(result.scales, 100 * result.mean, "s-", color="k", lw=2.2, ms=5, label="mean")
    if result.searched_scale is not None:
        ax.axvline(result.searched_scale, color="tab:red", ls="--", lw=1.2, label=f"search {result.searched_scale:.3g}")
    if result.model_mpp is not None and result.units == "um/px":
        ax.axvline(result.model_mpp, color="grey", ls=":", lw=1, label=f"training {result.model_mpp:.3g}")
    ax.set_xscale("log")
    ax.set_xticks(result.scales, [f"{s:.3g}" for s in result.scales], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("um/px" if result.units == "um/px" else "downsample from level 0")
    ax.set_ylabel("accuracy, %")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def write_evaluate_report(
    result: ScaleAccuracy, out_dir: str | PathLike[str], *, arguments: dict[str, Any] | None = None
) -> dict[str, Path]:
    """accuracy.csv, accuracy.png and, last, evaluate.json into ``out_dir`` (atomic writes)."""
    from histoscale.report import atomic_write, write_document

    out = Path(out_dir)
    written = {
        "accuracy.csv": atomic_write(out / "accuracy.csv", accuracy_csv(result)),
        "accuracy.png": atomic_write(out / "accuracy.png", plot_accuracy(result)),
    }
    written["evaluate.json"] = write_document(out / "evaluate.json", result.to_dict(), arguments)
    return written


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from histoscale.cli import _load_model

    model = _load_model(args)
    searched = None
    with open_slide(args.slide, mpp=args.slide_mpp) as slide:
        labels = load_labels(args.labels, slide=slide, class_names=model.class_names, labels_mpp=args.labels_mpp,
                             labels_downsample=args.labels_downsample)
        if args.search:
            from histoscale.search import find_scale

            found = find_scale(slide, model, points=args.search_points, scales=args.search_scales, seed=args.seed,
                               scorer=args.scorer, relative=args.relative, progress=sys.stderr.isatty())
            searched = found.chosen_scale
        result = evaluate_scales(
            slide, model, labels, args.scales, points_per_class=args.points_per_class, seed=args.seed,
            relative=args.relative, searched_scale=searched, progress=sys.stderr.isatty(),
        )
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(rich_table(result))
    if searched is not None:
        i, b = result.searched_index, result.best_index
        verdict = "an accuracy-optimal scale" if i in result.best_rows else (
            f"{100 * (result.mean[b] - result.mean[i]):.1f} points below the best ({result.scale_label(b)})")
        console.print(f"search chose {result.scale_label(i)}: mean accuracy {100 * result.mean[i]:.1f}%, {verdict}")
    if args.out:
        arguments = {k: v for k, v in vars(args).items() if k != "func"}
        write_evaluate_report(result, args.out, arguments=arguments)
        console.print(f"accuracy.csv, accuracy.png, evaluate.json written to {args.out}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``histoscale evaluate`` to the CLI."""
    from histoscale.cli import _add_model_options, _positive_float
    from histoscale.scoring import SCORERS
    from histoscale.search import DEFAULT_SCORER

    p = sub.add_parser("evaluate", help="per-class accuracy per scale against known labels (the paper's Table 1)")
    p.add_argument("slide")
    p.add_argument("--labels", default=None,
                   help="phantom .phantom.json, class-index mask image, or GeoJSON (default: phantom truth beside the slide)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels-mpp", type=_positive_float, default=None, help="um/px of a mask image")
    g.add_argument("--labels-downsample", type=_positive_float, default=None, help="level-0 px per mask px")
    p.add_argument("--scales", default=None,
                   help="comma-separated scales, or 'paper' (default: 9 scales of ratio 2^(1/4) around the model's um/px)")
    p.add_argument("--points-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relative", action="store_true", help="scales are level-0 downsamples even if the slide has um/px")
    p.add_argument("--slide-mpp", type=_positive_float, default=None, help="override the slide's um/px")
    p.add_argument("--search", action="store_true", help="also run the scale search and mark its choice")
    p.add_argument("--search-points", type=int, default=100, help="points for --search (default 100)")
    p.add_argument("--search-scales", default=None, help="grid for --search (default: the search's own)")
    p.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER, help="scorer for --search")
    p.add_argument("--out", default=None, help="folder for accuracy.csv, accuracy.png, evaluate.json")
    _add_model_options(p)
    p.set_defaults(func=cmd_evaluate)
