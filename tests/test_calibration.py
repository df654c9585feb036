"""Scale calibration (histoscale.calibration): fitting, applying, carrying it in cards, `histoscale calibrate`."""

from __future__ import annotations

import dataclasses
import json
import math
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from histoscale import (
    ScaleCalibration,
    SearchConfig,
    calibrate_model,
    find_scale,
    fit_calibration,
    load_card,
    load_model,
    save_card,
)
from histoscale.cli import main
from histoscale.cohort.manifest import jobs_from
from histoscale.errors import ConfigError, ModelError
from histoscale.phantom import write_phantom

pytestmark = pytest.mark.xdist_group("calibration")  # one module-scoped set of phantoms, one worker

TRUE_MPPS = (0.3, 0.45, 0.7)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Three small phantoms declaring their true um/px (SVS), seeds 21-23."""
    d = tmp_path_factory.mktemp("calibration")
    return {
        mpp: write_phantom(d / f"p{i}.svs", mpp=mpp, size_px_wh=(2560, 2560), seed=21 + i, fmt="svs").slide_path
        for i, mpp in enumerate(TRUE_MPPS)
    }


def test_fit_is_the_geometric_median_and_the_log2_scatter() -> None:
    peaks = [0.5, 0.6, 0.55, 0.7, 0.52]
    cal = fit_calibration(peaks, source="test")
    assert cal.margin_peak_mpp == pytest.approx(0.55)
    assert cal.sd_log2 == pytest.approx(float(np.std(np.log2(peaks), ddof=1)))
    assert (cal.slides, cal.source) == (5, "test")
    assert cal.predictive_sd_log2 == pytest.approx(cal.sd_log2 * math.sqrt(1.2))


@pytest.mark.parametrize(
    ("peaks", "match"), [([0.5, 0.6], "at least 3"), ([0.5, -0.6, 0.7], "positive"), ([0.5, math.nan, 0.7], "positive")]
)
def test_fit_refuses_too_few_or_invalid_values(peaks: list[float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fit_calibration(peaks)


def test_correct_moves_to_the_training_mpp_and_widens_in_quadrature() -> None:
    cal = ScaleCalibration(margin_peak_mpp=0.6, sd_log2=0.1, slides=24)
    assert cal.apply(0.0, 0.5) == pytest.approx(math.log2(0.5 / 0.6))
    assert cal.apply(0.0, None) == 0.0  # training um/px unknown: the peak is the best guess of it
    centre, (lo, hi) = cal.correct(1.0, (0.9, 1.3), 0.5)
    shift = math.log2(0.5 / 0.6)
    spread = 1.959963984540054 * 0.1 * math.sqrt(1 + 1 / 24)
    assert centre == pytest.approx(1.0 + shift)
    assert centre - lo == pytest.approx(math.hypot(0.1, spread))
    assert hi - centre == pytest.approx(math.hypot(0.3, spread))
    # no scatter: the bootstrap interval, shifted
    assert ScaleCalibration(0.6, 0.0, 3).correct(1.0, (0.9, 1.3), 0.5)[1] == pytest.approx((0.9 + shift, 1.3 + shift))


def _pulled_peaks(slope: float, fixed_point: float, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slide um/px log-uniform in 0.2-1.0 and where margins pulled towards downsample 1 would peak (+ scatter)."""
    rng = np.random.default_rng(seed)
    slide = np.exp(rng.uniform(math.log(0.2), math.log(1.0), count))
    peak = fixed_point**slope * slide ** (1 - slope) * 2.0 ** rng.normal(0.0, 0.05, count)
    return peak, slide


