"""Sliding-window classification: agreement with a phantom's truth, probabilities, GeoJSON, bounded reads, CLI."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from histoscale import classify as classify_mod
from histoscale.classify import ClassMap, classify_slide
from histoscale.cli import main
from histoscale.errors import ConfigError, MissingMppError
from histoscale.phantom import CLASS_NAMES, classes_at, write_phantom
from histoscale.reports.classify import classmap_geojson, read_search_scale, write_classify_report
from histoscale.slide import open_slide

PHANTOM_MPP = 0.25
PHANTOM_SIZE = (3072, 3072)
PHANTOM_SEED = 4  # all five classes present, each with room for patches


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("classify_phantom")
    return write_phantom(d / "ph.svs", mpp=PHANTOM_MPP, size_px_wh=PHANTOM_SIZE, seed=PHANTOM_SEED, fmt="svs")


@pytest.fixture(scope="module")
def model():
    from histoscale.models import load_model

    return load_model("phantom")


@pytest.fixture(scope="module")
def cmap(phantom, model) -> ClassMap:
    with open_slide(phantom.slide_path) as slide:
        return classify_slide(slide, model, mpp=0.5, mask=False)


def _truth_at_cells(cmap: ClassMap, phantom) -> np.ndarray:
    """Phantom class at each cell centre (cells past the slide edge: -1)."""
    rows, cols = cmap.shape
    xs = (np.arange(cols) + 0.5) * cmap.cell_px
    ys = (np.arange(rows) + 0.5) * cmap.cell_px
    w, h = cmap.slide_size_wh
    truth = classes_at(phantom.spec, xs * PHANTOM_MPP, ys * PHANTOM_MPP).astype(np.int64)
    truth[:, xs >= w] = -1
    truth[ys >= h, :] = -1
    return truth


def test_class_map_geometry_and_probabilities(cmap: ClassMap, model) -> None:
    patch = model.input_size
    assert cmap.stride_px == patch // 2
    assert cmap.downsample == pytest.approx(2.0)  # 0.5 um/px on a 0.25 um/px slide
    assert cmap.cell_px == pytest.approx(cmap.stride_px * 2.0)
    assert cmap.shape == (int(np.ceil(PHANTOM_SIZE[1] / cmap.cell_px)), int(np.ceil(PHANTOM_SIZE[0] / cmap.cell_px)))
    assert cmap.class_names == tuple(model.class_names)
    covered = cmap.coverage > 0
    assert covered.all()  # mask=False: every cell is reached
    sums = cmap.probabilities.sum(axis=2)
    np.testing.assert_allclose(sums[covered], 1.0, atol=1e-4)
    # interior cells average k*k = 4 windows (stride = half the patch)
    assert cmap.coverage[1:-1, 1:-1].min() == 4
    np.testing.assert_array_equal(cmap.class_index, cmap.probabilities.argmax(axis=2))


def test_class_map_agrees_with_phantom_truth(cmap: ClassMap, phantom) -> None:
    truth = _truth_at_cells(cmap, phantom)
    tissue = (truth >= 0) & (truth != CLASS_NAMES.index("BG"))
    names = list(cmap.class_names)
    predicted = np.array([CLASS_NAMES.index(names[c]) for c in cmap.class_index[tissue]])
    agreement = float((predicted == truth[tissue]).mean())
    # per-class recall too: this phantom is mostly AT, so calling everything AT would pass the first check
    recalls = {CLASS_NAMES[c]: float((predicted[truth[tissue] == c] == c).mean())
               for c in np.unique(truth[tissue]) if (truth[tissue] == c).sum() >= 10}
    assert agreement > 0.6, (agreement, recalls)
    assert np.mean(list(recalls.values())) > 0.6, recalls


def test_tissue_mask_skips_background(phantom, model) -> None:
    with open_slide(phantom.slide_path) as slide:
        masked = classify_slide(slide, model, mpp=0.5, stride=model.input_size)  # default: tissue mask
    assert masked.windows > 0
    off = masked.coverage == 0
    assert off.any()
    assert (masked.class_index[off] == -1).all()
    assert (masked.probabilities[off] == 0).all()
    on = ~off
    np.testing.assert_allclose(masked.probabilities[on].sum(axis=1), 1.0, atol=1e-4)


def test_geojson_is_valid_and_inside_the_slide(cmap: ClassMap) -> None:
    from shapely.geometry import box, shape

    doc = json.loads(json.dumps(classmap_geojson(cmap)))
    assert doc["type"] == "FeatureCollection"
    w, h = cmap.slide_size_wh
    bounds = box(0, 0, w, h)
    names = set()
    total = 0.0
    for f in doc["features"]:
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] in cmap.class_names
        assert len(props["classification"]["color"]) == 3
        names.add(props["classification"]["name"])
        geom = shape(f["geometry"])
        assert geom.geom_type == "MultiPolygon"
        assert geom.is_valid
        assert bounds.buffer(1e-6).contains(geom)
        total += geom.area
    assert len(names) == len(doc["features"])  # one feature per class
    # the polygons tile the slide exactly (mask=False: every cell is classified)
    assert total == pytest.approx(w * h, rel=1e-6)
    areas = cmap.class_areas()
    for f in doc["features"]:
        name = f["properties"]["classification"]["name"]
        assert shape(f["geometry"]).area == pytest.approx(areas[name]["area_px2"], rel=1e-6)


def test_streaming_reads_are_bounded(phantom, model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads are strips no taller than one window (then one stride) and no wider than MAX_READ_PX; each level
    row is read about once per column chunk; peak traced memory stays far below the slide's pixels."""
    monkeypatch.setattr(classify_mod, "MAX_READ_PX", 1000)  # force several column chunks on this small slide
    with open_slide(phantom.slide_path) as slide:
        calls: list[tuple[int, tuple[float, float], tuple[int, int]]] = []
        original = slide.read_level

        def recording(level, location_xy, size_wh):
            calls.append((level, tuple(location_xy), tuple(size_wh)))
            return original(level, location_xy, size_wh)

        monkeypatch.setattr(slide, "read_level", recording)
        tracemalloc.start()
        try:
            chunked = classify_slide(slide, model, mpp=0.5, mask=False, stride=96, batch=32)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    patch, stride = model.input_size, chunked.stride_px
    level = slide.best_level(chunked.downsample)
    ratio = chunked.downsample / slide.level_downsamples[level]  # level px per model px
    assert {c[0] for c in calls} == {level}
    heights = [c[2][1] for c in calls]
    widths = [c[2][0] for c in calls]
    assert max(widths) <= 1000 + 2
    assert max(heights) <= patch * ratio + 2
    # after the first band, each window row reads only `stride` new model rows
    assert stride < patch and sorted(heights)[len(heights) // 2] <= stride * ratio + 2
    level_h = slide.level_dimensions[level][1]
    chunks = len({c[1][0] for c in calls})
    assert sum(heights) <= chunks * (level_h + patch * ratio + 2 * len(heights) / chunks)
    # peak traced memory: a few working sets (a batch of windows, the band, one read), not the slide
    band_bytes = patch * (max(widths) / ratio) * 3 * 2  # band of model px (and its extension)
    working_set = 32 * patch * patch * 3 * 2 + band_bytes + max(widths) * max(heights) * 3 * 2
    slide_bytes = PHANTOM_SIZE[0] * PHANTOM_SIZE[1] * 3
    assert peak < 2 * working_set, (peak, working_set)
    assert peak < slide_bytes / 4, (peak, slide_bytes)
    # chunk boundaries do not change the answer
    monkeypatch.undo()
    with open_slide(phantom.slide_path) as slide:
        whole = classify_slide(slide, model, mpp=0.5, mask=False, stride=96)
    assert (chunked.class_index == whole.class_index).mean() > 0.97
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, atol=0.2)


