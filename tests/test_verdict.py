"""The verdict (issue 29, inputs 1-3 and 7, and their kind): decided by the implied interval, INCONCLUSIVE when it
cannot decide, the reason stated, every caveat on the page and in the cohort message, one number per concept.

* Input 1: a correct declaration inside the implied 95% interval is never MISMATCH, whatever the point estimate
  and the seed (the issue's numbers; CMU-1 with the bundled model at 32 points, seeds 0-2).
* Input 2: an interval too wide to decide (the issue's TCGA answer: 0.177-0.589 um/px) says it cannot tell, in
  the check, the summary and the page.
* Input 3: caveats (a widened grid here) reach the report page and the cohort message, not only the terminal.
* Input 7: after a MISMATCH the headline names the level-0 downsample and the implied um/px, never a value in the
  declared (wrong) units; the implied um/px is one number (``check.implied_mpp``) in the check, result.json and
  results.csv.
"""

from __future__ import annotations

import dataclasses
import html
import json
from importlib.resources import files
from pathlib import Path

import pytest

import histoscale
from histoscale.cohort.table import _message
from histoscale.phantom import write_phantom
from histoscale.search.result import WIDEST_DECIDING_INTERVAL, metadata_check

CMU1 = Path(str(files("histoscale") / "assets" / "demo" / "cmu-1-small-region.svs"))


def test_input1_declared_inside_the_interval_is_not_rejected() -> None:
    """implied 0.416 (95% CI 0.247-0.5) vs declared 0.499: -1.04 steps, yet the declared value lies inside."""
    model_mpp = 0.5
    est, lo, hi = model_mpp / 0.416, model_mpp / 0.5, model_mpp / 0.247  # level-0 downsamples
    check = metadata_check(0.499, "metadata", "downsample", model_mpp, est, est, (lo, hi))
    assert check.disagreement_steps == pytest.approx(-1.05, abs=0.02)
    assert check.status == "INCONCLUSIVE"
    assert "inside the implied 95% interval" in check.reason
    # Outside the interval and a step away: MISMATCH, with the reason.
    narrow = metadata_check(0.499, "metadata", "downsample", model_mpp, est, est, (est / 1.05, est * 1.05))
    assert narrow.status == "MISMATCH" and "outside the implied 95% interval" in narrow.reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_input1_cmu1_at_32_points_is_never_a_false_mismatch(seed: int) -> None:
    result = histoscale.find_scale(CMU1, points=32, seed=seed)
    check = result.check
    assert check.status != "MISMATCH", result.summary()
    if check.status == "INCONCLUSIVE":
        assert check.reason
    lo, hi = check.implied_interval
    assert lo <= 0.499 <= hi or check.status == "INCONCLUSIVE"


def test_input2_an_interval_too_wide_says_it_cannot_tell(tmp_path: Path) -> None:
    model_mpp = 0.5
    lo, hi = 0.177, 0.589  # the TCGA interval (1.7 octaves) around 0.233
    est = model_mpp / 0.233
    for declared in (None, 0.25):
        check = metadata_check(declared, "metadata" if declared else None, "downsample", model_mpp, est, est,
                               (model_mpp / hi, model_mpp / lo))
        assert "octaves" in check.reason and "--points" in check.reason
        assert check.status == ("MISSING-METADATA" if declared is None else "INCONCLUSIVE")
    # A real search's result given that interval: the summary and the page say they cannot tell.
    result = histoscale.find_scale(CMU1, points=8, ruler=False, early_stop=False)
    wide = dataclasses.replace(result, interval=(result.estimate / 2**0.9, result.estimate * 2**0.9))
    assert not wide.decided and result.decided
    assert wide.summary().startswith("cannot tell where to apply")
    histoscale.write_search_report(wide, tmp_path, figures=False)
    page = (tmp_path / "report.html").read_text()
    assert "Cannot tell where to apply" in page
    assert json.loads((tmp_path / "result.json").read_text())["decided"] is False
    assert WIDEST_DECIDING_INTERVAL < 1.8


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("verdict")
    return write_phantom(d / "p.tif", mpp=0.5, size_px_wh=(2048, 2048), seed=3, fmt="bare").slide_path


def test_input3_caveats_reach_the_page_and_the_cohort_message(phantom: Path, tmp_path: Path) -> None:
    # Every scale coarser than the phantom's own: the curves rise to the fine end and the grid widens (seeds 0-3).
    result = histoscale.find_scale(phantom, "phantom", scales=[1.68, 2.0, 2.38], relative=True, points=16,
                                   early_stop=False, ruler=False)
    caveats = result.caveats()
    assert caveats and any(c.startswith("grid widened") for c in caveats)
    histoscale.write_search_report(result, tmp_path, figures=False)
    page = (tmp_path / "report.html").read_text()
    assert all(f"Caveat: {c}" in html.unescape(page) for c in caveats)
    message = _message(result.check, result)
    assert all(c in message for c in caveats)
    assert json.loads((tmp_path / "result.json").read_text())["caveats"] == caveats


def test_input7_after_a_mismatch_the_headline_names_the_downsample(phantom: Path, tmp_path: Path) -> None:
    result = histoscale.find_scale(phantom, "phantom", slide_mpp=0.25, points=24, ruler=False)
    check = result.check
    assert check.status == "MISMATCH", result.summary()
    ds = result.level0_downsample
    assert ds == pytest.approx(result.estimate / 0.25)
    assert result.summary().startswith(f"apply at level-0 downsample {ds:.3g}")
    histoscale.write_search_report(result, tmp_path, figures=False)
    page = (tmp_path / "report.html").read_text()
    assert f"Apply at level-0 downsample {ds:.3g}" in page
    assert f"the slide is {check.implied_mpp:.3g} um/px, not the declared 0.25" in page
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["check"]["implied_mpp"] == pytest.approx(check.implied_mpp)
    assert doc["level0_downsample"] == pytest.approx(ds)
    assert "implied_estimate" not in doc["check"]  # one name for the implied um/px


@pytest.mark.parametrize(
    ("edge", "declared", "status"),
    [
        ("fine", 12.0, "INCONCLUSIVE"),  # beyond the fine edge the slide may be as coarse as declared
        ("fine", 0.3, "MISMATCH"),  # finer than the answer: the edge does not excuse it
        ("coarse", 0.3, "INCONCLUSIVE"),
        ("coarse", 12.0, "MISMATCH"),
        (None, 12.0, "MISMATCH"),
    ],
)
def test_an_answer_at_the_grids_edge_rejects_only_what_lies_on_its_side(edge, declared, status) -> None:
    model_mpp, implied = 0.5, 1.2
    est = model_mpp / implied
    check = metadata_check(declared, "metadata", "downsample", model_mpp, est, est, (est / 1.05, est * 1.05),
                           edge=edge)
    assert check.status == status, check.reason
    assert check.reason


def test_a_rival_peak_agreeing_with_the_declared_value_makes_it_inconclusive() -> None:
    model_mpp = 0.5
    est = model_mpp / 0.25  # the answer: the slide is 0.25 um/px
    interval = (est / 1.05, est * 1.05)
    alone = metadata_check(0.5, "metadata", "downsample", model_mpp, est, est, interval)
    rival = metadata_check(0.5, "metadata", "downsample", model_mpp, est, est, interval, rivals=(1.0,))
    assert alone.status == "MISMATCH" and rival.status == "INCONCLUSIVE"
    assert rival.rivals_implied == (0.5,) and "scan also peaked" in rival.reason