def test_fit_measures_the_pull_towards_the_slides_own_pixels() -> None:
    peak, slide = _pulled_peaks(0.9, 0.55, 60, seed=5)
    peak[3] *= 2.5  # one failed search must not tilt the line
    cal = fit_calibration(peak, slide_mpps=slide)
    assert cal.slope == pytest.approx(0.9, abs=0.03)
    assert cal.margin_peak_mpp == pytest.approx(0.55, rel=0.03)
    # the calibrated answer gives the model its training um/px whatever the slide's: in downsample units ...
    for truth in (0.22, 0.5, 0.95):
        d_peak = (cal.margin_peak_mpp / truth) ** cal.slope
        assert 2.0 ** cal.apply(math.log2(d_peak), 0.5) == pytest.approx(0.5 / truth)
        # ... and in um/px, the slope acting on the level-0 downsample
        assert 2.0 ** cal.apply(math.log2(truth * d_peak), 0.5, math.log2(truth)) == pytest.approx(0.5)
    assert ScaleCalibration.from_dict(cal.to_dict()) == cal


@pytest.mark.parametrize(
    ("slide_mpps", "why"),
    [(None, "not given"), ([0.5] * 60, "one um/px"), ("few", "too few slides"), ("narrow", "spread too small")],
)
def test_without_slides_of_several_mpp_the_slope_stays_one(slide_mpps: object, why: str) -> None:
    peak, slide = _pulled_peaks(0.9, 0.55, 60, seed=6)
    if slide_mpps == "few":
        peak, slide_mpps = peak[:7], slide[:7]
    elif slide_mpps == "narrow":
        slide_mpps = np.linspace(0.45, 0.55, 60)
    cal = fit_calibration(peak, slide_mpps=slide_mpps)
    assert cal.slope == 1.0, why
    assert cal == fit_calibration(peak)  # exactly the slope-free fit
    assert "slope" not in cal.to_dict()  # files without a slope read as slope 1