def test_report_files(cmap: ClassMap, phantom, tmp_path: Path) -> None:
    with open_slide(phantom.slide_path) as slide:
        thumb = slide.thumbnail(512)
    written = write_classify_report(cmap, tmp_path, thumbnail=thumb)
    assert set(written) == {"classmap.png", "probabilities.npz", "classes.geojson", "classify.json", "report.html"}
    assert (tmp_path / "classmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(tmp_path / "probabilities.npz") as npz:
        for c, name in enumerate(cmap.class_names):
            np.testing.assert_array_equal(npz[f"prob_{name}"], cmap.probabilities[..., c])
        assert float(npz["cell_px_level0"]) == pytest.approx(cmap.cell_px)
        assert list(npz["class_names"]) == list(cmap.class_names)
    doc = json.loads((tmp_path / "classify.json").read_text())
    total_mm2 = sum(v["area_mm2"] for v in doc["classes"].values())
    assert total_mm2 == pytest.approx(PHANTOM_SIZE[0] * PHANTOM_SIZE[1] * (PHANTOM_MPP * 1e-3) ** 2, rel=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


# ----------------------------------------------------------------------------------------------------------
# CLI and errors


def test_cli_from_search(phantom, tmp_path: Path) -> None:
    result = tmp_path / "search" / "result.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"slide": str(phantom.slide_path), "units": "um/px", "chosen_scale": 0.5}))
    out = tmp_path / "out"
    assert main(["classify", "--model", "phantom", str(phantom.slide_path), "--from-search", str(result), "--stride", "128", "--out", str(out)]) == 0
    doc = json.loads((out / "classify.json").read_text())
    assert doc["scale"] == 0.5 and doc["units"] == "um/px" and doc["stride_px"] == 128
    for name in ("classmap.png", "probabilities.npz", "classes.geojson"):
        assert (out / name).is_file()
    # a search folder works too
    assert read_search_scale(result.parent)[:2] == (0.5, "um/px")


def test_cli_from_a_mismatch_search_classifies_with_the_implied_mpp(phantom, tmp_path: Path, capsys) -> None:
    """A search that found the declared um/px wrong: refused unless --trust-content (issue 29 item 5; the real
    searches are in test_classify_from_search.py); then classify reads at the level-0 downsample the search found and
    labels the slide with the check's implied um/px (its continuous estimate, the number the summary gives)."""
    declared = 2 * PHANTOM_MPP  # 2x too coarse, as the search's override
    result = tmp_path / "search" / "result.json"
    result.parent.mkdir()
    check = {"status": "MISMATCH", "declared_mpp": declared, "implied_mpp": 0.2, "implied_estimate": 0.26}
    result.write_text(json.dumps({"slide": str(phantom.slide_path), "units": "um/px", "chosen_scale": 0.9,
                                  "estimate": 0.95, "arguments": {"slide_mpp": declared}, "check": check}))
    out = tmp_path / "out"
    cmd = ["classify", "--model", "phantom", str(phantom.slide_path), "--from-search", str(result), "--stride", "128",
           "--out", str(out)]
    assert main(cmd) == 2
    assert "--trust-content" in capsys.readouterr().err
    assert main([*cmd, "--trust-content"]) == 0
    assert "replaces it with the 0.26 um/px" in capsys.readouterr().err
    doc = json.loads((out / "classify.json").read_text())
    assert doc["scale"] == pytest.approx(0.95 / declared * 0.26) and doc["units"] == "um/px"  # as the summary


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "not readable JSON"),
        (json.dumps({"points": []}), "no 'chosen_scale'"),
        (json.dumps({"units": "furlongs", "chosen_scale": 0.5}), "not a positive scale"),
    ],
)
def test_from_search_errors(tmp_path: Path, content, message) -> None:
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_search_scale(path)
    assert "histoscale search" in str(err.value)


