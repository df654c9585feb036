"""Figure helpers shared by every report."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["figure_png", "log_axis"]


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()




def log_axis(ax: Any, scales: np.ndarray) -> None:
    """Log axis ticked at the grid's own values: the reader sees the candidate scales, not powers of ten."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    step = max(1, len(scales) // 5)
    ax.set_xticks(scales[::step], [f"{s:.3g}" for s in scales[::step]], fontsize=7)


