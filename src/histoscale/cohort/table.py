"""The cohort's results table (``results.csv``): its schema, one row per slide, read and written atomically.

Adding a column is one edit here: :data:`COLUMNS`, and its value in :meth:`ResultsTable.result_row`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histoscale._files import atomic_write
from histoscale.cohort.manifest import CohortJob
from histoscale.errors import ConfigError
from histoscale.search import ScaleResult

__all__ = ["COLUMNS", "FINAL_FLAGS", "FLAGS", "ResultsTable", "read_results"]

COLUMNS = (
    "id", "slide", "declared_mpp", "mpp_source", "implied_mpp", "ci_low", "ci_high", "confidence",
    "model_implied_mpp", "ruler_mpp", "chosen_scale", "level0_downsample", "units",
    "disagreement_steps", "flag", "message", "points_used", "seconds", "finished_at",
)
FLAGS = ("OK", "MISMATCH", "INCONCLUSIVE", "MISSING-METADATA", "UNKNOWN-MODEL-MPP", "ERROR")
FINAL_FLAGS = frozenset(FLAGS) - {"ERROR"}
_FLOAT_COLUMNS = (
    "declared_mpp", "implied_mpp", "ci_low", "ci_high", "confidence", "model_implied_mpp", "ruler_mpp", "chosen_scale",
    "level0_downsample", "disagreement_steps", "seconds",
)
_INT_COLUMNS = ("points_used",)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_row(job: CohortJob, message: str, seconds: float, resolution: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    declared, source = (job.mpp, "override" if job.mpp else None)
    if resolution is not None:  # the slide opened: what it declares is known even though the search failed
        declared, source = resolution.mpp, resolution.source
    row.update(id=job.id, slide=job.slide, declared_mpp=declared, mpp_source=source,
               flag="ERROR", message=_one_line(message), seconds=round(seconds, 3), finished_at=_now())
    return row


def _message(check: Any, result: ScaleResult) -> str:
    caveats = "".join(f" ({c})" for c in result.caveats())
    return _verdict(check, result) + caveats


def _verdict(check: Any, result: ScaleResult) -> str:
    unit = "um/px" if result.units == "um/px" else "x downsample"
    apply = f"apply at {result.estimate:.3g} {unit}"
    implied = check.implied_mpp
    if check.status == "UNKNOWN-MODEL-MPP":
        return f"{apply}; the model's training um/px is unknown, so the model cannot check the slide's um/px" + (
            f"; {check.reason}" if check.reason else "")
    lo, hi = check.implied_interval
    content = f"content implies {implied:.3g} um/px (95% CI {lo:.3g}-{hi:.3g})"
    if check.status == "MISSING-METADATA":
        return f"{apply}; no declared um/px, {content}"
    if check.status == "INCONCLUSIVE":
        return f"{apply}; declared {check.declared_mpp:.3g} um/px, {content}; no verdict: {check.reason}"
    verdict = "agrees" if check.status == "OK" else "DISAGREES: check the scanner metadata or the mpp override"
    if check.status == "MISMATCH" and result.units == "um/px":  # a um/px in wrong units is only a name
        apply = f"apply at level-0 downsample {result.level0_downsample:.3g}"
    return (
        f"{apply}; declared {check.declared_mpp:.3g} um/px ({check.declared_source}), {content}, "
        f"{check.disagreement_steps:+.1f} grid steps: {verdict}" + (f" ({check.reason})" if check.reason else "")
    )


def _result_row(job: CohortJob, result: ScaleResult, seconds: float) -> dict[str, Any]:
    check = result.check
    interval = check.implied_interval or (None, None)
    return {
        "id": job.id,
        "slide": job.slide,
        "declared_mpp": check.declared_mpp,
        "mpp_source": check.declared_source,
        "implied_mpp": check.implied_mpp,
        "ci_low": interval[0],
        "ci_high": interval[1],
        "confidence": result.confidence,
        "model_implied_mpp": check.model_implied_mpp,
        "ruler_mpp": check.ruler.mpp if check.ruler is not None else None,
        "chosen_scale": result.chosen_scale,
        "level0_downsample": result.level0_downsample,
        "units": result.units,
        "disagreement_steps": check.disagreement_steps,
        "flag": check.status,
        "message": _one_line(_message(check, result)),
        "points_used": result.points_used,
        "seconds": round(seconds, 3),
        "finished_at": _now(),
    }


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def _results_text(rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _parse_cell(column: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    if column in _FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return None
    if column in _INT_COLUMNS:
        try:
            return int(float(text))
        except ValueError:
            return None
    return text


def _read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a cohort's ``results.csv`` back into rows (numbers as float/int, empty cells as None).

    Raises:
        ConfigError: the file is not a histoscale cohort table.
    """
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "id" not in fields or "flag" not in fields:
                raise ConfigError(
                    f"{p} is not a histoscale cohort table (no 'id' and 'flag' columns): choose another --out folder"
                )
            return [{c: _parse_cell(c, r.get(c)) for c in COLUMNS} for r in reader]
    except OSError as err:
        raise ConfigError(f"cannot read {p}: {err.strerror or err}") from err


class ResultsTable:
    """``results.csv``: one row per slide with the columns :data:`COLUMNS`, flags :data:`FLAGS`.

    Rows are dicts keyed by column; numbers are float/int and empty cells None when read back.
    """

    columns = COLUMNS

    @staticmethod
    def result_row(job: CohortJob, result: ScaleResult, seconds: float) -> dict[str, Any]:
        """The row of a finished search (flag = the metadata check's status)."""
        return _result_row(job, result, seconds)

    @staticmethod
    def error_row(job: CohortJob, message: str, seconds: float, resolution: Any = None) -> dict[str, Any]:
        """The row of a slide that could not be processed (flag ``ERROR``, the reason on one line); with the
        slide's :class:`~histoscale.slide.Resolution` when it opened, its declared um/px and source."""
        return _error_row(job, message, seconds, resolution)

    @staticmethod
    def write(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write ``rows`` as the whole table, atomically."""
        return atomic_write(path, _results_text(rows))

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Read a table back (see :func:`read_results`)."""
        return _read(path)


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a cohort's ``results.csv`` back into rows (numbers as float/int, empty cells as None).

    Raises:
        ConfigError: the file is not a histoscale cohort table.
    """
    return _read(path)