def test_cli_reports_bad_search_file(phantom, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "result.json"
    rc = main(["classify", "--model", "phantom", str(phantom.slide_path), "--from-search", str(missing), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "histoscale search" in err


def test_no_scale_and_no_mpp(synthetic_slides, model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = synthetic_slides["bare"]  # no um/px metadata
    with open_slide(bare) as slide:
        with pytest.raises(MissingMppError, match="--slide-mpp"):
            classify_slide(slide, model)
        with pytest.raises(MissingMppError):
            classify_slide(slide, model, mpp=0.5)
        relative = classify_slide(slide, model, downsample=4.0)  # relative units need nothing
    assert relative.units == "downsample" and relative.windows > 0
    assert main(["classify", "--model", "phantom", str(bare), "--out", str(tmp_path / "o")]) == 2
    assert "declares no um/px" in capsys.readouterr().err
    assert main(["classify", "--model", "phantom", str(bare), "--downsample", "4", "--out", str(tmp_path / "o")]) == 0
    doc = json.loads((tmp_path / "o" / "classify.json").read_text())
    assert doc["units"] == "downsample" and all(v["area_mm2"] is None for v in doc["classes"].values())


def test_bad_arguments(phantom, model) -> None:
    with open_slide(phantom.slide_path) as slide:
        with pytest.raises(ConfigError, match="stride"):
            classify_slide(slide, model, mpp=0.5, stride=model.input_size + 1)
        with pytest.raises(ConfigError, match="not both"):
            classify_slide(slide, model, mpp=0.5, downsample=2.0)
