"""``classify --from-search`` after a real search (issue 29, items 4 and 5): it applies the search's model (or refuses,
naming it), refuses a different ``--model``, and never replaces the slide's declared um/px unless told
``--trust-content`` (or ``--slide-mpp``), saying so on stderr, in the report's headline and in classify.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from histoscale.cli import main
from histoscale.phantom import write_phantom
from histoscale.slide import open_slide
from histoscale.slide.write import write_slide

TRUE_MPP, DECLARED_MPP = 0.25, 0.5  # the slide file declares 2x too coarse
SEARCH = ["--points", "16", "--no-ruler", "--seed", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A phantom at 0.25 um/px whose file declares 0.5 (``slide``), searched with the ONNX phantom model in um/px
    (``mismatch``: its result folder) and in downsample units (``relative``)."""
    d = tmp_path_factory.mktemp("from_search")
    bare = write_phantom(d / "bare.tif", mpp=TRUE_MPP, size_px_wh=(2048, 2048), seed=4, fmt="bare").slide_path
    with open_slide(bare) as s:
        pixels = s.read_level(0, (0, 0), s.dimensions)
    slide = write_slide(d / "wrong.svs", pixels, mpp=DECLARED_MPP, fmt="svs")
    for name, extra in (("mismatch", []), ("relative", ["--relative"])):
        assert main(["search", str(slide), "--model", "phantom-onnx", *SEARCH, *extra, "--out", str(d / name)]) == 0
    return {"slide": slide, "mismatch": d / "mismatch", "relative": d / "relative"}


def classify(runs: dict[str, Path], search: str | Path, out: Path, *extra: str) -> int:
    return main(["classify", str(runs["slide"]), "--from-search", str(search), "--stride", "128", "--out", str(out),
                 *extra])


# ----------------------------------------------------------------------------------------------------- item 4
def test_classify_uses_the_model_the_search_ran_with(runs, tmp_path: Path, capsys) -> None:
    """Issue 29 input 4: without --model repeated, classify ran the bundled torch phantom model on a run searched
    with another; it must run the search's (here the ONNX one, whose card is reference-onnx.json)."""
    capsys.readouterr()
    assert classify(runs, runs["relative"], tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "reference-onnx.json" in err and "reference.json" not in err
    doc = json.loads((tmp_path / "out" / "classify.json").read_text())
    searched = json.loads((runs["relative"] / "result.json").read_text())
    assert doc["units"] == "downsample" and doc["scale"] == pytest.approx(searched["estimate"])


def test_a_different_model_is_refused_naming_both(runs, tmp_path: Path, capsys) -> None:
    assert classify(runs, runs["relative"], tmp_path / "out", "--model", "phantom") == 2
    err = capsys.readouterr().err
    assert "--model phantom is not the model the search" in err and "format" in err and "--mpp or --downsample" in err
    assert not (tmp_path / "out" / "classify.json").exists()


def test_a_model_that_cannot_be_found_is_refused_and_named_and_the_same_model_elsewhere_accepted(
    runs, tmp_path: Path, capsys
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(runs["relative"], moved)
    doc = json.loads((moved / "result.json").read_text())
    doc["arguments"]["model"] = doc["model_info"]["file"] = "gone/phantom.onnx"
    (moved / "result.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert classify(runs, moved, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "cannot be found" in err and "gone/phantom.onnx" in err and "pass --model" in err
    assert classify(runs, moved, tmp_path / "out", "--model", "phantom-onnx") == 0  # the same model, elsewhere


# ----------------------------------------------------------------------------------------------------- item 5
def test_after_a_mismatch_classify_refuses_without_trust_content(runs, tmp_path: Path, capsys) -> None:
    """Issue 29 input 5: classify silently replaced the declared um/px after a MISMATCH."""
    searched = json.loads((runs["mismatch"] / "result.json").read_text())
    assert searched["check"]["status"] == "MISMATCH"
    capsys.readouterr()
    assert classify(runs, runs["mismatch"], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "declared 0.5 um/px wrong (MISMATCH" in err and "--trust-content" in err and "--slide-mpp" in err
    assert not (tmp_path / "out" / "classify.json").exists()


def test_trust_content_replaces_the_declared_mpp_and_says_so_everywhere(runs, tmp_path: Path, capsys) -> None:
    searched = json.loads((runs["mismatch"] / "result.json").read_text())
    implied = searched["check"]["implied_mpp"]
    ds = searched["estimate"] / DECLARED_MPP  # the level-0 downsample the search found
    capsys.readouterr()
    assert classify(runs, runs["mismatch"], tmp_path / "out", "--trust-content") == 0
    captured = capsys.readouterr()
    assert f"NOT using {runs['slide']}'s declared 0.5 um/px" in captured.err
    assert "REPLACING the declared 0.5" in captured.out
    doc = json.loads((tmp_path / "out" / "classify.json").read_text())
    assert doc["declared_mpp"] == pytest.approx(DECLARED_MPP) and doc["slide_mpp"] == pytest.approx(implied)
    assert doc["slide_mpp_replaced"] is True and "--trust-content" in doc["slide_mpp_source"]
    assert doc["downsample"] == pytest.approx(ds) and doc["scale"] == pytest.approx(ds * implied)
    assert doc["search"]["status"] == "MISMATCH" and doc["search"]["level0_downsample"] == pytest.approx(ds)
    total_px2 = sum(a["area_px2"] for a in doc["classes"].values())
    total_mm2 = sum(a["area_mm2"] for a in doc["classes"].values())
    assert total_mm2 == pytest.approx(total_px2 * (implied * 1e-3) ** 2)  # areas at the um/px used
    html = (tmp_path / "out" / "report.html").read_text()
    assert "is NOT used" in html and "--trust-content" in html and f"at {implied:.3g} um/px" in html


def test_slide_mpp_after_a_mismatch_keeps_the_searched_downsample(runs, tmp_path: Path) -> None:
    searched = json.loads((runs["mismatch"] / "result.json").read_text())
    ds = searched["estimate"] / DECLARED_MPP
    assert classify(runs, runs["mismatch"], tmp_path / "out", "--slide-mpp", str(TRUE_MPP)) == 0
    doc = json.loads((tmp_path / "out" / "classify.json").read_text())
    assert doc["slide_mpp"] == TRUE_MPP and doc["slide_mpp_source"] == "--slide-mpp" and doc["slide_mpp_replaced"]
    assert doc["downsample"] == pytest.approx(ds)


def test_trust_content_needs_a_search_with_an_implied_mpp(runs, tmp_path: Path, capsys) -> None:
    assert main(["classify", str(runs["slide"]), "--mpp", "0.5", "--trust-content", "--out", str(tmp_path)]) == 2
    assert "--trust-content needs --from-search" in capsys.readouterr().err
    assert classify(runs, runs["relative"], tmp_path / "out", "--trust-content") == 2
    assert "downsample units" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- --mpp
@pytest.mark.parametrize("command", ["search", "info"])
def test_the_old_mpp_alias_is_refused_naming_slide_mpp(runs, command: str, capsys) -> None:
    """Issue 29 input 7: a hidden --mpp meant --slide-mpp in search while it means "apply at" in classify."""
    with pytest.raises(SystemExit) as exit_:
        main([command, str(runs["slide"]), "--mpp", "0.25"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "use --slide-mpp 0.25" in err and "histoscale classify" in err
