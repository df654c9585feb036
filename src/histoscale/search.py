"""The scale search (Penkin et al. 2023, Algorithm 1), made fast, robust and honest.

For P points, N concentric patches per point are resampled to the model's input size; the model's features are
scored per scale (see :mod:`histoscale.scoring`); each point votes for its best scale; the slide's answer is the
vote's winner with a continuous estimate and a bootstrap interval. Beyond the paper: the grid widens when the
winner sits on its edge, sampling stops once the winner cannot change, and the answer is checked against the
slide's declared resolution.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any, Literal

import numpy as np

from histoscale.aggregate import (
    AGGREGATIONS,
    FALLING,
    RISING,
    PointAnswers,
    Vote,
    analyse_curves,
    is_settled,
    vote,
)
from histoscale.errors import ConfigError, MissingMppError, ScaleSearchError
from histoscale.patches import iter_multiscale, read_multiscale
from histoscale.sampling import SamplingMode, sample_points
from histoscale.scoring import SCORERS, score_points
from histoscale.slide import Slide, open_slide

__all__ = ["DEFAULT_AGGREGATION", "DEFAULT_SCORER", "progress_bar", "MetadataCheck", "ScaleResult", "find_scale", "make_grid", "PAPER_MAGNIFICATIONS"]

logger = logging.getLogger(__name__)

DEFAULT_SCORER = "margin"
DEFAULT_AGGREGATION = "pooled"
STEPS_PER_OCTAVE = 4  # grid ratio 2^(1/4) ~ 1.19, the paper's ~1.2
PAPER_MAGNIFICATIONS = (10, 12, 14, 17, 20, 25, 30, 35, 43)  # around a x40 base; "x" is a label: x = 10 / um/px
MIN_DOWNSAMPLE = 0.25  # no scale asks for more than 4x upsampling of the slide's finest level
# Widening stops at 2x upsampling: blurred, upsampled patches lie far from the training data, where hyperplane
# distances grow without meaning (seen on phantoms: votes run away to the finest scale).
MIN_WIDEN_DOWNSAMPLE = 0.5

Units = Literal["um/px", "downsample"]


def scale_values(scales: str | Sequence[float]) -> list[float]:
    """Numbers from a comma-separated string or a sequence, unchecked."""
    if not isinstance(scales, str):
        return [float(v) for v in scales]
    try:
        return [float(v) for v in scales.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise ConfigError(f"cannot read scales {scales!r}: give comma-separated numbers or 'paper'") from err


def make_grid(
    scales: str | Sequence[float] | None, *, center: float, units: Units, half_width: int = 4
) -> np.ndarray:
    """Candidate scales, ascending: a geometric grid of ratio 2^(1/4) around ``center``, the paper's preset
    (``"paper"``), or an explicit list (a comma-separated string or a sequence), which must be positive and
    strictly increasing."""
    if scales is None:
        return center * 2.0 ** (np.arange(-half_width, half_width + 1) / STEPS_PER_OCTAVE)
    if isinstance(scales, str) and scales.strip().lower() == "paper":
        if units == "um/px":
            return np.array(sorted(10.0 / m for m in PAPER_MAGNIFICATIONS))
        return np.array(sorted(40.0 / m for m in PAPER_MAGNIFICATIONS))
    values = scale_values(scales)
    grid = np.asarray(values, dtype=np.float64)
    if grid.size < 2:
        raise ConfigError(f"need at least two candidate scales, got {values}")
    if not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ConfigError(f"scales must be positive numbers ({units}), got {values}")
    if np.any(np.diff(grid) <= 0):
        problem = "duplicate" if len(set(values)) < len(values) else "unsorted"
        raise ConfigError(f"scales must be strictly increasing ({problem} values in {values}): sort them")
    return grid


@dataclass(frozen=True)
class MetadataCheck:
    """The content-based estimate against the slide's declared resolution.

    ``implied_mpp`` is the slide's level-0 um/px implied by the answer (the vote's grid scale) and the model's
    training um/px; ``implied_estimate`` is the same from the continuous estimate, and ``implied_interval`` its
    bootstrap 95% interval; ``disagreement_steps`` is log2(implied / declared) in grid steps; ``status`` is ``OK`` (within one step),
    ``MISMATCH``, ``MISSING-METADATA`` (no declared um/px: the implied one is the only one) or
    ``UNKNOWN-MODEL-MPP`` (the model's training um/px is unknown: nothing to compare).
    """

    status: str
    declared_mpp: float | None
    declared_source: str | None
    model_mpp: float | None
    implied_mpp: float | None
    implied_estimate: float | None
    implied_interval: tuple[float, float] | None
    disagreement_steps: float | None


@dataclass(frozen=True)
class ScaleResult:
    """Everything the search found; ``to_dict()`` / ``to_json()`` serialise it."""

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
            text += f"; slide um/px implied {c.implied_mpp:.3g} (continuous {c.implied_estimate:.3g}, {lo_mpp:.3g}-{hi_mpp:.3g})"
            if c.declared_mpp is not None:
                text += f" vs declared {c.declared_mpp:.3g} ({c.disagreement_steps:+.1f} steps)"
        return text + f" -> {c.status}"

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
            "check": asdict(self.check),
            "class_names": list(self.class_names),
            "timings_s": self.timings,
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
        from histoscale.report import json_safe  # the output layer sits above this one

        return json.dumps(json_safe(self.to_dict(**kwargs)), indent=2)


def _metadata_check(
    slide: Slide, units: Units, model_mpp: float | None, chosen: float, estimate: float,
    interval: tuple[float, float],
) -> MetadataCheck:
    declared = slide.resolution.mpp if slide.resolution is not None else None
    source = slide.resolution.source if slide.resolution is not None else None
    if model_mpp is None:
        return MetadataCheck("UNKNOWN-MODEL-MPP", declared, source, None, None, None, None, None)

    def implied(scale: float) -> float:
        # The model saw one of its px where the search applied it: `scale` um/px, or `scale` level-0 px.
        return model_mpp / (scale / declared if units == "um/px" else scale)

    # A coarser scale implies a finer slide: the interval's ends swap.
    implied_interval = (implied(interval[1]), implied(interval[0]))
    if declared is None:
        return MetadataCheck(
            "MISSING-METADATA", None, None, model_mpp, implied(chosen), implied(estimate), implied_interval, None
        )
    steps = math.log2(implied(chosen) / declared) * STEPS_PER_OCTAVE
    status = "OK" if abs(steps) <= 1.0 else "MISMATCH"
    return MetadataCheck(
        status, declared, source, model_mpp, implied(chosen), implied(estimate), implied_interval, steps
    )


def _features_for(model: Any, patches: np.ndarray) -> np.ndarray:
    """(p, N, S, S, 3) uint8 patches -> (p, N, M) features."""
    p, n = patches.shape[:2]
    return model.features(patches.reshape(p * n, *patches.shape[2:])).reshape(p, n, -1)


def find_scale(
    slide: Slide | str | PathLike[str],
    model: Any = None,
    *,
    points: int = 100,
    scales: str | Sequence[float] | None = None,
    seed: int = 0,
    scorer: str = DEFAULT_SCORER,
    aggregation: str = DEFAULT_AGGREGATION,
    sampling: SamplingMode = "tissue",
    mpp: float | None = None,
    relative: bool = False,
    early_stop: bool = True,
    widen: bool = True,
    max_widen_steps: int = 8,
    batch_points: int = 8,
    prefetch: int = 4,
    progress: bool = False,
) -> ScaleResult:
    """Find the scale at which ``model`` should see ``slide``.

    ``slide``: an open :class:`Slide` or a path (``mpp`` overrides its declared um/px). ``model``: a loaded
    split model, anything :func:`histoscale.load_model` accepts, or None for the bundled reference model.
    Units: um/px when the slide's resolution is known and ``relative`` is False; otherwise level-0 downsample
    (explicit ``scales`` on a slide without resolution need ``relative=True``: they are never silently reread).
    The default grid is 9 scales of ratio 2^(1/4) around the model's training um/px (0.5 um/px if unknown), or
    around downsample 1 in relative units.
    """
    from histoscale.models import load_model  # models import torch: keep `import histoscale.search` light

    if points < 1:
        raise ConfigError(f"points must be at least 1 (got {points})")
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}: choose one of {', '.join(SCORERS)}")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
    if not hasattr(model, "features"):
        model = load_model(model)
    owns_slide = not isinstance(slide, Slide)
    the_slide = open_slide(slide, mpp=mpp) if owns_slide else slide
    try:
        return _search(
            the_slide, model, points=points, scales=scales, seed=seed, scorer=scorer, aggregation=aggregation,
            sampling=sampling,
            relative=relative, early_stop=early_stop, widen=widen, max_widen_steps=max_widen_steps,
            batch_points=batch_points, prefetch=prefetch, progress=progress,
        )
    finally:
        if owns_slide:
            the_slide.close()


def _search(
    slide: Slide, model: Any, *, points: int, scales: str | Sequence[float] | None, seed: int, scorer: str,
    aggregation: str, sampling: SamplingMode, relative: bool, early_stop: bool, widen: bool, max_widen_steps: int,
    batch_points: int, prefetch: int, progress: bool,
) -> ScaleResult:
    units: Units = "um/px" if (slide.mpp is not None and not relative) else "downsample"
    if units == "downsample" and not relative and scales is not None and scales != "paper":
        # Explicit numbers are um/px unless the caller said otherwise: reading them as downsamples would be
        # a silent wrong answer.
        raise MissingMppError(
            f"{slide.path} has no um/px metadata, so the scales {scales!r} cannot be read as um/px: pass the "
            "slide's resolution (--mpp / mpp=...), or search in downsample units (--relative / relative=True)"
        )
    model_mpp = getattr(model, "mpp", None)
    center = (model_mpp or 0.5) if units == "um/px" else 1.0
    grid = make_grid(scales, center=center, units=units)
    out_px = int(model.input_size)
    # grid value -> level-0 px per output px; downsample_for refuses contradictory x/y um/px (suggests --mpp)
    level0_per_unit = slide.downsample_for(1.0) if units == "um/px" else 1.0

    def downsamples(values: np.ndarray) -> np.ndarray:
        return values * level0_per_unit

    w, h = slide.dimensions
    if downsamples(grid)[0] < MIN_DOWNSAMPLE:
        raise ScaleSearchError(
            f"the finest scale {grid[0]:.3g} {units} asks for more than {1 / MIN_DOWNSAMPLE:g}x upsampling of "
            f"{slide.path} (level-0 {slide.mpp or 1:.3g} {'um/px' if units == 'um/px' else ''}): choose coarser scales"
        )
    widest = out_px * downsamples(grid)[-1]
    if widest > max(w, h):
        raise ScaleSearchError(
            f"{slide.path} is {w}x{h} px, smaller than the widest field of view ({widest:.0f} level-0 px at "
            f"{grid[-1]:.3g} {units}): choose finer scales (--scales) or a larger slide"
        )
    xy = sample_points(slide, points, seed=seed, mode=sampling, margin_px=widest / 2)
    timings = {"read_and_model_s": 0.0, "widen_s": 0.0}
    blocks: list[np.ndarray] = []  # features (p, N, M) of the points processed so far, over the current grid
    used = 0
    widenings: list[str] = []
    widened = 0  # direction of the widenings so far: +1 coarser, -1 finer
    stopped_early = False

    def consensus(features: np.ndarray, values: np.ndarray, n_boot: int) -> tuple[PointAnswers, Vote]:
        curves = score_points(features, model.W, model.b, scorer).curve
        answers = analyse_curves(curves, np.log2(values))
        return answers, vote(answers, np.log2(values), curves=curves, method=aggregation, n_boot=n_boot, seed=seed)

    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("scale search", total=points) if bar is not None else None
        patch_iter = iter_multiscale(slide, xy, downsamples(grid), out_px, prefetch=prefetch)
        while used < points:
            block = [next(patch_iter) for _ in range(min(batch_points, points - used))]
            blocks.append(_features_for(model, np.stack(block)))
            used += len(block)
            if bar is not None:
                bar.update(task, completed=used)
            answers, interim = consensus(np.concatenate(blocks), grid, n_boot=100)
            if widen and used >= min(points, 2 * batch_points):
                direction = _edge_direction(interim.winner, len(grid), answers)
                if widened and direction == -widened:
                    direction = 0  # never turn back: the first widening already said where the answer lies
                new = _widen(grid, direction, downsamples, out_px, (w, h), len(widenings), max_widen_steps)
                if new is not None:
                    t1 = time.perf_counter()
                    widenings.append(f"{'coarser' if direction > 0 else 'finer'}: +{len(new)} scales after {used} points")
                    logger.info("widening the grid %s", widenings[-1])
                    extra = np.stack([read_multiscale(slide, c, downsamples(new), out_px) for c in xy[:used]])
                    extra_feats = _features_for(model, extra)
                    old = np.concatenate(blocks)
                    blocks = [np.concatenate([extra_feats, old] if direction < 0 else [old, extra_feats], axis=1)]
                    grid = np.concatenate([new, grid] if direction < 0 else [grid, new])
                    widened = direction
                    patch_iter.close()
                    patch_iter = iter_multiscale(slide, xy[used:], downsamples(grid), out_px, prefetch=prefetch)
                    timings["widen_s"] += time.perf_counter() - t1
                    continue
            if early_stop and is_settled(interim, aggregation, points - used, min_points=4 * batch_points):
                stopped_early = used < points
                break
        patch_iter.close()
    timings["read_and_model_s"] = time.perf_counter() - t0 - timings["widen_s"]

    features = np.concatenate(blocks)
    scored = score_points(features, model.W, model.b, scorer)
    answers = analyse_curves(scored.curve, np.log2(grid))
    result_vote = vote(answers, np.log2(grid), curves=scored.curve, method=aggregation, seed=seed)
    if result_vote.winner < 0:
        raise ScaleSearchError(
            f"no informative point in {slide.path}: every curve was flat over {grid.round(3).tolist()} {units} "
            "(background or blank tissue?); sample more points or check the tissue mask"
        )
    chosen = float(grid[result_vote.winner])
    interval = (2.0 ** result_vote.log2_interval[0], 2.0 ** result_vote.log2_interval[1])
    estimate = 2.0**result_vote.log2_estimate
    check = _metadata_check(slide, units, model_mpp, chosen, estimate, interval)
    return ScaleResult(
        slide=str(slide.path),
        model=str(getattr(model, "name", type(model).__name__)),
        units=units,
        scorer=scorer,
        aggregation=aggregation,
        sampling=sampling,
        seed=seed,
        scales=grid,
        chosen_index=result_vote.winner,
        chosen_scale=chosen,
        estimate=estimate,
        interval=interval,
        confidence=result_vote.confidence,
        votes=result_vote.counts,
        points_requested=points,
        points_used=used,
        points_informative=result_vote.n_informative,
        stopped_early=stopped_early,
        widenings=tuple(widenings),
        check=check,
        class_names=tuple(model.class_names),
        points_xy=xy[:used],
        curves=scored.curve,
        class_scores=scored.matrix,
        point_answers=answers,
        timings=timings,
    )


def _edge_direction(winner: int, n_scales: int, answers: PointAnswers, min_share: float = 1 / 3) -> int:
    """+1 / -1 when the current winner sits on the coarse / fine edge of the grid AND at least ``min_share`` of
    the informative curves are monotone towards it; a lone edge winner from a few noisy points is no reason."""
    if winner < 0:
        return 0
    direction = 1 if winner == n_scales - 1 else -1 if winner == 0 else 0
    shapes = answers.shape[answers.informative]
    toward = np.mean(shapes == (RISING if direction > 0 else FALLING)) if len(shapes) else 0.0
    return direction if toward >= min_share else 0


def _widen(
    grid: np.ndarray, direction: int, downsamples: Any, out_px: int, size_wh: tuple[int, int], done: int, limit: int
) -> np.ndarray | None:
    """Up to 2 new scales beyond the grid's edge in ``direction``, within what the slide allows; None if none."""
    if direction == 0 or done * 2 >= limit:
        return None
    ratio = grid[1] / grid[0]
    if direction > 0:
        new = grid[-1] * ratio ** np.arange(1, 3)
        new = new[out_px * downsamples(new) <= max(size_wh)]
    else:
        new = grid[0] / ratio ** np.arange(2, 0, -1)
        new = new[downsamples(new) >= MIN_WIDEN_DOWNSAMPLE]
    return new if len(new) else None


def progress_bar(enabled: bool) -> Any:
    """A transient rich progress bar as a context manager, or a null context yielding None when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=True,
    )
