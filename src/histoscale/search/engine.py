"""The scale search (Penkin et al. 2023, Algorithm 1), made fast, robust and honest.

For P points, N concentric patches per point are resampled to the model's input size; the model's features are
scored per scale (:mod:`histoscale.scoring`); the points' curves give the slide's answer (:mod:`histoscale.aggregate`)
with a continuous estimate and a bootstrap interval. Beyond the paper: by default the search is coarse to fine over
the whole plausible range in level-0 downsample (:mod:`histoscale.search._range`), placed without looking at the
declared um/px, so that the metadata check can catch a declaration off by any factor; the fine grid widens when the
curves keep rising towards its edge; once the answer is settled to a few fine scales later points are read only
there; sampling stops once the answer is settled.

The engine is a short loop over named steps: :func:`_plan` (units, grid, points), ``_Run.scan_range`` (default
search only: the sparse scan that places the fine grid), then per block of points ``_Run.add_block`` (read +
features), ``_Run.consensus``, ``_Run.try_widen``, ``_Run.try_focus``, and finally ``_Run.settle``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from histoscale._compat import renamed
from histoscale._progress import progress_bar
from histoscale.aggregate import (
    PointAnswers,
    SlideStatistic,
    Vote,
    analyse_curves,
    is_settled,
    scan_peak,
    slide_curve,
    vote,
)
from histoscale.calibration import ScaleCalibration
from histoscale.domain import DomainCheck, domain_check
from histoscale.errors import ConfigError, DamagedTileError, MissingMppError, ScaleSearchError
from histoscale.models import SplitModel, load_model
from histoscale.patches import LevelReader, iter_multiscale, read_multiscale, read_regions
from histoscale.sampling import sample_points
from histoscale.scoring import PER_SCALE_SCORERS, BatchNormStatistics, CurveScores, batchnorm_drift, score_points
from histoscale.search._range import FINE_INNER, fine_grid, focus_window, plausible_range, scan_grid
from histoscale.search._widen import edge_direction, widen_grid
from histoscale.search.config import SearchConfig
from histoscale.search.result import ScaleResult, ScanSummary, grid_edge, metadata_check, through_model
from histoscale.slide import Slide, measure_mpp, open_slide, tissue_mask
from histoscale.units import STEPS_PER_OCTAVE, Units, check_upsampling, parse_scales, to_downsamples

__all__ = ["find_scale"]

logger = logging.getLogger(__name__)


def find_scale(
    slide: Slide | str | PathLike[str],
    model: Any = None,
    config: SearchConfig | None = None,
    *,
    slide_mpp: float | None = None,
    progress: bool = False,
    mpp: float | None = None,
    **settings: Any,
) -> ScaleResult:
    """Find the scale at which ``model`` should see ``slide``.

    Args:
        slide: an open :class:`~histoscale.slide.Slide` or a path (opened with ``slide_mpp`` as its um/px).
        model: a loaded :class:`~histoscale.models.SplitModel`, anything :func:`~histoscale.models.load_model`
            accepts, or None for the bundled reference model.
        config: a :class:`SearchConfig`; ``settings`` (its field names as keywords, e.g. ``points=50``) are
            applied on top of it (or of the defaults).
        slide_mpp: level-0 um/px overriding what a slide path declares (``mpp`` is its deprecated name).
        progress: show a rich progress bar.

    Units: um/px when the slide's resolution is known and ``relative`` is False; otherwise level-0 downsample
    (explicit ``scales`` on a slide without resolution need ``relative=True``: they are never silently reread).
    The default search (``scales=None``) is placed in level-0 downsample whatever the slide declares; its answer is
    then expressed in the units above and compared with the declared um/px (``result.check``).

    Raises:
        ConfigError: invalid settings. MissingMppError: um/px scales on a slide without resolution.
        ScaleSearchError: scales the slide cannot serve, or no informative point.
    """
    slide_mpp = renamed("find_scale", "mpp", "slide_mpp", mpp, slide_mpp)
    config = (config or SearchConfig()).replace(**settings) if settings else (config or SearchConfig())
    if not hasattr(model, "features"):
        model = load_model(model)
    unavailable = getattr(model, "scorer_unavailable", None)
    why = unavailable(config.scorer) if unavailable is not None else None
    if why:  # the model's own reason, before any read
        raise ConfigError(why)
    the_slide = slide if isinstance(slide, Slide) else open_slide(slide, slide_mpp=slide_mpp)
    try:
        run = _Run(the_slide, model, config, _plan(the_slide, model, config))
        return run.execute(progress)
    finally:
        if the_slide is not slide:
            the_slide.close()


#: Scorers whose stored features hold more than Phi (see :meth:`_Run._phi`).
_EXTENDED_SCORERS = ("bn-stats", "stability")


@dataclass
class _Plan:
    units: Units
    grid: np.ndarray
    level0_mpp: float | None  # converts um/px scales to level-0 downsamples (None in relative units)
    xy: np.ndarray  # (points, 2) level-0 px, in draw order
    search_range: tuple[float, float] | None  # default search: (finest, coarsest) level-0 downsample; grid = scan

    def downsamples(self, scales: np.ndarray) -> np.ndarray:
        return to_downsamples(scales, self.units, self.level0_mpp)

    def scales(self, downsamples: np.ndarray) -> np.ndarray:
        return np.asarray(downsamples, dtype=np.float64) * (self.level0_mpp or 1.0)


def _plan(slide: Slide, model: SplitModel, config: SearchConfig) -> _Plan:
    """Units, the candidate grid (checked against what the slide can serve) and the sampled points."""
    units: Units = "um/px" if (slide.mpp is not None and not config.relative) else "downsample"
    scales = config.scales
    if units == "downsample" and not config.relative and scales is not None and scales != "paper":
        # Explicit numbers are um/px unless the caller said otherwise: reading them as downsamples would be
        # a silent wrong answer.
        raise MissingMppError(
            f"{slide.path} has no um/px metadata, so the scales {scales!r} cannot be read as um/px: give the "
            "slide's resolution (--slide-mpp / slide_mpp=...), or search in downsample units "
            "(--relative / relative=True)"
        )
    level0_mpp = slide.level0_mpp() if units == "um/px" else None
    w, h = slide.dimensions
    input_px = int(model.input_size)
    search_range = None
    if scales is None:
        search_range = plausible_range(getattr(model, "mpp", None), input_px, (w, h), str(slide.path))
        ds = scan_grid(*search_range)
        grid = ds * (level0_mpp or 1.0)
        margin = input_px * float(np.sqrt(ds[0] * ds[-1])) / 2  # the scan's widest patches may touch the border
    else:
        grid = parse_scales(scales, units=units, min_count=2)
        ds = to_downsamples(grid, units, level0_mpp)
        where = f"{slide.path} (level 0 at {slide.mpp or 1:.3g} {'um/px' if level0_mpp else 'px'})"
        check_upsampling(ds, grid, units, where)
        widest = input_px * ds[-1]
        if widest > max(w, h):
            raise ScaleSearchError(
                f"{slide.path} is {w}x{h} px, smaller than the widest field of view ({widest:.0f} level-0 px at "
                f"{grid[-1]:.3g} {units}): choose finer scales (--scales) or a larger slide"
            )
        margin = widest / 2
    mask = tissue_mask(slide, use_mpp=search_range is None) if config.sampling == "tissue" else None
    xy = sample_points(
        (w, h), config.points, seed=config.seed, mode=config.sampling, margin_px=margin, mask=mask,
        where=str(slide.path),
    )
    return _Plan(units, grid, level0_mpp, xy, search_range)


@dataclass
class _Run:
    """The state of one search: features of the points so far over the current grid, and what happened."""

    slide: Slide
    model: SplitModel
    config: SearchConfig
    plan: _Plan
    features: list[np.ndarray] = field(default_factory=list)  # blocks of (p, N, M), or (p, N, G, M) per cell
    used: int = 0
    widenings: list[str] = field(default_factory=list)
    widened: int = 0  # direction of the widenings so far: +1 coarser, -1 finer
    focus: np.ndarray | None = None  # grid indices later points are read at (None: all)
    focusings: list[str] = field(default_factory=list)
    stopped_early: bool = False
    patches_scored: int = 0
    points_damaged: int = 0  # points skipped: their patches touch tiles that do not decode (dropped from plan.xy)
    scan: ScanSummary | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"read_and_model_s": 0.0, "widen_s": 0.0})

    @property
    def grid(self) -> np.ndarray:
        return self.plan.grid

    @property
    def _calibration(self) -> ScaleCalibration | None:
        """The model's calibration, when it has one, the search applies it and it was measured with this search's
        scorer and aggregation (else the summary says why it was not applied)."""
        cal = getattr(self.model, "calibration", None) if self.config.calibrated else None
        return cal if cal is not None and cal.applies_to(self.config.scorer, self.config.aggregation) else None

    @property
    def _on_device(self) -> bool:
        """The model crops and resamples the reads itself, on its device (a GPU)."""
        # bn-stats and stability need the patches themselves (torch hooks; the transpose), resampled on the CPU
        own = self.config.scorer in _EXTENDED_SCORERS
        return not own and bool(getattr(self.model, "resamples_on_device", False))

    @property
    def _read(self) -> Any:
        return read_regions if self._on_device else read_multiscale

    def _read_point(self, slide: LevelReader, center_xy: Sequence[float], downsamples: np.ndarray, out_px: int) -> Any:
        """One point's read (:attr:`_read`), or the :class:`DamagedTileError` it met: such a point is skipped, not
        the slide (a slide whose reads mostly fail raises its own SlideError, which ends the search)."""
        try:
            return self._read(slide, center_xy, downsamples, out_px)
        except DamagedTileError as err:
            return err

    def _patches(self, start: int) -> Any:
        """Points from ``start`` on, read at the grid's scales (those of the focus, once there is one); a point
        that met a damaged tile yields its DamagedTileError (:meth:`_take` skips it)."""
        scales = self.grid if self.focus is None else self.grid[self.focus]
        return iter_multiscale(
            self.slide, self.plan.xy[start:], self.plan.downsamples(scales), int(self.model.input_size),
            prefetch=self.config.prefetch, read=self._read_point,
        )

    def _take(self, patches: Any, n: int) -> list[Any]:
        """The reads of the next ``n`` readable points of ``patches`` (an iterator from point ``self.used`` on),
        fewer when the points run out; a damaged point is dropped from the plan, so that ``plan.xy[:used]`` stays
        the points the features hold."""
        reads: list[Any] = []
        for read in patches:
            if isinstance(read, DamagedTileError):
                self._skip(np.arange(len(self.plan.xy)) == self.used + len(reads), read)
            else:
                reads.append(read)
            if len(reads) == n:
                break
        return reads

    def _skip(self, damaged: np.ndarray, error: DamagedTileError) -> None:
        """Drop the points ``damaged`` (a mask over ``plan.xy``) from the plan and from the features read so far."""
        count = int(damaged.sum())
        logger.info("skipping %d point(s): %s", count, error)
        read = damaged[: self.used]
        if read.any():
            self.features = [np.concatenate(self.features)[~read]]
            self.used -= int(read.sum())
        self.plan.xy = self.plan.xy[~damaged]
        self.points_damaged += count

    def _features_at_used(self, scales: np.ndarray) -> np.ndarray:
        """Features of the points used so far at ``scales`` (n,) -> (used, n, M) (or (used, n, G, M)); those that
        meet a damaged tile there are skipped first (dropped from the plan and the features)."""
        ds, out_px = self.plan.downsamples(scales), int(self.model.input_size)
        reads = [self._read_point(self.slide, c, ds, out_px) for c in self.plan.xy[: self.used]]
        errors = [r for r in reads if isinstance(r, DamagedTileError)]
        if errors:
            damaged = np.zeros(len(self.plan.xy), dtype=bool)
            damaged[: len(reads)] = [isinstance(r, DamagedTileError) for r in reads]
            self._skip(damaged, errors[0])
            if not self.used:
                raise self._damaged()
        return self._features_of([r for r in reads if not isinstance(r, DamagedTileError)])

    def _damaged(self) -> ScaleSearchError:
        """The error for a search whose points mostly (or all) met damaged tiles: an answer from the few left would
        rest on a small corner of the slide."""
        return ScaleSearchError(
            f"{self.slide.path} is damaged: {self.points_damaged} of the {self.points_damaged + self.used} points read "
            "touch tiles that do not decode. Copy the file again and compare its checksum with the source's, or "
            "export or scan it again"
        )

    def _features_of(self, points: list[Any]) -> np.ndarray:
        """Per point its (N, S, S, 3) uint8 patches (its regions when the model resamples on its device) -> (p, N, M)
        features ((p, N, G, M) for a segmentation model)."""
        if self.config.scorer == "bn-stats":  # Phi, then the BatchNorm input moments of the same pass
            feats = self.model.features_with_moments(np.concatenate(points))
        elif self.config.scorer == "stability":  # Phi of each patch, then of its transpose
            batch = np.concatenate(points)
            turned = np.ascontiguousarray(batch.transpose(0, 2, 1, 3))
            feats = np.concatenate([self.model.features(batch), self.model.features(turned)], axis=-1)
        elif self._on_device:
            feats = self.model.features_of_regions([region for regions in points for region in regions])
        else:
            feats = self.model.features(np.concatenate(points))
        self.patches_scored += len(feats)
        return feats.reshape(len(points), -1, *feats.shape[1:])

    def _phi(self, features: np.ndarray) -> np.ndarray:
        """The features Phi of stored readings (``bn-stats`` stores the moments after them, ``stability`` the
        transposed patches' features)."""
        extended = self.config.scorer in _EXTENDED_SCORERS
        return features[..., : self.model.num_features] if extended else features

    @functools.cached_property
    def _batchnorm(self) -> BatchNormStatistics | None:
        if self.config.scorer != "bn-stats":
            return None
        return BatchNormStatistics(*self.model.batchnorm_statistics())

    def _score(self, features: np.ndarray | None = None) -> CurveScores:
        """Scores of ``features`` (default: every point's so far) with the configured scorer."""
        return score_points(
            np.concatenate(self.features) if features is None else features, self.model.W, self.model.b,
            self.config.scorer, background=getattr(self.model, "background", None),
            feature_stats=getattr(self.model, "feature_stats", None), batchnorm=self._batchnorm,
        )

    def _drift_statistic(self, features: np.ndarray | None = None) -> SlideStatistic | None:
        """``bn-stats``: the slide-level statistic of :func:`histoscale.aggregate.vote` over ``features`` (default:
        every point's so far), minus the BatchNorm drift of the moments pooled over the (weighted) points at each
        scale, as BatchNorm pools over a batch; None for the other scorers."""
        stats = self._batchnorm
        if stats is None:
            return None
        if features is None:
            features = np.concatenate(self.features)
        moments = np.asarray(features[..., self.model.num_features :], dtype=np.float32)  # (P, N, 2K)
        read: np.ndarray = ~np.isnan(moments[..., 0])  # a scale is read whole or not at all
        p, n, k2 = moments.shape
        filled = np.where(read[..., None], moments, np.float32(0)).reshape(p, n * k2)

        def statistic(weights: np.ndarray) -> np.ndarray:
            count = weights @ read.astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                pooled = (weights @ filled).reshape(len(weights), n, k2) / count[..., None]
            return np.where(count > 0, -batchnorm_drift(np.nan_to_num(pooled), stats), -np.inf)

        return statistic

    def execute(self, progress: bool) -> ScaleResult:
        config = self.config
        t0 = time.perf_counter()
        with progress_bar(progress) as bar:
            task = bar.add_task("scale search", total=config.points) if bar is not None else None
            if self.plan.search_range is not None:
                self.scan_range()
            patches = self._patches(self.used)
            try:
                if not self.features:
                    self.add_block(patches)
                while True:
                    if bar is not None:
                        bar.update(task, completed=self.used)
                    answers, interim = self.consensus(n_boot=100)
                    planned = len(self.plan.xy)  # the points requested less those skipped as damaged
                    checked = self.used >= min(planned, 2 * config.batch_points)
                    remaining = planned - self.used
                    if config.widen and checked and self.try_widen(interim.winner, answers):
                        patches.close()
                        patches = self._patches(self.used)
                    elif config.early_stop and is_settled(
                        interim, config.aggregation, remaining, min_points=4 * config.batch_points,
                        enough_width=self._calibration.enough_width_log2 if self._calibration else None,
                    ):
                        self.stopped_early = remaining > 0
                        break
                    elif checked and remaining > 0 and self.try_focus(interim):
                        patches.close()
                        patches = self._patches(self.used)
                    if self.used >= len(self.plan.xy):
                        break
                    self.add_block(patches)
            finally:
                patches.close()
        self.timings["read_and_model_s"] = time.perf_counter() - t0 - self.timings["widen_s"]
        if self.points_damaged > self.used:
            raise self._damaged()
        return self.settle()

    def scan_range(self) -> None:
        """The sparse scan over the whole range on the first ``scan_points`` points; the fine grid (quarter-octave
        steps, the one the answer comes from) is centred on its peak. The scan's points, read at the fine grid's
        scales within ``FINE_INNER`` steps of the peak (the scan read some already: both grids lie on one lattice),
        may settle the focus; they are then read at the outer scales it still needs, and become the fine stage's
        first block."""
        n = min(self.config.scan_points, self.config.points)
        patches = self._patches(0)
        try:
            reads = self._take(patches, n)
        finally:
            patches.close()
        if not reads:
            raise self._damaged()
        n = len(reads)
        feats = self._features_of(reads)
        curves = self._score(feats).curve
        probs = self._probabilities(feats)
        # Standardised: over the whole range a few points' margins far from the model's scale must not outvote
        # the rest (histoscale.aggregate).
        statistic = self._drift_statistic(feats)
        answers, scan_vote = self.consensus(
            n_boot=20, curves=curves, probs=probs, statistic=statistic, standardise=True
        )
        scan_grid_units = self.grid
        if scan_vote.winner < 0:
            raise self._no_informative_point("the scan ")
        pooled = self._answer_curve(answers, curves, probs, statistic, standardise=True)
        log2_peak, rivals = scan_peak(pooled, np.log2(scan_grid_units), scan_vote.winner, scan_vote.log2_estimate)
        peak_ds = float(self.plan.downsamples(np.array([2.0**log2_peak]))[0])
        self.plan.grid = self.plan.scales(fine_grid(peak_ds, *self.plan.search_range))  # type: ignore[misc]
        self.scan = ScanSummary(
            scales=scan_grid_units, pooled_curve=pooled, peak=2.0**log2_peak, points=n,
            rivals=tuple(float(scan_grid_units[i]) for i in rivals),
        )
        logger.info("scan over %s: peak at %.3g; fine grid %s", scan_grid_units.round(3).tolist(),
                    self.scan.peak, self.grid.round(3).tolist())
        # The scan's points on the fine grid: its own patches where the lattices meet, then the missing scales near
        # the peak; the outer ones only if the focus, deciding on these, still needs them.
        log2_fine, log2_scan = np.log2(self.grid), np.log2(scan_grid_units)
        match = np.abs(log2_fine[:, None] - log2_scan[None, :]) < 1e-6  # (fine, scan)
        have = match.any(axis=1)
        self.features = [self._on_grid(feats[:, match.argmax(axis=1)[have]], have)]
        self.used = n
        near = np.abs(log2_fine - log2_peak) <= (FINE_INNER + 0.5) / STEPS_PER_OCTAVE
        self._read_scan_points(~have & near)
        if self.used < len(self.plan.xy):
            self.try_focus(self.consensus(n_boot=100)[1])
        self._read_scan_points(~have & ~near)

    def _read_scan_points(self, scales: np.ndarray) -> None:
        """Read the scan's points (the features so far, on the fine grid) at the fine scales ``scales`` (mask) that
        later points still read."""
        if self.focus is not None:
            scales = scales & np.isin(np.arange(len(self.grid)), self.focus)
        if scales.any():
            feats = self._features_at_used(self.grid[scales])
            self.features[0][:, scales] = feats

    def _no_informative_point(self, which: str = "") -> ScaleSearchError:
        """The error for a grid over which every point's curve was flat."""
        return ScaleSearchError(
            f"no informative point in {self.slide.path}: every curve was flat over {which}"
            f"{self.grid.round(3).tolist()} {self.plan.units} (background or blank tissue?); sample more points or "
            "check the tissue mask"
        )

    def add_block(self, patches: Any) -> None:
        """Read and run the model on the next block of points (NaN at the scales outside the focus)."""
        reads = self._take(patches, min(self.config.batch_points, len(self.plan.xy) - self.used))
        if not reads:
            if not self.features:
                raise self._damaged()
            return  # the last points were all damaged
        feats = self._features_of(reads)
        self.features.append(feats if self.focus is None else self._on_grid(feats, self.focus))
        self.used += len(reads)

    def _on_grid(self, feats: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Features (p, k, ...) read at the grid's ``columns`` (k indices, or a mask) -> (p, N, ...), NaN elsewhere."""
        full = np.full((len(feats), len(self.grid), *feats.shape[2:]), np.nan, dtype=feats.dtype)
        full[:, columns] = feats
        return full

    def _probabilities(self, features: np.ndarray | None = None) -> np.ndarray | None:
        """The points' class probabilities (P, N, C) (default: every point's so far) when the aggregation needs
        them (``infomax``), else None; a segmentation model's are the mean over its tissue cells."""
        if self.config.aggregation != "infomax":
            return None
        return score_points(
            self._phi(np.concatenate(self.features) if features is None else features), self.model.W, self.model.b,
            "softmax", background=getattr(self.model, "background", None),
        ).matrix

    def _answer_curve(
        self, answers: PointAnswers, curves: np.ndarray, probs: np.ndarray | None,
        statistic: SlideStatistic | None, standardise: bool = False,
    ) -> np.ndarray:
        """(N,) the curve the answer is the argmax of, over the informative points: the slide-level ``statistic``
        (``bn-stats``) when there is one, else :func:`histoscale.aggregate.slide_curve` of the aggregation."""
        if statistic is not None:
            return statistic(answers.informative.astype(np.float64)[None])[0]
        return slide_curve(
            self.config.aggregation, curves[answers.informative],
            probs=None if probs is None else probs[answers.informative], standardise=standardise,
        )

    def consensus(
        self, n_boot: int | None = None, curves: np.ndarray | None = None, probs: np.ndarray | None = None,
        statistic: SlideStatistic | None = None, standardise: bool = False,
    ) -> tuple[PointAnswers, Vote]:
        """The slide's answer from the points so far; or from given ``curves``, ``probs`` and ``statistic``
        (their scores, class probabilities and slide-level statistic: :meth:`_score`, :meth:`_probabilities`,
        :meth:`_drift_statistic`), each computed once by a caller that needs them again."""
        if curves is None:
            features = np.concatenate(self.features)
            curves = self._score(features).curve
            probs = self._probabilities(features)
            statistic = self._drift_statistic(features)
        log2_grid = np.log2(self.grid)
        answers = analyse_curves(curves, log2_grid)
        kwargs = {} if n_boot is None else {"n_boot": n_boot}
        return answers, vote(
            answers, log2_grid, curves=curves, method=self.config.aggregation, standardise=standardise,
            probs=probs, statistic=statistic, statistic_block=8, seed=self.config.seed, **kwargs
        )

    def try_widen(self, winner: int, answers: PointAnswers) -> bool:
        """Extend the grid beyond the edge the curves rise towards, re-reading the points used so far at the
        new scales only; True when the grid changed."""
        if self.focus is not None:
            return False  # the points read so far lack the scales outside the focus (a known limit at the grid's edge)
        direction = edge_direction(winner, len(self.grid), answers)
        if self.widened and direction == -self.widened:
            return False  # never turn back: the first widening already said where the answer lies
        new = widen_grid(
            self.grid, direction, self.plan.downsamples, int(self.model.input_size), self.slide.dimensions,
            len(self.widenings), self.config.max_widen_steps,
        )
        if new is None:
            return False
        t1 = time.perf_counter()
        self.widenings.append(f"{'coarser' if direction > 0 else 'finer'}: +{len(new)} scales after {self.used} points")
        logger.info("widening the grid %s", self.widenings[-1])
        extra_feats = self._features_at_used(new)
        old = np.concatenate(self.features)
        pair = [extra_feats, old] if direction < 0 else [old, extra_feats]
        self.features = [np.concatenate(pair, axis=1)]
        self.plan.grid = np.concatenate([new, self.grid] if direction < 0 else [self.grid, new])
        self.widened = direction
        self.timings["widen_s"] += time.perf_counter() - t1
        return True

    def try_focus(self, interim: Vote) -> bool:
        """Read later points only at the scales the answer can still come from (:func:`focus_window` of the
        bootstrap resamples' winners); True when the scales to read shrank."""
        config = self.config
        if not config.focus or self.plan.search_range is None or config.aggregation != "pooled" or (
            config.scorer not in PER_SCALE_SCORERS
        ):
            return False
        window = focus_window(interim.winner_span, len(self.grid), self.focus)
        if window is None:
            return False
        self.focus = window
        lo, hi = self.grid[window[0]], self.grid[window[-1]]
        self.focusings.append(f"after {self.used} points: {lo:.3g}-{hi:.3g} {self.plan.units} "
                              f"({len(window)} of {len(self.grid)} scales)")
        logger.info("focus %s", self.focusings[-1])
        return True

    def _domain(self, index: int) -> DomainCheck | None:
        """The points' features at grid scale ``index`` against the model's training features (None when the
        model records none); a segmentation model's cells are averaged, as its split features are."""
        stats = getattr(self.model, "feature_stats", None)
        if stats is None:
            return None
        feats = self._phi(np.concatenate(self.features)[:, index])
        return domain_check(stats, feats if feats.ndim == 2 else feats.mean(axis=1))

    def settle(self) -> ScaleResult:
        """The final answer from every point used, with the full bootstrap and the metadata check."""
        features = np.concatenate(self.features)
        scored = self._score(features)
        probs = self._probabilities(features)
        statistic = self._drift_statistic(features)
        answers, result_vote = self.consensus(curves=scored.curve, probs=probs, statistic=statistic)
        units, grid = self.plan.units, self.grid
        if result_vote.winner < 0:
            raise self._no_informative_point()
        config = self.config
        chosen = float(grid[result_vote.winner])
        log2_estimate, log2_interval = result_vote.log2_estimate, result_vote.log2_interval
        model_mpp = getattr(self.model, "mpp", None)
        calibration = self._calibration
        check_mpp = model_mpp
        rivals = self.scan.rivals if self.scan is not None else ()
        if calibration is not None:
            # From where the margins peak to where the model sees its training um/px; the interval gains the
            # slide-to-slide scatter the bootstrap over points cannot see.
            log2_level0 = math.log2(self.plan.level0_mpp or 1.0)
            log2_estimate, log2_interval = calibration.correct(log2_estimate, log2_interval, model_mpp, log2_level0)
            chosen = 2.0 ** calibration.apply(math.log2(chosen), model_mpp, log2_level0)
            rivals = tuple(2.0 ** calibration.apply(math.log2(r), model_mpp, log2_level0) for r in rivals)
            check_mpp = calibration.reference_mpp(model_mpp)
        interval = (2.0 ** log2_interval[0], 2.0 ** log2_interval[1])
        estimate = 2.0**log2_estimate
        res = self.slide.resolution
        domain = self._domain(result_vote.winner)
        damaged_tiles = tuple(self.slide.damaged_tiles)  # before the ruler, which reads regions of its own
        ruler = None
        if config.ruler:
            start = time.perf_counter()
            ruler = measure_mpp(self.slide, seed=config.seed)
            self.timings["ruler_s"] = time.perf_counter() - start
        check = metadata_check(
            res.mpp if res is not None else None, res.source if res is not None else None, units,
            check_mpp, chosen, estimate, interval, domain=domain, ruler=ruler,
            edge=grid_edge(result_vote.winner, len(grid)), rivals=rivals,
        )
        if check.implied_mpp != check.model_implied_mpp and check.implied_interval is not None:
            # The slide's um/px was read twice and the readings combined: the scale at which the model sees its
            # reference um/px follows the combination (the check's own map from scale to slide um/px, inverted).
            def scale(mpp: float) -> float:
                return through_model(mpp, units, check_mpp, check.declared_mpp)  # type: ignore[arg-type]

            lo_mpp, hi_mpp = check.implied_interval
            estimate, interval = scale(check.implied_mpp), (scale(hi_mpp), scale(lo_mpp))  # type: ignore[arg-type]
        return ScaleResult(
            slide=str(self.slide.path),
            model=str(getattr(self.model, "name", type(self.model).__name__)),
            units=units,
            scorer=config.scorer,
            aggregation=config.aggregation,
            sampling=config.sampling,
            seed=config.seed,
            scales=grid,
            chosen_index=result_vote.winner,
            chosen_scale=chosen,
            estimate=estimate,
            interval=interval,
            confidence=result_vote.confidence,
            votes=result_vote.counts,
            points_requested=config.points,
            points_used=self.used,
            points_damaged=self.points_damaged,
            damaged_tiles=damaged_tiles,
            points_informative=result_vote.n_informative,
            stopped_early=self.stopped_early,
            widenings=tuple(self.widenings),
            focus=tuple(self.focusings),
            check=check,
            domain=domain,
            class_names=tuple(self.model.class_names),
            patches_scored=self.patches_scored,
            scan=self.scan,
            calibration=calibration,
            points_xy=self.plan.xy[: self.used],
            curves=scored.curve,
            class_scores=scored.matrix,
            point_answers=answers,
            slide_curve=self._answer_curve(answers, scored.curve, probs, statistic),
            timings=self.timings,
            model_info=self.model.describe(),
        )

