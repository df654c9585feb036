"""Outputs of a cohort for people: ``index.html`` (every slide, sortable and filterable) and its summary plot."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from histoscale._files import atomic_write
from histoscale.reports._figures import figure_png
from histoscale.reports.html import render_cohort_page
from histoscale.units import STEPS_PER_OCTAVE

__all__ = ["INDEX_NAME", "plot_declared_vs_implied", "write_cohort_index"]

INDEX_NAME = "index.html"
_FLAG_COLOURS = {"OK": "#1a7f37", "MISMATCH": "#cf222e", "INCONCLUSIVE": "#6e7781", "MISSING-METADATA": "#bf8700"}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def plot_declared_vs_implied(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Implied um/px (``implied_mpp`` with ``ci_low``-``ci_high``) against ``declared_mpp``, one point per slide,
    log-log with agreement +-1 grid step shaded; slides that declare none on a strip at the left. None when no
    row has an implied um/px yet."""
    shown = [r for r in rows if _finite(r.get("implied_mpp"))]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    declared = [r for r in shown if _finite(r.get("declared_mpp"))]
    missing = [r for r in shown if not _finite(r.get("declared_mpp"))]
    fig, (ax_none, ax) = plt.subplots(1, 2, figsize=(6.4, 4.2), sharey=True, gridspec_kw={"width_ratios": [1, 7]})
    values = [float(r["implied_mpp"]) for r in shown] + [float(r["declared_mpp"]) for r in declared]
    values += [float(r[k]) for r in shown for k in ("ci_low", "ci_high") if _finite(r.get(k))]
    lo, hi = min(values) / 1.3, max(values) * 1.3
    line = np.geomspace(lo, hi, 50)
    step = 2.0 ** (1 / STEPS_PER_OCTAVE)
    ax.fill_between(line, line / step, line * step, color="0.9", lw=0, label="\u00b11 grid step")
    ax.plot(line, line, color="0.5", lw=1)
    label_all = len(shown) <= 30  # beyond that, labels only where a reviewer must look

    def draw(axis: Any, subset: list[Mapping[str, Any]], x: list[float]) -> None:
        for row, xi in zip(subset, x):
            y = float(row["implied_mpp"])
            colour = _FLAG_COLOURS.get(str(row.get("flag")), "#6e7781")
            if _finite(row.get("ci_low")) and _finite(row.get("ci_high")):
                axis.plot([xi, xi], [row["ci_low"], row["ci_high"]], color=colour, lw=1, alpha=0.6)
            axis.plot([xi], [y], "o", color=colour, ms=5, mec="k", mew=0.4)
            if label_all or row.get("flag") == "MISMATCH":
                axis.annotate(str(row["id"]), (xi, y), xytext=(4, 3), textcoords="offset points", fontsize=7)

    draw(ax, declared, [float(r["declared_mpp"]) for r in declared])
    draw(ax_none, missing, list(np.linspace(-0.3, 0.3, len(missing)) if len(missing) > 1 else [0.0] * len(missing)))
    for axis in (ax, ax_none):
        axis.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax_none.set_xlim(-0.6, 0.6)
    ax_none.set_xticks([0], ["none"])
    ax_none.set_ylabel("implied um/px (content)")
    ax.set_xlabel("declared um/px (metadata or override)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in _FLAG_COLOURS.items()]
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *handles], fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.5, not 5x10^-1: um/px as people write them
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.tick_params(which="minor", labelsize=7)
    fig.tight_layout()
    return figure_png(fig)


def write_cohort_index(
    out_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    total: int,
    report_dirs: Mapping[str, str | os.PathLike[str]],
    settings: str | None = None,
) -> Path:
    """Write ``out_dir/index.html`` atomically: every row of the results table, MISMATCH and ERROR first.

    ``report_dirs`` maps a row's ``id`` to the folder of its search report; its ``report.html`` and
    ``thumbnail.jpg`` are linked when they exist. ``total`` is the number of slides in the manifest; ``settings``
    one line saying how the slides were searched (model, calibration, search), shown under the title.
    """
    out = Path(out_dir)
    links: dict[str, dict[str, str]] = {}
    for row in rows:
        folder = report_dirs.get(str(row["id"]))
        if folder is None:
            continue
        folder = Path(folder)
        link = {}
        for key, name in (("report", "report.html"), ("thumbnail", "thumbnail.jpg")):
            if (folder / name).is_file():
                link[key] = quote(Path(os.path.relpath(folder / name, out)).as_posix())
        links[str(row["id"])] = link
    page = render_cohort_page(rows, total=total, links=links, plot=plot_declared_vs_implied(rows), settings=settings)
    return atomic_write(out / INDEX_NAME, page)

