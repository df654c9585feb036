"""Calibrate a model's scale search on slides whose um/px is trusted (:mod:`histoscale.calibration`).

Each slide is searched as a user would search it (the given :class:`~histoscale.search.SearchConfig`, calibration
off), and the um/px its patches had where the margins peaked is its trusted level-0 um/px times the level-0
downsample of the estimate. A slide that cannot be read or searched, or whose um/px is unknown, is skipped and
recorded with the reason; the others' results are kept.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from histoscale._progress import progress_bar
from histoscale.calibration import ScaleCalibration, fit_calibration, require_slides
from histoscale.cohort.manifest import CohortJob, jobs_from
from histoscale.errors import HistoscaleError, MissingMppError
from histoscale.models import SplitModel, load_model
from histoscale.search import SearchConfig, find_scale
from histoscale.slide import open_slide
from histoscale.units import STEPS_PER_OCTAVE

__all__ = ["LOW_CONFIDENCE", "CalibrationRun", "calibrate_model"]

#: A search this unsure of its own answer (share of bootstrap resamples agreeing) is flagged in the table: its peak
#: is kept (the scatter must be honest) but a user should look at the slide.
LOW_CONFIDENCE = 0.5


@dataclass(frozen=True)
class CalibrationRun:
    """The fitted ``calibration`` and one row per slide: ``id``, ``slide``, ``trusted_mpp``, ``mpp_source``,
    ``peak_mpp`` (um/px of the patches where the margins peaked), ``steps_from_model_mpp`` (that against the
    model's training um/px, in quarter-octave steps; positive: coarser), ``confidence`` (the search's: share of
    bootstrap resamples with the same answer; below :data:`LOW_CONFIDENCE` the table says to check the slide) and
    ``skipped`` (the reason, or None)."""

    calibration: ScaleCalibration
    rows: tuple[dict[str, Any], ...]

    def table(self) -> str:
        """The rows as aligned text, for the terminal."""
        lines = [f"{'slide':<32} {'trusted um/px':>13} {'peak um/px':>10} {'steps':>6} {'conf.':>5}  note"]
        for row in self.rows:
            peak = f"{row['peak_mpp']:.3g}" if row["peak_mpp"] is not None else "-"
            steps = f"{row['steps_from_model_mpp']:+.2f}" if row["steps_from_model_mpp"] is not None else "-"
            trusted = f"{row['trusted_mpp']:.4g}" if row["trusted_mpp"] is not None else "-"
            confidence = f"{row['confidence']:.0%}" if row["confidence"] is not None else "-"
            note = f"skipped: {row['skipped']}" if row["skipped"] else row["mpp_source"]
            if row["confidence"] is not None and row["confidence"] < LOW_CONFIDENCE:
                note += "; LOW confidence: its peak is unsure, check the slide (tissue, focus) or leave it out"
            lines.append(f"{row['id'][:32]:<32} {trusted:>13} {peak:>10} {steps:>6} {confidence:>5}  {note}")
        return "\n".join(lines)


def _peak_mpp(job: CohortJob, model: SplitModel, config: SearchConfig) -> tuple[float, float, str, float]:
    """(trusted um/px, peak um/px, source of the trusted um/px, the search's confidence) of one slide."""
    with open_slide(job.slide, slide_mpp=job.mpp) as slide:
        res = slide.resolution
        if res is None:
            raise MissingMppError(
                "its um/px is unknown: a calibration needs slides of trusted um/px (give it in the manifest's "
                "slide_mpp column, or leave the slide out)"
            )
        trusted = slide.level0_mpp()
        result = find_scale(slide, model, config)
    # the estimate in um/px is already the patches' um/px; in downsample units it needs the level-0 um/px
    peak = result.estimate if result.units == "um/px" else trusted * result.estimate
    return trusted, peak, "manifest" if job.mpp is not None else res.source, result.confidence


def calibrate_model(
    model: Any,
    slides: Sequence[Any] | str | os.PathLike[str],
    config: SearchConfig | None = None,
    *,
    progress: bool = False,
) -> CalibrationRun:
    """Measure where ``model``'s margins peak on ``slides`` of trusted um/px.

    Args:
        model: a loaded :class:`~histoscale.models.SplitModel` or anything :func:`~histoscale.models.load_model`
            takes (None: the bundled reference model). Its own calibration, if any, is not applied.
        slides: a manifest CSV (``slide`` and ``slide_mpp`` columns) or paths / ``{"slide", "mpp"}`` mappings /
            :class:`~histoscale.cohort.CohortJob` s; a slide's trusted um/px is the manifest's, else its own
            metadata.
        config: the search to calibrate (default: the default search); calibration is turned off for the run.

    Raises:
        ConfigError: fewer than three slides could be measured (the message lists why each was skipped).
    """
    if not hasattr(model, "features"):
        model = load_model(model)
    config = (config or SearchConfig()).replace(calibrated=False)
    jobs = jobs_from(slides)
    rows: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("calibration", total=len(jobs)) if bar is not None else None
        for job in jobs:
            row: dict[str, Any] = {"id": job.id, "slide": job.slide, "trusted_mpp": job.mpp, "mpp_source": None,
                                   "peak_mpp": None, "steps_from_model_mpp": None, "confidence": None, "skipped": None}
            try:
                trusted, peak, source, confidence = _peak_mpp(job, model, config)
            except HistoscaleError as err:
                row["skipped"] = str(err)
            else:
                row.update(trusted_mpp=trusted, mpp_source=source, peak_mpp=peak, confidence=confidence)
                if model.mpp is not None:
                    row["steps_from_model_mpp"] = STEPS_PER_OCTAVE * math.log2(peak / model.mpp)
            rows.append(row)
            if bar is not None:
                bar.update(task, advance=1)
    measured = [r["peak_mpp"] for r in rows if r["peak_mpp"] is not None]
    trusted = [r["trusted_mpp"] for r in rows if r["peak_mpp"] is not None]
    skipped = "; ".join(f"{r['id']}: {r['skipped']}" for r in rows if r["skipped"])
    require_slides(len(measured), detail=" measured" + (f"; skipped: {skipped}" if skipped else ""))
    date = _dt.date.today().isoformat()
    fitted = fit_calibration(measured, slide_mpps=trusted, source=f"histoscale calibrate, {len(measured)} slides of trusted um/px, {date}")
    calibration = dataclasses.replace(fitted, scorer=config.scorer, aggregation=config.aggregation)
    return CalibrationRun(calibration, tuple(rows))
