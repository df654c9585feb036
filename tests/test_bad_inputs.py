"""A catalogue of bad inputs and faults: each is answered with a clear error (which file, what is wrong, what to
do), exit code 2 from the CLI, no traceback from inside a library, no silent wrong answer, and nothing lost.

Slides are small synthetic files (conftest fixtures, slidewrite) and models tiny torch modules (input 32 px), so
the few whole searches here run in about a second each.

Note on "not writable": the tests run as root, for whom chmod does not block writes; an output folder *under a
regular file* (``<file>/sub``) is unwritable for everyone, so that is what these tests use.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from conftest import SYNTH_MPP
from histoscale._files import atomic_write
from histoscale.cli import main
from histoscale.errors import ConfigError, HistoscaleError, MissingMppError, ModelError, ScaleSearchError, SlideError
from histoscale.models import load_model
from histoscale.patches import read_multiscale
from histoscale.reports import write_search_report
from histoscale.search import find_scale
from histoscale.slide import open_slide
from histoscale.units import parse_scales

CLASSES = ["tumour", "stroma", "background"]
FAST = dict(points=8, seed=0, prefetch=0, early_stop=False)


# -------------------------------------------------------------------------------------------------- helpers


def tissue_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Tissue-like (h, w, 3) uint8: pink stroma with purple nuclei of a few sizes, on white glass at the edges."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (int(w * 0.45), int(h * 0.45)), 0, 0, 360, (225, 150, 200), thickness=-1)
    for _ in range(max(20, w * h // 400)):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(1, 6))
        if img[y, x, 1] < 255:
            cv2.circle(img, (x, y), r, (int(rng.integers(60, 120)), 40, int(rng.integers(120, 170))), thickness=-1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def tiny_net(in_ch: int = 3, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )


def tiny_model(**kwargs):  # noqa: ANN201 - a SplitModel
    opts = dict(input_size=32, class_names=CLASSES, mpp=0.5, precision="fp32", device="cpu")
    opts.update(kwargs)
    return load_model(tiny_net(), **opts)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_cli_error(capsys: pytest.CaptureFixture[str], argv: list, *needles: str) -> str:
    """The command exits with 2 and one clear line on stderr containing every needle, and no traceback."""
    code, _out, err = run_cli(capsys, *argv)
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny TorchScript classifier and its card (input 32 px, 0.5 um/px), plus broken variants."""
    d = tmp_path_factory.mktemp("models")
    scripted = torch.jit.script(tiny_net().eval())
    ts = d / "tiny.pt"
    torch.jit.save(scripted, str(ts))
    card = d / "tiny.json"
    card.write_text(json.dumps({"format": "torchscript", "file": ts.name, "input_size": 32, "mpp": 0.5,
                                "class_names": CLASSES}))
    data = ts.read_bytes()
    files = {"torchscript": ts, "card": card}
    files["ts_truncated"] = d / "truncated.pt"
    files["ts_truncated"].write_bytes(data[: len(data) // 2])
    onnx_path = d / "tiny.onnx"
    torch.onnx.export(tiny_net().eval(), torch.zeros(1, 3, 32, 32), str(onnx_path), input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    files["onnx"] = onnx_path
    raw = onnx_path.read_bytes()
    files["onnx_truncated"] = d / "truncated.onnx"
    files["onnx_truncated"].write_bytes(raw[: len(raw) // 2])
    files["onnx_garbage"] = d / "garbage.onnx"
    files["onnx_garbage"].write_bytes(b"this is not a protobuf\n" * 10)
    for suffix in ("pt", "onnx"):
        files[f"{suffix}_empty"] = d / f"empty.{suffix}"
        files[f"{suffix}_empty"].touch()
    pickled = d / "pickled.pt"
    torch.save(tiny_net(), str(pickled))  # a whole pickled module, not a state dict
    files["pickled"] = pickled
    return files


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024x768 tissue-like SVS at 0.5 um/px (levels 1, 4)."""
    from histoscale.slide.write import write_slide

    d = tmp_path_factory.mktemp("tissue")
    return write_slide(d / "tissue.svs", tissue_image(1024, 768), mpp=SYNTH_MPP, fmt="svs")


@pytest.fixture(scope="module")
def aniso_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled TIFF whose XResolution and YResolution disagree: 0.5 vs 0.8 um/px."""
    p = tmp_path_factory.mktemp("aniso") / "aniso.tif"
    tifffile.imwrite(
        p, tissue_image(768, 768), tile=(256, 256), photometric="rgb", metadata=None,
        resolution=(1e4 / 0.5, 1e4 / 0.8), resolutionunit="CENTIMETER",
    )
    return p


@pytest.fixture(scope="module")
def plain_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600x500 tissue-like PNG with no resolution at all."""
    p = tmp_path_factory.mktemp("png") / "scan.png"
    Image.fromarray(tissue_image(600, 500)).save(p)
    return p


# ------------------------------------------------------------------------------------------- slide files


def _broken_slides(d: Path, synthetic_slides: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the error must contain)."""
    cases: dict[str, tuple[Path, str]] = {"missing": (d / "nope.svs", "does not exist")}
    folder = d / "folder.svs"
    folder.mkdir(exist_ok=True)
    cases["directory"] = (folder, "is a directory")
    empty = d / "empty.svs"
    empty.touch()
    cases["zero bytes"] = (empty, "is empty (0 bytes)")
    for fmt in ("svs", "tiff"):
        data = synthetic_slides[fmt].read_bytes()
        cut = d / f"half.{fmt}"
        cut.write_bytes(data[: len(data) // 2])
        cases[f"truncated {fmt}"] = (cut, "truncated")
    text = d / "notes.svs"
    text.write_text("patient 12, block B, H&E\n" * 20)
    cases["text named .svs"] = (text, "not a slide or image file")
    return cases


def test_unopenable_slides_are_named_with_the_problem(
    tmp_path: Path, synthetic_slides: dict[str, Path], capsys: pytest.CaptureFixture[str], model_files
) -> None:
    for name, (path, needle) in _broken_slides(tmp_path, synthetic_slides).items():
        with pytest.raises(SlideError) as exc:
            open_slide(path)
        assert str(path) in str(exc.value) and needle in str(exc.value), (name, str(exc.value))
        assert_cli_error(capsys, ["info", path], str(path), needle)
        # the slide is checked before the model is loaded or anything is computed
        assert_cli_error(capsys, ["search", path, "--model", model_files["card"], "--points", 8], str(path), needle)


def _patch_tag(data: bytes, tag: int, value: int) -> bytes:
    """Set the (LONG/SHORT) value of ``tag`` in the first IFD of a little-endian classic TIFF."""
    import struct

    buf = bytearray(data)
    ifd = struct.unpack_from("<I", buf, 4)[0]
    for k in range(struct.unpack_from("<H", buf, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", buf, entry)[0] == tag:
            struct.pack_into("<HI", buf, entry + 2, 4, 1)  # type LONG, count 1
            struct.pack_into("<I", buf, entry + 8, value)
            return bytes(buf)
    raise AssertionError(f"tag {tag} not found")


@pytest.mark.parametrize("quiet_logging", [False, True])
def test_damaged_tiff_headers(tmp_path: Path, synthetic_slides: dict[str, Path], quiet_logging: bool) -> None:
    """Headers that made OpenSlide abort the process (huge tiles) or reads loop (huge sizes), found by
    bench/fuzz_open.py, are refused at open, also when the application silences tifffile's warnings."""
    import logging

    data = synthetic_slides["tiff"].read_bytes()
    cases = {
        "huge tile": (_patch_tag(data, 323, 2**31 - 1), "tiles"),  # TileLength
        "huge width": (_patch_tag(data, 256, 2**31 - 1), "damaged"),  # ImageWidth
        "no tile offsets": (_patch_tag(data, 324, len(data) + 10), "damaged"),  # TileOffsets -> past the end
    }
    root = logging.getLogger()
    old = root.level
    if quiet_logging:
        root.setLevel(logging.ERROR)
    try:
        for name, (content, needle) in cases.items():
            path = tmp_path / f"{name.replace(' ', '_')}.tif"
            path.write_bytes(content)
            with pytest.raises(SlideError) as exc:
                open_slide(path)
            assert str(path) in str(exc.value) and needle in str(exc.value), (name, str(exc.value))
    finally:
        root.setLevel(old)


def test_png_without_resolution(plain_png: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open_slide(plain_png) as s:
        assert s.mpp is None
        with pytest.raises(MissingMppError) as exc:
            s.read_region_at((300, 250), 32, mpp=0.5)
        msg = str(exc.value)
        assert str(plain_png) in msg and "--slide-mpp" in msg and "--relative" in msg
        assert s.read_region_at((300, 250), 32, downsample=2).shape == (32, 32, 3)
    # the search falls back to relative units (reported as such), never to a guessed um/px
    result = find_scale(plain_png, tiny_model(), **FAST)
    assert result.units == "downsample" and result.check.status == "MISSING-METADATA"
    assert result.check.declared_mpp is None and result.check.implied_grid_mpp > 0
    # with slide_mpp= (--slide-mpp) it is searched in um/px
    assert find_scale(plain_png, tiny_model(), slide_mpp=0.5, **FAST).units == "um/px"
    code, out, _ = run_cli(capsys, "info", plain_png, "--json")
    assert code == 0 and json.loads(out)["mpp"] is None


def test_contradictory_xy_resolution(aniso_tiff: Path, capsys: pytest.CaptureFixture[str], model_files) -> None:
    with open_slide(aniso_tiff) as s:
        assert s.resolution is not None and s.resolution.is_anisotropic
        with pytest.raises(SlideError) as exc:
            s.read_region_at((384, 384), 32, mpp=1.0)
        msg = str(exc.value)
        assert str(aniso_tiff) in msg and "0.5" in msg and "0.8" in msg and "square pixels" in msg and "--relative" in msg
        with pytest.raises(SlideError, match="resample it to square pixels"):
            find_scale(s, tiny_model(), **FAST)
        assert s.read_region_at((384, 384), 32, downsample=2).shape == (32, 32, 3)
    # info still shows both numbers
    code, out, _ = run_cli(capsys, "info", aniso_tiff, "--json")
    info = json.loads(out)
    assert code == 0 and info["anisotropic"] is True and info["mpp_x"] == pytest.approx(0.5)
    assert_cli_error(capsys, ["search", aniso_tiff, "--model", model_files["card"], "--points", 8], "rectangular pixels")
    # overriding the resolution, or relative units, are explicit choices that work
    assert find_scale(aniso_tiff, tiny_model(), slide_mpp=0.6, **FAST).units == "um/px"
    assert find_scale(aniso_tiff, tiny_model(), relative=True, **FAST).units == "downsample"


def test_all_background(white_slide: Path, capsys: pytest.CaptureFixture[str], model_files) -> None:
    with pytest.raises(ScaleSearchError) as exc:
        find_scale(white_slide, tiny_model(), **FAST)
    assert str(white_slide) in str(exc.value) and "--sampling uniform" in str(exc.value)
    assert_cli_error(capsys, ["search", white_slide, "--model", model_files["card"], "--points", 8],
                     "no tissue", "--sampling uniform")
    # uniform sampling on glass: every curve is flat, which is said, not voted on
    with pytest.raises(ScaleSearchError, match="no informative point"):
        find_scale(white_slide, tiny_model(), sampling="uniform", **FAST)


def test_slide_smaller_than_widest_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(tissue_image(40, 40)).save(small)
    with pytest.raises(ScaleSearchError) as exc:  # relative grid up to 2 x 32 px: widest field 64 px
        find_scale(small, tiny_model(), scales=(0.5, 1.0, 2.0), relative=True, **FAST)
    assert str(small) in str(exc.value) and "smaller than the widest field of view" in str(exc.value)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(tissue_image(20, 20)).save(tiny)  # the default range needs one octave: 32 px at 0.5..1
    with pytest.raises(ScaleSearchError) as exc:
        find_scale(tiny, tiny_model(), **FAST)
    assert str(tiny) in str(exc.value) and "too little room to search" in str(exc.value)
    assert_cli_error(capsys, ["search", tiny, "--model", model_files["card"], "--points", 8], "--scales")


def test_points_at_the_border_are_padded_not_refused(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(tissue_image(80, 72)).save(small)
    with open_slide(small) as s:
        for centre in [(0, 0), (80, 72), (0, 72), (79.9, 0.1)]:
            patches = read_multiscale(s, centre, np.array([0.5, 1.0, 2.0]), 32)
            assert patches.shape == (3, 32, 32, 3) and patches.dtype == np.uint8
            assert (patches[2, :4, :4] == 255).all() or (patches[2, -4:, -4:] == 255).all()
        result = find_scale(s, tiny_model(), sampling="uniform", **FAST)
    assert result.points_used == 8 and np.isfinite(result.curves).all()
    assert math.isfinite(result.estimate) and result.units == "downsample"


# ------------------------------------------------------------------------------------------------ models


def test_broken_model_files(model_files: dict[str, Path], tissue_slide: Path, capsys) -> None:
    cases = {
        "ts_truncated": "not a valid",
        "onnx_truncated": "not a valid ONNX model",
        "onnx_garbage": "not a valid ONNX model",
        "missing": "does not exist",
        "pt_empty": "is empty (0 bytes)",
        "onnx_empty": "is empty (0 bytes)",
    }
    for name, needle in cases.items():
        path = model_files.get(name, model_files["card"].parent / "missing.onnx")
        with pytest.raises(ModelError) as exc:
            load_model(path, input_size=32)
        assert str(path) in str(exc.value) and needle in str(exc.value), (name, str(exc.value))
        assert_cli_error(capsys, ["search", tissue_slide, "--model", path, "--points", 8], str(path), needle)
    # the intact files load
    assert load_model(model_files["onnx"], class_names=CLASSES).input_size == 32
    assert load_model(model_files["card"]).class_names == tuple(CLASSES)


def test_pickled_checkpoint_needs_opt_in(model_files: dict[str, Path], tissue_slide: Path, capsys) -> None:
    path = model_files["pickled"]
    with pytest.raises(ModelError) as exc:
        load_model(path, input_size=32)
    assert str(path) in str(exc.value) and "allow_pickle=True" in str(exc.value) and "--allow-pickle" in str(exc.value)
    assert_cli_error(capsys, ["search", tissue_slide, "--model", path, "--points", 8], "--allow-pickle")
    model = load_model(path, input_size=32, allow_pickle=True, precision="fp32")
    assert model.num_classes == 3


def test_model_without_final_linear_layer() -> None:
    torch.manual_seed(0)
    conv_head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelError, match="no final linear layer"):
        load_model(conv_head, input_size=32)
    # a linear layer followed by a softmax is not the final linear layer either
    softmaxed = nn.Sequential(*tiny_net(), nn.Softmax(dim=1))
    with pytest.raises(ModelError, match="raw logits"):
        load_model(softmaxed, input_size=32)


def test_model_expecting_one_channel(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="1 input channel"):
        load_model(tiny_net(in_ch=1), input_size=32)
    scripted = tmp_path / "grey.pt"
    torch.jit.save(torch.jit.script(tiny_net(in_ch=1).eval()), str(scripted))
    with pytest.raises(ModelError, match="1 input channel"):
        load_model(scripted, input_size=32)
    onnx_path = tmp_path / "grey.onnx"
    torch.onnx.export(tiny_net(in_ch=1).eval(), torch.zeros(1, 1, 32, 32), str(onnx_path), dynamo=False)
    with pytest.raises(ModelError, match="1 channel"):
        load_model(onnx_path)


def test_card_class_count_disagrees(model_files: dict[str, Path], tmp_path: Path, tissue_slide: Path, capsys) -> None:
    card = tmp_path / "two.json"
    card.write_text(json.dumps({"format": "torchscript", "file": str(model_files["torchscript"]), "input_size": 32,
                                "class_names": ["tumour", "normal"]}))
    with pytest.raises(ModelError) as exc:
        load_model(card)
    assert str(card) in str(exc.value) and "2 class names" in str(exc.value) and "3 outputs" in str(exc.value)
    assert_cli_error(capsys, ["search", tissue_slide, "--model", card, "--points", 8], "class_names")
    with pytest.raises(ModelError, match="2 class names"):
        tiny_model(class_names=["a", "b"])


class NaNAfter(nn.Module):
    """Healthy on the loader's probe batch, NaN from the ``after``-th call on: a diverged model found late."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.net = tiny_net()
        self.calls = 0
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        feats = self.net[:-1](x)
        if self.calls > self.after:
            feats = feats * float("nan")
        return self.net[-1](feats)


def test_model_emitting_nan(tissue_slide: Path) -> None:
    broken = tiny_net()
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        load_model(broken, input_size=32)
    late = load_model(NaNAfter(after=3), input_size=32, class_names=CLASSES, mpp=0.5, precision="fp32")
    with pytest.raises(ModelError) as exc:
        find_scale(tissue_slide, late, **FAST)
    assert "NaN" in str(exc.value) and "weights" in str(exc.value)


# ---------------------------------------------------------------------------------------- search arguments


@pytest.mark.parametrize(
    ("scales", "needle"),
    [("0.5,0,1", "positive"), ("-1,0.5,1", "positive"), ("0.5,0.5,1", "duplicate"), ("1,0.5,2", "unsorted"),
     ("0.5,abc", "comma-separated"), ("0.5", "at least two"), ("nan,1", "positive")],
)
def test_bad_scales(scales: str, needle: str, tissue_slide: Path, model_files, capsys) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_scales(scales, units="um/px", min_count=2)
    assert_cli_error(capsys, ["search", tissue_slide, "--model", model_files["card"], f"--scales={scales}"], needle)


def test_zero_points(tissue_slide: Path, model_files, capsys) -> None:
    for p in (0, -3):
        with pytest.raises(ConfigError, match="at least 1"):
            find_scale(tissue_slide, tiny_model(), points=p)
        assert_cli_error(capsys, ["search", tissue_slide, "--model", model_files["card"], "--points", p], "--points")


# --------------------------------------------------------------------------------------------------- output


def test_output_folder_not_writable(tmp_path: Path, tissue_slide: Path, model_files, capsys, monkeypatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder")
    out = blocker / "run"
    with pytest.raises(HistoscaleError) as exc:
        atomic_write(out / "result.json", "{}")
    assert str(out) in str(exc.value) and "writable" in str(exc.value)
    # the CLI checks the folder before spending time on the search
    import histoscale.cli.search

    def no_search(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the search ran although the output folder is unusable")

    monkeypatch.setattr(histoscale.cli.search, "find_scale", no_search)
    assert_cli_error(capsys, ["search", tissue_slide, "--model", model_files["card"], "--points", 8, "--out", out],
                     str(out), "writable")


def test_disk_full_keeps_previous_result(tmp_path: Path, tissue_slide: Path, monkeypatch, capsys, model_files) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "search", tissue_slide, "--model", model_files["card"], "--points", 8,
                           "--out", out, "--no-early-stop")
    assert code == 0, err
    before = (out / "result.json").read_bytes()
    json.loads(before)
    result = find_scale(tissue_slide, tiny_model(), **FAST)

    import histoscale._files

    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.fstat(fd).st_size > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(histoscale._files.os, "fsync", full_disk)
    with pytest.raises(HistoscaleError) as exc:
        write_search_report(result, out, figures=False)
    assert "No space left on device" in str(exc.value) and str(out) in str(exc.value)
    assert (out / "result.json").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    # the same through the file handle's write, and through the CLI
    monkeypatch.setattr(histoscale._files.os, "fsync", real_fsync)

    real_fdopen = os.fdopen

    class FullHandle:
        def __init__(self, fd: int, mode: str) -> None:
            self._f = real_fdopen(fd, mode)

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def write(self, data: bytes) -> int:
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(histoscale._files.os, "fdopen", FullHandle)
    assert_cli_error(capsys, ["search", tissue_slide, "--model", model_files["card"], "--points", 8, "--out", out],
                     "No space left on device")
    assert (out / "result.json").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------- property: reads


@pytest.fixture(scope="module")
def read_slides(synthetic_slides: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, synthetic_array):
    png = tmp_path_factory.mktemp("png_read") / "synth.png"
    Image.fromarray(np.asarray(synthetic_array)).save(png)
    slides = [open_slide(synthetic_slides["svs"]), open_slide(synthetic_slides["bare"], backend="tiffslide", slide_mpp=SYNTH_MPP),
              open_slide(png, slide_mpp=SYNTH_MPP)]
    yield slides
    for s in slides:
        s.close()


def _outside_columns(c: float, n: int, d: float, extent: int, margin: float) -> np.ndarray:
    """Output px (along one axis) whose level-0 span lies more than ``margin`` outside [0, extent)."""
    start = c - n * d / 2 + np.arange(n) * d
    return (start + d < -margin) | (start > extent + margin)


@settings(max_examples=80, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 2),
    cx=st.floats(-3000, 5000, allow_nan=False),
    cy=st.floats(-3000, 5000, allow_nan=False),
    w=st.integers(1, 300),
    h=st.integers(1, 300),
    log_ds=st.floats(math.log(0.25), math.log(40.0)),
    by_mpp=st.booleans(),
)
def test_read_region_at_shape_dtype_white_outside(read_slides, which, cx, cy, w, h, log_ds, by_mpp) -> None:
    s = read_slides[which]
    d = math.exp(log_ds)
    out = s.read_region_at((cx, cy), (w, h), mpp=d * SYNTH_MPP) if by_mpp else s.read_region_at((cx, cy), (w, h),
                                                                                              downsample=d)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    ds = s.level_downsamples[s.best_level(d)]
    margin = 2 * ds + 2 * d
    W, H = s.dimensions
    cols, rows = _outside_columns(cx, w, d, W, margin), _outside_columns(cy, h, d, H, margin)
    assert (out[:, cols] == 255).all() and (out[rows, :] == 255).all()


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 2),
    level=st.integers(0, 5),
    x=st.integers(-5000, 6000),
    y=st.integers(-5000, 6000),
    w=st.integers(1, 300),
    h=st.integers(1, 300),
)
def test_read_level_shape_dtype_white_outside(read_slides, which, level, x, y, w, h) -> None:
    s = read_slides[which]
    level = level % s.level_count
    out = s.read_level(level, (x, y), (w, h))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    ds = s.level_downsamples[level]
    lw, lh = s.level_dimensions[level]
    x0, y0 = round(x / ds), round(y / ds)
    col = x0 + np.arange(w)
    row = y0 + np.arange(h)
    assert (out[:, (col < 0) | (col >= lw)] == 255).all() and (out[(row < 0) | (row >= lh), :] == 255).all()
