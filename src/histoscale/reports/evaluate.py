"""Outputs of a per-scale evaluation: accuracy.csv, the rich table, the accuracy plot, evaluate.json."""

from __future__ import annotations

import csv
import io
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from histoscale._files import atomic_write
from histoscale.classify import class_colours
from histoscale.evaluate import ScaleAccuracy
from histoscale.reports._figures import figure_png
from histoscale.reports._provenance import write_document

__all__ = ["accuracy_csv", "plot_accuracy", "rich_table", "write_evaluate_report"]


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

    out = Path(out_dir)
    written = {
        "accuracy.csv": atomic_write(out / "accuracy.csv", accuracy_csv(result)),
        "accuracy.png": atomic_write(out / "accuracy.png", plot_accuracy(result)),
    }
    written["evaluate.json"] = write_document(out / "evaluate.json", result.to_dict(), arguments)
    return written


