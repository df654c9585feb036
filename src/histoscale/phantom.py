"""Procedural H&E-like tissue, specified in microns: a phantom slide whose scale is known exactly.

Five tissue classes mirror the paper's stomach-wall classes (``CLASS_NAMES``):

* ``AT``  loose fibrous stroma: wavy pale-pink fibres, sparse elongated fibroblast nuclei;
* ``BG``  glass: near-white with faint noise;
* ``LP``  lamina-propria-like: dense ~7 um round dark lymphocyte-like nuclei in a pink matrix;
* ``MM``  smooth muscle: parallel bundles of spindle cells, ~15 x 3 um nuclei, eosinophilic bands;
* ``TUM`` glands: rings of large (10-14 um) pleomorphic nuclei around pale lumens.

Every size (nucleus, spacing, fibre period, gland, region) is physical, so a classifier trained at one um/px
sees different-looking tissue at another, as with real slides. Class regions are a warped Voronoi partition
(~350 um cells). Colour comes from a Beer-Lambert stain model: per-pixel hematoxylin and eosin optical
densities times per-seed stain vectors.

Rendering is a pure function of the absolute position in microns: every pixel is evaluated at its centre from
hashes of jittered-grid cells, so any window, tiling or order gives the same pixels (seamless tiles), and every
level of a pyramid can be rendered directly at its own um/px. Edges are soft (ramp ~ max(0.4 um, 1 px)) and
fine texture is attenuated when it falls below a pixel, so direct rendering is close to rendering finer and
shrinking; coarser than ``_DIRECT_MAX_MPP`` the renderer supersamples.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from histoscale._files import atomic_path
from histoscale.errors import ConfigError
from histoscale.slide.write import write_slide

__all__ = [
    "CLASS_NAMES",
    "PhantomSpec",
    "PhantomInfo",
    "render_region",
    "label_map",
    "classes_at",
    "write_phantom",
    "read_phantom_info",
]

CLASS_NAMES: tuple[str, ...] = ("AT", "BG", "LP", "MM", "TUM")
AT, BG, LP, MM, TUM = range(5)

_F = np.float32
_LATTICE_UM = 4.0  # spacing of the region-weight lattice (soft class boundaries ~ this wide)
_DIRECT_MAX_MPP = 1.0  # coarser than this, supersample and shrink
_EDGE_PHYS_UM = 0.4  # physical softness of every edge (optics)
_EDGE_MARGIN_UM = 0.6  # nuclei keep this far from their cell border (half the widest edge ramp)


# ----------------------------------------------------------------------------------------------------------
# specification
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomSpec:
    """A phantom tissue section: its extent in microns and the seed that fixes its layout and stain."""

    width_um: float = 4000.0
    height_um: float = 4000.0
    seed: int = 0
    region_um: float = 350.0
    # relative frequency of the classes' regions (AT, BG, LP, MM, TUM)
    class_freq: tuple[float, ...] = (0.22, 0.12, 0.22, 0.22, 0.22)
    stain_jitter: float = 1.0  # 0: the same stain for every seed


@dataclass(frozen=True)
class PhantomInfo:
    """What :func:`write_phantom` wrote, and the truth to check a scale estimate against."""

    slide_path: Path
    labels_path: Path
    json_path: Path
    mpp: float
    size_px_wh: tuple[int, int]
    seed: int
    fmt: str
    labels_mpp: float
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)

    @property
    def spec(self) -> PhantomSpec:
        w, h = self.size_px_wh
        return PhantomSpec(width_um=w * self.mpp, height_um=h * self.mpp, seed=self.seed)


# ----------------------------------------------------------------------------------------------------------
# hashing and noise
# ----------------------------------------------------------------------------------------------------------
_PRIMES = (0x8DA6B343, 0xD8163841, 0xCB1AB31F, 0x165667B1, 0x27D4EB2F)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _hash(seed: int, salt: int, *ints) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = np.asarray(np.uint32(((seed * 0x9E3779B1) ^ (salt * 0x85EBCA77) ^ 0x5BD1E995) & 0xFFFFFFFF))
        h = _mix(h)
        for k, a in enumerate(ints):
            a = np.asarray(a).astype(np.int64).astype(np.uint32)
            h = _mix(h ^ (a * np.uint32(_PRIMES[k % len(_PRIMES)])) + np.uint32(k))
    return h


def _unif(seed: int, salt: int, *ints) -> np.ndarray:
    """Uniform [0, 1) float32 from a hash of integers (broadcast)."""
    return (_hash(seed, salt, *ints) >> np.uint32(8)).astype(_F) * _F(1.0 / (1 << 24))


def _lerp_axis(t: np.ndarray, lam: float):
    g = t / lam
    i = np.floor(g)
    f = g - i
    s = (f * f * (3.0 - 2.0 * f)).astype(_F)
    return i.astype(np.int64), s


def _vnoise(xs: np.ndarray, ys: np.ndarray, lam: float, seed: int, salt: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] of wavelength ``lam`` um on the separable grid ys x xs (um)."""
    ix, sx = _lerp_axis(xs, lam)
    iy, sy = _lerp_axis(ys, lam)
    ix0, iy0 = int(ix.min()), int(iy.min())
    nx, ny = int(ix.max()) - ix0 + 2, int(iy.max()) - iy0 + 2
    lat = _unif(seed, salt, np.arange(ix0, ix0 + nx)[None, :], np.arange(iy0, iy0 + ny)[:, None]) * 2 - 1
    rx = ix - ix0
    lx = lat[:, rx] * (1 - sx) + lat[:, rx + 1] * sx
    ry = iy - iy0
    return lx[ry] * (1 - sy)[:, None] + lx[ry + 1] * sy[:, None]


