#!/usr/bin/env python
"""Train the bundled reference classifier on phantom tissue at 0.5 um/px, export it, and check it.

One command, CPU, deterministic seed, a few minutes::

    python scripts/train_reference.py            # render data, train, evaluate, export, check
    python scripts/train_reference.py --check    # only evaluate + check the saved model

Steps
-----
1. Patches: 128 px at 0.5 um/px (the "x20" convention) from many phantom specs (seeds 1000+), centred in one
   class region (>= 85 % of a 5 x 5 grid over the patch is the centre's class), balanced over the 5 classes.
   Augmentation baked into rendering: scale jitter +-5 %, half of the patches rendered 2x finer and shrunk
   (the pyramid-read path), half re-encoded as JPEG (slides are JPEG); on the fly: flips, 90-degree turns,
   mild brightness/contrast/saturation jitter (each seed already has its own stain).
2. Train ``histoscale.models.architectures.SmallCNN(num_classes=5)``, AdamW + one-cycle, fp32.
3. Write ``src/histoscale/assets/reference.pt`` (+ ``reference.json`` card), ``reference.onnx``
   (+ ``reference-onnx.json``, and the same card inside the ONNX file's metadata).
4. Table 1 analogue: per-class accuracy at 0.25, 0.35, 0.5, 0.7, 1.0 um/px on held-out seeds.
5. Validity check of the scale search (Algorithm 1): for tissue points of held-out phantoms whose true
   resolution is 0.25, 0.5 or 1.0 um/px, patches at candidate um/px 0.25..1.0 (ratio 2^(1/4)) cut from the
   slide at its true resolution and resampled to 128 px; per point the argmax over scales of
   max_c (f.w_c + b_c)/||w_c|| (also without bias, and the top1-top2 margin); the vote histogram must peak at
   (or one step from) 0.5 um/px.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histoscale.models.architectures import SmallCNN  # noqa: E402
from histoscale.models.card import load_card  # noqa: E402
from histoscale.models.onnx_adapter import embed_card  # noqa: E402
from histoscale.phantom import BG, CLASS_NAMES, PhantomSpec, classes_at, label_map, render_region  # noqa: E402

ASSETS = ROOT / "src" / "histoscale" / "assets"
INPUT = 128
TRAIN_MPP = 0.5
SPEC_UM = 3000.0
MEAN = (0.80, 0.62, 0.80)
STD = (0.15, 0.20, 0.13)
EVAL_SCALES = (0.25, 0.35, 0.5, 0.7, 1.0)
CAND = tuple(float(0.25 * 2 ** (k / 4)) for k in range(9))  # 0.25 .. 1.0


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def _pick_centres(spec: PhantomSpec, rng: np.random.Generator, n: int, fov_um: float, purity: float = 0.85):
    """Candidate patch centres (um) with the class at the centre, where the patch is mostly that class
    (>= ``purity`` of a 5 x 5 grid over the patch), from the label map at 4 um/px."""
    step = 4.0
    lab = label_map(spec, step)
    m = fov_um / 2 + 2
    cx = rng.uniform(m, spec.width_um - m, 20 * n)
    cy = rng.uniform(m, spec.height_um - m, 20 * n)
    g = np.linspace(-0.45, 0.45, 5) * fov_um
    ix = np.clip(((cx[:, None] + g[None, :]) / step).astype(int), 0, lab.shape[1] - 1)  # (K, 5)
    iy = np.clip(((cy[:, None] + g[None, :]) / step).astype(int), 0, lab.shape[0] - 1)
    grid = lab[iy[:, :, None], ix[:, None, :]]  # (K, 5, 5)
    centre = lab[(cy / step).astype(int).clip(0, lab.shape[0] - 1), (cx / step).astype(int).clip(0, lab.shape[1] - 1)]
    ok = (grid == centre[:, None, None]).mean(axis=(1, 2)) >= purity
    return [(float(x), float(y), int(c)) for x, y, c in zip(cx[ok], cy[ok], centre[ok])][:n]


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


def _render_seed(args):
    """All training patches of one phantom seed: (images uint8 (n,128,128,3), labels)."""
    seed, per_class, mpp, jitter, augment = args
    spec = PhantomSpec(width_um=SPEC_UM, height_um=SPEC_UM, seed=seed)
    rng = np.random.default_rng([seed, 3])
    cands = _pick_centres(spec, rng, 40 * per_class, INPUT * mpp * 1.06)
    imgs, labels = [], []
    counts = [0] * len(CLASS_NAMES)
    for cx, cy, c in cands:
        if counts[c] >= per_class:
            continue
        counts[c] += 1
        s = mpp * math.exp(rng.uniform(-jitter, jitter)) if jitter else mpp
        half = INPUT * s / 2
        if augment and rng.random() < 0.5:
            fine = render_region(spec, cx - half, cy - half, (2 * INPUT, 2 * INPUT), s / 2)
            img = cv2.resize(fine, (INPUT, INPUT), interpolation=cv2.INTER_AREA)
        else:
            img = render_region(spec, cx - half, cy - half, (INPUT, INPUT), s)
        if augment and rng.random() < 0.5:
            img = _jpeg(img, int(rng.integers(75, 96)))
        imgs.append(img)
        labels.append(c)
        if min(counts) >= per_class:
            break
    return np.stack(imgs), np.array(labels, np.int64)


def make_dataset(seeds, per_class, mpp, jitter, augment, workers):
    jobs = [(s, per_class, mpp, jitter, augment) for s in seeds]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            res = list(ex.map(_render_seed, jobs))
    else:
        res = [_render_seed(j) for j in jobs]
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])


# ---------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------
def to_tensor(batch_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(batch_uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flips, 90-degree turns, mild brightness / contrast / saturation jitter on a 0..1 RGB batch."""
    n = x.shape[0]
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=g).item() < 0.5:
        x = x.flip(2)
    k = int(torch.randint(0, 4, (1,), generator=g).item())
    x = torch.rot90(x, k, (2, 3))
    b = 1 + 0.08 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1)
    c = 1 + 0.12 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1)
    s = 1 + 0.15 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean * b
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * s
    return x.clamp_(0, 1)


