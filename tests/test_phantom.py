"""Phantom tissue: deterministic, seamless, scale-dependent, consistent with its labels, written as real slides."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from scipy import ndimage

from histoscale.phantom import (
    BG,
    CLASS_NAMES,
    LP,
    PhantomSpec,
    classes_at,
    label_map,
    read_phantom_info,
    render_region,
    write_phantom,
)

SPEC = PhantomSpec(width_um=2000.0, height_um=2000.0, seed=3)


def _find_class_point(spec: PhantomSpec, cls: int, margin_um: float = 80.0) -> tuple[float, float]:
    """A point deep inside a region of class ``cls`` (every point within margin_um has that class)."""
    xs = np.arange(margin_um, spec.width_um - margin_um, 20.0)
    ys = np.arange(margin_um, spec.height_um - margin_um, 20.0)
    cl = classes_at(spec, xs, ys)
    inside = ndimage.binary_erosion(cl == cls, iterations=int(margin_um // 20))
    if not inside.any():
        pytest.skip(f"no deep {CLASS_NAMES[cls]} region in this phantom")
    j, i = np.argwhere(inside)[len(np.argwhere(inside)) // 2]
    return float(xs[i]), float(ys[j])


def test_deterministic_and_seed_dependent():
    a = render_region(SPEC, 100.0, 200.0, (160, 120), 0.5)
    b = render_region(SPEC, 100.0, 200.0, (160, 120), 0.5)
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    other = render_region(PhantomSpec(width_um=2000.0, height_um=2000.0, seed=4), 100.0, 200.0, (160, 120), 0.5)
    assert not np.array_equal(a, other)


@pytest.mark.parametrize("mpp", [0.25, 0.5, 1.0])
def test_seamless_tiling(mpp):
    x0, y0 = 333.0, 517.0
    whole = render_region(SPEC, x0, y0, (300, 200), mpp)
    left = render_region(SPEC, x0, y0, (130, 200), mpp)
    right = render_region(SPEC, x0 + 130 * mpp, y0, (170, 200), mpp)
    top = render_region(SPEC, x0, y0, (300, 90), mpp)
    bottom = render_region(SPEC, x0, y0 + 90 * mpp, (300, 110), mpp)
    halves = np.concatenate([left, right], axis=1)
    rows = np.concatenate([top, bottom], axis=0)
    for other in (halves, rows, render_region(SPEC, x0, y0, (300, 200), mpp, block=64)):
        diff = np.abs(whole.astype(int) - other.astype(int))
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3


def test_nuclei_scale_with_resolution():
    x, y = _find_class_point(SPEC, LP)
    fov = 60.0  # um

    def nucleus_areas(mpp):
        img = render_region(SPEC, x - fov / 2, y - fov / 2, (round(fov / mpp),) * 2, mpp)
        dark = img.astype(np.float32).mean(axis=2) < 150
        lab, n = ndimage.label(dark)
        areas = np.bincount(lab.ravel())[1:]
        return np.median(areas[areas > 3]), n

    a_fine, n_fine = nucleus_areas(0.25)
    a_coarse, n_coarse = nucleus_areas(0.5)
    ratio = a_fine / a_coarse
    assert 3.0 < ratio < 5.3, ratio  # 2x in diameter -> 4x in area
    assert abs(n_fine - n_coarse) <= 0.3 * max(n_fine, n_coarse)  # the same nuclei
    # ~7 um lymphocyte nuclei: at 0.5 um/px a median area of roughly pi * (3.4 um / 0.5)^2 ~ 145 px
    assert 60 < a_coarse < 260, a_coarse


def test_label_map_matches_rendering():
    mpp = 8.0
    labels = label_map(SPEC, mpp)
    assert labels.shape == (250, 250) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(len(CLASS_NAMES)))
    img = render_region(SPEC, 0.0, 0.0, (250, 250), mpp, supersample=2)
    grey = img.astype(np.float32).mean(axis=2)
    bg = ndimage.binary_erosion(labels == BG, iterations=2)
    tissue = ndimage.binary_erosion(labels != BG, iterations=2)
    assert bg.any() and tissue.any()
    assert grey[bg].min() > 215
    assert np.median(grey[tissue]) < 210
    # the label map is the pointwise class function
    xs = (np.arange(250) + 0.5) * mpp
    assert np.array_equal(classes_at(SPEC, xs[:40], xs[:30]), labels[:30, :40])


def test_coarse_render_close_to_fine_render_shrunk():
    """Direct rendering at 1 um/px ~ rendering at 0.25 um/px and area-shrinking 4x (the pyramid path)."""
    import cv2

    x, y = _find_class_point(SPEC, LP, margin_um=40.0)
    direct = render_region(SPEC, x - 64, y - 64, (128, 128), 1.0).astype(np.float32)
    fine = render_region(SPEC, x - 64, y - 64, (512, 512), 0.25)
    shrunk = cv2.resize(fine, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert abs(direct.mean() - shrunk.mean()) < 6
    assert abs(direct.std() - shrunk.std()) < 0.3 * shrunk.std()


@pytest.mark.parametrize("fmt", ["svs", "tiff", "bare"])
def test_write_phantom_formats(tmp_path, fmt):
    import tifffile

    ext = {"svs": ".svs", "tiff": ".tif", "bare": ".tif"}[fmt]
    info = write_phantom(tmp_path / f"ph{ext}", mpp=0.5, size_px_wh=(1024, 768), seed=5, fmt=fmt, workers=1)
    assert info.slide_path.exists() and info.labels_path.exists() and info.json_path.exists()
    assert info.labels_path.name == "ph.labels.png" and info.json_path.name == "ph.phantom.json"
    doc = json.loads(info.json_path.read_text())
    assert doc["mpp"] == 0.5 and doc["seed"] == 5 and doc["size_px_wh"] == [1024, 768]
    assert doc["class_names"] == list(CLASS_NAMES) and doc["format"] == fmt
    assert doc["labels"] == "ph.labels.png" and doc["labels_mpp"] == info.labels_mpp
    assert read_phantom_info(info.json_path) == info

    from PIL import Image

    lab = Image.open(info.labels_path)
    assert lab.mode == "P"
    lab = np.asarray(lab)
    assert lab.shape == (round(768 * 0.5 / info.labels_mpp), round(1024 * 0.5 / info.labels_mpp))
    assert np.array_equal(lab, label_map(info.spec, info.labels_mpp))

    with tifffile.TiffFile(info.slide_path) as tf:
        level0 = tf.pages[0].asarray()
    assert level0.shape == (768, 1024, 3)
    ref = render_region(info.spec, 0.0, 0.0, (1024, 768), 0.5)
    assert np.abs(level0.astype(int) - ref.astype(int)).mean() < 4  # JPEG q90

    if importlib.util.find_spec("histoscale.slide") is None:
        pytest.skip("histoscale.slide not available yet")
    from histoscale.slide import open_slide

    slide = open_slide(info.slide_path) if fmt != "bare" else open_slide(info.slide_path, mpp=0.5)
    assert slide.mpp == pytest.approx(0.5, rel=1e-3)


def test_write_phantom_parallel_equals_serial(tmp_path):
    import tifffile

    a = write_phantom(tmp_path / "a.tif", mpp=0.5, size_px_wh=(1024, 1024), seed=2, fmt="tiff", workers=1)
    b = write_phantom(tmp_path / "b.tif", mpp=0.5, size_px_wh=(1024, 1024), seed=2, fmt="tiff", workers=2)
    with tifffile.TiffFile(a.slide_path) as ta, tifffile.TiffFile(b.slide_path) as tb:
        assert len(ta.pages) == len(tb.pages) >= 2
        for pa, pb in zip(ta.pages, tb.pages):
            assert np.array_equal(pa.asarray(), pb.asarray())
