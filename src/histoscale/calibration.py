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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscale.errors import ConfigError

__all__ = [
    "MIN_CALIBRATION_SLIDES", "ScaleCalibration", "calibration_from", "fit_calibration", "read_calibration",
    "require_slides",
]

MIN_CALIBRATION_SLIDES = 3  # fewer cannot estimate a scatter
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
    """

    margin_peak_mpp: float
    sd_log2: float
    slides: int
    source: str | None = None

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

    @property
    def predictive_sd_log2(self) -> float:
        """The scatter to expect on a new slide: the slides' scatter plus the uncertainty of their median."""
        return self.sd_log2 * math.sqrt(1.0 + 1.0 / self.slides)

    @property
    def enough_width_log2(self) -> float:
        """Width (log2) of a bootstrap 95% interval below which more points barely help: its standard error is then
        at most half the predictive scatter, so the calibrated interval is within 12% of the narrowest any number
        of points could give. The search stops sampling there (early stop)."""
        return _Z95 * self.predictive_sd_log2

    def reference_mpp(self, model_mpp: float | None) -> float:
        """The um/px a calibrated answer gives the model: its training ``model_mpp``, or where its margins peak when
        that is unknown (the peak is then the best guess of it). The metadata check compares through it."""
        return self.margin_peak_mpp if model_mpp is None else float(model_mpp)

    def factor(self, model_mpp: float | None) -> float:
        """Multiplier taking the scale where the margins peak to the scale at which the model sees
        :meth:`reference_mpp`."""
        return self.reference_mpp(model_mpp) / self.margin_peak_mpp

    def correct(
        self, log2_estimate: float, log2_interval: tuple[float, float], model_mpp: float | None
    ) -> tuple[float, tuple[float, float]]:
        """A search's log2 estimate and bootstrap 95% interval (any scale units) -> calibrated ones: shifted by
        :meth:`factor`, each side widened in quadrature by the predictive scatter."""
        shift = math.log2(self.factor(model_mpp))
        centre = log2_estimate + shift
        spread = _Z95 * self.predictive_sd_log2
        lo = centre - math.hypot(log2_estimate - log2_interval[0], spread)
        hi = centre + math.hypot(log2_interval[1] - log2_estimate, spread)
        return centre, (lo, hi)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"margin_peak_mpp": self.margin_peak_mpp, "sd_log2": self.sd_log2, "slides": self.slides}
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
        keys = {"margin_peak_mpp", "sd_log2", "slides", "source"}
        missing = sorted({"margin_peak_mpp", "sd_log2", "slides"} - set(data))
        unknown = sorted(set(data) - keys)
        if missing or unknown:
            raise ConfigError(
                f"calibration keys: missing {missing}, unknown {unknown}; expected margin_peak_mpp, sd_log2, slides"
                " (and optionally source), as `histoscale calibrate` writes them"
            )
        slides = data["slides"]
        if isinstance(slides, bool) or not isinstance(slides, (int, float)) or slides != int(slides):
            raise ConfigError(f"calibration slides must be a whole number, got {slides!r}")
        try:
            return cls(float(data["margin_peak_mpp"]), float(data["sd_log2"]), int(slides), data.get("source"))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"calibration values must be numbers: {err}") from None


def fit_calibration(peak_mpps: Sequence[float], *, source: str | None = None) -> ScaleCalibration:
    """Fit a calibration from per-slide um/px at which the margins peaked (trusted slide um/px x the level-0
    downsample the uncalibrated search estimated).

    Raises:
        ConfigError: fewer than :data:`MIN_CALIBRATION_SLIDES` values, or values that are not positive numbers.
    """
    if isinstance(peak_mpps, (str, bytes, Mapping)) or not hasattr(peak_mpps, "__len__"):
        raise ConfigError(f"peak um/px values must be a list of numbers, got {type(peak_mpps).__name__}")
    try:
        values = np.asarray(peak_mpps, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"peak um/px values must be a list of numbers, got {list(peak_mpps)!r}") from None
    if values.ndim != 1:
        raise ConfigError(f"peak um/px values must be a flat list (one per slide), got shape {values.shape}")
    require_slides(values.size)
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ConfigError(f"peak um/px values must be positive numbers, got {values.tolist()}")
    logs = np.log2(values)
    return ScaleCalibration(float(2.0 ** np.median(logs)), float(np.std(logs, ddof=1)), int(values.size), source)


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
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise ConfigError(f"calibration file {p} {what}: give the JSON `histoscale calibrate --out` wrote")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"calibration file {p} is not readable JSON: {err}") from None
    try:
        return ScaleCalibration.from_dict(_unwrap(data))
    except ConfigError as err:
        raise ConfigError(f"calibration file {p}: {err}") from None