def train(x_u8: np.ndarray, y: np.ndarray, epochs: int, seed: int, bs: int = 64, lr: float = 2e-3) -> SmallCNN:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SmallCNN(num_classes=len(CLASS_NAMES)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(y) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    xt = torch.from_numpy(x_u8)  # (N, H, W, 3) uint8
    yt = torch.from_numpy(y)
    t0 = time.time()
    step = 0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=g)
        tot, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm) - bs + 1, bs):
            idx = perm[i : i + bs]
            xb = xt[idx].permute(0, 3, 1, 2).float().div_(255.0)
            xb = augment_batch(xb, g)
            xb = ((xb - mean) / std).contiguous(memory_format=torch.channels_last)
            yb = yt[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += len(yb)
            correct += int((out.argmax(1) == yb).sum())
            loss_sum += loss.item() * len(yb)
        print(f"  epoch {ep + 1}/{epochs}: loss {loss_sum / tot:.3f}  train acc {correct / tot:.3f}  "
              f"({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    return model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def features(model: SmallCNN, batch_u8: np.ndarray, bs: int = 128) -> np.ndarray:
    out = []
    for i in range(0, len(batch_u8), bs):
        out.append(model.forward_features(to_tensor(batch_u8[i : i + bs])).numpy())
    return np.concatenate(out)


def head(model: SmallCNN):
    lin = model.get_classifier()
    return lin.weight.detach().numpy().T.astype(np.float32), lin.bias.detach().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------
def export(model: SmallCNN, assets: Path) -> None:
    assets.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(sd, assets / "reference.pt")
    card = {
        "format": "torch-state-dict",
        "file": "reference.pt",
        "factory": "histoscale.models.architectures:SmallCNN",
        "factory_kwargs": {"num_classes": len(CLASS_NAMES)},
        "input_size": INPUT,
        "mean": list(MEAN),
        "std": list(STD),
        "class_names": list(CLASS_NAMES),
        "mpp": TRAIN_MPP,
        "head": "classifier",
        "name": "histoscale-reference-smallcnn",
        "description": "SmallCNN trained on histoscale phantom tissue at 0.5 um/px (scripts/train_reference.py)",
    }
    (assets / "reference.json").write_text(json.dumps(card, indent=2) + "\n")
    # ONNX: the TorchScript-based exporter (dynamo=False) needs no onnxscript; outputs logits AND features so an
    # ONNX runtime user can split without graph surgery (the head is a plain Gemm named by the card).
    model.eval()

    class Both(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            f = self.m.forward_features(x)
            return self.m.forward_head(f), f

    x = torch.randn(2, 3, INPUT, INPUT)
    wrapper = Both(model).eval()  # the exporter restores the wrapper's mode recursively: keep it eval
    torch.onnx.export(
        wrapper, (x,), str(assets / "reference.onnx"), input_names=["input"],
        output_names=["logits", "features"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17, dynamo=False,
    )
    ocard = dict(card, format="onnx", file="reference.onnx", name="histoscale-reference-smallcnn-onnx")
    for k in ("factory", "factory_kwargs", "head"):
        ocard.pop(k)
    ocard.update({"input_name": "input", "logits_output": "logits", "features_output": "features",
                  "layout": "NCHW", "input_dtype": "float32, normalized ((x/255 - mean)/std)"})
    (assets / "reference-onnx.json").write_text(json.dumps(ocard, indent=2) + "\n")
    # The same card inside the file: `--model reference.onnx` alone is then fully described.
    embed_card(assets / "reference.onnx", load_card(assets / "reference-onnx.json"))
    import onnxruntime as ort

    sess = ort.InferenceSession(str(assets / "reference.onnx"), providers=["CPUExecutionProvider"])
    xx = torch.randn(5, 3, INPUT, INPUT)
    lo, fo = sess.run(None, {"input": xx.numpy()})
    model.eval()
    with torch.no_grad():
        ref = model(xx).numpy()
    print(f"  onnx export: max |logit diff| = {np.abs(lo - ref).max():.2e}")


def record_feature_stats(model: SmallCNN, assets: Path, seeds, per_class: int, workers: int) -> None:
    """The training patches' feature statistics (histoscale.domain) into the three phantom cards (both JSON
    cards and the card inside the ONNX file), so that a search says when a slide is unlike phantom tissue."""
    from histoscale.domain import FeatureStats

    x, _ = make_dataset(seeds, per_class, TRAIN_MPP, 0.05, True, workers)
    with torch.no_grad():
        stats = FeatureStats.fit(features(model, x)).to_dict()
    for name in ("reference.json", "reference-onnx.json"):
        card = json.loads((assets / name).read_text())
        card["feature_stats"] = stats
        (assets / name).write_text(json.dumps(card, indent=2) + "\n")
    embed_card(assets / "reference.onnx", load_card(assets / "reference-onnx.json"))
    print(f"  feature statistics of {stats['patches']} training patches recorded: quantiles {stats['quantiles']}")


def load(assets: Path) -> SmallCNN:
    model = SmallCNN(num_classes=len(CLASS_NAMES))
    model.load_state_dict(torch.load(assets / "reference.pt", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------
def accuracy_table(model: SmallCNN, seeds, per_class: int, workers: int) -> dict:
    rows = {}
    for s in EVAL_SCALES:
        x, y = make_dataset(seeds, per_class, s, 0.0, False, workers)
        pred = (features(model, x) @ head(model)[0] + head(model)[1]).argmax(1)
        accs = [float(np.mean(pred[y == c] == c)) if np.any(y == c) else float("nan") for c in range(len(CLASS_NAMES))]
        rows[s] = accs
    print("\nTable 1 analogue: patch accuracy (%) of the reference model, trained at 0.5 um/px, held-out seeds")
    print("  um/px  " + " ".join(f"{c:>6}" for c in CLASS_NAMES) + "   mean")
    for s, accs in rows.items():
        print(f"  {s:5.2f}  " + " ".join(f"{100 * a:6.1f}" for a in accs) + f" {100 * np.nanmean(accs):6.1f}")
    return rows


def _tissue_points(spec: PhantomSpec, rng, n, margin_um):
    pts = []
    while len(pts) < n:
        cx = rng.uniform(margin_um, spec.width_um - margin_um, 4 * n)
        cy = rng.uniform(margin_um, spec.height_um - margin_um, 4 * n)
        for x, y in zip(cx, cy):
            if int(classes_at(spec, np.array([x]), np.array([y]))[0, 0]) != BG:
                pts.append((x, y))
            if len(pts) == n:
                break
    return pts


def _point_patches(args):
    """Patches at every candidate scale around one point, cut from a slide whose true resolution is ``true_mpp``:
    one render of the widest field at true_mpp, concentric crops, each resampled to 128 px (area when
    shrinking, bicubic when enlarging)."""
    seed, x, y, true_mpp = args
    spec = PhantomSpec(width_um=SPEC_UM, height_um=SPEC_UM, seed=seed)
    fov = INPUT * CAND[-1]
    side = int(math.ceil(fov / true_mpp)) + 4
    side += side % 2
    big = render_region(spec, x - side * true_mpp / 2, y - side * true_mpp / 2, (side, side), true_mpp)
    big = big.astype(np.float32)
    out = []
    for s in CAND:
        w = INPUT * s / true_mpp  # crop side in slide px (fractional)
        # exact centred crop + resample via an affine warp on pixel centres
        scale = w / INPUT
        c = side / 2
        M = np.array([[scale, 0, c - w / 2 + 0.5 * scale - 0.5], [0, scale, c - w / 2 + 0.5 * scale - 0.5]], np.float64)
        if scale > 1:  # shrinking: area-average by pre-blurring with a box of the scale
            k = max(1, int(round(scale)))
            src = cv2.blur(big, (k, k)) if k > 1 else big
            interp = cv2.INTER_LINEAR
        else:
            src = big
            interp = cv2.INTER_CUBIC
        p = cv2.warpAffine(src, M, (INPUT, INPUT), flags=interp | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(p + 0.5, 0, 255).astype(np.uint8))
    return np.stack(out)


def scale_check(model: SmallCNN, seeds, n_points: int, true_mpps, workers: int) -> dict:
    W, b = head(model)
    norms = np.linalg.norm(W, axis=0)
    results = {}
    print("\nValidity check (Algorithm 1): votes over candidate um/px; the model was trained at 0.5 um/px")
    print("  candidates: " + " ".join(f"{s:.3f}" for s in CAND))
    for t in true_mpps:
        jobs = []
        for i, seed in enumerate(seeds):
            rng = np.random.default_rng([seed, 17])
            spec = PhantomSpec(width_um=SPEC_UM, height_um=SPEC_UM, seed=seed)
            n = n_points // len(seeds) + (1 if i < n_points % len(seeds) else 0)
            jobs += [(seed, x, y, t) for x, y in _tissue_points(spec, rng, n, INPUT * CAND[-1] / 2 + 5)]
        if workers > 1:
            with ProcessPoolExecutor(workers) as ex:
                patches = list(ex.map(_point_patches, jobs, chunksize=4))
        else:
            patches = [_point_patches(j) for j in jobs]
        P = np.stack(patches)  # (P, N, 128, 128, 3)
        f = features(model, P.reshape(-1, INPUT, INPUT, 3)).reshape(len(jobs), len(CAND), -1)
        logits = f @ W + b
        scores = {
            "bias": ((f @ W + b) / norms).max(-1),
            "nobias": ((f @ W) / norms).max(-1),
            "margin": np.sort(logits, -1)[..., -1] - np.sort(logits, -1)[..., -2],
        }
        results[t] = {}
        print(f"\n  slide at true {t} um/px ({len(jobs)} tissue points): answer should be 0.5 um/px")
        for name, sc in scores.items():
            votes = np.bincount(sc.argmax(1), minlength=len(CAND))
            mode = CAND[int(votes.argmax())]
            steps = abs(math.log(mode / TRAIN_MPP, 2 ** 0.25))
            mean_curve = sc.mean(0)
            results[t][name] = {"votes": votes.tolist(), "mode": mode, "steps_from_truth": round(steps, 2),
                                "mean_curve": mean_curve.round(3).tolist()}
            ok = "OK" if steps <= 1.01 else "FAIL"
            print(f"    {name:7s} votes " + " ".join(f"{v:4d}" for v in votes) + f"  mode {mode:.3f}  [{ok}]")
            print("            curve " + " ".join(f"{v:4.1f}" for v in mean_curve))
    return results


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="skip training: evaluate + check the saved model")
    ap.add_argument("--feature-stats", action="store_true",
                    help="only (re)record the saved model's training feature statistics in its cards")
    ap.add_argument("--assets", type=Path, default=ASSETS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seeds", type=int, default=60, help="number of phantom seeds to train on")
    ap.add_argument("--per-class", type=int, default=25, help="patches per class per seed")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--scale-jitter", type=float, default=0.05, help="+- log scale jitter of training patches")
    ap.add_argument("--eval-per-class", type=int, default=15, help="per class per held-out seed, per scale")
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--true-mpp", type=float, nargs="*", default=[0.5, 0.25, 1.0])
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--report", type=Path, default=None, help="write evaluation + check results as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    held_out = [9001, 9002, 9003, 9004]
    t0 = time.time()
    stats_seeds = [1000 + args.seed * 10_000 + i for i in range(min(args.train_seeds, 20))]
    if args.feature_stats:
        record_feature_stats(load(args.assets), args.assets, stats_seeds, args.per_class, args.workers)
        return 0
    if not args.check:
        seeds = [1000 + args.seed * 10_000 + i for i in range(args.train_seeds)]
        print(f"rendering {len(seeds)} seeds x {args.per_class} patches/class at {TRAIN_MPP} um/px ...", flush=True)
        x, y = make_dataset(seeds, args.per_class, TRAIN_MPP, args.scale_jitter, True, args.workers)
        print(f"  {len(y)} patches, per class {np.bincount(y, minlength=5).tolist()} ({time.time() - t0:.0f} s)")
        print(f"training SmallCNN for {args.epochs} epochs ...", flush=True)
        model = train(x, y, args.epochs, args.seed)
        del x
        export(model, args.assets)
        record_feature_stats(model.eval(), args.assets, stats_seeds, args.per_class, args.workers)
        print(f"  saved to {args.assets} ({time.time() - t0:.0f} s)")
    model = load(args.assets)
    table = accuracy_table(model, held_out, args.eval_per_class, args.workers)
    check = scale_check(model, held_out, args.points, args.true_mpp, args.workers)
    print(f"\ndone in {time.time() - t0:.0f} s")
    if args.report:
        args.report.write_text(json.dumps({"table": {str(k): v for k, v in table.items()},
                                           "check": {str(k): v for k, v in check.items()}}, indent=2))
    fails = [t for t, r in check.items() if r["bias"]["steps_from_truth"] > 1.01]
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
