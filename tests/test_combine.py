"""The model's and the nuclei's readings of the slide's um/px, combined (histoscale.search._combine), and how the
combination enters the metadata check.

* Two normal readings combine into the inverse-variance weighted mean, with the 95% interval of its sd; their
  tension is the difference over the quadrature sum of the sides that face each other.
* A reading at the end of the scales searched is a bound: past it, it does not pull the combination or contradict
  the other reading, and the ruler alone may reject a declared value there.
* The check: OK when the two agree and combined lie within one step, though the model alone is further off; a
  MISMATCH needs both readings to reject the declared um/px; the model's own reading and interval stay in the check.
"""

from __future__ import annotations

import dataclasses
import math
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

import histoscale
from histoscale.ruler import RulerEstimate
from histoscale.search._combine import Reading, combine, tension
from histoscale.search.result import metadata_check

CMU1 = Path(str(files("histoscale") / "assets" / "demo" / "cmu-1-small-region.svs"))

Z95 = 1.959964


def normal(value: float, sd: float, beyond: str | None = None) -> Reading:
    return Reading(value, value - Z95 * sd, value + Z95 * sd, beyond)


@pytest.mark.parametrize(("a", "sa", "b", "sb"), [(-1.0, 0.2, -0.6, 0.3), (0.5, 0.1, 1.5, 0.4), (0.0, 0.25, 0.0, 0.25)])
def test_two_normal_readings_combine_into_the_weighted_mean(a: float, sa: float, b: float, sb: float) -> None:
    got = combine(normal(a, sa), normal(b, sb))
    z = abs(a - b) / math.hypot(sa, sb)
    wa, wb = 1 / sa**2, 1 / sb**2
    # Inconsistent readings (the second case: 2.4 sd apart) have their sds scaled by the Birge ratio z / 1.96.
    mean, sd = (wa * a + wb * b) / (wa + wb), (wa + wb) ** -0.5 * max(1.0, z / Z95)
    assert math.log2(got.mpp) == pytest.approx(mean, abs=0.005)
    lo, hi = (math.log2(v) for v in got.interval)
    assert lo == pytest.approx(mean - Z95 * sd, abs=0.01) and hi == pytest.approx(mean + Z95 * sd, abs=0.01)
    assert got.z == pytest.approx(z)
    assert got.consistent == (got.z <= Z95) and got.birge == pytest.approx(max(1.0, z / Z95))


def test_contradicting_readings_move_the_answer_continuously_and_its_interval_reaches_both() -> None:
    """The kind of issue 25's encodings: readings on either side of the consistency threshold gave the model's value
    on one side and the combination on the other (CMU-1 at 2x: 1.21 um/px as JPEG 90, the model's bound alone,
    beside 1.08 and 0.94 for its other encodings)."""
    sd = 0.1
    values = []
    for d in np.linspace(1.9, 3.2, 27) * math.hypot(sd, sd):  # across z = 1.96
        got = combine(normal(0.0, sd), normal(d, sd))
        values.append(math.log2(got.mpp))
        assert math.log2(got.mpp) == pytest.approx(d / 2, abs=0.005)  # equal weights: the middle, either side
        lo, hi = (math.log2(v) for v in got.interval)
        if not got.consistent:
            assert lo == pytest.approx(0.0, abs=0.01) and hi == pytest.approx(d, abs=0.01)
    assert np.all(np.diff(values) > 0) and np.max(np.diff(values)) < 0.02


def test_tension_uses_the_sides_that_face_each_other() -> None:
    skewed = Reading(0.0, -0.2, 1.0)  # sd 0.1 below, 0.51 above
    other = normal(1.0, 0.1)
    assert tension(skewed, other) == pytest.approx(1.0 / math.hypot(1.0 / Z95, 0.1))
    assert tension(other, skewed) == tension(skewed, other)


def test_a_bound_does_not_pull_past_its_edge_nor_contradict() -> None:
    # The model's answer is the finest scale searched: the slide is at least this coarse (0 in log2 um/px).
    bound = normal(0.0, 0.1, beyond="above")
    ruler = normal(0.6, 0.25)
    got = combine(bound, ruler)
    assert got.z == 0.0 and got.consistent
    assert math.log2(got.mpp) == pytest.approx(0.6, abs=0.03)  # the ruler alone, past the bound
    below = combine(bound, normal(-0.6, 0.25))  # on the bound's measured side it counts as usual
    assert below.z == pytest.approx(0.6 / math.hypot(0.1, 0.25))


def _ruler(mpp: float, half_octaves: float = 0.5) -> RulerEstimate:
    return RulerEstimate(mpp, (mpp * 2**-half_octaves, mpp * 2**half_octaves), 3.0, 500, 24)


