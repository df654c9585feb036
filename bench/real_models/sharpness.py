"""Is a patch that is not resampled scored higher only because it is sharper? (diagnosis for bench/real.py)

Usage (after bench/real.py, which leaves the bare k = 0 TIFFs and the searches' points in --workdir; ~2 min):
    python bench/real_models/sharpness.py [--workdir bench/.work]

At the points of each model's k = 0 and k = 6 searches on each labelled image (shrunk by 2^(k/4)), the same 224 px field at downsample 1 (the
slide's own pixels, which the search feeds untouched) is scored four ways with the default scorer (margin):
raw; round trip through histoscale's resampler (224 -> 266 -> 224 px, i.e. up by 1.19 and back, the resampling a
neighbouring grid scale goes through, at the SAME scale); a half-pixel shift (bilinear, = a 2x2 box blur); and a
Gaussian blur of sigma 0.5 px. If the raw patch wins by more than the grid's neighbouring scales differ, the
curves' spike at downsample 1 is a sharpness artefact of the patch pipeline, not the model's scale.
Writes bench/results/real_sharpness.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import histoscale  # noqa: E402
from histoscale.scoring import score_points  # noqa: E402


def variants(patch: np.ndarray) -> dict[str, np.ndarray]:
    import cv2

    up = histoscale.resample(patch, (266, 266))
    shifted = cv2.warpAffine(patch, np.float32([[1, 0, 0.5], [0, 1, 0.5]]), (224, 224), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
    return {
        "raw (downsample 1)": patch,
        "round trip 224->266->224": histoscale.resample(up, (224, 224)),
        "half-pixel shift (2x2 box)": shifted,
        "gaussian sigma 0.5 px": cv2.GaussianBlur(patch, (0, 0), 0.5),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=common.REPO / "bench" / ".work")
    ap.add_argument("--models", default="lite0-head,capricorn")
    ap.add_argument("--ks", default="0,6", help="shrink steps k of bench/real.py's versions to test")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = {}
    lines = ["# Sharpness bonus of unresampled patches", "",
             "Mean margin over the search's points, same field at downsample 1; 'step' = the mean margin "
             "difference between downsample 1 and its two grid neighbours (0.84, 1.19) in that search.", "",
             "| model | image | k | " + " | ".join(variants(np.zeros((224, 224, 3), np.uint8))) + " | raw - neighbours "
             "in the search |", "|---|---|---|---|---|---|---|---|"]
    for mname in [m.strip() for m in args.models.split(",")]:
        model = common.MODELS[mname]()
        for sname, k in [(s, int(k)) for s in common.LABELLED for k in args.ks.split(",")]:
            stem = sname.split(".")[0]
            npz = np.load(args.workdir / "real" / f"{mname}_{stem}_k{k}.npz")
            scales = npz["scales"]
            i1 = int(np.argmin(np.abs(np.log2(scales))))
            curves = npz["curves"]
            step = float(curves[:, i1].mean() - 0.5 * (curves[:, i1 - 1].mean() + curves[:, i1 + 1].mean()))
            with histoscale.open_slide(args.workdir / "real" / f"{stem}_k{k}.tif") as slide:
                raw = [slide.read_region_at((float(x), float(y)), (224, 224), downsample=1.0)
                       for x, y in npz["points_xy"]]
            scores = {}
            for name in variants(raw[0]):
                batch = np.stack([variants(p)[name] for p in raw])
                feats = model.features(batch)
                scores[name] = float(score_points(feats[None], model.W, model.b, "margin").curve.mean())
            out[f"{mname}|{sname}|k{k}"] = {"mean_margin": scores, "raw_minus_neighbours_in_search": step}
            lines.append(f"| {mname} | {stem} | {k} | " + " | ".join(f"{v:.2f}" for v in scores.values())
                         + f" | {step:+.2f} |")
            print(lines[-1], flush=True)
    results = common.REPO / "bench" / "results"
    (results / "real_sharpness.json").write_text(json.dumps(out, indent=1) + "\n")
    (results / "real_sharpness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
