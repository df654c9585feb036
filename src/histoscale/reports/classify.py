"""Outputs of a classification: QuPath GeoJSON, probabilities.npz, the class map over the thumbnail, report.html."""

from __future__ import annotations

import io
import json
import math
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoscale._files import atomic_write, json_safe
from histoscale.classify import ClassMap, class_colours
from histoscale.errors import ConfigError
from histoscale.reports._figures import figure_png
from histoscale.reports._provenance import write_document
from histoscale.reports.html import render_classify_page

__all__ = ["classmap_geojson", "plot_classmap", "probabilities_npz", "read_search_scale", "write_classify_report"]


def _class_geometry(cmap: ClassMap, c: int) -> Any:
    """The union of the cells of class ``c`` as a valid shapely (Multi)Polygon in level-0 px, clipped to the slide."""
    import shapely
    from shapely.validation import make_valid

    m = cmap.class_index == c
    if not m.any():
        return None
    # Runs of consecutive cells per row become rectangles; their union is exact (rectilinear).
    padded = np.zeros((m.shape[0], m.shape[1] + 2), np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    r_start, c_start = np.nonzero(d == 1)
    r_end, c_end = np.nonzero(d == -1)  # row-major order pairs starts with ends
    assert np.array_equal(r_start, r_end)
    ox, oy = cmap.origin_xy
    cell = cmap.cell_px
    boxes = shapely.box(ox + c_start * cell, oy + r_start * cell, ox + c_end * cell, oy + (r_start + 1) * cell)
    geom = shapely.union_all(boxes)
    w, h = cmap.slide_size_wh
    geom = shapely.simplify(geom.intersection(shapely.box(0, 0, w, h)), 0)
    geom = make_valid(geom)
    polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon" and not g.is_empty]
    if geom.geom_type == "GeometryCollection":
        polys = [p for g in geom.geoms for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon"]
    return shapely.MultiPolygon(polys) if polys else None


def classmap_geojson(cmap: ClassMap) -> dict[str, Any]:
    """A GeoJSON FeatureCollection, one MultiPolygon annotation per class in level-0 px, as QuPath imports."""
    from shapely.geometry import mapping

    features = []
    for c, (name, colour) in enumerate(zip(cmap.class_names, class_colours(cmap.class_names))):
        geom = _class_geometry(cmap, c)
        if geom is None:
            continue
        features.append({
            "type": "Feature",
            "geometry": mapping(geom),
            "properties": {
                "objectType": "annotation",
                "name": name,
                "classification": {"name": name, "color": list(colour)},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def _geojson_text(doc: dict[str, Any]) -> str:
    return json.dumps(json_safe(doc, digits=3))


def probabilities_npz(cmap: ClassMap) -> bytes:
    """``probabilities.npz``: one float32 (rows, cols) array per class (``prob_<name>``), the class index and
    coverage grids, and the grid geometry (origin, cell size in level-0 px, scale, units, class names)."""
    arrays: dict[str, np.ndarray] = {f"prob_{n}": cmap.probabilities[..., c] for c, n in enumerate(cmap.class_names)}
    arrays.update(
        class_index=cmap.class_index,
        coverage=cmap.coverage,
        class_names=np.array(cmap.class_names),
        origin_xy_level0=np.array(cmap.origin_xy, np.float64),
        cell_px_level0=np.float64(cmap.cell_px),
        scale=np.float64(cmap.scale),
        units=np.array(cmap.units),
        downsample=np.float64(cmap.downsample),
        slide_mpp=np.float64(np.nan if cmap.slide_mpp is None else cmap.slide_mpp),
        declared_mpp=np.float64(np.nan if cmap.declared_mpp is None else cmap.declared_mpp),
        slide_size_wh=np.array(cmap.slide_size_wh, np.int64),
    )
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def plot_classmap(cmap: ClassMap, thumbnail: np.ndarray, downsample: float) -> bytes:
    """The class map over the slide's thumbnail with a legend of class areas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = np.array(class_colours(cmap.class_names), np.float64) / 255
    rgba = np.zeros((*cmap.shape, 4))
    known = cmap.class_index >= 0
    rgba[known, :3] = colours[cmap.class_index[known]]
    rgba[known, 3] = 0.5
    rows, cols = cmap.shape
    x0, y0 = cmap.origin_xy
    extent = (x0 / downsample, (x0 + cols * cmap.cell_px) / downsample,
              (y0 + rows * cmap.cell_px) / downsample, y0 / downsample)
    th, tw = thumbnail.shape[:2]
    fig, ax = plt.subplots(figsize=(7, 7 * th / max(tw, 1) + 0.6))
    ax.imshow(thumbnail)
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    ax.set_xlim(0, tw)
    ax.set_ylim(th, 0)
    areas = cmap.class_areas()
    handles = []
    for c, name in enumerate(cmap.class_names):
        a = areas[name]
        label = f"{name}: {a['area_mm2']:.3g} mm$^2$" if a["area_mm2"] is not None else f"{name}: {a['fraction']:.1%}"
        handles.append(Patch(facecolor=colours[c], label=label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    unit = "um/px" if cmap.units == "um/px" else "x downsample"
    areas_at = "" if cmap.slide_mpp is None else f"; areas at {cmap.slide_mpp:.3g} um/px"
    replaced = " (REPLACING the declared)" if cmap.mpp_replaced else ""
    ax.set_title(f"{Path(cmap.slide).name}: {cmap.model} at {cmap.scale:.3g} {unit}{areas_at}{replaced}", fontsize=9)
    ax.set_axis_off()
    return figure_png(fig)


def write_classify_report(
    cmap: ClassMap,
    out_dir: str | PathLike[str],
    *,
    thumbnail: tuple[np.ndarray, float] | None = None,
    arguments: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write classmap.png (with ``thumbnail``), probabilities.npz, classes.geojson, report.html (the class map over
    the thumbnail, class areas, settings, versions; self-contained) and, last, classify.json. ``search``: what the
    search the scale came from said (result path, status, reason, declared and implied um/px, level-0
    downsample), kept under ``"search"`` in classify.json and shown in the report."""
    out = Path(out_dir)
    written = {
        "probabilities.npz": atomic_write(out / "probabilities.npz", probabilities_npz(cmap)),
        "classes.geojson": atomic_write(out / "classes.geojson", _geojson_text(classmap_geojson(cmap))),
    }
    png = plot_classmap(cmap, *thumbnail) if thumbnail is not None else None
    if png is not None:
        written["classmap.png"] = atomic_write(out / "classmap.png", png)
    summary = cmap.summary() | ({"search": search} if search else {})
    written["report.html"] = atomic_write(out / "report.html", render_classify_page(summary, figure=png, arguments=arguments))
    written["classify.json"] = write_document(out / "classify.json", summary, arguments)
    return written


def read_search_scale(path: str | PathLike[str]) -> tuple[float, Literal["um/px", "downsample"], dict[str, Any]]:
    """(chosen scale, units, document) from a ``histoscale search`` result.json (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    fix = "run `histoscale search SLIDE --out DIR` and pass --from-search DIR/result.json"
    if not p.is_file():
        raise ConfigError(f"search result {p} does not exist: {fix}")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"search result {p} is not readable JSON ({err}): {fix}") from err
    if not isinstance(doc, dict) or "chosen_scale" not in doc or "units" not in doc:
        raise ConfigError(f"search result {p} has no 'chosen_scale' and 'units': it is not a result.json of "
                          f"`histoscale search`; {fix}")
    units = doc["units"]
    try:
        scale = float(doc["chosen_scale"])
    except (TypeError, ValueError):
        scale = float("nan")
    if units not in ("um/px", "downsample") or not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"search result {p}: chosen_scale {doc['chosen_scale']!r} {units!r} is not a positive "
                          f"scale in um/px or downsample; {fix}")
    return scale, units, doc


