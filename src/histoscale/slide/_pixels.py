"""Reader output to (h, w, 3) uint8 RGB."""

from __future__ import annotations

import numpy as np

__all__ = ["to_rgb_u8"]


def to_rgb_u8(arr: np.ndarray) -> np.ndarray:
    """Any reader output -> (h, w, 3) uint8 RGB; alpha is composited on white."""
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        # rounded as libtiff (OpenSlide) scales 16-bit samples, so every backend gives the same pixels
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    c = a.shape[2]
    if c in (2, 4):
        rgb = a[:, :, :1].repeat(3, axis=2) if c == 2 else a[:, :, :3]
        alpha = a[:, :, c - 1 : c]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        al = alpha.astype(np.uint16)
        return ((rgb.astype(np.uint16) * al + 255 * (255 - al) + 127) // 255).astype(np.uint8)
    if c == 1:
        return np.ascontiguousarray(a.repeat(3, axis=2))
    return np.ascontiguousarray(a[:, :, :3])
