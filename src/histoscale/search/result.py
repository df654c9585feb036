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
from histoscale.units import Units, steps_between

__all__ = ["MetadataCheck", "ScaleResult", "ScanSummary", "metadata_check"]


@dataclass(frozen=True)
class MetadataCheck:
    """The content-based estimate against the slide's declared resolution.

    ``implied_estimate`` is the slide's level-0 um/px implied by the continuous estimate and the model's training
    um/px: the number the status, the summary, the report, the cohort table and ``classify --from-search`` use;
    ``implied_interval`` is its 95% interval; ``implied_mpp`` is the same from the grid scale alone;
    ``disagreement_steps`` is log2(implied_estimate / declared) in grid steps; ``status`` is ``OK`` (within one
    step), ``MISMATCH``, ``INCONCLUSIVE`` (the slide lies outside what the model was trained on, or the model and
    the ruler contradict each other; ``reason`` says which and why: neither OK nor MISMATCH is asserted),
    ``MISSING-METADATA`` (no declared um/px: the implied one is the only one) or ``UNKNOWN-MODEL-MPP`` (the
    model's training um/px is unknown: only the ruler checks the declared um/px, ``reason`` says how).

    ``ruler`` is the model-free estimate from the size of the nuclei (:func:`histoscale.measure_mpp`; None when
    not measured); ``ruler_agrees`` whether the model's implied um/px lies inside the ruler's interval (None when
    either is missing). The rule: the model's OK or MISMATCH stands when the ruler agrees with it or cannot
    measure; when the ruler contradicts it (the ruler accepts the declared um/px that the model rejects, or the
    reverse), the check is INCONCLUSIVE, since a model's margins can peak far from its scale on tissue it does not
    know and the ruler's constant varies between tissues (BENCHMARKS.md); when both reject the declared um/px
    it is a MISMATCH even if their values differ.
    """

    status: str
    declared_mpp: float | None
    declared_source: str | None
    model_mpp: float | None
    implied_mpp: float | None
    implied_estimate: float | None
    implied_interval: tuple[float, float] | None
    disagreement_steps: float | None
    reason: str | None = None
    ruler: RulerEstimate | None = None
    ruler_agrees: bool | None = None


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
    slide-to-slide scatter.
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

    @property
    def edge(self) -> str | None:
        """``"fine"`` / ``"coarse"`` when the answer is the final grid's edge (the peak was not bracketed)."""
        last = len(self.scales) - 1
        return "fine" if self.chosen_index == 0 else "coarse" if self.chosen_index == last else None

    @property
    def point_classes(self) -> np.ndarray:
        """Per point, the class whose score is highest at the point's chosen scale."""
        rows = np.arange(len(self.curves))
        return self.class_scores[rows, self.point_answers.best_index].argmax(axis=1)

    def summary(self) -> str:
        unit = "um/px" if self.units == "um/px" else "x downsample"
        lo, hi = self.interval
        text = (
            f"apply at {self.chosen_scale:.3g} {unit} (continuous {self.estimate:.3g}, 95% CI {lo:.3g}-{hi:.3g}); "
            f"{self.points_informative}/{self.points_used} informative points, confidence {self.confidence:.0%}"
        )
        c = self.check
        if c.implied_mpp is not None:
            lo_mpp, hi_mpp = c.implied_interval or (math.nan, math.nan)
            text += f"; slide um/px implied {c.implied_estimate:.3g} (95% CI {lo_mpp:.3g}-{hi_mpp:.3g}, grid {c.implied_mpp:.3g})"
            if c.declared_mpp is not None:
                text += f" vs declared {c.declared_mpp:.3g} ({c.disagreement_steps:+.1f} steps)"
        if c.status == "MISMATCH" and c.declared_mpp and c.model_mpp:
            # The declared um/px is wrong, so a scale in um/px is only a name: say what to read.
            # the continuous estimate, as the implied um/px above
            ds = self.estimate / c.declared_mpp if self.units == "um/px" else self.estimate
            text += (f"; the declared um/px is off: read level 0 at downsample {ds:.3g}"
                     f" to give the model its {c.model_mpp:.3g} um/px")
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
            text += f" (uncalibrated: the model's calibration {why}; the answer is where its margins peak)"
        if c.ruler is not None and c.ruler.measured:
            word = {True: "agrees with the model", False: "DISAGREES with the model", None: ""}[c.ruler_agrees]
            text += f"; the nuclei's ruler (no model) measures {c.ruler.describe()}{': ' + word if word else ''}"
        text += f" -> {c.status}"
        if c.reason:
            text += f" ({c.reason})"
        elif self.domain is not None and self.domain.out_of_domain:
            text += f" ({self.domain.describe()})"
        if self.edge is not None:
            text += (f" (the answer is the {self.edge}st scale tried: the peak was not bracketed, the true scale may lie "
                     "beyond what this slide or the scales allow)")
        if self.widenings:
            text += f" (grid widened past its ends: {'; '.join(self.widenings)})"
        if self.scan is not None and self.scan.rivals:
            values = [f"{r:.3g}" for r in self.scan.rivals]
            others = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]
            where = f"{others} um/px" if self.units == "um/px" else f"downsample {others}"
            text += (f" (the scan also peaked at {where}: the model's margins far from its scale can mislead;"
                     " check the curves)")
        missing = self.model_info.get("missing")
        if missing:
            text += f" (model's {' and '.join(missing)} unknown: defaults assumed, the answer rests on them)"
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
            "interval": list(self.interval),
            "confidence": self.confidence,
            "votes": self.votes.tolist(),
            "points_requested": self.points_requested,
            "points_used": self.points_used,
            "points_informative": self.points_informative,
            "stopped_early": self.stopped_early,
            "widenings": list(self.widenings),
            "focus": list(self.focus),
            "patches_scored": self.patches_scored,
            "scan": self.scan.to_dict() if self.scan is not None else None,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "margin_peak_scale": float(self.scales[self.chosen_index]),
            "edge": self.edge,
            "check": asdict(self.check),
            "domain": self.domain.to_dict() if self.domain is not None else None,
            "class_names": list(self.class_names),
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


