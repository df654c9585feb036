"""Input preprocessing of the SHELL H&E segmenter (PyPI lavlab-shell==0.9.1, MIT), reimplemented
without lavlab-shell, MONAI or macenko-pca.  numpy only, except the connected-component clean-up
inside ``detect_background`` which uses scipy.ndimage (scipy comes with scikit-image).

What the package does (shell/infer_wsi.py, shell/transforms.py, shell/inference.py, v0.9.1):
 1. Resample the RGB slide to TARGET_MPP = 1.0 um/px (pyvips ``resize``; lanczos3 kernel).
 2. On a thumbnail of that image whose long side is <= 2048 px (the whole image when smaller):
    ``detect_background`` (bright + unsaturated + low local entropy, with a fallback rule and
    small-component clean-up) -> background mask; ``estimate_stain_params``:
      * Io  = mean RGB of background pixels (excluding pure 255 white), clipped to [200, 255]
              (240 if < 100 background pixels)
      * W   = Macenko-PCA stain matrix (macenko_pca.rgb_separate_stains_macenko_pca, a Rust port of
              HistomicsTK: SDA transform with I_0 = Io, SVD of the SDA pixels (background masked
              out), keep projections with magnitude > 16, angle percentiles 1% / 99%, third column
              = cross product); H and E columns picked by |dot| with the HistomicsTK references
              hematoxylin (0.65, 0.70, 0.29) and eosin (0.07, 0.99, 0.11)
      * OD  = -log10(clip(rgb, 1, Io) / Io) per channel;  E = OD @ pinv(W)[e], H = OD @ pinv(W)[h]
      * 1st / 99th percentiles of E, H and mean-OD over ALL thumbnail pixels (background included)
 3. For every 2048x2048 tile (at 1.0 um/px): EHO image, uint8 (H, W, 3), channels
    [Eosin, Hematoxylin, mean OD], each ``clip((v - p1) / (p99 - p1 + 1e-8), 0, 1) * 255``
    truncated to uint8 (numpy float -> uint8 assignment), using the SLIDE-level parameters.
 4. shell.inference.run_inference: float32 CHW, then MONAI
    ``ScaleIntensityd(minv=0, maxv=1, channel_wise=True)``: per tile and per channel min-max
    scaling to [0, 1] (a constant channel becomes 0); reflect-pad to a multiple of 64; the ONNX
    model (input "input" (N, 3, H, W) float32) runs on the whole 2048 tile (sliding window with
    overlap 0.5 + gaussian blending only when the tile is not exactly the ROI size).
 5. Output "logits" (N, 3, H, W): **sigmoid** (not softmax) per channel;
    ch0 = "inner", ch1 = "outer", ch2 = background;  inner = p0 > 0.5 & p0 > p2,
    outer = p1 > 0.5 & p1 > p2;  simple label map: 0 none, 2 outer, 1 inner (inner wins).
    The WSI pipeline then runs shell.post_process (tissue restriction, urethra detection, hole
    filling, surround filters, nuclei from the H channel...) -> labels 0..8.

``preprocess(batch)`` below = steps 2-4 for a batch of RGB patches already at 1.0 um/px.
By default the stain parameters are estimated from the batch itself (all patches pooled, as one
"thumbnail"); to match a slide run exactly, compute ``estimate_stain_params`` once on the slide's
<= 2048 px thumbnail (with ``detect_background``) and pass it in.
"""
from __future__ import annotations

import numpy as np

TARGET_MPP = 1.0
TILE_SIZE = 2048
PAD_MULTIPLE = 64
CHANNELS = ("eosin", "hematoxylin", "optical_density")
OUTPUT_CHANNELS = ("inner", "outer", "background")   # sigmoid each; see module docstring
STAIN_REF = {"hematoxylin": (0.65, 0.70, 0.29), "eosin": (0.07, 0.99, 0.11)}

# detect_background constants (shell.transforms)
WHITE_BRIGHTNESS_THRESHOLD = 0.82
WHITE_SATURATION_MAX = 0.25
ENTROPY_WINDOW = 9
ENTROPY_THRESHOLD = 2.4
MIN_LUMEN_AREA = 128


