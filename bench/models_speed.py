"""Patches per second of each model path: torch (fp32, and bf16 where accelerated) and ONNX Runtime.

Usage: python bench/models_speed.py [--seconds 5] [--device cpu|cuda]
SmallCNN at 128 px and DenseNet121 at 224 px, random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histoscale.models import SplitModel, load_model
from histoscale.models.architectures import DenseNet121, SmallCNN
from histoscale.models.torch_adapter import bf16_supported, export_onnx


def rate(model: SplitModel, batch: int, seconds: float) -> float:
    """Patches/s of model.features on uint8 batches, after one warm-up batch."""
    x = np.random.default_rng(0).integers(0, 256, (batch, model.input_size, model.input_size, 3), dtype=np.uint8)
    model.features(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.features(x)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, bf16 accelerated: "
        f"{bf16_supported(device)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, net, size, batch in (("SmallCNN", SmallCNN(), 128, 64), ("DenseNet121", DenseNet121(), 224, 32)):
            precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
            for precision in precisions:
                model = load_model(net, input_size=size, device=device, precision=precision, batch_size=batch)
                print(f"{name:12s} {size:4d} px  torch {precision}: {rate(model, batch, args.seconds):8.1f} patches/s")
            net = net.to("cpu", memory_format=torch.contiguous_format).eval()
            path = export_onnx(net, Path(tmp) / f"{name}.onnx", size)
            model = load_model(path, device=device, batch_size=batch)
            print(f"{name:12s} {size:4d} px  onnx  ({model.device}): {rate(model, batch, args.seconds):8.1f} patches/s")


if __name__ == "__main__":
    main()
