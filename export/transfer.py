"""Relative and standard motion transfer in numpy (what the ONNX Runtime engine uses per frame).

The same formulas as ``nets.transfer`` (see its module doc), on ``(B, K, ...)`` float32 arrays:
a few 2x2 products per region cost microseconds, less than one ONNX Runtime call, so they need
no graph. The movement scale (convex-hull areas) is computed in float64 with Andrew's monotone
chain and cast to float32.
"""
from __future__ import annotations

import numpy as np

from .engine import RegionParams


def inv2x2(m: np.ndarray) -> np.ndarray:
    """Inverse of ``(..., 2, 2)`` matrices by the adjugate formula (like ``nets.geometry.inv2x2``)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    adj = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


def hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of ``(N, 2)`` points (0 for fewer than 3 distinct or collinear points)."""
    pts = np.unique(np.asarray(points, np.float64), axis=0)  # sorted by x, then y
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq) -> list:
        chain: list = []
        for p in seq:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def movement_scale(source_shift: np.ndarray, initial_shift: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """sqrt(hull area of source shifts / hull area of initial shifts), per batch item: ``(B,)`` float32.

    ``source_shift`` ``(1 or B, K, 2)``, ``initial_shift`` ``(1 or B, K, 2)``.
    """
    b = max(len(source_shift), len(initial_shift))
    s = np.broadcast_to(source_shift, (b, *source_shift.shape[1:]))
    i = np.broadcast_to(initial_shift, (b, *initial_shift.shape[1:]))
    return np.array([np.sqrt(hull_area(s[j])) / np.sqrt(max(hull_area(i[j]), eps)) for j in range(b)], np.float32)


def relative(source: RegionParams, driving: RegionParams, initial: RegionParams, adapt_movement_scale: bool = True,
             scale: "np.ndarray | None" = None) -> RegionParams:
    """Relative transfer: shift ``(d - init) * scale + s``, affine ``(A_d A_init^-1) A_s``, driving covar kept.

    Arrays broadcast over the batch (a single source or initial frame serves a batch of driving frames).
    """
    if adapt_movement_scale:
        if scale is None:
            scale = movement_scale(source.shift, initial.shift)
        scale = np.asarray(scale, np.float32).reshape(-1, 1, 1)
    else:
        scale = np.float32(1.0)
    shift = (driving.shift - initial.shift) * scale + source.shift
    affine = None
    if driving.affine is not None and initial.affine is not None and source.affine is not None:
        affine = (driving.affine @ inv2x2(initial.affine)) @ source.affine
    b = driving.batch_size
    shift = np.ascontiguousarray(np.broadcast_to(shift, (b, *shift.shape[1:])), dtype=np.float32)
    if affine is not None:
        affine = np.ascontiguousarray(np.broadcast_to(affine, (b, *affine.shape[1:])), dtype=np.float32)
    covar = None if driving.covar is None else np.asarray(driving.covar, np.float32)
    return RegionParams(shift=shift, covar=covar, affine=affine)


def standard(driving: RegionParams) -> RegionParams:
    return driving.copy()