def _aa(lam: float, mpp: float) -> float:
    """Attenuation of texture of wavelength ``lam`` seen at ``mpp`` (what area averaging would leave)."""
    return float(min(1.0, lam / (1.5 * mpp)))


# ----------------------------------------------------------------------------------------------------------
# stain and regions
# ----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _stain(seed: int, jitter: float):
    rng = np.random.default_rng([seed, 7])
    h = np.array([0.65, 0.70, 0.29]) + jitter * rng.uniform(-0.06, 0.06, 3)
    e = np.array([0.07, 0.99, 0.11]) + jitter * rng.uniform(-0.05, 0.05, 3) + jitter * np.array(
        [rng.uniform(0, 0.12), 0, rng.uniform(0, 0.2)]
    )
    h = np.clip(h, 0.02, None)
    e = np.clip(e, 0.02, None)
    h /= np.linalg.norm(h)
    e /= np.linalg.norm(e)
    h *= 1.0 + jitter * rng.uniform(-0.2, 0.2)
    e *= 1.0 + jitter * rng.uniform(-0.25, 0.25)
    i0 = 246.0 - jitter * rng.uniform(0, 10, 3)
    return h.astype(_F), e.astype(_F), i0.astype(_F)


def _region_params(spec: PhantomSpec, ci: np.ndarray, cj: np.ndarray):
    """Seed position (um), class, orientation and density of the Voronoi regions of cells (ci, cj)."""
    s, r = spec.seed, spec.region_um
    sx = (ci + 0.1 + 0.8 * _unif(s, 11, ci, cj)) * r
    sy = (cj + 0.1 + 0.8 * _unif(s, 12, ci, cj)) * r
    cum = np.cumsum(np.asarray(spec.class_freq, dtype=np.float64))
    cls = np.searchsorted(cum / cum[-1], _unif(s, 13, ci, cj), side="right").clip(0, len(CLASS_NAMES) - 1)
    return sx, sy, cls


def _region_of(spec: PhantomSpec, xs: np.ndarray, ys: np.ndarray):
    """Region cell (ci, cj) and class at the points ys x xs (separable grid, um): warped jittered Voronoi."""
    r = spec.region_um
    wx = 0.22 * r * _vnoise(xs, ys, 0.6 * r, spec.seed, 21) + 0.06 * r * _vnoise(xs, ys, 0.15 * r, spec.seed, 23)
    wy = 0.22 * r * _vnoise(xs, ys, 0.6 * r, spec.seed, 22) + 0.06 * r * _vnoise(xs, ys, 0.15 * r, spec.seed, 24)
    px = xs[None, :] + wx
    py = ys[:, None] + wy
    bi = np.floor(px / r).astype(np.int64)
    bj = np.floor(py / r).astype(np.int64)
    # the region seeds of every cell in reach, as small tables
    i0, j0 = int(bi.min()) - 1, int(bj.min()) - 1
    ni, nj = int(bi.max()) + 2 - i0, int(bj.max()) + 2 - j0
    gi = np.arange(i0, i0 + ni)[None, :]
    gj = np.arange(j0, j0 + nj)[:, None]
    sx, sy, cls = (np.broadcast_to(t, (nj, ni)).ravel() for t in _region_params(spec, gi, gj))
    base = (bj - j0) * ni + (bi - i0)
    best = np.full(px.shape, np.inf)
    bidx = np.zeros(px.shape, np.int64)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            idx = base + (dj * ni + di)
            d = (px - sx[idx]) ** 2 + (py - sy[idx]) ** 2
            m = d < best
            best = np.where(m, d, best)
            bidx = np.where(m, idx, bidx)
    return bidx % ni + i0, bidx // ni + j0, cls[bidx]


