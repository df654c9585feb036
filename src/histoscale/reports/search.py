"""Reports of a scale search: result.json, points.csv and the three figures, written atomically."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from histoscale._files import atomic_write
from histoscale.reports._figures import figure_png, log_axis
from histoscale.reports._provenance import write_document
from histoscale.search import ScaleResult

__all__ = ["plot_curves", "plot_overview", "plot_votes", "points_csv", "write_search_report"]


_SCORE_LABELS = {"paper": "projection x.w/||w|| (bias ignored)", "softmax": "probability", "entropy": "probability"}


def _unit_label(result: ScaleResult) -> str:
    return "um/px" if result.units == "um/px" else "downsample from level 0"


def plot_curves(result: ScaleResult, *, max_points: int = 5) -> bytes:
    """The paper's Fig. 4: per class, the score against scale for a few points (one per class where possible)."""
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
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.0), squeeze=False, sharex=True)
    for ax, i in zip(axes[0], chosen):
        for c, name in enumerate(result.class_names):
            ax.plot(result.scales, result.class_scores[i, :, c], marker="o", ms=3, label=name)
        ax.axvline(result.scales[result.point_answers.best_index[i]], color="k", ls=":", lw=1)
        log_axis(ax, result.scales)
        ax.set_title(f"point {i}: {result.class_names[classes[i]]}, {result.point_answers.shape[i]}", fontsize=9)
        ax.set_xlabel(_unit_label(result), fontsize=8)
    axes[0][0].set_ylabel(_SCORE_LABELS.get(result.scorer, "signed distance (x.w+b)/||w||"), fontsize=8)
    axes[0][-1].legend(fontsize=7)
    return figure_png(fig)


def plot_votes(result: ScaleResult) -> bytes:
    """The paper's Fig. 5: how many points voted for each scale, the winner and the continuous estimate."""
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
    ax.axvline(position, color="k", ls="--", lw=1, label=f"estimate {result.estimate:.3g}")
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
    """Write result.json, points.csv and (with ``figures``) curves.png, votes.png, overview.png into ``out_dir``.

    ``thumbnail`` is ``(rgb, downsample)`` as returned by ``Slide.thumbnail()``; without it no overview is drawn.
    Returns the written paths by name. result.json is written last, so its presence means the folder is complete.
    """
    out = Path(out_dir)
    written: dict[str, Path] = {"points.csv": atomic_write(out / "points.csv", points_csv(result))}
    if figures:
        written["curves.png"] = atomic_write(out / "curves.png", plot_curves(result))
        written["votes.png"] = atomic_write(out / "votes.png", plot_votes(result))
        if thumbnail is not None:
            written["overview.png"] = atomic_write(out / "overview.png", plot_overview(result, *thumbnail))
    written["result.json"] = write_document(out / "result.json", result.to_dict(), arguments)
    return written


