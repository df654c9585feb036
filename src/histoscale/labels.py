"""Label maps for measuring accuracy: phantom truth, index-mask images, GeoJSON annotations (QuPath)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoscale.errors import ConfigError, MissingMppError
from histoscale.slide import Slide

__all__ = ["UNLABELLED", "LabelMap", "load_labels"]

logger = logging.getLogger(__name__)

UNLABELLED = 255  # label value meaning "no label here" in mask images (the usual ignore index)
MAX_RASTER_SIDE = 4096  # GeoJSON annotations are rasterised at most this many px along the slide's longer side

Units = Literal["um/px", "downsample"]

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


