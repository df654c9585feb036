"""A ruler in the tissue: the slide's um/px from the size of its nuclei, with no model and no metadata.

A metadata check that rests on one model's margins trusts that model; nuclei carry their own scale. The method:

1. Colour deconvolution (Ruifrok & Johnston 2001, :func:`skimage.color.separate_stains`) gives the haematoxylin
   optical density of each pixel, on Ruifrok's reference vectors (:data:`skimage.color.rgb_from_hed`). Scanners and
   stain protocols move the stains' colours: where the reference vectors show the nuclei no haematoxylin contrast
   (a magenta-shifted TCGA slide), the slide's own are estimated (Macenko et al. 2009, "A method for normalizing
   histology slides for quantitative analysis": the extreme angles of the tissue's optical densities in the plane
   of their two principal directions) and used where they lie near haematoxylin and eosin. (Estimated on every
   slide they read CMU-1 0.1 octave finer and cost 6 points of "within one step": bench/ruler.py, BENCHMARKS.md.)
2. A soft nuclear map: 0 at the tissue's mean haematoxylin below its Otsu threshold, 1 at twice the distance to its Otsu threshold (the
   nuclei), clipped. Clipping flattens chromatin texture inside nuclei, which would otherwise put energy at
   finer scales the finer the scan resolves it; the thresholds come from the whole slide's tissue, so the map does
   not depend on how finely the slide is sampled.
3. The scale-normalised Laplacian-of-Gaussian energy spectrum of that map (Lindeberg 1998, "Feature detection with
   automatic scale selection"): mean over pixels of ``relu(-sigma^2 LoG_sigma)^2`` for sigma from 0.5 to 16 px on
   a 1/8-octave grid (the map upsampled 2x for the finest, a 2x area-averaged pyramid for the larger). A disc of radius r answers most at
   ``sigma = r / sqrt(2)``; the spectrum of many nuclei peaks at their typical size, and moves exactly with the
   pixel size (measured: within 0.1 octave from 1x to 2.8x area shrinks of the real images).
4. The slide's spectrum is the sum of its regions' spectra; its highest interior peak, refined by a parabola in
   log sigma, is the nuclear scale in level-0 px; ``um/px = NUCLEAR_SIGMA_UM / sigma``.

``NUCLEAR_SIGMA_UM`` and ``TISSUE_SCATTER_OCTAVES`` are measured on the real H&E images with trusted um/px that the
project holds (two whole images, both ~0.5 um/px; bench/ruler.py, BENCHMARKS.md): the peak depends on the tissue
(dense lymphoid and tumour tiles peak ~2.2 px at 0.5 um/px, stroma and muscle tiles ~5-6 px), so the constant is a
mixed-tissue value and the interval carries that scatter. No real 0.25 um/px scan was available: finer scans are
covered only through the spectrum's exact scaling with the pixel size.

Where it cannot measure (glass, fat, mucus, debris without nuclei, nuclei below ~2 px, a stain without
haematoxylin contrast, an image that is not brightfield) it gives no number and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "NUCLEAR_SIGMA_UM",
    "SIGMAS_PX",
    "TISSUE_SCATTER_OCTAVES",
    "RulerEstimate",
    "NuclearStain",
    "log_energy_spectrum",
    "nuclear_map",
    "nuclear_stain",
    "ruler_estimate",
    "stain_vectors",
]

#: The LoG-energy peak of mixed H&E tissue, in um: the geometric mean of the two real images' own values, measured
#: on their unshrunk copies (original, lossless, JPEG 90 and 60, two seeds; CMU-1 1.73, InstanSeg 1.44).
NUCLEAR_SIGMA_UM = 1.58
#: Slide-to-slide scatter of the peak's physical size (sd, octaves): half the two images' distance, rounded up.
TISSUE_SCATTER_OCTAVES = 0.25
#: Scales of the spectrum, px of the regions read: 0.5 to 16 on a 1/8-octave grid.
SIGMAS_PX = 2.0 ** (np.arange(-8, 33) / 8.0)

_WHITE = 220  # grey level above which a pixel is glass, not tissue
_MIN_TISSUE_PX = 2000  # tissue pixels, all regions together, below which nothing is measured
_MIN_CONTRAST_OD = 0.01  # haematoxylin OD between the tissue background and its nuclei (Otsu); mucus, debris: ~0.006
_MIN_NUCLEI = 25  # nuclei (nuclear area / area of one at the peak scale) below which the peak is a guess
_MIN_NUCLEAR_FRACTION = 0.02  # of the tissue area
_MIN_PROMINENCE = 1.15  # the peak over the spectrum's lowest value between it and each end
# The peak against the spectrum's maximum: nuclei below ~1 px leave the energy at the finest scale and only a
# faint bump of their packing further out (0.2% of the maximum on generated discs of 0.9 px sigma).
_MIN_PEAK_SHARE = 0.5
_BOOTSTRAP = 200
# Stain vectors (Macenko et al. 2009): pixels with OD (log10) above this in every channel are stained; the angles'
# 1st and 99th percentiles are the two stains. An estimate further than this from Ruifrok's haematoxylin or eosin,
# or two stains closer than that, is not believed (measured: 15-21 deg on the real slides here, 15-45 deg apart).
_STAINED_OD = 0.15
_ANGLE_PERCENTILE = 1.0
_MAX_STAIN_DEVIATION_DEG = 30.0
_MIN_STAIN_SEPARATION_DEG = 8.0
_FINE_SIGMA = 1.5  # px: below it the native spectrum's peak is remeasured on the map upsampled 2x
# Below ~1.5 px touching nuclei merge and the peak reads fine: 0.35-0.6 octave on CMU-1 shrunk 2.4-2.8x, up to 0.35
# on generated discs near 1 px (bench/ruler.py). A reading from the upsampled pass widens its interval's coarse side
# by the worst of it, in quadrature, so that a correct coarse declaration is not ruled out.
_FINE_PASS_BIAS_OCTAVES = 0.6


@dataclass(frozen=True)
class NuclearStain:
    """The haematoxylin levels of one slide's tissue (OD units of :func:`skimage.color.separate_stains`):
    ``background`` is the mean of the tissue below its Otsu threshold, ``nuclei`` that threshold; ``tissue_px``
    pixels were measured; ``vectors``: the unit OD vectors of haematoxylin, eosin and their cross product (rows, RGB
    columns) the levels were measured with; ``estimated``: whether they are the slide's own (else Ruifrok's)."""

    background: float
    nuclei: float
    tissue_px: int
    vectors: tuple[tuple[float, float, float], ...]
    estimated: bool

    @property
    def contrast(self) -> float:
        return self.nuclei - self.background


@dataclass(frozen=True)
class RulerEstimate:
    """The tissue's own estimate of the slide's level-0 um/px.

    ``mpp`` and its 95% ``interval`` (um/px; None when it cannot measure, ``reason`` says why); ``sigma_px``: the
    nuclear scale found (level-0 px, the LoG sigma); ``count``: nuclei measured (nuclear area over the area of one
    nucleus at that scale); ``regions``: regions read that held tissue; ``stain``: whose stain vectors separated the
    haematoxylin, ``"slide"`` (estimated from its tissue) or ``"reference"`` (Ruifrok's; None: not reached).
    """

    mpp: float | None
    interval: tuple[float, float] | None
    sigma_px: float | None
    count: int
    regions: int
    reason: str | None = None
    stain: str | None = None

    @property
    def measured(self) -> bool:
        return self.mpp is not None

    def contains(self, mpp: float) -> bool:
        """Whether ``mpp`` lies inside the 95% interval (False when nothing was measured)."""
        return self.interval is not None and self.interval[0] <= mpp <= self.interval[1]

    def describe(self) -> str:
        if self.mpp is None or self.interval is None:
            return f"cannot measure: {self.reason}"
        lo, hi = self.interval
        return f"{self.mpp:.3g} um/px (95% CI {lo:.3g}-{hi:.3g}; {self.count} nuclei in {self.regions} regions)"

    def to_dict(self) -> dict[str, Any]:
        return {"mpp": self.mpp, "interval": list(self.interval) if self.interval else None,
                "sigma_px": self.sigma_px, "count": self.count, "regions": self.regions, "reason": self.reason,
                "stain": self.stain}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RulerEstimate:
        interval = d.get("interval")
        return cls(d.get("mpp"), tuple(interval) if interval else None, d.get("sigma_px"), int(d.get("count", 0)),
                   int(d.get("regions", 0)), d.get("reason"), d.get("stain"))


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"the ruler reads (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    return rgb


def _haematoxylin(rgb: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import separate_stains

    rgb = _check_rgb(rgb)
    tissue = rgb.mean(axis=2) < _WHITE
    return separate_stains(rgb, np.linalg.inv(vectors))[..., 0].astype(np.float32), tissue


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


def _reference_vectors() -> np.ndarray:
    from skimage.color import rgb_from_hed

    return np.array([_unit(v) for v in rgb_from_hed])


def stain_vectors(regions: Sequence[np.ndarray]) -> tuple[np.ndarray, bool]:
    """The tissue's haematoxylin and eosin OD vectors (Macenko et al. 2009) from ``regions`` ((H, W, 3) uint8):
    (3, 3) unit rows haematoxylin, eosin, their cross product; and whether they are the tissue's own. Ruifrok's
    reference vectors are returned instead where too few pixels are stained, or the estimate lies far from
    haematoxylin and eosin (another stain, or one dominant colour whose extremes are not two stains)."""
    reference = _reference_vectors()
    od = np.concatenate([-np.log10(np.maximum(_check_rgb(r)[::2, ::2].reshape(-1, 3), 1) / 255.0) for r in regions])
    od = od[(od > _STAINED_OD).all(axis=1)]
    if len(od) < _MIN_TISSUE_PX:
        return reference, False
    # The plane of the two principal directions of the (uncentred) ODs, and the extreme angles within it.
    _, vecs = np.linalg.eigh(od.T @ od)
    plane = vecs[:, [2, 1]] * np.sign(vecs[:, [2, 1]].sum(axis=0))
    proj = od @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    ends = [plane @ [math.cos(a), math.sin(a)] for a in np.percentile(angles, [_ANGLE_PERCENTILE,
                                                                              100 - _ANGLE_PERCENTILE])]
    # Haematoxylin absorbs more red than eosin does.
    h, e = sorted((_unit(v) for v in ends), key=lambda v: -v[0])
    if (_angle_deg(h, reference[0]) > _MAX_STAIN_DEVIATION_DEG or _angle_deg(e, reference[1]) > _MAX_STAIN_DEVIATION_DEG
            or _angle_deg(h, e) < _MIN_STAIN_SEPARATION_DEG):
        return reference, False
    return np.array([h, e, _unit(np.cross(h, e))]), True


def nuclear_stain(regions: Sequence[np.ndarray]) -> NuclearStain | None:
    """The haematoxylin levels of the tissue in ``regions`` ((H, W, 3) uint8 each): Otsu's split of the tissue's
    haematoxylin (its 0.5-99.5 percentiles) and the mean below it; None without enough tissue. Ruifrok's reference
    vectors first; where they show the nuclei no haematoxylin contrast, the tissue's own (:func:`stain_vectors`)."""
    stain = _levels(regions, _reference_vectors(), estimated=False)
    if stain is None or stain.contrast >= _MIN_CONTRAST_OD:
        return stain
    vectors, estimated = stain_vectors(regions)
    return _levels(regions, vectors, estimated=True) if estimated else stain


def _levels(regions: Sequence[np.ndarray], vectors: np.ndarray, *, estimated: bool) -> NuclearStain | None:
    from skimage.filters import threshold_otsu

    values = []
    for rgb in regions:
        h, tissue = _haematoxylin(rgb, vectors)
        values.append(h[tissue])
    h_all = np.concatenate(values) if values else np.empty(0, np.float32)
    if len(h_all) < _MIN_TISSUE_PX:
        return None
    # A few very dark pixels (pen, folds, dust) would pull Otsu's split away from the nuclei.
    h_all = np.clip(h_all, *np.percentile(h_all, [0.5, 99.5]))
    threshold = float(threshold_otsu(h_all))
    below = h_all[h_all <= threshold]
    return NuclearStain(float(below.mean()) if len(below) else threshold, threshold, len(h_all),
                        tuple(tuple(float(x) for x in row) for row in vectors), estimated)


def nuclear_map(rgb: np.ndarray, stain: NuclearStain) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 0 at or below the tissue's background haematoxylin (and on glass), 1 at nuclei."""
    h, tissue = _haematoxylin(rgb, np.array(stain.vectors))
    span = 2.0 * max(stain.contrast, 1e-6)
    return np.where(tissue, np.clip((h - stain.background) / span, 0.0, 1.0), 0.0).astype(np.float32)


def _halve(x: np.ndarray) -> np.ndarray:
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def log_energy_spectrum(m: np.ndarray, sigmas: np.ndarray = SIGMAS_PX, *, upsample: bool = False) -> np.ndarray:
    """Scale-normalised LoG energy of a nuclear map ``m`` (H, W): per sigma (px of ``m``), the mean over pixels of
    ``relu(-sigma^2 LoG_sigma(m))^2`` (bright blobs only); NaN for sigmas the map is too small to hold.

    Sigmas of 4 px and more are computed on a 2x area pyramid at sigma / 2^k (the normalised response is invariant
    to that), which keeps the cost ~2x one level; sigmas below 1 px need ``upsample`` (the map upsampled 2x,
    bilinear, first), else they are NaN.
    """
    import cv2
    from scipy.ndimage import gaussian_laplace

    out = np.full(len(sigmas), np.nan)
    level = np.asarray(m, np.float32)
    k = 0
    if upsample:
        level, k = cv2.resize(level, (2 * level.shape[1], 2 * level.shape[0]), interpolation=cv2.INTER_LINEAR), -1
    for i, s in enumerate(np.asarray(sigmas, float)):
        while s / 2.0**k >= 4.0 and min(level.shape) >= 16:
            level, k = _halve(level), k + 1
        sk = s / 2.0**k
        if sk < 1.0:  # below the sampling of the discrete Laplacian
            continue
        if min(level.shape) < 4 * sk:  # the region is too small to hold a blob this size
            break
        r = -(sk * sk) * gaussian_laplace(level, sk, mode="reflect")
        out[i] = float(np.mean(np.square(np.maximum(r, 0.0))))
    return out


def _peak(spectrum: np.ndarray, sigmas: np.ndarray) -> tuple[float | None, str | None]:
    """The spectrum's highest interior, prominent local maximum (sigma, px), log2 sigma refined by a parabola;
    or None and why. Only the finite part of the spectrum counts: its ends are not peaks."""
    finite = np.flatnonzero(np.isfinite(spectrum))
    if len(finite) < 3:
        return None, "the regions read are too small for the scales measured"
    lo, hi = finite[0], finite[-1] + 1
    e = np.asarray(spectrum[lo:hi], float)
    best, best_value = None, -np.inf
    for i in range(1, len(e) - 1):
        if e[i] <= 0 or not (e[i] >= e[i - 1] and e[i] > e[i + 1]) or e[i] <= best_value:
            continue
        if e[i] < _MIN_PROMINENCE * max(e[: i + 1].min(), e[i:].min()) or e[i] < _MIN_PEAK_SHARE * e.max():
            continue
        best, best_value = i, e[i]
    if best is None:
        if np.argmax(e) == 0:
            return None, "the finest structures are at the pixel size: nuclei are not resolved (too coarse a scan?)"
        return None, "no peak in the spectrum (no nuclei to measure, or larger than the regions read)"
    a, b, c = np.log(e[best - 1 : best + 2])
    den = a - 2 * b + c
    offset = 0.5 * (a - c) / den if den < 0 else 0.0
    step = math.log2(sigmas[1] / sigmas[0])
    return float(2 ** (math.log2(sigmas[lo + best]) + offset * step)), None


def ruler_estimate(
    regions: Sequence[np.ndarray], *, downsample: float = 1.0, seed: int = 0, sigmas: np.ndarray = SIGMAS_PX,
) -> RulerEstimate:
    """Estimate the level-0 um/px from ``regions`` ((H, W, 3) uint8 RGB, each read at ``downsample`` level-0 px
    per px; a few hundred px square, from across the tissue).

    The spectrum is measured on the regions' own pixels; only when its peak lies below ``_FINE_SIGMA`` px (nuclei
    of a few px: scans coarser than ~1 um/px) is it measured again on the map upsampled 2x, which resolves peaks
    down to ~1 px (less exactly: coarse scans read up to ~0.35 octave fine, bench/ruler.py).
    The interval: a bootstrap over regions (the sampling error) combined with ``TISSUE_SCATTER_OCTAVES`` (how much
    the peak's physical size moves between tissues), 95% two-sided; a reading from the upsampled pass (nuclei below
    ~1.5 px, which read fine by up to ~0.6 octave) has its coarse side widened by that bias, in quadrature.
    Returns an estimate without a number and with the ``reason`` when there is not enough tissue, nuclear contrast,
    nuclei, or no peak.
    """
    regions = [np.asarray(r) for r in regions]
    stain = nuclear_stain(regions)
    if stain is None:
        return RulerEstimate(None, None, None, 0, 0, "not enough tissue in the regions read")
    if _not_brightfield(regions):
        return RulerEstimate(None, None, None, 0, 0, "not a brightfield image (dark background: fluorescence?); "
                             "the ruler measures haematoxylin-stained nuclei on white glass")
    vectors = "slide" if stain.estimated else "reference"
    if stain.contrast < _MIN_CONTRAST_OD:
        return RulerEstimate(None, None, None, 0, 0, f"no haematoxylin contrast in the tissue (OD {stain.contrast:.3f}"
                             f" < {_MIN_CONTRAST_OD}): no nuclei, or a stain other than H&E", vectors)
    used = [m for m in (nuclear_map(r, stain) for r in regions) if m.any()]
    nuclear_px = sum(float((m >= 0.5).sum()) for m in used)
    if nuclear_px < _MIN_NUCLEAR_FRACTION * stain.tissue_px:
        return RulerEstimate(None, None, None, 0, len(used), f"too few nuclei: {nuclear_px / stain.tissue_px:.1%} "
                             "of the tissue is nuclear (fat, mucus, glass or debris?)", vectors)
    spectra = np.array([log_energy_spectrum(m, sigmas) for m in used])
    sigma, why = _peak(np.sum(spectra, axis=0), sigmas)
    fine_pass = False
    if sigma is None or sigma < _FINE_SIGMA:
        fine = sigmas[sigmas <= 2 * _FINE_SIGMA]  # 4x the pixels: only the scales the first pass could not resolve
        fine_spectra = np.array([log_energy_spectrum(m, fine, upsample=True) for m in used])
        fine_sigma, fine_why = _peak(np.sum(fine_spectra, axis=0), fine)
        if fine_sigma is not None:
            spectra, sigmas, sigma, fine_pass = fine_spectra, fine, fine_sigma, True
        elif sigma is None:
            why = fine_why
    if sigma is None:
        return RulerEstimate(None, None, None, 0, len(used), why, vectors)
    count = int(nuclear_px / (2 * math.pi * sigma**2))  # a disc of radius sqrt(2) sigma each
    if count < _MIN_NUCLEI:
        return RulerEstimate(None, None, sigma * downsample, count, len(used),
                             f"only ~{count} nuclei found (at least {_MIN_NUCLEI} needed)", vectors)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(_BOOTSTRAP):
        s, _ = _peak(np.sum(spectra[rng.integers(0, len(spectra), len(spectra))], axis=0), sigmas)
        if s is not None:
            boot.append(math.log2(s))
    sampling_sd = float(np.std(boot)) if len(boot) > 1 else 0.0
    half = 1.96 * math.hypot(sampling_sd, TISSUE_SCATTER_OCTAVES)
    coarse_half = math.hypot(half, _FINE_PASS_BIAS_OCTAVES) if fine_pass else half
    mpp = NUCLEAR_SIGMA_UM / (sigma * downsample)
    return RulerEstimate(mpp, (mpp * 2**-half, mpp * 2**coarse_half), sigma * downsample, count, len(used), None,
                         vectors)


def _not_brightfield(regions: Sequence[np.ndarray]) -> bool:
    # Brightfield tissue sits on bright glass and absorbs; a fluorescence image is mostly dark.
    grey = np.concatenate([np.asarray(r).mean(axis=2).ravel() for r in regions])
    return float(np.percentile(grey, 90)) < 60.0