def metadata_check(
    declared: float | None, source: str | None, units: Units, model_mpp: float | None, chosen: float,
    estimate: float, interval: tuple[float, float], *, domain: DomainCheck | None = None,
    ruler: RulerEstimate | None = None,
) -> MetadataCheck:
    """Compare the answer (``chosen`` grid scale, continuous ``estimate`` and its ``interval``, in ``units``)
    with the ``declared`` level-0 um/px (None: the slide declares none) through the model's training um/px, and
    with the ``ruler``'s model-free estimate (the rule: :class:`MetadataCheck`). A ``domain`` check that finds the
    slide out of the model's domain makes a declared um/px ``INCONCLUSIVE``."""
    if model_mpp is None:
        reason = None
        if declared is not None and ruler is not None and ruler.measured:
            verdict = "lies inside" if ruler.contains(declared) else "lies OUTSIDE"
            reason = f"the declared {declared:.3g} um/px {verdict} the ruler's interval (nuclei: {ruler.describe()})"
        return MetadataCheck("UNKNOWN-MODEL-MPP", declared, source, None, None, None, None, None, reason, ruler)

    def implied(scale: float) -> float:
        # The model saw one of its px where the search applied it: `scale` um/px, or `scale` level-0 px.
        if units == "downsample":
            return model_mpp / scale
        assert declared is not None  # um/px units exist only on slides that declare their um/px
        return model_mpp / (scale / declared)

    # A coarser scale implies a finer slide: the interval's ends swap.
    implied_interval = (implied(interval[1]), implied(interval[0]))
    implied_estimate = implied(estimate)
    agrees = ruler.contains(implied_estimate) if ruler is not None and ruler.measured else None
    if declared is None:
        reason = domain.describe() if domain is not None and domain.out_of_domain else None
        if agrees is False:
            reason = _join(reason, f"the nuclei measure {ruler.describe()}, not the model's implied "  # type: ignore[union-attr]
                           f"{implied_estimate:.3g} um/px: trust neither without a look")
        return MetadataCheck(
            "MISSING-METADATA", None, None, model_mpp, implied(chosen), implied_estimate, implied_interval, None,
            reason, ruler, agrees,
        )
    # The continuous estimate decides (the grid value can sit a step away from it): the check, the cohort table and
    # the report then agree on one number.
    steps = steps_between(implied_estimate, declared)
    status = "OK" if abs(steps) <= 1.0 else "MISMATCH"
    reason = None
    if ruler is not None and ruler.measured:
        ruler_rejects = not ruler.contains(declared)
        if status == "MISMATCH" and not ruler_rejects:
            status, reason = "INCONCLUSIVE", (
                f"the model implies {implied_estimate:.3g} um/px but the nuclei measure {ruler.describe()}, which "
                f"holds the declared {declared:.3g}: a model's margins can peak far from its scale on tissue it "
                "does not know; believe the declared um/px unless the slide's content says otherwise")
        elif status == "OK" and ruler_rejects:
            status, reason = "INCONCLUSIVE", (
                f"the model agrees with the declared {declared:.3g} um/px but the nuclei measure "
                f"{ruler.describe()}, which excludes it: the ruler's constant varies between tissues "
                "(stroma, muscle read fine; dense lymphoid tissue coarse); look at the slide")
        elif status == "MISMATCH" and agrees is False:
            reason = (f"the model ({implied_estimate:.3g} um/px) and the nuclei ({ruler.describe()}) both reject "
                      "the declared um/px but differ on the true one")
        elif status == "MISMATCH":
            reason = f"confirmed without the model: the nuclei measure {ruler.describe()}"
    elif ruler is not None:
        reason = f"no second opinion: the ruler {ruler.describe()}"
    if domain is not None and domain.out_of_domain:
        status, reason = "INCONCLUSIVE", _join(domain.describe(), reason if status == "INCONCLUSIVE" else None)
    return MetadataCheck(
        status, declared, source, model_mpp, implied(chosen), implied_estimate, implied_interval, steps, reason,
        ruler, agrees,
    )


def _join(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None