def check(implied: float, ruler: RulerEstimate | None, *, declared: float = 0.5, half_octaves: float = 0.35,
          edge: str | None = None):  # noqa: ANN201
    # Units: downsample; the model at 0.5 um/px; implied = model_mpp / estimate.
    estimate = 0.5 / implied
    interval = (estimate * 2**-half_octaves, estimate * 2**half_octaves)
    return metadata_check(declared, "metadata", "downsample", 0.5, estimate, estimate, interval, ruler=ruler,
                          edge=edge)


def test_two_agreeing_readings_within_a_step_are_ok_though_the_model_alone_is_not() -> None:
    """The InstanSeg core's kind: the model reads 1.5 steps fine, the nuclei 0.5 step coarse."""
    alone = check(0.5 * 2**-0.375, None)
    assert alone.status == "MISMATCH"
    both = check(0.5 * 2**-0.375, _ruler(0.5 * 2**0.125))
    assert both.ruler_agrees and both.status == "OK"
    assert abs(both.disagreement_steps) <= 1.0
    assert both.model_implied_mpp == pytest.approx(0.5 * 2**-0.375)
    lo, hi = both.implied_interval
    mlo, mhi = both.model_implied_interval
    assert math.log2(hi / lo) < math.log2(mhi / mlo)  # two readings are narrower than one


def test_a_mismatch_needs_both_readings_to_reject() -> None:
    wrong = check(0.25, _ruler(0.26))  # declared 0.5, both read ~0.25
    assert wrong.status == "MISMATCH" and "both reject" in wrong.reason
    held = check(0.25, _ruler(0.42))  # the ruler's interval holds 0.5
    assert held.status == "INCONCLUSIVE" and "holds the declared" in held.reason


def test_an_answer_at_the_grid_edge_leaves_the_ruler_to_reject_beyond_it() -> None:
    """A slide of 1.0-1.2 um/px: the model's answer is the finest scale it searches (a bound: the slide is at least
    this coarse). Declared coarser still, only the nuclei can reject it; the model, which does not contradict them,
    cannot hold it."""
    alone = check(1.2, None, declared=2.4, edge="fine")
    assert alone.status == "INCONCLUSIVE" and "fine" in alone.reason  # the bound alone rejects nothing past it
    ruled = check(1.2, _ruler(1.1), declared=2.4, edge="fine")
    assert ruled.ruler_agrees and ruled.status == "MISMATCH" and "does not reach it" in ruled.reason
    held = check(1.2, _ruler(1.9), declared=2.4, edge="fine")  # the nuclei hold 2.4: no verdict
    assert held.status == "INCONCLUSIVE"
    # The same declared on the other side is rejected by both.
    other = check(1.2, _ruler(1.1), declared=0.3, edge="fine")
    assert other.status == "MISMATCH"


def test_leave_one_out_false_alarms_are_not_asserted() -> None:
    """The two kinds of false MISMATCH seen when neither reading knew CMU-1 (a model trained without it, a ruler
    constant from the other image; bench/results/real_default_fused_loo_cmu1.md, before this rule)."""
    # A model whose interval spans 2.5 octaves rejects nothing, however its point estimate lies.
    wide = metadata_check(0.748, "metadata", "downsample", 0.5, 0.5 / 0.158, 0.5 / 0.158, (0.5 / 0.6, 0.5 / 0.06),
                          ruler=RulerEstimate(0.52, (0.37, 0.73), 3.0, 500, 24))
    assert wide.ruler_agrees and not wide.implied_interval[0] <= 0.748 <= wide.implied_interval[1]
    assert wide.status == "INCONCLUSIVE" and "too wide to reject" in wide.reason
    # Two readings 5 sd apart: each interval widens by that much, and the ruler's then holds the declared 1.2.
    apart = metadata_check(1.198, "metadata", "downsample", 0.5, 0.5 / 0.204, 0.5 / 0.204, (0.5 / 0.254, 0.5 / 0.148),
                           ruler=RulerEstimate(0.832, (0.59, 1.17), 2.0, 500, 24))
    assert apart.ruler_agrees is False and apart.status == "INCONCLUSIVE"
    # Declared x10 of the same slide: both still reject it.
    far = metadata_check(11.98, "metadata", "downsample", 0.5, 0.5 / 0.204, 0.5 / 0.204, (0.5 / 0.254, 0.5 / 0.148),
                         ruler=RulerEstimate(0.832, (0.59, 1.17), 2.0, 500, 24))
    assert far.status == "MISMATCH" and "differ on the true value" in far.reason


