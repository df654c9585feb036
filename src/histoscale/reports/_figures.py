"""Figure helpers shared by every report."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from histoscale.patches import resample

__all__ = ["figure_png", "log_axis", "thumbnail_jpeg"]


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def thumbnail_jpeg(rgb: np.ndarray, max_side: int = 200) -> bytes:
    """A small JPEG of an (H, W, 3) uint8 image, its longer side ``max_side`` px (never enlarged)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    ratio = min(1.0, max_side / max(h, w, 1))
    small = resample(rgb, (max(1, round(w * ratio)), max(1, round(h * ratio)))) if ratio < 1 else rgb
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(small)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def log_axis(ax: Any, scales: np.ndarray) -> None:
    """Log axis ticked at the grid's own values: the reader sees the candidate scales, not powers of ten."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    step = max(1, len(scales) // 5)
    ax.set_xticks(scales[::step], [f"{s:.3g}" for s in scales[::step]], fontsize=7)


