"""One search configuration: what the CLI builds, what :func:`find_scale` takes, what a cohort ships to its
workers and records in its settings file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoscale.aggregate import AGGREGATIONS
from histoscale.errors import ConfigError
from histoscale.sampling import SAMPLING_MODES, SamplingMode
from histoscale.scoring import SCORERS
from histoscale.units import parse_scales

__all__ = ["DEFAULT_AGGREGATION", "DEFAULT_SCORER", "SearchConfig"]

DEFAULT_SCORER = "margin"
DEFAULT_AGGREGATION = "pooled"


@dataclass(frozen=True)
class SearchConfig:
    """How to search; every field is checked on construction (:class:`~histoscale.errors.ConfigError`).

    Attributes:
        points: P, the number of points sampled (>= 1).
        scales: None (the default, coarse to fine: a half-octave scan over the whole plausible range in level-0
            downsample, whatever the slide declares, then quarter-octave steps around its peak), ``"paper"``, or
            ascending scales as a comma-separated string or a tuple (um/px, or downsample with ``relative`` or on
            a slide without um/px): a fixed grid.
        seed: seed of the point sampling and the bootstrap.
        scorer: one of :data:`histoscale.scoring.SCORERS` (default: the bias-aware class margin).
        aggregation: ``"pooled"`` (argmax of the points' mean curve; :mod:`histoscale.aggregate`), ``"vote"``
            (the paper's majority vote) or ``"infomax"`` (argmax of the information between point and predicted
            class over the points, :func:`histoscale.aggregate.information_curve`; the scorer still gives each
            point's own answer and the flat points it leaves out).
        sampling: ``"tissue"`` (points on the tissue mask) or ``"uniform"`` (the paper's).
        relative: report (and read explicit ``scales``) in level-0 downsample units even when the slide
            declares its um/px.
        early_stop: stop sampling once the answer is settled (:func:`histoscale.aggregate.is_settled`; a calibrated
            model's search also stops when more points could not narrow its calibrated interval).
        widen: extend the grid when the curves keep rising towards one of its edges.
        max_widen_steps: at most this many scales added by widening.
        focus: the default search with the pooled aggregation (and a scorer of
            :data:`histoscale.scoring.PER_SCALE_SCORERS`) reads points only where the answer can still be: once
            every bootstrap resample's winner lies within a few fine scales (first judged on the scan's points read
            near its peak), the window of those scales and one more on each side (only ever narrower; no widening
            after it). ``scales`` grids are read whole.
        ruler: also measure the slide's um/px from the size of its nuclei, without the model or the metadata
            (:func:`histoscale.slide.measure.measure_mpp`, ~2 s), and let the metadata check weigh it: no
            confident MISMATCH on the model's word alone when the tissue contradicts it.
        calibrated: apply the model's scale calibration when it has one (:mod:`histoscale.calibration`: the
            answer moves to where the model sees its training um/px, the interval adds the slide-to-slide scatter).
        scan_points: points of the default search's sparse scan (the fine stage keeps their patches and reads them
            at the fine scales it still needs).
        batch_points: points per model call (and per early-stop check).
        prefetch: points read ahead of the model by reader threads (0: none); the default, two blocks, lets a
            whole block be read while the model runs on the previous one.
    """

    points: int = 100
    scales: str | tuple[float, ...] | None = None
    seed: int = 0
    scorer: str = DEFAULT_SCORER
    aggregation: str = DEFAULT_AGGREGATION
    sampling: SamplingMode = "tissue"
    relative: bool = False
    early_stop: bool = True
    widen: bool = True
    max_widen_steps: int = 8
    focus: bool = True
    calibrated: bool = True
    ruler: bool = True
    scan_points: int = 16
    batch_points: int = 8
    prefetch: int = 16

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be True or False, got {value!r}", keyword=f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ConfigError(f"{f.name} must be a whole number, got {value!r}", keyword=f.name)
        if isinstance(self.scales, (list, tuple)) or hasattr(self.scales, "tolist"):
            object.__setattr__(self, "scales", tuple(float(v) for v in self.scales))  # type: ignore[union-attr]
        for name in ("points", "batch_points", "scan_points"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})", keyword=name)
        for name in ("max_widen_steps", "prefetch"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0 (got {getattr(self, name)})", keyword=name)
        if self.scorer not in SCORERS:
            raise ConfigError(f"unknown scorer {self.scorer!r}: choose one of {', '.join(SCORERS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {self.aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        if self.scorer == "bn-stats" and self.aggregation != "pooled":
            raise ConfigError(
                "scorer 'bn-stats' pools the points' BatchNorm moments at each scale (as BatchNorm pools a batch): "
                f"it has no {self.aggregation!r} aggregation; use the default (pooled)", keyword="aggregation")
        if self.scorer == "stability" and self.aggregation == "infomax":
            raise ConfigError(
                "the infomax aggregation uses the class probabilities, not the scorer's curves: with scorer "
                "'stability' the model would run twice for nothing; use --scorer margin", keyword="aggregation")
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"unknown sampling {self.sampling!r}: choose one of {', '.join(SAMPLING_MODES)}")
        if self.scales is not None:
            try:
                parse_scales(self.scales, units="downsample" if self.relative else "um/px", min_count=2)
            except ConfigError as err:
                raise ConfigError(str(err), keyword="scales") from None

    @classmethod
    def paper(cls, **changes: Any) -> SearchConfig:
        """The paper's Algorithm 1 exactly (Penkin et al. 2023): its nine magnifications, the bias-free hyperplane
        projection, a majority vote over uniformly sampled points, all P points, no widening, no calibration."""
        settings: dict[str, Any] = dict(
            scales="paper", scorer="paper", aggregation="vote", sampling="uniform", early_stop=False, widen=False,
            calibrated=False,
        )
        return cls(**(settings | changes))

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` applied (and checked).

        Raises:
            ConfigError: an unknown setting (its name, the known ones) or an invalid value.
        """
        self._refuse_unknown(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def _refuse_unknown(cls, settings: Mapping[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            hint = " (a model's calibration goes to load_model(calibration=...))" if "calibration" in unknown else ""
            raise ConfigError(f"unknown search settings {unknown}{hint}: known are {sorted(known)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (scales as a list)."""
        out = dataclasses.asdict(self)
        if isinstance(self.scales, tuple):
            out["scales"] = list(self.scales)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused with their names."""
        cls._refuse_unknown(data)
        return cls(**dict(data))