@pytest.mark.parametrize(
    ("implied", "ruler", "status"),
    [
        (0.25, _ruler(0.48), "INCONCLUSIVE"),  # model alone rejects: the tissue holds the declared value
        (0.5, _ruler(1.0), "INCONCLUSIVE"),  # model alone accepts: the tissue excludes it
        (0.25, _ruler(0.24), "MISMATCH"),  # both reject, and agree
        (0.25, _ruler(0.12), "MISMATCH"),  # both reject, disagree on the value (each interval widened by it)
        (0.25, _ruler(1.1), "INCONCLUSIVE"),  # they contradict each other by 8 sd: widened, the ruler's holds 0.5
        (0.5, _ruler(0.52), "OK"),
        (0.25, RulerEstimate(None, None, None, 0, 24, "too few nuclei"), "MISMATCH"),  # no second opinion
    ],
)
def test_the_rule(implied: float, ruler: RulerEstimate, status: str) -> None:
    half = math.log2(1.1)
    result = check(implied, ruler, half_octaves=half)
    assert result.status == status
    assert result.ruler == ruler
    if status != "OK":
        assert result.reason
    if ruler.measured:
        assert result.ruler_agrees == (abs(math.log2(implied / ruler.mpp)) < 1.96 * math.hypot(half / 1.96, 0.5 / 1.96))


def test_unknown_model_mpp_still_gets_the_rulers_check() -> None:
    result = metadata_check(0.5, "metadata", "downsample", None, 1.0, 1.0, (0.9, 1.1), ruler=_ruler(1.0))
    assert result.status == "UNKNOWN-MODEL-MPP"
    assert "OUTSIDE" in result.reason


def test_a_compromise_between_contradicting_readings_does_not_make_a_wrong_declaration_ok() -> None:
    """Held-out CMU-1 shrunk 2x (truth 0.998) declared x1/2: the model read 0.189, the nuclei 0.728; combined they
    land on 0.52, within a step of the wrong 0.499, which the model's reading rejects."""
    wrong = metadata_check(0.499, "metadata", "downsample", 0.5, 0.5 / 0.189, 0.5 / 0.189, (0.5 / 0.344, 0.5 / 0.147),
                           ruler=RulerEstimate(0.728, (0.516, 1.028), 1.96, 500, 24), rivals=(0.5 / 1.152,))
    assert wrong.ruler_agrees is False and abs(wrong.disagreement_steps) <= 1.0  # the compromise: 0.52
    assert wrong.status == "INCONCLUSIVE" and wrong.reason
    # Two readings that contradict each other but each hold the declared value: OK.
    right = metadata_check(0.5, "metadata", "downsample", 0.5, 0.5 / 0.45, 0.5 / 0.45, (0.5 / 0.52, 0.5 / 0.40),
                           ruler=RulerEstimate(0.56, (0.49, 0.64), 2.0, 500, 24))
    assert right.ruler_agrees is False and right.status == "OK"
    # In sample, CMU-1 2x as JPEG 90 (truth 0.998): the model's answer is its finest scale (1.21, 95% CI 1.005-1.45),
    # the nuclei read 0.82; combined 1.11, but the model's own interval excludes the truth: INCONCLUSIVE, the nuclei
    # named as the reading that holds it.
    bound = metadata_check(0.998, "metadata", "downsample", 0.5, 0.5 / 1.209, 0.5 / 1.209, (0.5 / 1.454, 0.5 / 1.005),
                           ruler=RulerEstimate(0.817, (0.580, 1.150), 2.0, 500, 24), edge="fine")
    assert bound.ruler_agrees is False and bound.status == "INCONCLUSIVE" and "nuclei" in bound.reason


def test_a_lopsided_reading_carries_the_combination_past_both_and_the_summary_says_why() -> None:
    """A fresh user's case (CMU-1 as JPEG, seed 3): the model's 0.471 (95% CI 0.379-0.902) and the nuclei's 0.459
    (0.328-0.649) combined to 0.482, above both, which read as an arithmetic error. The product's median follows the
    model's long coarse side; the summary now shows that side."""
    both = combine(Reading.of_mpp(0.471, (0.379, 0.902)), Reading.of_mpp(0.459, (0.328, 0.649)))
    assert both.consistent and both.mpp > 0.471
    estimate = 0.5 / 0.471  # level-0 downsample; the model at 0.5 um/px
    checked = metadata_check(0.499, "metadata", "downsample", 0.5, estimate, estimate, (0.5 / 0.902, 0.5 / 0.379),
                             ruler=RulerEstimate(0.459, (0.328, 0.649), 3.0, 500, 24))
    assert checked.implied_mpp > 0.471
    result = histoscale.find_scale(CMU1, points=8, early_stop=False)
    text = dataclasses.replace(result, check=checked).summary()
    assert "the model's 0.471 (95% CI 0.379-0.902, whose long side moves the combination past both)" in text
