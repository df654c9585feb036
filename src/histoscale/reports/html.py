"""The HTML pages: a search's and a classification's ``report.html`` and a cohort's ``index.html``.

Pages are rendered from the Jinja2 templates in ``reports/templates`` with autoescaping on, so slide names,
paths and error messages are shown as text, never run as markup. A report page is self-contained: its figures
are inlined as ``data:`` URIs and its Content-Security-Policy lets it load nothing else, so it can be mailed
or archived on its own. The cohort page is small and rewritten after every slide: it links to each slide's
folder (its ``report.html`` and ``thumbnail.jpg``) instead of inlining them, and its only script is inline.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from histoscale.reports._provenance import machine, versions
from histoscale.search import ScaleResult

__all__ = ["FLAG_ORDER", "data_uri", "render_classify_page", "render_cohort_page", "render_search_page"]

#: The cohort page's default order: the rows a reviewer must act on first.
FLAG_ORDER = ("MISMATCH", "INCONCLUSIVE", "ERROR", "MISSING-METADATA", "UNKNOWN-MODEL-MPP", "OK")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of ``data`` (base64), for inlining an image into a page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _number(value: Any, spec: str = ".3g") -> str:
    """``value`` formatted with ``spec``; an en dash for None, NaN or infinity (nothing to show)."""
    if value is None:
        return "\u2013"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return format(v, spec) if math.isfinite(v) else "\u2013"


@cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("histoscale.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing value is a bug in histoscale, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    return env


def _render(template: str, **context: Any) -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return str(_environment().get_template(template).render(
        versions=versions(), machine=machine(), created=now, **context
    ))


def render_search_page(
    result: ScaleResult, *, figures: Mapping[str, bytes], arguments: Mapping[str, Any] | None = None
) -> str:
    """A search's ``report.html``: the verdict, the figures (PNG bytes by name: ``overview``, ``curves``,
    ``votes``; any may be missing) inlined, the settings and the versions."""
    return _render(
        "search.html.j2", r=result, c=result.check, slide_name=Path(result.slide).name, arguments=dict(arguments or {}),
        figures={name: data_uri(png) for name, png in figures.items()},
    )


def render_classify_page(
    summary: Mapping[str, Any], *, figure: bytes | None, arguments: Mapping[str, Any] | None = None
) -> str:
    """A classification's ``report.html`` from its ``summary`` (what classify.json holds) and the class map
    over the thumbnail (PNG bytes, or None)."""
    return _render(
        "classify.html.j2", s=summary, slide_name=Path(str(summary["slide"])).name, arguments=dict(arguments or {}),
        figure=data_uri(figure) if figure is not None else None,
    )


def render_cohort_page(
    rows: Sequence[Mapping[str, Any]], *, total: int, links: Mapping[str, Mapping[str, str]],
    plot: bytes | None, title: str = "histoscale cohort", settings: str | None = None,
) -> str:
    """A cohort's ``index.html``: one row per finished slide, MISMATCH then ERROR rows first.

    Args:
        rows: results-table rows (``id``, ``slide``, ``flag``, ``declared_mpp``, ``mpp_source``,
            ``implied_mpp``, ``ci_low``, ``ci_high``, ``chosen_scale``, ``units``, ``disagreement_steps``,
            ``message``, ``seconds``), in manifest order.
        total: slides in the manifest (the page says how many have finished).
        links: per row id, ``report`` and ``thumbnail``: URLs relative to the page, for those that exist.
        plot: the declared vs implied um/px figure (PNG bytes), or None.
        settings: one line saying how the slides were searched, or None.
    """
    rank = {flag: i for i, flag in enumerate(FLAG_ORDER)}

    def priority(item: tuple[int, Mapping[str, Any]]) -> tuple[int, float, int]:
        i, row = item
        steps = row.get("disagreement_steps")
        return rank.get(str(row.get("flag")), len(rank)), -abs(steps) if steps is not None else 0.0, i

    ordered = [row for _, row in sorted(enumerate(rows), key=priority)]
    counts = {flag: sum(1 for r in rows if r.get("flag") == flag) for flag in FLAG_ORDER}
    return _render(
        "cohort.html.j2", rows=ordered, total=total, links=links, rank=rank, counts=counts,
        plot=data_uri(plot) if plot is not None else None, title=title, settings=settings,
    )
