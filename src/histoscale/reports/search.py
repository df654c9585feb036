"""Reports of a scale search: result.json, points.csv, the figures and report.html, written atomically."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from histoscale._files import atomic_write
from histoscale.aggregate import pooled_curve
from histoscale.reports._figures import figure_png, log_axis, thumbnail_jpeg
from histoscale.reports._provenance import write_document
from histoscale.reports.html import render_search_page
from histoscale.search import ScaleResult

__all__ = ["plot_curves", "plot_overview", "plot_votes", "points_csv", "write_search_report"]


_SCORE_LABELS = {"paper": "projection x.w/||w|| (bias ignored)", "softmax": "probability", "entropy": "probability"}


def _unit_label(result: ScaleResult) -> str:
    return "um/px" if result.units == "um/px" else "downsample from level 0"


def plot_curves(result: ScaleResult, *, max_points: int = 5) -> bytes:
    """The pooled curve, then the paper's Fig. 4: per point, each class's score against scale.

    The first panel shows the informative points' curves (grey) and their mean, the pooled curve (black) that the
    pooled aggregation maximises; then ``max_points`` points, one per class where possible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    informative = np.flatnonzero(result.point_answers.informative)
    classes = result.point_classes
    chosen: list[int] = []
    for c in range(len(result.class_names)):
        hits = [i for i in informative if classes[i] == c]
        if hits:
            chosen.append(int(hits[0]))
    chosen += [int(i) for i in informative if i not in chosen]
    chosen = chosen[:max_points] or [0]
    columns = min(3, len(chosen) + 1)
    rows = -(-(len(chosen) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False, sharex=True)
    flat = axes.ravel()
    ax = flat[0]
    if informative.size:
        curves = result.curves[informative]
        ax.plot(result.scales, curves[:50].T, color="0.75", lw=0.6)
        ax.plot(result.scales, pooled_curve(curves), color="k", lw=2.2, marker="o", ms=3)
    if result.over_points and result.slide_curve is not None:
        # what decided is a statistic over the points, not the mean of their curves: drawn on its own axis
        info = ax.twinx()
        shown = np.where(np.isfinite(result.slide_curve), result.slide_curve, np.nan)
        info.plot(result.scales, shown, color="tab:blue", lw=2, marker="s", ms=3)
        label = ("H(mean p) - mean H(p), nats" if result.aggregation == "infomax"
                 else "- BatchNorm drift of the pooled moments")
        info.set_ylabel(label, fontsize=8, color="tab:blue")
    peak = "information peak" if result.aggregation == "infomax" else f"{result.scorer} peak"
    ax.axvline(result.scales[result.chosen_index], color="tab:orange", lw=1.5, label=peak)
    calibrated = " (calibrated)" if result.calibration is not None else ""
    ax.axvline(result.estimate, color="k", ls="--", lw=1, label=f"apply at{calibrated}")
    ax.legend(fontsize=7, loc="lower center")
    log_axis(ax, result.scales)
    ax.set_title(f"pooled: {informative.size} informative points", fontsize=9)
    ax.set_ylabel(f"{result.scorer} score", fontsize=8)
    for ax, i in zip(flat[1:], chosen):
        for c, name in enumerate(result.class_names):
            ax.plot(result.scales, result.class_scores[i, :, c], marker="o", ms=3, label=name)
        ax.axvline(result.scales[result.point_answers.best_index[i]], color="k", ls=":", lw=1)
        log_axis(ax, result.scales)
        ax.set_title(f"point {i}: {result.class_names[classes[i]]}, {result.point_answers.shape[i]}", fontsize=9)
    for ax in flat[len(chosen) + 1:]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel(_unit_label(result), fontsize=8)
    flat[1].set_ylabel(_SCORE_LABELS.get(result.scorer, "signed distance (x.w+b)/||w||"), fontsize=8)
    flat[len(chosen)].legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def plot_votes(result: ScaleResult) -> bytes:
    """The paper's Fig. 5: how many points voted for each scale, the pooled curve's peak on the grid (orange) and
    the continuous answer (dashed; moved by the model's calibration when applied, drawn at the grid's edge if beyond
    it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{s:.3g}" for s in result.scales]
    colours = ["tab:orange" if i == result.chosen_index else "tab:blue" for i in range(len(labels))]
    ax.bar(range(len(labels)), result.votes, color=colours)
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    ax.set_xlabel(_unit_label(result))
    ax.set_ylabel("point votes")
    log_scales = np.log2(result.scales)
    position = np.interp(np.log2(result.estimate), log_scales, np.arange(len(labels)))
    calibrated = " (calibrated)" if result.calibration is not None else ""
    ax.axvline(position, color="k", ls="--", lw=1, label=f"apply at {result.estimate:.3g}{calibrated}")
    ax.set_title(f"{result.points_informative} informative of {result.points_used} points", fontsize=9)
    ax.legend(fontsize=8)
    return figure_png(fig)


def plot_overview(result: ScaleResult, thumbnail: np.ndarray, downsample: float) -> bytes:
    """The slide's thumbnail with each point coloured by the scale it voted for (grey: flat, no vote)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6 * thumbnail.shape[0] / max(thumbnail.shape[1], 1) + 0.5))
    ax.imshow(thumbnail)
    xy = result.points_xy / downsample
    informative = result.point_answers.informative
    ax.scatter(xy[~informative, 0], xy[~informative, 1], c="lightgrey", s=14, edgecolors="k", linewidths=0.3)
    points = ax.scatter(
        xy[informative, 0], xy[informative, 1], c=result.point_answers.best_index[informative], cmap="viridis",
        vmin=0, vmax=len(result.scales) - 1, s=18, edgecolors="k", linewidths=0.3,
    )
    bar = fig.colorbar(points, ax=ax, fraction=0.04)
    bar.set_ticks(range(len(result.scales)), labels=[f"{s:.3g}" for s in result.scales])
    bar.set_label(_unit_label(result))
    ax.set_axis_off()
    return figure_png(fig)


def points_csv(result: ScaleResult) -> str:
    """One row per point: position, chosen scale, curve shape, class and its score there."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["point", "x", "y", "scale", "estimate", "shape", "informative", "class", "distance"])
    answers = result.point_answers
    classes = result.point_classes
    for i, (x, y) in enumerate(result.points_xy):
        best = answers.best_index[i]
        writer.writerow([
            i, f"{x:.1f}", f"{y:.1f}", f"{result.scales[best]:.6g}", f"{2.0 ** answers.log2_estimate[i]:.6g}",
            answers.shape[i], int(answers.informative[i]), result.class_names[classes[i]],
            f"{result.class_scores[i, best, classes[i]]:.6g}",
        ])
    return buf.getvalue()


def write_search_report(
    result: ScaleResult,
    out_dir: str | os.PathLike[str],
    *,
    thumbnail: tuple[np.ndarray, float] | None = None,
    arguments: Mapping[str, Any] | None = None,
    figures: bool = True,
) -> dict[str, Path]:
    """Write points.csv, (with ``figures``) curves.png, votes.png, overview.png and thumbnail.jpg, report.html and,
    last, result.json into ``out_dir``.

    ``thumbnail`` is ``(rgb, downsample)`` as returned by ``Slide.thumbnail()``; without it no overview is drawn.
    report.html shows the verdict, the figures (inlined: the page is self-contained), the settings and versions.
    Returns the written paths by name. result.json is written last, so its presence means the folder is complete.
    """
    out = Path(out_dir)
    written: dict[str, Path] = {"points.csv": atomic_write(out / "points.csv", points_csv(result))}
    pngs: dict[str, bytes] = {}
    if figures:
        pngs["curves"] = plot_curves(result)
        pngs["votes"] = plot_votes(result)
        if thumbnail is not None:
            pngs["overview"] = plot_overview(result, *thumbnail)
            written["thumbnail.jpg"] = atomic_write(out / "thumbnail.jpg", thumbnail_jpeg(thumbnail[0]))
        for name, png in pngs.items():
            written[f"{name}.png"] = atomic_write(out / f"{name}.png", png)
    page = render_search_page(result, figures=pngs, arguments=arguments)
    written["report.html"] = atomic_write(out / "report.html", page)
    written["result.json"] = write_document(out / "result.json", result.to_dict(), arguments)
    return written