def test_a_fit_whose_peak_ignores_the_scale_is_refused() -> None:
    slide = np.geomspace(0.2, 1.0, 20)
    with pytest.raises(ConfigError, match="does not follow the slides' um/px"):
        fit_calibration(np.full(20, 0.4) * slide**0.9, slide_mpps=slide)  # slope 0.1: the peak moves with the slide
    with pytest.raises(ConfigError, match="give one per slide"):
        fit_calibration([0.5, 0.6, 0.55], slide_mpps=[0.5, 0.6])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"margin_peak_mpp": 0.5, "sd_log2": 0.1}, "missing \\['slides'\\]"),
        ({"margin_peak_mpp": 0.5, "sd_log2": 0.1, "slides": 5, "slope": 3}, "slope must lie in"),
        ({"margin_peak_mpp": 0.5, "sd_log2": 0.1, "slides": 5, "offset": 1}, "unknown \\['offset'\\]"),
        ({"margin_peak_mpp": 0, "sd_log2": 0.1, "slides": 5}, "plausible"),
        ({"margin_peak_mpp": 0.5, "sd_log2": 0.1, "slides": 2}, "at least 3"),
        ({"margin_peak_mpp": "x", "sd_log2": 0.1, "slides": 5}, "numbers"),
        ([0.5], "JSON object"),
    ],
)
def test_a_card_with_a_bad_calibration_is_refused_naming_the_card(tmp_path: Path, value: object, match: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": "onnx", "file": "m.onnx", "calibration": value}))
    with pytest.raises(ModelError, match=match) as err:
        load_card(path)
    assert str(path) in str(err.value)


def test_card_round_trips_its_calibration(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    cal = {"margin_peak_mpp": 0.61, "sd_log2": 0.12, "slides": 30, "source": "unit test"}
    path.write_text(json.dumps({"format": "onnx", "file": "m.onnx", "mpp": 0.5, "calibration": cal}))
    card = load_card(path)
    assert card.calibration == ScaleCalibration(0.61, 0.12, 30, "unit test")
    save_card(card, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["calibration"] == cal


def test_the_bundled_model_is_calibrated_in_both_formats() -> None:
    torch_model = load_model("phantom")
    onnx_model = load_model(str(files("histoscale") / "assets" / "reference.onnx"))
    assert torch_model.calibration is not None
    assert torch_model.calibration == onnx_model.calibration  # the card inside reference.onnx says the same
    assert torch_model.describe()["calibration"]["slides"] >= 20


def test_search_applies_the_calibration_exactly(phantoms: dict[float, Path]) -> None:
    slide = phantoms[0.45]
    cal = ScaleCalibration(margin_peak_mpp=0.6, sd_log2=0.15, slides=20)
    plain = find_scale(slide, load_model("phantom"), calibrated=False, early_stop=False, ruler=False)
    assert plain.calibration is None
    model = load_model("phantom", calibration=cal.to_dict())
    fixed = find_scale(slide, model, early_stop=False, ruler=False)  # the same points; the model's reading alone
    factor = 0.5 / 0.6
    assert fixed.calibration == cal
    assert fixed.estimate == pytest.approx(plain.estimate * factor)
    assert fixed.chosen_scale == pytest.approx(plain.chosen_scale * factor)
    assert fixed.to_dict()["margin_peak_scale"] == pytest.approx(plain.chosen_scale)
    lo, hi = fixed.interval
    assert lo < plain.interval[0] * factor and hi > plain.interval[1] * factor  # the scatter widens it
    assert fixed.check.implied_mpp == pytest.approx(plain.check.implied_mpp / factor)
    assert "calibrated: this model's margins peak at 0.6 um/px" in fixed.summary()
    # a slope acts on the level-0 downsample (the slide declares its um/px, so the scales are um/px)
    level0 = math.log2(0.45)
    pulled = find_scale(slide, load_model("phantom", calibration=dataclasses.replace(cal, slope=0.9)), early_stop=False,
                        ruler=False)
    expected = level0 + (math.log2(plain.estimate) - level0) / 0.9 + math.log2(factor)
    assert math.log2(pulled.estimate) == pytest.approx(expected)
    assert "following the scale with slope 0.90" in pulled.summary()
    # the paper's Algorithm 1 is never calibrated
    assert find_scale(slide, model, SearchConfig.paper(points=20)).calibration is None


def test_a_calibration_holds_for_the_scorer_and_aggregation_it_was_measured_with(phantoms: dict[float, Path]) -> None:
    cal = ScaleCalibration(0.6, 0.15, 20, scorer="margin", aggregation="pooled")
    model = load_model("phantom", calibration=cal.to_dict())
    assert find_scale(phantoms[0.45], model, points=24).calibration == cal
    other = find_scale(phantoms[0.45], model, points=24, scorer="distance")
    assert other.calibration is None
    assert ("calibration was measured with scorer margin + pooled, not this search's distance + pooled"
            in other.summary())
    legacy = ScaleCalibration(0.6, 0.15, 20)  # files written before the settings were recorded: applied to any
    assert legacy.applies_to("distance", "vote") and not cal.applies_to("margin", "vote")


def test_sampling_stops_once_the_scatter_between_slides_dominates(phantoms: dict[float, Path]) -> None:
    loose = load_model("phantom", calibration={"margin_peak_mpp": 0.56, "sd_log2": 0.5, "slides": 20})
    result = find_scale(phantoms[0.45], loose, points=100, ruler=False)  # the model's reading and its scatter alone
    assert result.stopped_early and result.points_used == 32  # the minimum: 4 blocks of 8 points
    assert "(stopped early: settled at 32 of 100)" in result.summary()
    lo, hi = np.log2(result.interval)
    assert hi - lo > 2 * 1.96 * 0.5  # the interval still carries the whole scatter
    assert find_scale(phantoms[0.45], loose, points=100, calibrated=False, ruler=False).points_used > 32


def test_a_calibration_gives_a_model_of_unknown_mpp_an_effective_one(phantoms: dict[float, Path]) -> None:
    model = load_model("phantom", calibration={"margin_peak_mpp": 0.55, "sd_log2": 0.1, "slides": 10})
    model.mpp = None
    result = find_scale(phantoms[0.3], model)
    assert result.check.model_mpp == 0.55
    assert result.check.status in ("OK", "MISMATCH")  # compared: not UNKNOWN-MODEL-MPP
    assert result.estimate == pytest.approx(result.to_dict()["margin_peak_scale"], rel=0.2)


def test_calibrate_model_measures_skips_and_records(phantoms: dict[float, Path], tmp_path: Path) -> None:
    slides = [str(p) for p in phantoms.values()] + [str(tmp_path / "missing.svs")]
    run = calibrate_model(load_model("phantom", calibration={"margin_peak_mpp": 2.0, "sd_log2": 0, "slides": 3}), slides)
    measured = [r for r in run.rows if r["peak_mpp"] is not None]
    assert len(measured) == 3 and run.calibration.slides == 3
    skipped = [r for r in run.rows if r["skipped"]]
    assert len(skipped) == 1 and "missing.svs" in skipped[0]["slide"]
    for row, truth in zip(measured, TRUE_MPPS):  # the slides' own metadata is trusted; the model's calibration unused
        assert row["trusted_mpp"] == pytest.approx(truth, rel=1e-3)
        assert 0.35 < row["peak_mpp"] < 0.8
        assert row["steps_from_model_mpp"] == pytest.approx(4 * math.log2(row["peak_mpp"] / 0.5))
    peaks = [r["peak_mpp"] for r in measured]
    assert run.calibration.margin_peak_mpp == pytest.approx(float(np.median(peaks)))
    assert "skipped" in run.table()
    assert all(0.0 <= r["confidence"] <= 1.0 for r in measured) and "LOW confidence" not in run.table()
    unsure = dataclasses.replace(run, rows=(dict(measured[0], confidence=0.26), *run.rows[1:]))
    assert "26%" in unsure.table() and "LOW confidence" in unsure.table()  # kept in the fit, flagged to the user


def test_calibrate_needs_three_measured_slides_and_says_why(phantoms: dict[float, Path], tmp_path: Path) -> None:
    slides = [str(phantoms[0.3]), str(tmp_path / "nope.svs")]
    with pytest.raises(ConfigError, match="at least 3.*nope"):
        calibrate_model("phantom", slides)


def test_cli_calibrate_then_search_with_it(
    phantoms: dict[float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "phantom", *map(str, phantoms.values()), "--out", str(out), "--points", "40"]) == 0
    doc = json.loads(out.read_text())
    assert doc["calibration"]["slides"] == 3 and len(doc["slides"]) == 3
    assert (doc["calibration"]["scorer"], doc["calibration"]["aggregation"]) == ("margin", "pooled")
    printed = capsys.readouterr().out
    # three slides of 0.3-0.7 um/px: too few for a slope, and the output says what it would need
    assert "margins peak at" in printed and "slope not fitted, 1: 3 slides spread 0.61 octave" in printed
    assert ">= 8 slides" in printed
    slide = str(phantoms[0.7])
    assert main(["search", "--model", "phantom", slide, "--calibration", str(out), "--json", "--points", "40"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert f"calibration from {out}" in captured.err  # the model line names the file overriding the card's
    assert result["calibration"] == doc["calibration"]
    assert main(["search", "--model", "phantom", slide, "--uncalibrated", "--json", "--points", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"margin_peak_mpp": 0.5}')
    assert main(["search", "--model", "phantom", slide, "--calibration", str(bad)]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["calibrate", "--model", "phantom", "--out", str(out)]) == 2
    assert "--manifest" in capsys.readouterr().err


def test_model_info_shows_the_calibration_and_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", "phantom"]) == 0
    out = capsys.readouterr().out
    assert "calibration: margins peak at 0.5" in out and "reference.json" in out.split("calibration:")[1]
    assert "slope 0.9" in out  # fitted on phantoms of 0.2-1.0 um/px
    assert main(["model-info", "phantom", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["calibration"]["slides"] == 80 and info["sources"]["calibration"].endswith("reference.json")


def test_a_calibration_file_reaches_cohort_workers_and_is_named(
    phantoms: dict[float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"calibration": {"margin_peak_mpp": 0.6, "sd_log2": 0.1, "slides": 12}, "slides": []}))
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,slide_mpp\n" + "".join(f"{p},{m}\n" for m, p in list(phantoms.items())[:2]))
    out = tmp_path / "cohort"
    assert main(["cohort", "--model", "phantom", str(manifest), "--out", str(out), "--workers", "1", "--no-figures", "--points", "24",
                 "--calibration", str(cal)]) == 0
    assert "ERROR" not in (out / "results.csv").read_text()
    assert str(cal.resolve()) in (out / "cohort.json").read_text()
    assert "calibration: from cal.json" in (out / "index.html").read_text()  # the page says what moved the answers
    model = load_model("phantom", calibration=str(cal))  # the file `calibrate` writes, as a path
    assert model.calibration == ScaleCalibration(0.6, 0.1, 12) and model.sources["calibration"] == f"file {cal}"
    assert main(["model-info", "phantom", "--calibration", str(cal)]) == 0
    assert f"file {cal.resolve()}" in capsys.readouterr().out
    assert main(["search", "--model", "phantom", str(phantoms[0.3]), "--calibration", str(cal), "--uncalibrated"]) == 2
    assert "drop one of them" in capsys.readouterr().err
    assert main(["search", "--model", "phantom", str(phantoms[0.3]), "--calibration", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["search", "--model", "phantom", str(phantoms[0.3]), "--calibration", str(tmp_path)]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err


def test_misplaced_or_mistyped_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="load_model\\(calibration="):
        find_scale("any.svs", "phantom", calibration={"margin_peak_mpp": 0.6, "sd_log2": 0.1, "slides": 5})
    with pytest.raises(ConfigError, match="calibrated must be True or False"):
        SearchConfig(calibrated="no")
    with pytest.raises(ConfigError, match="points must be a whole number"):
        SearchConfig(points="10")
    with pytest.raises(ConfigError, match="whole number"):
        ScaleCalibration.from_dict({"margin_peak_mpp": 0.5, "sd_log2": 0.1, "slides": 3.9})
    with pytest.raises(ConfigError, match="plausible"):
        ScaleCalibration.from_dict({"margin_peak_mpp": 6000, "sd_log2": 0.1, "slides": 5})
    with pytest.raises(ConfigError, match="list of numbers"):
        fit_calibration("0.5,0.6,0.7")  # type: ignore[arg-type]
    assert jobs_from([{"slide": "a.svs", "slide_mpp": 0.4}])[0].mpp == 0.4  # the manifest column's name works too
    with pytest.raises(ConfigError, match="keep one"):
        jobs_from([{"slide": "a.svs", "slide_mpp": 0.4, "mpp": 0.4}])


def test_an_uncalibrated_search_says_so(phantoms: dict[float, Path]) -> None:
    result = find_scale(phantoms[0.45], "phantom", calibrated=False, points=24)
    assert "uncalibrated: the model's calibration was not applied" in result.summary()


def test_calibrate_refuses_early(phantoms: dict[float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = [str(p) for p in list(phantoms.values())[:2]]
    assert main(["calibrate", "--model", "phantom", *two, "--out", str(tmp_path / "c.json")]) == 2
    assert "at least 3 slides" in capsys.readouterr().err
    three = [str(p) for p in phantoms.values()]
    assert main(["calibrate", "--model", "phantom", *three, "--out", str(tmp_path / "c.json"), "--calibration", "x.json"]) == 2
    assert "drop the flag" in capsys.readouterr().err
    assert main(["calibrate", "--model", "phantom", *three, "--out", str(tmp_path / "c.json"), "--uncalibrated"]) == 2
    assert "--uncalibrated: calibrate always measures the model without a calibration" in capsys.readouterr().err
    assert main(["calibrate", "--model", "phantom", *three, "--out", str(tmp_path / "c.json"), "--paper"]) == 2
    assert "--paper: the paper's Algorithm 1 is never calibrated" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_cli_calibrate_with_another_criterion_names_it(
    phantoms: dict[float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cal.json"
    args = ["calibrate", "--model", "phantom", *map(str, phantoms.values()), "--out", str(out), "--points", "24",
            "--scorer", "feature-stats"]
    assert main(args) == 0
    assert json.loads(out.read_text())["calibration"]["scorer"] == "feature-stats"
    printed = capsys.readouterr().out
    assert "feature-stats + pooled answers peak at" in printed and "margins peak" not in printed
