"""What a search found: the answer, its uncertainty, the per-point evidence, and the metadata check."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from histoscale._files import json_safe
from histoscale.aggregate import PointAnswers
from histoscale.calibration import ScaleCalibration
from histoscale.domain import DomainCheck
from histoscale.ruler import RulerEstimate
from histoscale.search._combine import Reading, combine
from histoscale.units import Units, steps_between

__all__ = [
    "WIDEST_DECIDING_INTERVAL", "MetadataCheck", "ScaleResult", "ScanSummary", "grid_edge", "metadata_check",
    "through_model",
]

#: An answer whose 95% interval is wider than this (octaves) cannot tell a correct declaration from one off by 2x.
WIDEST_DECIDING_INTERVAL = 1.5


@dataclass(frozen=True)
class MetadataCheck:
    """The content-based estimate against the slide's declared resolution.

    ``implied_mpp`` is the slide's level-0 um/px the content implies: the model's (its continuous estimate through
    its training um/px: ``model_implied_mpp``) combined with the ruler's where both measured and are consistent
    (``search._combine``), the model's alone otherwise. It is the number the status, the summary, the report, the
    cohort table and ``classify --from-search`` use; ``implied_interval`` is its 95% interval;
    ``implied_grid_mpp`` is the model's from the grid scale alone; ``disagreement_steps`` is
    log2(implied_mpp / declared) in grid steps; ``status`` is ``OK`` (within one step), ``MISMATCH``,
    ``INCONCLUSIVE`` (the slide lies outside what the model was trained on, the evidence is too vague, or the model
    and the ruler contradict each other; ``reason`` says which and why: neither OK nor MISMATCH is asserted),
    ``MISSING-METADATA`` (no declared um/px: the implied one is the only one) or ``UNKNOWN-MODEL-MPP`` (the
    model's training um/px is unknown: only the ruler checks the declared um/px, ``reason`` says how).

    ``rivals_implied``: the slide's um/px that each rival peak of the scan would imply (see ``ScanSummary.rivals``).
    ``ruler`` is the model-free estimate from the size of the nuclei (:func:`histoscale.measure_mpp`; None when
    not measured); ``ruler_agrees`` whether the model's and the ruler's readings are consistent (their difference
    within 1.96 sd of its uncertainty; None when either is missing). The rule is :func:`metadata_check`'s.
    """

    status: str
    declared_mpp: float | None
    declared_source: str | None
    model_mpp: float | None
    implied_grid_mpp: float | None
    implied_mpp: float | None
    implied_interval: tuple[float, float] | None
    disagreement_steps: float | None
    reason: str | None = None
    ruler: RulerEstimate | None = None
    ruler_agrees: bool | None = None
    rivals_implied: tuple[float, ...] = ()  # the slide um/px each rival peak of the scan would imply
    model_implied_mpp: float | None = None  # the model's own implied um/px (implied_mpp without the ruler)
    model_implied_interval: tuple[float, float] | None = None  # its 95% interval


@dataclass(frozen=True)
class ScanSummary:
    """The default search's sparse scan over the whole plausible range: its ``scales`` (N,) in the result's units,
    the ``pooled_curve`` (N,) of its informative points (mean standardised score: over the whole range no point may
    outvote the rest), the ``peak`` the fine grid was centred on (an interior maximum rather than a rise at the
    range's edge: :func:`histoscale.aggregate.scan_peak`), ``rivals``: scales of other peaks nearly as high, at least
    an octave away, and the ``points`` and ``patches`` it cost."""

    scales: np.ndarray
    pooled_curve: np.ndarray
    peak: float
    points: int
    rivals: tuple[float, ...] = ()

    @property
    def patches(self) -> int:
        return self.points * len(self.scales)

    def to_dict(self) -> dict[str, Any]:
        return {"scales": self.scales.tolist(), "pooled_curve": self.pooled_curve.tolist(), "peak": self.peak,
                "rivals": list(self.rivals), "points": self.points, "patches": self.patches}


@dataclass(frozen=True)
class ScaleResult:
    """Everything the search found; ``to_dict()`` / ``to_json()`` serialise it.

    ``chosen_scale``, ``estimate`` and ``interval`` say where to apply the model. Without ``calibration`` that is
    where its margins peak (``scales[chosen_index]``, the paper's answer); with it, that scale moved by
    ``calibration.apply`` (to where the model sees its training um/px), the interval widened by the calibration's
    slide-to-slide scatter. Where the check combined the model's reading of the slide's um/px with the nuclei's
    (``check.implied_mpp`` differs from ``check.model_implied_mpp``), ``estimate`` and ``interval`` follow the
    combination: the scale at which the model sees its reference um/px on a slide of ``check.implied_mpp``;
    ``chosen_scale`` stays the model's grid answer. ``confidence`` is the share of bootstrap resamples of the
    informative points that pick the same grid scale, ``scales[chosen_index]``: it measures the model's points
    only, not the nuclei's reading, and not the seed-to-seed spread of an adaptive search (CMU-1, seeds 0-7: 67-97%
    beside two grid answers a step apart; BENCHMARKS.md).
    """

    slide: str
    model: str
    units: Units
    scorer: str
    aggregation: str
    sampling: str
    seed: int
    scales: np.ndarray
    chosen_index: int
    chosen_scale: float
    estimate: float
    interval: tuple[float, float]
    confidence: float
    votes: np.ndarray
    points_requested: int
    points_used: int
    points_informative: int
    stopped_early: bool
    widenings: tuple[str, ...]
    check: MetadataCheck
    class_names: tuple[str, ...]
    points_xy: np.ndarray = field(repr=False)
    curves: np.ndarray = field(repr=False)
    class_scores: np.ndarray = field(repr=False)
    point_answers: PointAnswers = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    patches_scored: int = 0  # patches the model saw, the scan's included
    scan: ScanSummary | None = None  # the default search's sparse scan (None for a fixed grid)
    calibration: ScaleCalibration | None = None  # the model's calibration the answer applies (None: uncalibrated)
    model_info: dict[str, Any] = field(default_factory=dict)  # SplitModel.describe(): what the model is, from where
    focus: tuple[str, ...] = ()  # each narrowing of the scales later points were read at (their curves: NaN elsewhere)
    domain: DomainCheck | None = None  # the slide's patches against the model's training features (None: not recorded)
    points_damaged: int = 0  # points skipped because their patches touch tiles that do not decode
    #: the damaged tiles the search met, (level, x, y, width, height) in px of that level (the whole box read where
    #: the reader cannot say which tile)
    damaged_tiles: tuple[tuple[int, int, int, int, int], ...] = ()
    #: (N,) the curve the answer is the argmax of, over the informative points: the pooled curve of ``curves``; for
    #: the ``infomax`` aggregation the information H(mean p) - mean H(p) in nats; for ``bn-stats`` minus the
    #: BatchNorm drift of the moments pooled over the points. -inf (null in result.json) at a scale no point read
    #: (the focus reads later points only near the answer). None: not recorded
    slide_curve: np.ndarray | None = field(default=None, repr=False)

    @property
    def over_points(self) -> bool:
        """Whether the answer maximises a statistic over the points (``infomax``, ``bn-stats``: ``slide_curve``)
        rather than the mean of their curves."""
        return self.aggregation == "infomax" or self.scorer == "bn-stats"

    @property
    def criterion(self) -> str:
        """What the answer maximises, in words (for the summary and the report)."""
        if self.aggregation == "infomax":
            return "information between point and predicted class"
        return {"bn-stats": "agreement with its BatchNorm statistics", "feature-stats": "closeness to its training "
                "features", "stability": "agreement under transposition", "activation": "activation count"}.get(
            self.scorer, "margin" if self.scorer in ("margin", "paper") else f"{self.scorer} score")

    @property
    def edge(self) -> str | None:
        """``"fine"`` / ``"coarse"`` when the answer is the final grid's edge (the peak was not bracketed)."""
        return grid_edge(self.chosen_index, len(self.scales))

    @property
    def decided(self) -> bool:
        """Whether the answer's 95% interval is narrow enough to act on (at most ``WIDEST_DECIDING_INTERVAL``
        octaves); when not, the summary and the report say so instead of a scale to apply."""
        lo, hi = self.interval
        return math.log2(hi / lo) <= WIDEST_DECIDING_INTERVAL

    @property
    def level0_downsample(self) -> float | None:
        """Level-0 px per model px at the continuous answer: what to read, whatever the declared um/px is worth
        (None in um/px units without a declared um/px, which cannot happen for a finished search)."""
        if self.units == "downsample":
            return self.estimate
        declared = self.check.declared_mpp
        return self.estimate / declared if declared else None

    @property
    def point_classes(self) -> np.ndarray:
        """Per point, the class whose score is highest at the point's chosen scale."""
        rows = np.arange(len(self.curves))
        return self.class_scores[rows, self.point_answers.best_index].argmax(axis=1)

    def caveats(self) -> list[str]:
        """What qualifies the answer beyond its status, one sentence each: the summary, the report page and the
        cohort message all show them."""
        out = []
        if self.edge is not None:
            peak = self._scale_text(float(self.scales[self.chosen_index]))
            out.append(f"the model's {self.criterion} peaks at the {self.edge}st scale tried ({peak}): the peak was "
                       "not bracketed, the true scale may lie beyond what this slide or the scales allow")
        if self.widenings:
            out.append(f"grid widened past its ends: {'; '.join(self.widenings)}")
        if self.scan is not None and self.scan.rivals:
            values = [f"{r:.3g}" for r in self.scan.rivals]
            others = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]
            where = f"{others} um/px" if self.units == "um/px" else f"downsample {others}"
            out.append(f"the scan also peaked at {where}: a model's {self.criterion} far from its scale can "
                       "mislead; check the curves")
        if self.points_damaged or self.damaged_tiles:
            shown = [f"level {lv} x={x} y={y} {w}x{h} px" for lv, x, y, w, h in self.damaged_tiles[:5]]
            more = len(self.damaged_tiles) - len(shown)
            tiles = "; ".join(shown) + (f"; {more} more" if more > 0 else "")
            out.append(f"{self.points_damaged} of {self.points_used + self.points_damaged} points skipped: their "
                       f"patches touch damaged tiles of the file ({tiles}); the answer is from the rest; copy the file "
                       "again, or export or scan it again")
        missing = self.model_info.get("missing")
        if missing:
            out.append(f"model's {' and '.join(missing)} unknown: defaults assumed, the answer rests on them")
        return out

    def _scale_text(self, *scales: float, named: bool = True) -> str:
        """One scale or a range (``lo``, ``hi``) as the summary shows it: in um/px, or as a level-0 downsample where
        the scales are downsamples or the declared um/px is wrong (a scale in its units would only be a name);
        ``named=False`` leaves the unit out."""
        c = self.check
        as_downsample = self.units != "um/px" or (c.status == "MISMATCH" and bool(c.declared_mpp))
        per = c.declared_mpp if self.units == "um/px" and as_downsample and c.declared_mpp else 1.0
        values = "-".join(f"{v / per:.3g}" for v in scales)
        if not named:
            return values
        return f"level-0 downsample {values}" if as_downsample else f"{values} um/px"

    def summary(self) -> str:
        lo, hi = self.interval
        c = self.check
        if not self.decided:
            head = (f"cannot tell where to apply: the 95% CI ({self._scale_text(lo, hi)}) spans "
                    f"{math.log2(hi / lo):.1f} octaves (best guess {self._scale_text(self.estimate)})")
        elif self.units == "um/px" and c.status != "MISMATCH":
            # The scale is in the metadata's um/px; the downsample is what to read, whatever that um/px is worth.
            head = (f"apply at {self.estimate:.3g} um/px by the slide's metadata (level-0 downsample "
                    f"{self.level0_downsample:.3g}; 95% CI {lo:.3g}-{hi:.3g} um/px)")
        else:
            head = f"apply at {self._scale_text(self.estimate)} (95% CI {self._scale_text(lo, hi, named=False)})"
        # An early stop is a decision the user should see: fewer points than asked, because the answer had settled.
        stop = f" (stopped early: settled at {self.points_used} of {self.points_requested})" if self.stopped_early else ""
        peak = self._scale_text(float(self.scales[self.chosen_index]))
        text = (
            f"{head}; {self.points_informative}/{self.points_used} informative points{stop}; the model's "
            f"{self.criterion} peaks at {peak} in {self.confidence:.0%} of bootstrap resamples of the points"
        )
        named = _declared_as(c.declared_source)
        if c.implied_grid_mpp is not None and c.implied_mpp is not None:
            lo_mpp, hi_mpp = c.implied_interval or (math.nan, math.nan)
            text += f"; slide um/px implied {c.implied_mpp:.3g} (95% CI {lo_mpp:.3g}-{hi_mpp:.3g}"
            if c.ruler is not None and c.ruler.mpp is not None and c.model_implied_mpp is not None and (
                    c.implied_mpp != c.model_implied_mpp):
                model = f"the model's {c.model_implied_mpp:.3g}"
                low, high = sorted((c.model_implied_mpp, c.ruler.mpp))
                if c.model_implied_interval and not low <= c.implied_mpp <= high:
                    # A lopsided interval: its long side carries the combination past both values; show it.
                    m_lo, m_hi = c.model_implied_interval
                    model += f" (95% CI {m_lo:.3g}-{m_hi:.3g}, whose long side moves the combination past both)"
                text += f": {model} and the nuclei's {c.ruler.mpp:.3g} combined"
                if c.ruler_agrees is False:
                    text += ", their uncertainties widened as they disagree"
            text += ")"
            if c.declared_mpp is not None:
                text += f" vs the {named} {c.declared_mpp:.3g} ({c.disagreement_steps:+.1f} steps)"
        if c.status == "MISMATCH" and c.declared_mpp and c.model_mpp:
            text += f"; the {named} um/px is off: that downsample gives the model its {c.model_mpp:.3g} um/px"
        if self.calibration is not None:
            cal = self.calibration
            pull = "" if cal.slope == 1.0 else f", following the scale with slope {cal.slope:.2f}"
            text += (f" (calibrated: this model's margins peak at {cal.margin_peak_mpp:.3g} um/px{pull}, measured on "
                     f"{cal.slides} slides)")
        elif self.model_info.get("calibration"):
            measured = ScaleCalibration.from_dict(self.model_info["calibration"])
            why = ("was not applied" if measured.applies_to(self.scorer, self.aggregation) else
                   f"was measured with scorer {measured.scorer} + {measured.aggregation}, not this search's "
                   f"{self.scorer} + {self.aggregation}")
            text += f" (uncalibrated: the model's calibration {why}; the answer is where its {self.criterion} peaks)"
        if c.ruler is not None and c.ruler.measured:
            word = {True: "agrees with the model", False: "DISAGREES with the model", None: ""}[c.ruler_agrees]
            text += f"; the nuclei's ruler (no model) measures {c.ruler.describe()}{': ' + word if word else ''}"
        text += f" -> {c.status}"
        if c.reason:
            text += f" ({c.reason})"
        elif self.domain is not None and self.domain.out_of_domain:
            text += f" ({self.domain.describe()})"
        for caveat in self.caveats():
            text += f" ({caveat})"
        return text

    def to_dict(self, *, per_point: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "slide": self.slide,
            "model": self.model,
            "units": self.units,
            "scorer": self.scorer,
            "aggregation": self.aggregation,
            "sampling": self.sampling,
            "seed": self.seed,
            "scales": self.scales.tolist(),
            "chosen_index": self.chosen_index,
            "chosen_scale": self.chosen_scale,
            "estimate": self.estimate,
            "level0_downsample": self.level0_downsample,
            "decided": self.decided,
            "interval": list(self.interval),
            "confidence": self.confidence,
            "votes": self.votes.tolist(),
            "points_requested": self.points_requested,
            "points_used": self.points_used,
            "points_informative": self.points_informative,
            "points_damaged": self.points_damaged,
            "damaged_tiles": [dict(zip(("level", "x", "y", "width", "height"), t)) for t in self.damaged_tiles],
            "stopped_early": self.stopped_early,
            "widenings": list(self.widenings),
            "focus": list(self.focus),
            "patches_scored": self.patches_scored,
            "scan": self.scan.to_dict() if self.scan is not None else None,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "margin_peak_scale": float(self.scales[self.chosen_index]),
            "edge": self.edge,
            "check": asdict(self.check),
            "caveats": self.caveats(),
            "domain": self.domain.to_dict() if self.domain is not None else None,
            "class_names": list(self.class_names),
            "slide_curve": None if self.slide_curve is None else self.slide_curve.tolist(),
            "timings_s": self.timings,
            "model_info": self.model_info,
        }
        if per_point:
            out["points"] = {
                "xy_level0": self.points_xy.round(1).tolist(),
                "curves": self.curves.tolist(),
                "best_index": self.point_answers.best_index.tolist(),
                "shape": self.point_answers.shape.tolist(),
                "estimate": (2.0 ** self.point_answers.log2_estimate).tolist(),
                "informative": self.point_answers.informative.tolist(),
                "class": self.point_classes.tolist(),
            }
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(json_safe(self.to_dict(**kwargs)), indent=2)


def grid_edge(index: int, count: int) -> str | None:
    """``"fine"`` / ``"coarse"`` when ``index`` is the first / last of ``count`` grid scales, else None."""
    return "fine" if index == 0 else "coarse" if index == count - 1 else None


def metadata_check(
    declared: float | None, source: str | None, units: Units, model_mpp: float | None, chosen: float,
    estimate: float, interval: tuple[float, float], *, domain: DomainCheck | None = None,
    ruler: RulerEstimate | None = None, edge: str | None = None, rivals: tuple[float, ...] = (),
) -> MetadataCheck:
    """Compare the answer (``chosen`` grid scale, continuous ``estimate`` and its ``interval``, in ``units``)
    with the ``declared`` level-0 um/px (None: the slide declares none) through the model's training um/px, and
    with the ``ruler``'s model-free estimate.

    The slide's um/px is read twice, by the model (its implied um/px and 95% interval; a bound past the grid's
    ``edge`` when the answer is the grid's end) and by the nuclei (the ruler). When both measured, the implied
    um/px is the two combined by their uncertainties (``search._combine``: the inverse-variance weighted mean where
    both are normal); readings that are not consistent (their difference beyond 1.96 sd of its uncertainty) are
    combined with their uncertainties scaled by the Birge ratio, so the implied interval reaches both. Outside the
    model's ``domain`` it is the model's alone. The rule (measured: BENCHMARKS.md "The verdict"), the first that
    applies:

    1. INCONCLUSIVE when the slide lies outside the model's ``domain``.
    2. INCONCLUSIVE when the implied 95% interval (the model's own where the readings contradict each other: there
       the combined one is wide because they disagree, which the rule below weighs) is wider than
       ``WIDEST_DECIDING_INTERVAL`` octaves (without a declared um/px the status stays MISSING-METADATA and the
       reason says the content cannot tell it either).
    3. The model's reading holds the declared um/px when it lies within one grid step of it, inside its 95%
       interval, beyond the grid's ``edge`` ("fine"/"coarse": the true scale may lie beyond it), or within one step
       of a rival peak of the scan (``rivals``, scales in ``units``); else it rejects it. The ruler's reading holds
       it when its interval does.
    4. Without the ruler's reading: OK within one step, MISMATCH when the model rejects, else INCONCLUSIVE.
    5. With it: OK when the implied um/px is within one step and the readings are consistent or each, at its own
       (unwidened) uncertainty, holds the declared value; MISMATCH when both readings reject it (a false alarm
       needs both to fail at once), or when the ruler rejects it and the model's only hold on it is a bound it
       does not contradict the ruler with (its answer is the grid's end, the declared value beyond: a coarse slide
       declared coarser still) and the combined interval excludes it; else INCONCLUSIVE, and the reason says which reading holds it and which to believe.
       Inconsistent readings have each interval widened by the Birge ratio (their distance in sd over 1.96) before
       either may reject, and a model whose own interval is wider than ``WIDEST_DECIDING_INTERVAL`` rejects nothing.

    ``reason`` is stated for every status but a plain OK.
    """
    named = _declared_as(source)
    if model_mpp is None:
        reason = None
        if declared is not None and ruler is not None and ruler.measured:
            verdict = "lies inside" if ruler.contains(declared) else "lies OUTSIDE"
            reason = f"the {named} {declared:.3g} um/px {verdict} the ruler's interval (nuclei: {ruler.describe()})"
        return MetadataCheck("UNKNOWN-MODEL-MPP", declared, source, None, None, None, None, None, reason, ruler)

    def implied(scale: float) -> float:
        return through_model(scale, units, model_mpp, declared)

    # A coarser scale implies a finer slide: the interval's ends swap, and so does the side a grid's edge leaves open.
    model_lo, model_hi = implied(interval[1]), implied(interval[0])
    model_implied = implied(estimate)
    rivals_implied = tuple(implied(r) for r in rivals)
    out_of_domain = domain.describe() if domain is not None and domain.out_of_domain else None
    combined = None
    measured = ruler is not None and ruler.measured
    if measured:
        assert ruler is not None and ruler.mpp is not None and ruler.interval is not None
        beyond = {"fine": "above", "coarse": "below"}.get(edge or "")
        combined = combine(Reading.of_mpp(model_implied, (model_lo, model_hi), beyond),
                           Reading.of_mpp(ruler.mpp, ruler.interval))
    agrees = combined.consistent if combined is not None else None
    # A model outside its domain gives no reading to combine: the check names it and the ruler, and decides nothing.
    if combined is not None and not out_of_domain:
        implied_mpp, (lo, hi) = combined.mpp, combined.interval
    else:
        implied_mpp, lo, hi = model_implied, model_lo, model_hi
    scatter_lo, scatter_hi = (lo, hi) if agrees is not False else (model_lo, model_hi)
    width = math.log2(scatter_hi / scatter_lo)
    too_wide = (
        f"the implied 95% interval {scatter_lo:.3g}-{scatter_hi:.3g} um/px spans {width:.1f} octaves (more than "
        f"{WIDEST_DECIDING_INTERVAL}): the points disagree too much to tell the slide's um/px; more points "
        "(--points) or a model that knows this tissue"
    ) if width > WIDEST_DECIDING_INTERVAL else None
    if declared is None:
        reason = _join(out_of_domain, too_wide)
        if agrees is False:
            reason = _join(reason, f"the nuclei measure {ruler.describe()}, not the model's implied "  # type: ignore[union-attr]
                           f"{model_implied:.3g} um/px: trust neither without a look")
        return MetadataCheck(
            "MISSING-METADATA", None, None, model_mpp, implied(chosen), implied_mpp, (lo, hi), None, reason,
            ruler, agrees, rivals_implied, model_implied_mpp=model_implied,
            model_implied_interval=(model_lo, model_hi),
        )
    # The implied value decides OK (the grid value can sit a step away from it): the check, the cohort table and the
    # report then agree on one number.
    steps = steps_between(implied_mpp, declared)
    model_steps = steps_between(model_implied, declared)
    # Two readings that contradict each other understate their uncertainties: each interval is widened by how far
    # apart they lie (the Birge ratio, as particle-data compilations scale inconsistent measurements) before
    # either may reject the declared value.
    birge = combined.birge if combined is not None else 1.0
    model_holds, only_bound = _model_hold(declared, model_implied, (model_lo, model_hi), birge, edge, rivals_implied,
                                          named)
    ruler_holds = measured and _inside(declared, _widened(ruler.mpp, ruler.interval, birge))  # type: ignore[union-attr,arg-type]
    # Readings that contradict each other combine into a compromise, which may land on a wrong declared value between
    # them (widened, each then holds it): OK then needs each, at its own uncertainty, to hold it.
    both_hold_unwidened = measured and ruler.contains(declared) and _model_hold(  # type: ignore[union-attr]
        declared, model_implied, (model_lo, model_hi), 1.0, edge, rivals_implied, named)[0] is not None
    if out_of_domain:
        status, reason = "INCONCLUSIVE", out_of_domain
        if measured:
            verdict = "holds" if ruler_holds else "EXCLUDES"
            reason = _join(reason, f"the nuclei measure {ruler.describe()}, which {verdict} the {named} "  # type: ignore[union-attr]
                           f"{declared:.3g}")
    elif too_wide:
        status, reason = "INCONCLUSIVE", too_wide
    elif not measured:
        status = "OK" if abs(model_steps) <= 1.0 else "INCONCLUSIVE" if model_holds else "MISMATCH"
        reason = None if status == "OK" else model_holds or (
            f"the {named} {declared:.3g} um/px lies outside the implied 95% interval {lo:.3g}-{hi:.3g}, "
            f"{steps:+.1f} steps away")
        if ruler is not None and status != "INCONCLUSIVE":
            reason = _join(reason, f"no second opinion: the ruler {ruler.describe()}")
    elif abs(steps) <= 1.0 and (agrees or both_hold_unwidened):
        status, reason = "OK", None
    elif model_holds is None and not ruler_holds:
        # Two readings that share nothing both reject the declared value: only then is a MISMATCH asserted.
        status = "MISMATCH"
        reason = (f"the {named} {declared:.3g} um/px lies outside the implied 95% interval {lo:.3g}-{hi:.3g}, "
                  f"{steps:+.1f} steps away; the model's {model_implied:.3g} um/px and the nuclei's "
                  f"{ruler.describe()} both reject it"  # type: ignore[union-attr]
                  + ("" if agrees else ", though they differ on the true value"))
    elif only_bound and agrees and not ruler_holds and not lo <= declared <= hi:
        # The model cannot reach the declared value but does not contradict the nuclei, which exclude it, and so
        # does the two readings' combination: a coarse slide (~1 um/px and up) declared coarser still.
        status = "MISMATCH"
        reason = (f"the {named} {declared:.3g} um/px lies outside the implied 95% interval {lo:.3g}-{hi:.3g}, "
                  f"{steps:+.1f} steps away: the nuclei's {ruler.describe()} exclude it, and the model's answer, "  # type: ignore[union-attr]
                  f"the {edge}st scale searched ({model_implied:.3g} um/px), agrees with them and does not reach it")
    elif model_holds is None:
        status, reason = "INCONCLUSIVE", (
            f"the model implies {model_implied:.3g} um/px but the nuclei measure {ruler.describe()}, which "  # type: ignore[union-attr]
            f"holds the {named} {declared:.3g}: a model's margins can peak far from its scale on tissue it does not "
            f"know; believe the {named} um/px unless the slide's content says otherwise")
    elif not ruler_holds:
        status, reason = "INCONCLUSIVE", (
            f"{model_holds}; but the nuclei measure {ruler.describe()}, which excludes the {named} "  # type: ignore[union-attr]
            f"{declared:.3g}: the ruler's constant varies between tissues (stroma, muscle read fine; dense lymphoid "
            "tissue coarse); look at the slide")
    else:
        status, reason = "INCONCLUSIVE", (
            f"{steps:+.1f} steps off, yet neither reading rejects the {named} {declared:.3g} um/px: {model_holds}, and "
            f"the nuclei measure {ruler.describe()}")  # type: ignore[union-attr]
    return MetadataCheck(
        status, declared, source, model_mpp, implied(chosen), implied_mpp, (lo, hi), steps, reason, ruler,
        agrees, rivals_implied, model_implied_mpp=model_implied,
        model_implied_interval=(model_lo, model_hi),
    )


def through_model(value: float, units: Units, model_mpp: float, declared: float | None) -> float:
    """A scale in ``units`` -> the slide's level-0 um/px it implies through the model's ``model_mpp``, and back (the
    map is its own inverse): the model saw one of its px where the search applied it, ``scale`` level-0 px or
    ``scale`` um/px of the ``declared`` kind, so slide um/px = ``model_mpp`` x (1 or ``declared``) / scale."""
    if units == "downsample":
        return model_mpp / value
    assert declared is not None  # um/px units exist only on slides that declare their um/px
    return model_mpp * declared / value


def _declared_as(source: str | None) -> str:
    """What the compared um/px is called: "given" when the user gave it (--slide-mpp, ``slide_mpp=``; source
    "override"), which need not be what the file declares; else "declared"."""
    return "given" if source == "override" else "declared"


def _model_hold(
    declared: float, implied: float, interval: tuple[float, float], birge: float, edge: str | None,
    rivals_implied: tuple[float, ...], named: str,
) -> tuple[str | None, bool]:
    """Why the model's reading (``implied`` um/px and its 95% ``interval``, widened by ``birge``) does not reject
    the ``declared`` um/px (``named`` so: "declared", or "given" by the user), or None when it does; and whether it
    holds it only as a bound (its answer is the grid's ``edge`` and the declared value lies past it, no rival peak
    agreeing)."""
    steps = steps_between(implied, declared)
    lo, hi = _widened(implied, interval, birge)
    width = math.log2(interval[1] / interval[0])
    agreeing_rivals = [v for v in rivals_implied if abs(steps_between(v, declared)) <= 1.0]
    if abs(steps) <= 1.0:
        return f"the model implies {implied:.3g} um/px, within one step", False
    if width > WIDEST_DECIDING_INTERVAL:
        return (f"the model's implied 95% interval {interval[0]:.3g}-{interval[1]:.3g} um/px spans {width:.1f} octaves: "
                "too wide to reject anything"), False
    if lo <= declared <= hi:
        widened = f", widened x{birge:.2g} as the readings disagree" if birge > 1 else ""
        return (f"{steps:+.1f} steps off, but the {named} {declared:.3g} um/px lies inside the implied 95% interval "
                f"{lo:.3g}-{hi:.3g} (the model's{widened}): not rejected"), False
    if (edge == "fine" and steps < 0) or (edge == "coarse" and steps > 0):
        # Beyond the fine edge the slide would be coarser than implied, beyond the coarse edge finer: only a
        # declared value on the other side can be rejected.
        return (f"the answer is the {edge}st scale the slide allows (the peak was not bracketed): the slide may be "
                f"{'coarser' if edge == 'fine' else 'finer'} than the implied {implied:.3g} um/px, as {named}",
                not agreeing_rivals)
    if agreeing_rivals:
        return (f"the scan also peaked where the slide would be {agreeing_rivals[0]:.3g} um/px, which agrees with "
                f"the {named} um/px: the model's margins are ambiguous on this slide"), False
    return None, False


def _widened(value: float, interval: tuple[float, float], factor: float) -> tuple[float, float]:
    """``interval`` around ``value`` (um/px) with each side ``factor`` times as long in log."""
    return value * (interval[0] / value) ** factor, value * (interval[1] / value) ** factor


def _inside(value: float, interval: tuple[float, float]) -> bool:
    return interval[0] <= value <= interval[1]


def _join(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None