def classes_at(spec: PhantomSpec, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Class index at the points ``y_um x x_um`` (1-D arrays of microns; a separable grid), shape (ny, nx)."""
    return _region_of(spec, np.asarray(x_um, np.float64), np.asarray(y_um, np.float64))[2].astype(np.uint8)


def label_map(spec: PhantomSpec, mpp: float) -> np.ndarray:
    """Class index per pixel of the whole phantom at ``mpp`` um/px (pixel centres), uint8 (H, W)."""
    w = max(1, int(math.ceil(spec.width_um / mpp - 1e-9)))
    h = max(1, int(math.ceil(spec.height_um / mpp - 1e-9)))
    out = np.empty((h, w), np.uint8)
    xs = (np.arange(w) + 0.5) * mpp
    for y0 in range(0, h, 512):
        ys = (np.arange(y0, min(h, y0 + 512)) + 0.5) * mpp
        out[y0 : y0 + len(ys)] = classes_at(spec, xs, ys)
    return out


# ----------------------------------------------------------------------------------------------------------
# texture primitives
# ----------------------------------------------------------------------------------------------------------
def _nuclei(
    u,
    v,
    *,
    cu: float,
    cv: float,
    seed: int,
    salt: int,
    p: float,
    a: tuple[float, float],
    b: tuple[float, float],
    inten: tuple[float, float],
    edge: float,
    rot: float = 0.0,
    stagger: bool = False,
    frame: int = 0,
):
    """One layer of elliptical nuclei on a jittered (cu x cv um) grid in the frame (u, v); at most one per cell.

    Returns (value in [0, inten], squared normalised radius d2). Each nucleus fits inside its cell, so one cell
    per pixel is enough: the pattern is exact and seamless.
    """
    iv = np.floor(v / cv)
    if stagger:
        u = u + (iv % 2) * (0.5 * cu)
    iu = np.floor(u / cu)
    lu = (u - (iu + 0.5) * cu).astype(_F)
    lv = (v - (iv + 0.5) * cv).astype(_F)
    iu0, iu1 = int(iu.min()), int(iu.max())
    iv0, iv1 = int(iv.min()), int(iv.max())
    gu = np.arange(iu0, iu1 + 1)[None, :]
    gv = np.arange(iv0, iv1 + 1)[:, None]
    r = [_unif(seed, salt * 16 + k, gu, gv, frame) for k in range(7)]
    sa = a[0] + (a[1] - a[0]) * r[1]
    sb = b[0] + (b[1] - b[0]) * r[2]
    phi = (2 * r[5] - 1) * rot
    c, s = np.cos(phi), np.sin(phi)
    ext_u = np.abs(c) * sa + np.abs(s) * sb
    ext_v = np.abs(s) * sa + np.abs(c) * sb
    offu = (2 * r[3] - 1) * np.maximum(0.0, 0.5 * cu - ext_u - _EDGE_MARGIN_UM)
    offv = (2 * r[4] - 1) * np.maximum(0.0, 0.5 * cv - ext_v - _EDGE_MARGIN_UM)
    amp = np.where(r[0] < p, inten[0] + (inten[1] - inten[0]) * r[6], 0.0)
    k = sb / edge
    nu = iu1 - iu0 + 1
    idx = ((iv - iv0) * nu + (iu - iu0)).astype(np.intp)
    tabs = [t.astype(_F).ravel() for t in (offu, offv, c / sa, s / sa, -s / sb, c / sb, k, amp)]
    g = [t.take(idx) for t in tabs]
    du = lu - g[0]
    dv = lv - g[1]
    pp = du * g[2] + dv * g[3]
    qq = du * g[4] + dv * g[5]
    d2 = pp * pp + qq * qq
    val = np.clip(0.5 + (1.0 - d2) * (0.5 * g[6]), 0.0, 1.0) * g[7]
    return val, d2


def _bands(s, period: float, half_width: tuple[float, float], edge: float, seed: int, salt: int, frame: int):
    """Parallel bands across coordinate ``s`` (um), one per period, each with its own width and strength."""
    k = np.floor(s / period)
    d = np.abs(s - (k + 0.5) * period).astype(_F)
    k0, k1 = int(k.min()), int(k.max())
    kk = np.arange(k0, k1 + 1)
    hw = (half_width[0] + (half_width[1] - half_width[0]) * _unif(seed, salt, kk, frame)).astype(_F)
    st = (0.35 + 0.65 * _unif(seed, salt + 1, kk, frame)).astype(_F)
    idx = (k - k0).astype(np.intp)
    return np.clip(0.5 + (hw.take(idx) - d) / edge, 0.0, 1.0) * st.take(idx)


# ----------------------------------------------------------------------------------------------------------
# class textures: each returns (hematoxylin OD, eosin OD) on the grid ys x xs (um)
# ----------------------------------------------------------------------------------------------------------
def _frame(xs, ys, ox, oy, theta):
    c, s = math.cos(theta), math.sin(theta)
    x = (xs - ox).astype(_F)
    y = (ys - oy).astype(_F)
    u = (x * _F(c))[None, :] + (y * _F(s))[:, None]
    v = (x * _F(-s))[None, :] + (y * _F(c))[:, None]
    return u, v


def _tex_bg(xs, ys, mpp, seed, reg):
    n = _vnoise(xs, ys, 40.0, seed, 101)
    e = 0.025 + 0.012 * n
    h = 0.004 + 0.004 * _vnoise(xs, ys, 9.0, seed, 102) * _aa(9.0, mpp)
    return h.astype(_F), e.astype(_F)


def _tex_at(xs, ys, mpp, seed, reg, edge):
    ox, oy, theta, fid = reg
    u, v = _frame(xs, ys, ox, oy, theta)
    warp = 7.0 * _vnoise(xs, ys, 30.0, seed, 201) + 2.0 * _vnoise(xs, ys, 9.0, seed, 202)
    vw = v + warp
    period = 8.0 + 5.0 * float(_unif(seed, 203, fid))
    fib = _bands(vw, period, (0.7, 1.9), edge, seed, 204, fid) * _aa(period, mpp)
    brk = np.clip(1.6 * _vnoise(xs, ys, 14.0, seed, 205) + 0.55, 0.0, 1.0)
    fib = fib * brk
    nuc, _ = _nuclei(u, vw, cu=30.0, cv=period * 2.0, seed=seed, salt=206, p=0.35, a=(4.0, 6.5), b=(1.1, 1.7),
                     inten=(0.8, 1.3), edge=edge, rot=0.15, stagger=True, frame=fid)
    e = 0.12 + 0.45 * fib + 0.04 * _vnoise(xs, ys, 20.0, seed, 207)
    h = 0.02 * fib + nuc
    e = e * (1 - 0.4 * np.minimum(nuc, 1.0))
    return h, e


def _tex_lp(xs, ys, mpp, seed, reg, edge):
    ox, oy, theta, fid = reg
    nuc = None
    # three layers on grids turned against each other: dense, irregular, no visible lattice
    for k, (cell, p, ang) in enumerate(((8.6, 0.55, 0.0), (9.8, 0.5, 0.52), (11.2, 0.45, 1.13))):
        u, v = _frame(xs, ys, ox + 3.1 * k, oy - 4.7 * k, theta + ang)
        n, _ = _nuclei(u, v, cu=cell, cv=cell, seed=seed, salt=301 + k, p=p, a=(2.9, 3.9), b=(2.6, 3.5),
                       inten=(1.1, 1.7), edge=edge, rot=1.5, frame=fid)
        nuc = n if nuc is None else np.maximum(nuc, n)
    # sparse small regular glands (normal mucosa between the lymphocytes): half the tumour glands' sizes
    lumen, epi, outer, gnuc = _glands(xs, ys, mpp, seed, 310, edge, cell=34.0, k=0.5, presence=0.45,
                                      nuc_a=(2.2, 3.0), nuc_b=(1.9, 2.5), nuc_amp=(1.0, 1.4), pleo=0.3)
    nuc = nuc * (1 - outer)
    chrom = 0.8 + 0.35 * _vnoise(xs, ys, 1.2, seed, 304) * _aa(1.2, mpp)
    m = 0.28 + 0.08 * _vnoise(xs, ys, 7.0, seed, 305) * _aa(7.0, mpp) + 0.05 * _vnoise(xs, ys, 40.0, seed, 306)
    e = m * (1 - 0.5 * np.minimum(nuc, 1.0)) * (1 - outer) + epi * 0.3 + lumen * 0.04
    e = e * (1 - 0.45 * np.minimum(gnuc, 1.0))
    h = 0.05 * (1 - outer) + (nuc + gnuc) * chrom + epi * 0.13
    return h, e


def _tex_mm(xs, ys, mpp, seed, reg, edge):
    ox, oy, theta, fid = reg
    u, v = _frame(xs, ys, ox, oy, theta)
    vw = v + 3.0 * _vnoise(xs, ys, 25.0, seed, 401) + 9.0 * _vnoise(xs, ys, 90.0, seed, 402)
    pb = 55.0
    kb = np.floor(vw / pb)
    db = np.abs(vw - (kb + 0.5) * pb)
    gap = np.clip(0.5 + (db - (0.5 * pb - 3.5)) / max(edge, 1.5), 0.0, 1.0)
    cyto = 0.62 + 0.16 * np.cos(vw * _F(2 * math.pi / 5.5)) * _aa(5.5, mpp)
    cyto = cyto + 0.06 * _vnoise(xs, ys, 4.0, seed, 403) * _aa(4.0, mpp)
    nuc, _ = _nuclei(u, vw, cu=23.0, cv=6.2, seed=seed, salt=404, p=0.5, a=(6.0, 8.8), b=(1.25, 1.75),
                     inten=(0.9, 1.35), edge=edge, rot=0.07, stagger=True, frame=fid)
    e = cyto * (1 - 0.8 * gap) * (1 - 0.4 * np.minimum(nuc, 1.0))
    h = 0.03 + nuc * (1 - gap)
    return h, e


_NSLOT = 28


def _glands(xs, ys, mpp, seed, salt, edge, *, cell, k, presence, nuc_a, nuc_b, nuc_amp, pleo):
    """Glands on a staggered jittered grid of ``cell`` um: pale lumen, epithelium ring, a ring of nuclei.

    ``k`` scales every size (1: tumour glands, lumen radius 6-18 um, nuclei 9-14 um; 0.5: small normal glands).
    Returns (lumen, epithelium, inside-gland, nuclei) fields, each in [0, ~1.5].
    """
    x = xs[None, :].astype(np.float64) + 1000.0
    y = ys[:, None].astype(np.float64) + 1000.0
    gj = np.floor(y / cell)
    x = x + (gj % 2) * (0.5 * cell)
    gi = np.floor(x / cell)
    lx = (x - (gi + 0.5) * cell).astype(_F)
    ly = (y - (gj + 0.5) * cell).astype(_F)
    i0, i1, j0, j1 = int(gi.min()), int(gi.max()), int(gj.min()), int(gj.max())
    ni = i1 - i0 + 1
    ga, gb = np.arange(i0, i1 + 1)[None, :], np.arange(j0, j1 + 1)[:, None]
    ru = [_unif(seed, salt + q, ga, gb) for q in range(8)]
    elong = 1.0 + 0.4 * ru[5] * pleo
    alpha = np.pi * ru[6]
    t = k * (10.0 + 3.5 * ru[1])  # epithelium thickness
    rl = np.minimum(k * (6.0 + 12.0 * ru[0]), (0.5 * cell - 2.5) / elong - t)
    rl = np.where(ru[7] < presence, rl, -4.0 * cell)  # absent gland: nothing in this cell
    room = np.maximum(0.0, 0.5 * cell - (rl + t) * elong - 2.0)
    offx = (2 * ru[2] - 1) * room
    offy = (2 * ru[3] - 1) * room
    nslot = np.clip(np.round(2 * np.pi * (rl + 0.5 * t) / (10.5 * k)), 6, _NSLOT).astype(np.int64)
    gid = ((gj - j0) * ni + (gi - i0)).astype(np.intp)

    def g(tab):
        return np.asarray(tab, _F).ravel().take(gid)

    dx0 = lx - g(offx)
    dy0 = ly - g(offy)
    ca, sa = g(np.cos(alpha) / elong), g(np.sin(alpha) / elong)
    cb, sb = g(np.cos(alpha)), g(np.sin(alpha))
    dx = dx0 * ca + dy0 * sa  # gland frame, squeezed along its long axis
    dy = dy0 * cb - dx0 * sb
    r = np.sqrt(dx * dx + dy * dy)
    wob = 1.0 + pleo * (0.16 * _vnoise(xs, ys, 13.0 * k, seed, salt + 10) + 0.06 * _vnoise(xs, ys, 5.0 * k, seed, salt + 11))
    rlg = g(rl) * wob
    tg = g(t) * wob
    lumen = np.clip(0.5 + (rlg - r) / edge, 0.0, 1.0)
    outer = np.clip(0.5 + (rlg + tg - r) / edge, 0.0, 1.0)
    nuc = np.zeros_like(r)
    m = outer > 0
    if m.any():
        # nuclei around the ring (only where there is a gland): slot q of n at angle (q + .5 + jitter) / n * 2 pi
        gidm = np.broadcast_to(gid, m.shape)[m]
        dxm, dym = dx[m], dy[m]
        rn = r[m] / wob[m]
        ang = np.arctan2(dym, dxm)
        ns = nslot.astype(_F).ravel().take(gidm)
        fpos = (ang * _F(1 / (2 * math.pi)) + _F(0.5)) * ns
        q = np.floor(fpos)
        q2 = np.where(fpos - q < 0.5, q - 1, q + 1)
        gg = np.arange(ni * (j1 - j0 + 1))
        gii, gjj = (gg % ni + i0)[:, None], (gg // ni + j0)[:, None]
        rq = [_unif(seed, salt + 20 + w, gii, gjj, np.arange(_NSLOT)[None, :]).ravel() for w in range(6)]
        rc_tab = ((rl + 0.5 * t).ravel()[:, None] + (rq[0].reshape(-1, _NSLOT) - 0.5) * 3.0 * k).astype(_F).ravel()
        jit_tab = ((rq[1] - 0.5) * 0.25).astype(_F)
        a_tab = (nuc_a[0] + (nuc_a[1] - nuc_a[0]) * rq[2]).astype(_F)
        b_tab = (nuc_b[0] + (nuc_b[1] - nuc_b[0]) * rq[3]).astype(_F)
        amp_tab = np.where(rq[5] < 0.93, nuc_amp[0] + (nuc_amp[1] - nuc_amp[0]) * rq[4], 0.0).astype(_F)
        val = np.zeros_like(rn)
        d2own = np.ones_like(rn)
        for qq in (q, q2):
            sidx = (gidm * _NSLOT + np.mod(qq, ns).astype(np.intp)).astype(np.intp)
            theta_q = ((qq + 0.5 + jit_tab.take(sidx)) / ns) * _F(2 * math.pi) - _F(math.pi)
            dth = ang - theta_q
            dth = dth - _F(2 * math.pi) * np.round(dth * _F(1 / (2 * math.pi)))
            bq = b_tab.take(sidx)
            du = (rn - rc_tab.take(sidx)) / a_tab.take(sidx)
            dv = (rn * dth) / bq
            d2 = du * du + dv * dv
            vq = np.clip(0.5 + (1.0 - d2) * (0.5 * bq / edge), 0.0, 1.0) * amp_tab.take(sidx)
            d2own = np.where(vq > val, d2, d2own)
            val = np.maximum(val, vq)
        vesic = 0.7 + 0.45 * pleo * np.minimum(d2own, 1.0) + 0.3 * (1 - pleo)  # pale centre, dark rim
        nuc[m] = val * outer[m] * vesic
    return lumen, outer - lumen, outer, nuc


def _tex_tum(xs, ys, mpp, seed, reg, edge):
    ox, oy, theta, fid = reg
    su, sv = _frame(xs, ys, ox, oy, theta)
    snuc, _ = _nuclei(su, sv, cu=26.0, cv=12.0, seed=seed, salt=501, p=0.3, a=(3.5, 5.5), b=(1.2, 1.8),
                      inten=(0.7, 1.1), edge=edge, rot=0.3, stagger=True, frame=fid)
    e_str = 0.42 + 0.08 * _vnoise(xs, ys, 12.0, seed, 502)
    lumen, epi, outer, val = _glands(xs, ys, mpp, seed, 510, edge, cell=64.0, k=1.0, presence=1.0,
                                     nuc_a=(4.6, 7.2), nuc_b=(3.4, 5.6), nuc_amp=(0.85, 1.65), pleo=1.0)
    chrom = 0.75 + 0.45 * _vnoise(xs, ys, 1.5, seed, 540) * _aa(1.5, mpp)
    nuc = val * chrom
    secretion = 0.05 * (1 + _vnoise(xs, ys, 6.0, seed, 541))
    e = (1 - outer) * e_str * (1 - 0.4 * np.minimum(snuc, 1.0)) + epi * 0.3 + lumen * secretion
    e = e * (1 - 0.45 * np.minimum(val, 1.0))
    h = (1 - outer) * (snuc + 0.03) + epi * 0.13 + nuc
    return h, e


_TEXTURES = {AT: _tex_at, LP: _tex_lp, MM: _tex_mm, TUM: _tex_tum}


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------
def _render_block(spec: PhantomSpec, xs: np.ndarray, ys: np.ndarray, mpp: float) -> np.ndarray:
    """RGB uint8 at the pixel centres ys x xs (um) of one block."""
    seed = spec.seed
    edge = math.sqrt(_EDGE_PHYS_UM**2 + mpp**2)
    h_w, w_w = len(ys), len(xs)
    # region lattice with one point of margin each side: weights by bilinear interpolation of one-hots
    g = _LATTICE_UM
    lx0 = math.floor(xs[0] / g) - 1
    ly0 = math.floor(ys[0] / g) - 1
    lxs = (np.arange(lx0, math.floor(xs[-1] / g) + 3)) * g
    lys = (np.arange(ly0, math.floor(ys[-1] / g) + 3)) * g
    ci, cj, cls = _region_of(spec, lxs, lys)
    rid = ci * 1_000_003 + cj
    ix, sx = _lerp_axis(xs, g)
    iy, sy = _lerp_axis(ys, g)
    rx, ry = ix - lx0, iy - ly0
    H = np.zeros((h_w, w_w), _F)
    E = np.zeros((h_w, w_w), _F)
    uniq, first = np.unique(rid, return_index=True)
    for r, f in zip(uniq, first):
        c = int(cls.ravel()[f])
        a_i, a_j = int(ci.ravel()[f]), int(cj.ravel()[f])
        onehot = (rid == r).astype(_F)
        if len(uniq) == 1:
            sl_y, sl_x, wgt = slice(0, h_w), slice(0, w_w), None
        else:
            rows = np.flatnonzero(onehot.any(axis=1))
            cols = np.flatnonzero(onehot.any(axis=0))
            # pixels whose lattice cell touches this region
            yy = np.flatnonzero((ry + 1 >= rows[0]) & (ry <= rows[-1]))
            xx = np.flatnonzero((rx + 1 >= cols[0]) & (rx <= cols[-1]))
            if len(yy) == 0 or len(xx) == 0:
                continue
            sl_y, sl_x = slice(yy[0], yy[-1] + 1), slice(xx[0], xx[-1] + 1)
            rxs, sxs = rx[sl_x], sx[sl_x]
            rys, sys_ = ry[sl_y], sy[sl_y]
            lxw = onehot[:, rxs] * (1 - sxs) + onehot[:, rxs + 1] * sxs
            wgt = lxw[rys] * (1 - sys_)[:, None] + lxw[rys + 1] * sys_[:, None]
        bx, by = xs[sl_x], ys[sl_y]
        if c == BG:
            h, e = _tex_bg(bx, by, mpp, seed, None)
        else:
            sxr, syr, _ = _region_params(spec, np.int64(a_i), np.int64(a_j))
            theta = float(_unif(seed, 14, a_i, a_j)) * math.pi
            fid = int(_hash(seed, 15, a_i, a_j)) & 0xFFFF
            h, e = _TEXTURES[c](bx, by, mpp, seed, (float(sxr), float(syr), theta, fid), edge)
            dens = 0.85 + 0.3 * float(_unif(seed, 16, a_i, a_j))
            h, e = h * dens, e * dens
        if wgt is None:
            H += h
            E += e
        else:
            H[sl_y, sl_x] += wgt * h
            E[sl_y, sl_x] += wgt * e
    # slide-wide thickness/staining variation, then Beer-Lambert colour through a per-seed lookup table indexed by
    # the quantised (H, E) optical densities; per-pixel sensor noise dithers the quantisation (a hash of the
    # absolute pixel index at this mpp, via a tiled table)
    thick = (1.0 + 0.1 * _vnoise(xs, ys, 180.0, seed, 901)) * _F(_LUT_SCALE)
    noise = _noise_table(seed)
    pix = np.floor(xs / mpp + 1e-6).astype(np.int64) & 255
    piy = np.floor(ys / mpp + 1e-6).astype(np.int64) & 255
    H *= thick
    H += noise[piy[:, None], pix[None, :]]
    E *= thick
    E += noise[((piy + 101) & 255)[:, None], ((pix + 37) & 255)[None, :]]
    np.clip(H, 0, _LUT_N - 1, out=H)
    np.clip(E, 0, _LUT_N - 1, out=E)
    idx = H.astype(np.int32)
    idx *= _LUT_N
    idx += E.astype(np.int32)
    return _lut(seed, spec.stain_jitter).take(idx, axis=0)


_LUT_N = 1024  # quantisation steps per stain
_LUT_SCALE = 256.0  # steps per unit of optical density (H, E in 0 .. 4)


@lru_cache(maxsize=16)
def _lut(seed: int, jitter: float) -> np.ndarray:
    hv, ev, i0 = _stain(seed, jitter)
    od = ((np.arange(_LUT_N) + 0.5) / _LUT_SCALE).astype(np.float32)
    out = np.empty((_LUT_N, _LUT_N, 3), np.uint8)
    for c in range(3):  # exp(-(h + e)) = exp(-h) exp(-e): an outer product per channel
        v = np.outer(i0[c] * np.exp(-od * hv[c]), np.exp(-od * ev[c])) + 0.5
        out[..., c] = np.clip(v, 0, 255)
    return out.reshape(-1, 3)


@lru_cache(maxsize=64)
def _noise_table(seed: int) -> np.ndarray:
    # in LUT steps (1/256 OD): ~1.5 grey levels of sensor noise, plus the dither of the quantisation
    return (np.random.default_rng([seed, 99]).normal(0.0, 1.6, (256, 256)) + 0.5).astype(_F)


def render_region(
    spec: PhantomSpec,
    x_um: float,
    y_um: float,
    size_px_wh: tuple[int, int],
    mpp: float,
    *,
    supersample: int | None = None,
    block: int = 512,
) -> np.ndarray:
    """Pixels (h, w, 3) uint8 of the window whose top-left corner is (x_um, y_um), at ``mpp`` um/px.

    Pixel (i, j) shows the tissue at (x_um + (j + .5) mpp, y_um + (i + .5) mpp): a pure function of position,
    so windows tile seamlessly. ``supersample`` (default: 1 up to ``_DIRECT_MAX_MPP`` um/px, then up to 4)
    renders that many times finer and shrinks by area averaging.
    """
    w, h = int(size_px_wh[0]), int(size_px_wh[1])
    if w <= 0 or h <= 0 or not mpp > 0:
        raise ConfigError(f"render_region: need a positive size and mpp, got size={size_px_wh}, mpp={mpp}")
    if supersample is None:
        supersample = int(min(4, max(1, math.ceil(mpp / _DIRECT_MAX_MPP - 1e-9))))
    if supersample > 1:
        fine = render_region(spec, x_um, y_um, (w * supersample, h * supersample), mpp / supersample,
                             supersample=1, block=block)
        f = fine.reshape(h, supersample, w, supersample, 3).astype(np.uint16).sum(axis=(1, 3))
        return ((f + (supersample * supersample) // 2) // (supersample * supersample)).astype(np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    for y0 in range(0, h, block):
        ys = y_um + (np.arange(y0, min(h, y0 + block)) + 0.5) * mpp
        for x0 in range(0, w, block):
            xs = x_um + (np.arange(x0, min(w, x0 + block)) + 0.5) * mpp
            out[y0 : y0 + len(ys), x0 : x0 + len(xs)] = _render_block(spec, xs, ys, mpp)
    return out


# ----------------------------------------------------------------------------------------------------------
# writing a slide
# ----------------------------------------------------------------------------------------------------------
def _write_palette_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal = [233, 150, 200, 245, 245, 245, 60, 40, 160, 200, 60, 90, 120, 20, 70]
    im.putpalette(pal + [0] * (768 - len(pal)))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def write_phantom(
    path: str | os.PathLike,
    *,
    mpp: float = 0.25,
    size_px_wh: tuple[int, int] = (16000, 16000),
    seed: int = 0,
    fmt: str = "svs",
    labels_mpp: float = 8.0,
    tile: int = 256,
    quality: int = 90,
    downsamples: tuple[int, ...] | None = None,
    workers: int | None = None,
) -> PhantomInfo:
    """Write a pyramidal phantom slide at ``mpp`` um/px, plus ``<stem>.labels.png`` and ``<stem>.phantom.json``.

    Each pyramid level is rendered directly at its own um/px and written streaming by
    :func:`histoscale.slidewrite.write_slide`.
    """


    if fmt not in ("svs", "tiff", "bare"):
        raise ConfigError(f"phantom format must be 'svs', 'tiff' or 'bare', got {fmt!r}")
    path = Path(path)
    w, h = int(size_px_wh[0]), int(size_px_wh[1])
    spec = PhantomSpec(width_um=w * mpp, height_um=h * mpp, seed=int(seed))

    def source(x: int, y: int, ww: int, hh: int, downsample: float) -> np.ndarray:
        m = mpp * downsample
        return render_region(spec, x * m, y * m, (ww, hh), m)

    if workers is None:  # by default, tiny slides are not worth starting processes for
        workers = min(8, os.cpu_count() or 1) if w * h > 1 << 22 else 1
    src = _PrefetchSource(spec, mpp, (w, h), int(workers)) if int(workers) > 1 else source
    try:
        write_slide(path, src, (w, h), mpp=mpp, fmt=fmt, tile=tile, quality=quality, downsamples=downsamples)
    finally:
        if isinstance(src, _PrefetchSource):
            src.close()
    stem = path.stem
    labels_path = path.with_name(stem + ".labels.png")
    json_path = path.with_name(stem + ".phantom.json")
    _write_palette_png(labels_path, label_map(spec, labels_mpp))
    info = PhantomInfo(slide_path=path, labels_path=labels_path, json_path=json_path, mpp=float(mpp),
                       size_px_wh=(w, h), seed=int(seed), fmt=fmt, labels_mpp=float(labels_mpp))
    doc = {
        "kind": "histoscale-phantom",
        "version": 1,
        "slide": path.name,
        "format": fmt,
        "mpp": float(mpp),
        "size_px_wh": [w, h],
        "size_um_wh": [w * mpp, h * mpp],
        "seed": int(seed),
        "class_names": list(CLASS_NAMES),
        "labels": labels_path.name,
        "labels_mpp": float(labels_mpp),
        "region_um": spec.region_um,
        "class_freq": list(spec.class_freq),
    }
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return info


def _render_job(spec: PhantomSpec, x_um: float, y_um: float, size_wh: tuple[int, int], mpp: float) -> np.ndarray:
    return render_region(spec, x_um, y_um, size_wh, mpp)


class _PrefetchSource:
    """A write_slide source that renders the next strips of the level in worker threads.

    write_slide pulls strips top to bottom (``source(0, y, w, h, d)``, then ``y + h`` ...); while the main process
    JPEG-encodes one strip, the workers render the following ones. Any other request is rendered on the spot, so
    the pixels never depend on the prefetching.
    """

    def __init__(self, spec: PhantomSpec, mpp: float, size_wh: tuple[int, int], workers: int):
        from concurrent.futures import ThreadPoolExecutor

        # Threads, not processes: rendering is large numpy operations that release the GIL, and threads need no
        # `if __name__ == "__main__"` guard in the caller's script (a process pool broke plain scripts).
        self.spec, self.mpp, self.size_wh, self.depth = spec, mpp, size_wh, 2 * workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="phantom")
        self.pending: dict = {}

    def _submit(self, key):
        x, y, w, h, d = key
        m = self.mpp * d
        self.pending[key] = self.pool.submit(_render_job, self.spec, x * m, y * m, (w, h), m)

    def __call__(self, x: int, y: int, w: int, h: int, d: int) -> np.ndarray:
        key = (x, y, w, h, d)
        fut = self.pending.pop(key, None)
        for k in [k for k in self.pending if k[4] != d or k[1] < y]:  # stale guesses
            self.pending.pop(k).cancel()
        if fut is None:
            self._submit(key)
            fut = self.pending.pop(key)
        lh = self.size_wh[1] // d
        for k in range(1, self.depth + 1):
            y2 = y + k * h
            if y2 >= lh:
                break
            nxt = (x, y2, w, min(h, lh - y2), d)
            if nxt not in self.pending:
                self._submit(nxt)
        return fut.result()

    def close(self) -> None:
        for f in self.pending.values():
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


def read_phantom_info(json_path: str | os.PathLike) -> PhantomInfo:
    """Read a ``<stem>.phantom.json`` written by :func:`write_phantom` back into a :class:`PhantomInfo`."""
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    return PhantomInfo(
        slide_path=json_path.with_name(doc["slide"]),
        labels_path=json_path.with_name(doc["labels"]),
        json_path=json_path,
        mpp=float(doc["mpp"]),
        size_px_wh=(int(doc["size_px_wh"][0]), int(doc["size_px_wh"][1])),
        seed=int(doc["seed"]),
        fmt=str(doc["format"]),
        labels_mpp=float(doc["labels_mpp"]),
        class_names=tuple(doc["class_names"]),
    )
