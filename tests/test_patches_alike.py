"""Every scale filtered alike (issue 25; BENCHMARKS "Why it fails", item 1): patches cut at a whole downsample (the
slide's own pixels at 1, exact binning at 2, 3) are no sharper than those in between.

Area averaging at a non-integer factor f straddles pixel edges, so its kernel's variance is (f^2 - 1)/12 + 1/6
input px^2 on average; at a whole factor the straddling (the 1/6) is missing unless :func:`filter_alike` adds it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from histoscale import load_model, open_slide
from histoscale.models.torch_adapter import _filter_alike
from histoscale.patches import Region, filter_alike, read_multiscale, read_regions

CMU1 = Path(str(files("histoscale") / "assets" / "demo" / "cmu-1-small-region.svs"))
OUT = 32


def kernel_variance(side: int, out_px: int = OUT) -> float:
    """Mean over output px of the variance (input px^2) of the weights that filter_alike + area averaging give the
    input px along one axis: the response to each input impulse, one column of a (side, side) image at a time."""
    weights = np.zeros((out_px, side))
    for j in range(side):
        image = np.zeros((side, side, 3), np.float32)
        image[:, j] = 1.0
        patch = cv2.resize(filter_alike(image, out_px), (out_px, out_px), interpolation=cv2.INTER_AREA)
        weights[:, j] = patch[out_px // 2, :, 0]
    pos = np.arange(side)
    inner = slice(2, out_px - 2)  # edges are reflected
    w = weights[inner]
    mean = w @ pos / w.sum(axis=1)
    return float(((w * (pos[None] - mean[:, None]) ** 2).sum(axis=1) / w.sum(axis=1)).mean())


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_whole_factors_get_the_kernel_of_their_neighbours(factor: int) -> None:
    expected = (factor**2 - 1) / 12 + 1 / 6
    assert kernel_variance(factor * OUT) == pytest.approx(expected, abs=0.01)
    for side in (factor * OUT + 3, factor * OUT + 7):  # non-integer factors just above: untouched, same variance
        f = side / OUT
        assert kernel_variance(side) == pytest.approx((f**2 - 1) / 12 + 1 / 6, abs=0.02)  # 32 px: few phases


def test_non_whole_factors_and_upsampling_are_untouched() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    assert filter_alike(crop, 32) is crop  # 50 -> 32: area averaging, straddles already
    assert filter_alike(crop, 64) is crop  # 50 -> 64: bilinear upsampling


def test_patches_at_downsample_1_and_2_are_no_sharper_than_their_neighbours_on_real_tissue() -> None:
    """CMU-1 (real H&E): the mean squared Laplacian of patches, in log, at downsample 1 and 2 against the mean of
    the neighbouring grid scales. Before: +0.56 and +0.26 above it (a spike); now +0.10 and +0.04."""
    rng = np.random.default_rng(0)
    ds = 2.0 ** (np.arange(-2, 7) / 4)  # 0.71 .. 2.83: 1.0 at index 2, 2.0 at index 6
    with open_slide(CMU1) as slide:
        patches = np.stack([read_multiscale(slide, c, ds, 224) for c in rng.uniform([600, 600], [1600, 2300], (12, 2))])
    grey = patches.astype(np.float32).mean(axis=-1)  # (points, N, 224, 224)
    energy = np.log([np.mean([np.mean(cv2.Laplacian(g, cv2.CV_32F) ** 2) for g in grey[:, i]]) for i in range(len(ds))])
    for i in (2, 6):
        assert energy[i] - (energy[i - 1] + energy[i + 1]) / 2 < 0.2, (i, energy)


def test_region_patches_are_uint8_and_filtered_at_whole_factors() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (70, 70, 3), dtype=np.uint8)
    region = Region(pixels, np.array([[3, 3, 32], [1, 1, 64], [0, 0, 50]]))
    patches = region.patches(32)
    assert patches.dtype == np.uint8 and patches.shape == (3, 32, 32, 3)
    assert not np.array_equal(patches[0], pixels[3:35, 3:35])  # the slide's own pixels, filtered
    np.testing.assert_array_equal(patches[0], np.rint(filter_alike(pixels[3:35, 3:35], 32)))


def test_the_device_path_filters_alike_with_the_same_taps() -> None:
    crop = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    on_cpu = filter_alike(crop, 32)
    on_device = _filter_alike(torch.from_numpy(crop).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(on_device, on_cpu, atol=1e-3)


def test_a_model_resampling_on_its_device_gets_the_filtered_crops() -> None:
    """The same regions, resampled on the CPU or on the model's device (here the CPU: the code a CUDA model runs):
    at downsample 1 the two paths now differ only by rounding; at 2, by area averaging against antialiased
    bilinear interpolation, as at every other scale."""
    model = load_model("phantom", device="cpu", precision="fp32")
    with open_slide(CMU1) as slide:
        regions = [r for c in ((900.0, 1400.0), (1300.0, 2100.0))
                   for r in read_regions(slide, c, np.array([1.0, 2.0]), model.input_size)]
    cpu = model.features_of_regions(regions)
    model.resamples_on_device = True
    device = model.features_of_regions(regions)
    cosine = (device * cpu).sum(axis=1) / np.linalg.norm(device, axis=1) / np.linalg.norm(cpu, axis=1)
    assert cosine[0::2].min() > 0.9999 and cosine[1::2].min() > 0.99  # regions hold (downsample 1, downsample 2)
