"""A model's scale calibration: the um/px at which its margins actually peak, and how much that varies by slide.

The paper's method assumes a classifier's margins peak at the scale it was trained at. Measured, they do not
exactly: the bundled reference model's pooled margins peak about 0.17 octave (0.7 grid step) coarser than its
training 0.5 um/px on phantoms, and real models differ more (BENCHMARKS.md). The offset is a property of the model
(constant in log scale across slides), so it can be measured once, on slides whose um/px is trusted, with the same
search a user runs, and removed from every later answer. The slide-to-slide scatter around it is what the bootstrap
interval (which resamples points within one slide) cannot see; adding it widens the interval to cover the truth at
its nominal rate.

Fitting (:func:`fit_calibration`): per calibration slide, the um/px its patches had where the margins peaked
(trusted level-0 um/px x the level-0 downsample of the search's estimate); the calibration is their geometric
median and the sample standard deviation of their log2. Applying (:meth:`ScaleCalibration.correct`): the answer is
multiplied by ``model_mpp / margin_peak_mpp`` (so the model sees its training um/px) and each side of the interval
is widened in quadrature by 1.96 x the predictive scatter ``sd_log2 * sqrt(1 + 1/slides)``.

The offset is not quite constant: margins favour the slide's own pixels, which no resampling has blurred
(upsampling) or cleaned of sensor noise and compression (area downsampling), so the level-0 downsample where they
peak follows the one the model needs with a ``slope`` below 1, ``log2 d_peak = slope * log2 d``: estimates are
pulled towards downsample 1, too coarse on slides finer than the model's scale and too fine on coarser ones
(the bundled model on 80 development phantoms of 0.2-1.0 um/px: slope 0.96). Calibration slides of different
um/px measure it (a robust line of log2 peak um/px on log2 slide um/px, whose gradient is ``1 - slope``); slides
that share one um/px cannot, and keep the slope at 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscale._files import read_json
from histoscale.errors import ConfigError

__all__ = [
    "MIN_CALIBRATION_SLIDES", "MIN_SLOPE_SLIDES", "MIN_SLOPE_SPREAD", "PLAUSIBLE_SLOPE", "ScaleCalibration",
    "calibration_from", "fit_calibration", "read_calibration", "require_slides", "slope_shortfall",
]

MIN_CALIBRATION_SLIDES = 3  # fewer cannot estimate a scatter
# A slope needs slides of several um/px: at least this many, spread by this many octaves (sd of log2 um/px; 0.2 to
# 1.0 um/px log-uniform gives 0.67). Outside the plausible range the margins do not follow the scale at all.
MIN_SLOPE_SLIDES = 8
MIN_SLOPE_SPREAD = 0.25
PLAUSIBLE_SLOPE = (0.5, 1.5)
# No brightfield model works at patches finer than 0.01 or coarser than 100 um/px: a value outside is a unit mix-up.
_PLAUSIBLE_MPP = (0.01, 100.0)
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class ScaleCalibration:
    """Where a model's margins peak, measured on slides of trusted um/px.

    Attributes:
        margin_peak_mpp: um/px of the patches at which the search's margins peak (geometric median over the slides).
        sd_log2: slide-to-slide standard deviation of log2 of that um/px, in octaves (>= 0).
        slides: how many slides it was measured on (>= :data:`MIN_CALIBRATION_SLIDES`).
        source: how it was measured (command, slides, date), for provenance.
        slope: how the level-0 downsample where the margins peak follows the one at which the patches are at
            ``margin_peak_mpp`` (``log2 d_peak = slope * log2 d``; 1: exactly; see the module docstring). With a
            slope, ``margin_peak_mpp`` is where the margins peak on a slide scanned at that um/px, and ``sd_log2``
            the scatter of the answer around the fitted line.
        scorer, aggregation: the search's scorer and aggregation it was measured with (None: not recorded, as in
            files written before they were); a search with others does not apply it (:meth:`applies_to`).
    """

    margin_peak_mpp: float
    sd_log2: float
    slides: int
    source: str | None = None
    slope: float = 1.0
    scorer: str | None = None
    aggregation: str | None = None

    def __post_init__(self) -> None:
        lo, hi = _PLAUSIBLE_MPP
        if not (math.isfinite(self.margin_peak_mpp) and lo <= self.margin_peak_mpp <= hi):
            raise ConfigError(
                f"calibration margin_peak_mpp must be a plausible um/px ({lo:g} to {hi:g}), got {self.margin_peak_mpp}"
            )
        if not (math.isfinite(self.sd_log2) and self.sd_log2 >= 0):
            raise ConfigError(f"calibration sd_log2 must be a finite number >= 0, got {self.sd_log2}")
        if int(self.slides) < MIN_CALIBRATION_SLIDES:
            raise ConfigError(
                f"a calibration needs at least {MIN_CALIBRATION_SLIDES} slides, got {self.slides}"
            )
        lo, hi = PLAUSIBLE_SLOPE
        if not (math.isfinite(self.slope) and lo <= self.slope <= hi):
            raise ConfigError(f"calibration slope must lie in {lo:g}..{hi:g} (1: no pull), got {self.slope}")

    def applies_to(self, scorer: str, aggregation: str) -> bool:
        """Whether a search with this scorer and aggregation may use it: where the margins peak depends on how the
        curves are scored and pooled, so a calibration holds for the settings it was measured with."""
        return self.scorer in (None, scorer) and self.aggregation in (None, aggregation)

    @property
    def predictive_sd_log2(self) -> float:
        """The scatter to expect on a new slide: the slides' scatter plus the uncertainty of their median."""
        return self.sd_log2 * math.sqrt(1.0 + 1.0 / self.slides)

    @property
    def enough_width_log2(self) -> float:
        """Width (log2) of a bootstrap 95% interval below which more points barely help: its standard error is then
        at most half the predictive scatter, so the calibrated interval is within 12% of the narrowest any number
        of points could give. The search stops sampling there (early stop). Measured on the uncalibrated scale, where
        the interval is ``slope`` times narrower than once calibrated (:meth:`apply` divides by the slope)."""
        return _Z95 * self.predictive_sd_log2 * self.slope

    def reference_mpp(self, model_mpp: float | None) -> float:
        """The um/px a calibrated answer gives the model: its training ``model_mpp``, or where its margins peak when
        that is unknown (the peak is then the best guess of it). The metadata check compares through it."""
        return self.margin_peak_mpp if model_mpp is None else float(model_mpp)

    def apply(self, log2_scale: float, model_mpp: float | None, log2_level0: float = 0.0) -> float:
        """log2 of the scale at which the model sees :meth:`reference_mpp`, from log2 of the scale where the
        margins peak. ``log2_level0``: log2 of one level-0 px in the scale's units (of the level-0 um/px for
        um/px scales, 0 for level-0 downsamples): the slope acts on the level-0 downsample."""
        log2_downsample = (log2_scale - log2_level0) / self.slope
        return log2_level0 + log2_downsample + math.log2(self.reference_mpp(model_mpp) / self.margin_peak_mpp)

    def correct(
        self, log2_estimate: float, log2_interval: tuple[float, float], model_mpp: float | None,
        log2_level0: float = 0.0,
    ) -> tuple[float, tuple[float, float]]:
        """A search's log2 estimate and bootstrap 95% interval -> calibrated ones: each moved by :meth:`apply`,
        each side widened in quadrature by the predictive scatter."""
        centre = self.apply(log2_estimate, model_mpp, log2_level0)
        spread = _Z95 * self.predictive_sd_log2
        lo = centre - math.hypot(centre - self.apply(log2_interval[0], model_mpp, log2_level0), spread)
        hi = centre + math.hypot(self.apply(log2_interval[1], model_mpp, log2_level0) - centre, spread)
        return centre, (lo, hi)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"margin_peak_mpp": self.margin_peak_mpp, "sd_log2": self.sd_log2, "slides": self.slides}
        if self.slope != 1.0:
            out["slope"] = self.slope
        for key in ("scorer", "aggregation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ScaleCalibration:
        """The inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not an object, missing or unknown keys, invalid values (the message names them).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a calibration must be a JSON object, got {type(data).__name__}")
        keys = {"margin_peak_mpp", "sd_log2", "slides", "source", "slope", "scorer", "aggregation"}
        missing = sorted({"margin_peak_mpp", "sd_log2", "slides"} - set(data))
        unknown = sorted(set(data) - keys)
        if missing or unknown:
            raise ConfigError(
                f"calibration keys: missing {missing}, unknown {unknown}; expected margin_peak_mpp, sd_log2, slides"
                " (and optionally slope, scorer, aggregation, source), as `histoscale calibrate` writes them"
            )
        slides = data["slides"]
        if isinstance(slides, bool) or not isinstance(slides, (int, float)) or slides != int(slides):
            raise ConfigError(f"calibration slides must be a whole number, got {slides!r}")
        try:
            return cls(float(data["margin_peak_mpp"]), float(data["sd_log2"]), int(slides), data.get("source"),
                       float(data.get("slope", 1.0)), data.get("scorer"), data.get("aggregation"))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"calibration values must be numbers: {err}") from None


def fit_calibration(
    peak_mpps: Sequence[float], *, slide_mpps: Sequence[float] | None = None, source: str | None = None
) -> ScaleCalibration:
    """Fit a calibration from per-slide um/px at which the margins peaked (trusted slide um/px x the level-0
    downsample the uncalibrated search estimated).

    ``slide_mpps``: the slides' trusted level-0 um/px, in the same order. When at least
    :data:`MIN_SLOPE_SLIDES` of them spread by :data:`MIN_SLOPE_SPREAD` octave or more, the slope is fitted too
    (Theil-Sen line of log2 peak um/px on log2 slide um/px: the median of the pairwise gradients, robust to a few
    failed searches); otherwise, or given none, the slope stays 1.

    Raises:
        ConfigError: fewer than :data:`MIN_CALIBRATION_SLIDES` values, values that are not positive numbers, a
            ``slide_mpps`` of another length, or a fitted slope outside :data:`PLAUSIBLE_SLOPE` (the margins do
            not follow the scale: calibrate on slides of one um/px).
    """
    logs = _log2_values(peak_mpps, "peak um/px")
    require_slides(logs.size)
    if slide_mpps is not None:
        x = _log2_values(slide_mpps, "slide um/px")
        if x.size != logs.size:
            raise ConfigError(f"{x.size} slide um/px for {logs.size} peak um/px: give one per slide")
        if _slope_shortfall(x) is None:
            i, j = np.triu_indices(x.size, 1)
            apart = np.abs(x[j] - x[i]) > 1e-9
            gradient = float(np.median((logs[j] - logs[i])[apart] / (x[j] - x[i])[apart]))
            slope = 1.0 - gradient
            lo, hi = PLAUSIBLE_SLOPE
            if not lo <= slope <= hi:
                raise ConfigError(
                    f"the margins' peak does not follow the slides' um/px (fitted slope {slope:.2f}, plausible "
                    f"{lo:g}..{hi:g}): the model cannot tell these scales apart; calibrate on slides of one um/px"
                )
            # log2 peak = (1 - slope) log2 slide + slope log2 m: m is the fixed point, the scatter is the line's
            # residual moved into the answer's units (divided by the slope)
            resid = logs - gradient * x
            centre = float(np.median(resid))
            scatter = float(np.std(resid - centre, ddof=2)) / slope
            return ScaleCalibration(float(2.0 ** (centre / slope)), scatter, int(logs.size), source, slope)
    return ScaleCalibration(float(2.0 ** np.median(logs)), float(np.std(logs, ddof=1)), int(logs.size), source)


def slope_shortfall(slide_mpps: Sequence[float]) -> str | None:
    """Why these slides' trusted um/px cannot measure a slope (None: they can, and :func:`fit_calibration` fits it).

    Raises:
        ConfigError: not a list of positive numbers.
    """
    return _slope_shortfall(_log2_values(slide_mpps, "slide um/px"))


def _slope_shortfall(log2_mpps: np.ndarray) -> str | None:
    spread = float(np.std(log2_mpps, ddof=1)) if log2_mpps.size > 1 else 0.0
    if log2_mpps.size >= MIN_SLOPE_SLIDES and spread >= MIN_SLOPE_SPREAD:
        return None
    return (f"{log2_mpps.size} slides spread {spread:.2f} octave; it needs >= {MIN_SLOPE_SLIDES} slides spread "
            f">= {MIN_SLOPE_SPREAD} octave, e.g. x20 and x40 scans")


def _log2_values(values: Sequence[float], what: str) -> np.ndarray:
    """log2 of a flat list of positive numbers, one per slide.

    Raises:
        ConfigError: not such a list (the message names ``what``).
    """
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ConfigError(f"{what} values must be a list of numbers, got {type(values).__name__}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} values must be a list of numbers, got {list(values)!r}") from None
    if array.ndim != 1:
        raise ConfigError(f"{what} values must be a flat list (one per slide), got shape {array.shape}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ConfigError(f"{what} values must be positive numbers, got {array.tolist()}")
    return np.log2(array)


def require_slides(count: int, *, detail: str = "") -> None:
    """Refuse to fit from fewer than :data:`MIN_CALIBRATION_SLIDES` slides (``detail``: why, appended).

    Raises:
        ConfigError: too few slides.
    """
    if count < MIN_CALIBRATION_SLIDES:
        raise ConfigError(
            f"a calibration needs at least {MIN_CALIBRATION_SLIDES} slides with a trusted um/px, got {count}{detail}"
        )


def _unwrap(data: Any) -> Any:
    """The calibration object of what ``histoscale calibrate --out`` writes or a card holding one, else ``data``."""
    return data["calibration"] if isinstance(data, Mapping) and "calibration" in data else data


def calibration_from(value: ScaleCalibration | Mapping[str, Any] | str | os.PathLike[str]) -> ScaleCalibration:
    """A calibration from the object itself, its dict (bare or wrapped as ``calibrate`` writes it) or its JSON file
    (:func:`read_calibration`).

    Raises:
        ConfigError: an invalid calibration (the message names the file, if any).
    """
    if isinstance(value, ScaleCalibration):
        return value
    if isinstance(value, (str, os.PathLike)):
        return read_calibration(value)
    return ScaleCalibration.from_dict(_unwrap(value))


def read_calibration(path: str | os.PathLike[str]) -> ScaleCalibration:
    """The calibration in a JSON file: what ``histoscale calibrate --out`` writes (``{"calibration": {...}, ...}``),
    a model card holding one, or the calibration object itself.

    Raises:
        ConfigError: the file is missing, not JSON, or holds no valid calibration (the message names it).
    """
    p = Path(path)
    data = read_json(p, "calibration file", ConfigError, "give the JSON `histoscale calibrate --out` wrote")
    try:
        return ScaleCalibration.from_dict(_unwrap(data))
    except ConfigError as err:
        raise ConfigError(f"calibration file {p}: {err}") from None
