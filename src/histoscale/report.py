"""Reports of a scale search: result.json, points.csv and the three figures, written atomically.

Every file lands through a temporary file in the same folder and ``os.replace``: a crash or a full disk leaves
the previous file (or none), never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from histoscale.atomic import atomic_path
from histoscale.errors import HistoscaleError
from histoscale.search import ScaleResult

__all__ = [
    "atomic_write", "check_writable", "figure_png", "json_safe", "machine", "versions", "write_document",
    "write_search_report",
]


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` all-or-nothing; errors name the file and the likely fix."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with atomic_path(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise HistoscaleError(
            f"cannot write {path}: {err.strerror or err}; choose a writable --out folder with free space"
        ) from err
    return path


def check_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there, before any long computation.

    Raises HistoscaleError naming the folder (e.g. a path under a regular file, a read-only or full disk).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".histoscale-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise HistoscaleError(
            f"cannot write to the output folder {out}: {err.strerror or err}; choose a writable --out folder"
        ) from err
    return out


def versions() -> dict[str, str]:
    """Versions of what produced a result, for reproducibility."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("histoscale", "numpy", "torch", "onnxruntime", "openslide-python", "openslide-bin", "tiffslide"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    """CPU model and core count, for benchmark and result provenance."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def json_safe(value: Any, *, digits: int | None = None) -> Any:
    """``value`` with every float made valid JSON (NaN and infinities become null), rounded to ``digits``."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, digits) if digits is not None else value
    if isinstance(value, dict):
        return {k: json_safe(v, digits=digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, digits=digits) for v in value]
    return value


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


_SCORE_LABELS = {"paper": "projection x.w/||w|| (bias ignored)", "softmax": "probability", "entropy": "probability"}


def _log_axis(ax: Any, scales: np.ndarray) -> None:
    """Log axis ticked at the grid's own values: the reader sees the candidate scales, not powers of ten."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    step = max(1, len(scales) // 5)
    ax.set_xticks(scales[::step], [f"{s:.3g}" for s in scales[::step]], fontsize=7)


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
        _log_axis(ax, result.scales)
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


def write_document(path: str | os.PathLike[str], document: dict[str, Any], arguments: Mapping[str, Any] | None) -> Path:
    """Write a JSON result atomically with the arguments and versions that produced it (NaN written as null)."""
    document = {**document, "arguments": dict(arguments or {}), "versions": versions()}
    return atomic_write(path, json.dumps(json_safe(document), indent=2, default=str))
