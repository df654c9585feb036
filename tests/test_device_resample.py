"""The GPU path's resampling (reads cropped and resized on the model's device), run here on the CPU: the same code
a CUDA model runs, with device="cpu". Not run on a GPU in this project's CI (none there)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histoscale import ConfigError, find_scale, load_model, open_slide
from histoscale.patches import read_multiscale, read_regions
from histoscale.phantom import write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory):
    return write_phantom(tmp_path_factory.mktemp("device") / "p.svs", mpp=0.35, size_px_wh=(3072, 3072), seed=2,
                         fmt="svs").slide_path


@pytest.fixture()
def model():
    return load_model("phantom", device="cpu", precision="fp32")


def test_cpu_models_resample_on_the_cpu_by_default_and_get_the_reads_patches(phantom, model) -> None:
    assert not model.resamples_on_device
    with open_slide(phantom) as slide:
        ds = np.geomspace(0.7, 12.0, 9)  # several reads: 0.7..2.8, then coarser levels
        regions = read_regions(slide, (1500.0, 1400.0), ds, model.input_size)
        patches = read_multiscale(slide, (1500.0, 1400.0), ds, model.input_size)
    assert len(regions) > 1 and sum(len(r.boxes) for r in regions) == 9
    np.testing.assert_array_equal(model.features_of_regions(regions), model.features(patches))


def test_device_resampling_gives_nearly_the_cpu_features(phantom, model) -> None:
    with open_slide(phantom) as slide:
        rng = np.random.default_rng(0)
        regions = [r for c in rng.uniform(600, 2400, (6, 2)) for r in read_regions(slide, c, np.geomspace(0.7, 5, 9), 128)]
    cpu = model.features_of_regions(regions)
    model.resamples_on_device = True
    device = model.features_of_regions(regions)
    assert device.shape == cpu.shape == (54, model.num_features)
    cosine = (device * cpu).sum(axis=1) / np.linalg.norm(device, axis=1) / np.linalg.norm(cpu, axis=1)
    assert cosine.min() > 0.98  # antialiased bilinear vs area averaging: close, not the same pixels
    assert not np.array_equal(device, cpu)


def test_a_search_resampling_on_the_device_finds_the_same_scale(phantom, model) -> None:
    on_cpu = find_scale(phantom, model, points=24, seed=0)
    # A fixed grid read whole: the same reads whatever the features say.
    fixed = {"points": 24, "seed": 0, "early_stop": False, "widen": False, "scales": (0.71, 1.0, 1.41, 2.0),
             "relative": True}
    read_on_cpu = find_scale(phantom, model, **fixed).patches_scored
    model.resamples_on_device = True
    on_device = find_scale(phantom, model, points=24, seed=0)
    assert find_scale(phantom, model, **fixed).patches_scored == read_on_cpu
    # The answer is the continuous estimate (the grid scale, moved by the calibration, can sit a step from it).
    assert abs(math.log2(on_device.estimate / on_cpu.estimate)) <= 0.25 + 1e-9  # at most one grid step
    assert abs(math.log2(on_device.estimate / 0.5)) < 0.6  # and right: the model works at 0.5 um/px


def test_a_preprocessing_function_keeps_resampling_on_the_cpu(model) -> None:
    import dataclasses

    model.preprocessing = dataclasses.replace(model.preprocessing, function="numpy:asarray")
    with pytest.raises(ConfigError, match="resamples_on_device"):
        model.resamples_on_device = True