# ----------------------------------------------------------------------------- background
def _box_mean_nearest(a: np.ndarray, size: int) -> np.ndarray:
    """scipy.ndimage.uniform_filter(a, size, mode='nearest') for odd size, via cumulative sums."""
    r = size // 2
    p = np.pad(a.astype(np.float64), r, mode="edge")
    c = np.cumsum(np.cumsum(p, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = a.shape
    s = c[size:size + h, size:size + w] - c[:h, size:size + w] - c[size:size + h, :w] + c[:h, :w]
    return (s / (size * size)).astype(np.float32)


def detect_background(rgb: np.ndarray) -> np.ndarray:
    """Boolean background mask of an (H, W, 3) uint8 RGB image (True = background).
    Same rule as shell.transforms.detect_background (defaults)."""
    from scipy import ndimage as ndi

    cmax = rgb[..., :3].max(2)
    cmin = rgb[..., :3].min(2)
    val = cmax.astype(np.float32) / 255.0
    diff = cmax.astype(np.float32) - cmin.astype(np.float32)
    sat = np.zeros_like(val)
    nz = cmax > 0
    sat[nz] = diff[nz] / cmax[nz].astype(np.float32)
    gray_q = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8) >> 4
    ent = np.zeros(gray_q.shape, np.float32)
    for b in range(16):
        p = _box_mean_nearest((gray_q == b).astype(np.float32), ENTROPY_WINDOW)
        ent -= p * np.log2(np.clip(p, 1e-6, 1.0))
    m_ent = (val > WHITE_BRIGHTNESS_THRESHOLD) & (sat < WHITE_SATURATION_MAX) & (ent < ENTROPY_THRESHOLD)
    m_base = (val > 0.83) & (sat < 0.12)
    fe, fb = float(m_ent.mean()), float(m_base.mean())
    if fe < 0.01 or fe > 0.90 or fe > fb * 1.8 + 1e-6:
        white = m_base
    else:
        white = m_ent | (m_base & (val > 0.94))
    # skimage remove_small_objects(max_size=256) / remove_small_holes(max_size=256), connectivity 1
    lab, n = ndi.label(white)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes > 256
        keep[0] = False
        white = keep[lab]
    lab, n = ndi.label(~white)
    if n:
        sizes = np.bincount(lab.ravel())
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        small = sizes <= 256
        small[0] = False
        small[border] = False          # holes touching the border are not holes
        white = white | small[lab]
    lab, n = ndi.label(white)
    if not n:
        return np.zeros(white.shape, bool)
    sizes = np.bincount(lab.ravel())
    keep = sizes >= MIN_LUMEN_AREA
    keep[0] = False
    return keep[lab]


# ----------------------------------------------------------------------------- Macenko PCA
def _normalize_cols(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=0)
    return m / np.where(n == 0, 1, n)


def macenko_stain_matrix(rgb: np.ndarray, bg_int: float = 256.0, mask_out: np.ndarray | None = None,
                         minimum_magnitude: float = 16.0, min_angle_percentile: float = 0.01,
                         max_angle_percentile: float = 0.99) -> np.ndarray:
    """HistomicsTK-style rgb_separate_stains_macenko_pca -> (3, 3) matrix, unit columns."""
    # macenko-pca 1.0.4 (Rust) clamps to [1e-10, I_0] (HistomicsTK would give inf for 0 and drop it)
    im = np.clip(rgb[..., :3].astype(np.float64), 1e-10, bg_int)
    sda = -np.log(im / bg_int) * 255.0 / np.log(bg_int)
    m = sda.reshape(-1, 3)
    if mask_out is not None:
        m = m[~np.asarray(mask_out, bool).reshape(-1)]
    m = m[np.isfinite(m).all(1)].T                      # (3, N)
    u = np.linalg.svd(m, full_matrices=False)[0][:, :2]
    proj = u.T @ m
    proj = proj[:, np.sqrt((proj ** 2).sum(0)) > minimum_magnitude]
    pn = _normalize_cols(proj)
    angles = (1 - pn[1]) * np.sign(pn[0])

    def pick(pct):
        i = int(pct * angles.size + 0.5)
        return proj[:, np.argpartition(angles, i)[i]]

    stains = _normalize_cols(u @ np.stack([pick(min_angle_percentile), pick(max_angle_percentile)], 1))
    third = np.cross(stains[:, 0], stains[:, 1])
    return np.concatenate([stains, _normalize_cols(third[:, None])], 1)


def _find_stain_index(ref, w) -> int:
    r = np.asarray(ref, np.float64)
    return int(np.argmax(np.abs((r / np.linalg.norm(r)) @ w)))


def _background_intensity(rgb: np.ndarray, bg: np.ndarray) -> float:
    pure = (rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 255)
    sel = bg & ~pure
    if sel.sum() >= 100:
        return float(np.clip(np.mean(rgb[sel], dtype=np.float64), 200, 255))
    if bg.sum() >= 100:
        return float(np.clip(np.mean(rgb[bg], dtype=np.float64), 200, 255))
    return 240.0


def _od(rgb: np.ndarray, io: float) -> np.ndarray:
    io = np.float32(io)
    od = np.clip(rgb[..., :3].astype(np.float32), 1.0, io) / io
    return -np.log10(od)


def estimate_stain_params(rgb: np.ndarray, bg_mask: np.ndarray | None = None,
                          stain_matrix: np.ndarray | None = None) -> dict:
    """Slide-level parameters (shell.transforms.estimate_stain_params). rgb: (H, W, 3) uint8.
    stain_matrix: optionally a precomputed (3, 3) Macenko matrix (e.g. from macenko_pca)."""
    if bg_mask is None:
        bg_mask = detect_background(rgb)
    io = _background_intensity(rgb, bg_mask)
    w = stain_matrix if stain_matrix is not None else macenko_stain_matrix(rgb, io, mask_out=bg_mask)
    h_idx = _find_stain_index(STAIN_REF["hematoxylin"], w)
    e_idx = _find_stain_index(STAIN_REF["eosin"], w)
    if h_idx == e_idx or h_idx == 2 or e_idx == 2:
        h_idx, e_idx = 0, 1
    winv = np.linalg.pinv(w).astype(np.float32)
    od = _od(rgb, io)
    e = od @ winv[e_idx]
    h = od @ winv[h_idx]
    e_lo, e_hi = float(np.percentile(e, 1)), float(np.percentile(e, 99))
    h_lo, h_hi = float(np.percentile(h, 1)), float(np.percentile(h, 99))
    if e_hi <= e_lo + 1e-8:
        e_lo, e_hi = 0.0, 1.0
    if h_hi <= h_lo + 1e-8:
        h_lo, h_hi = 0.0, 1.0
    odm = (od[..., 0] + od[..., 1] + od[..., 2]) / np.float32(3.0)
    return {"Io": io, "w_est": np.asarray(w), "e_idx": e_idx, "h_idx": h_idx,
            "e_lo": e_lo, "e_hi": e_hi, "h_lo": h_lo, "h_hi": h_hi,
            "od_lo": float(np.percentile(odm, 1)), "od_hi": float(np.percentile(odm, 99))}


def apply_eho(rgb: np.ndarray, p: dict) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 EHO [E, H, OD] (shell.transforms.apply_eho_chunked)."""
    od = _od(rgb, p["Io"])
    winv = np.linalg.pinv(p["w_est"]).astype(np.float32)
    out = np.empty(rgb.shape[:2] + (3,), np.uint8)
    chans = (od @ winv[p["e_idx"]], od @ winv[p["h_idx"]],
             (od[..., 0] + od[..., 1] + od[..., 2]) * np.float32(1.0 / 3.0))
    for c, (v, lo, hi) in enumerate(zip(chans, ("e_lo", "h_lo", "od_lo"), ("e_hi", "h_hi", "od_hi"))):
        x = (v - np.float32(p[lo])) / np.float32(p[hi] - p[lo] + 1e-8)
        out[..., c] = np.clip(x, 0, 1) * 255          # truncation, as the package
    return out


def scale_intensity_channelwise(chw: np.ndarray) -> np.ndarray:
    """MONAI ScaleIntensity(minv=0, maxv=1, channel_wise=True) on one (C, H, W) image."""
    x = chw.astype(np.float32)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = x[c].min(), x[c].max()
        out[c] = 0.0 if hi == lo else (x[c] - lo) / (hi - lo)
    return out


def preprocess(batch_uint8_nhwc: np.ndarray, stain_params: dict | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB at 1.0 um/px -> (N, 3, H, W) float32 model input.

    stain_params: from estimate_stain_params (slide level); None -> estimated from this batch
    (patches pooled side by side, background mask per patch).
    H and W should be multiples of 64 (the package reflect-pads otherwise; see pad_to_multiple)."""
    b = np.asarray(batch_uint8_nhwc)
    if b.ndim == 3:
        b = b[None]
    assert b.dtype == np.uint8 and b.shape[-1] >= 3
    b = b[..., :3]
    if stain_params is None:
        masks = np.concatenate([detect_background(im) for im in b], 1)
        stain_params = estimate_stain_params(np.concatenate(list(b), 1), bg_mask=masks)
    return np.stack([scale_intensity_channelwise(apply_eho(im, stain_params).transpose(2, 0, 1))
                     for im in b]).astype(np.float32)


def pad_to_multiple(nchw: np.ndarray, multiple: int = PAD_MULTIPLE):
    """Reflect padding (centred) to a multiple of 64, as shell.inference; returns (x, (t, b, l, r))."""
    h, w = nchw.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        nchw = np.pad(nchw, ((0, 0), (0, 0), pads[:2], pads[2:]), mode="reflect")
    return nchw, pads


def postprocess_logits(logits: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) logits -> (N, H, W) uint8 simple label map (shell.inference.run_inference):
    sigmoid; inner = p0 > .5 & p0 > p2 -> 1; outer = p1 > .5 & p1 > p2 -> 2; inner wins; else 0."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
    inner = (p[:, 0] > 0.5) & (p[:, 0] > p[:, 2])
    outer = (p[:, 1] > 0.5) & (p[:, 1] > p[:, 2])
    lab = np.zeros(inner.shape, np.uint8)
    lab[outer] = 2
    lab[inner] = 1
    return lab
