"""Quality metrics of animated frames: pure functions on numpy arrays.

Images are float ``(H, W, 3)`` in [0, 1]; landmarks are ``(N, 2)`` pixel coordinates (x, y) or
None when no face was found.

* :func:`l1`: mean absolute error over pixels and channels; :func:`border_l1`: the same in the
  outer ``border`` pixels and in the rest (a resampling convention off by a pixel shows as a
  border much worse than the inside).
* :func:`ratio`: a model's figure over a baseline's (None when undefined).
* :func:`ssim`: structural similarity (Wang et al. 2004): 11x11 gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, data range 1, computed on the valid region of each RGB channel and averaged.
* :func:`keypoint_distance`: mean Euclidean distance between corresponding landmarks (AKD per frame).
* :func:`normalise_shape` / :func:`procrustes_distance`: landmark sets compared after removing
  translation, scale (unit RMS radius) and rotation: a face-shape distance independent of where
  the face is and how large.
* :func:`motion_transfer`: how the landmark displacements of an animation (relative to its first
  frame, each sequence normalised by its first frame's RMS radius) follow those of the driving video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


def l1(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two float images in [0, 1]."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def border_l1(a: np.ndarray, b: np.ndarray, border: int = 8) -> tuple[float, float]:
    """(L1 in the outer ``border`` pixels of each side, L1 of the inner part) of two ``(H, W, C)`` images."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    h, w = d.shape[:2]
    if not 0 < 2 * border < min(h, w):
        raise ValueError(f"border {border} does not fit a {w}x{h} image")
    inner = d[border:h - border, border:w - border]
    return float((d.sum() - inner.sum()) / (d.size - inner.size)), float(inner.mean())


def ratio(model: Optional[float], baseline: Optional[float]) -> Optional[float]:
    """``model / baseline``; None when either is missing or the baseline is 0."""
    if model is None or baseline is None or baseline == 0:
        return None
    return float(model / baseline)


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``(..., H, W)`` by ``taps`` along H then W (float64)."""
    k = len(taps)
    h, w = x.shape[-2:]
    rows = sum(taps[i] * x[..., i:h - k + 1 + i, :] for i in range(k))
    return sum(taps[i] * rows[..., :, i:w - k + 1 + i] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> float:
    """Mean SSIM of two float ``(H, W, C)`` images in [0, 1] (valid region, channels averaged)."""
    x = np.moveaxis(np.asarray(a, np.float64), -1, 0)  # (C, H, W)
    y = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    g = _gaussian_taps(window, sigma)
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mu_x**2
    syy = _filter_valid(y * y, g) - mu_y**2
    sxy = _filter_valid(x * y, g) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def keypoint_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding points ``(N, 2)``."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).mean())


def rms_radius(points: np.ndarray) -> float:
    """Root-mean-square distance of the points from their centroid (a face-size scale)."""
    p = np.asarray(points, np.float64)
    return float(np.sqrt(((p - p.mean(0)) ** 2).sum(-1).mean()))


def normalise_shape(points: np.ndarray) -> np.ndarray:
    """Centred at the centroid, scaled to unit RMS radius."""
    p = np.asarray(points, np.float64)
    p = p - p.mean(0)
    return p / max(rms_radius(p), 1e-12)


def procrustes_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between two shapes after similarity alignment (translation, scale, rotation; no reflection).

    Both shapes are normalised (unit RMS radius), ``b`` is rotated onto ``a``; 0 = same shape,
    in units of the face's RMS radius.
    """
    x, y = normalise_shape(a), normalise_shape(b)
    u, _, vt = np.linalg.svd(y.T @ x)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, d]) @ vt
    return float(np.sqrt(((y @ r - x) ** 2).sum(-1).mean()))


@dataclass
class MotionTransfer:
    """How well an animation follows its driving video's motion (frames where both have landmarks, t > 0).

    error: mean over frames and points of ``|dO_t - dD_t|`` (units of face RMS radius; lower is
    better; a still output scores the driving's mean displacement); ratio: mean ``|dO|`` / mean
    ``|dD|`` (1 = as much motion); cosine: cosine similarity of all displacements (1 = same
    directions; 0 for a still output).
    """

    error: Optional[float]
    ratio: Optional[float]
    cosine: Optional[float]
    frames: int


def motion_transfer(output: Sequence[Optional[np.ndarray]], driving: Sequence[Optional[np.ndarray]]) -> MotionTransfer:
    """Compare landmark displacements relative to frame 0, each sequence normalised by its frame-0 RMS radius."""
    if not output or output[0] is None or driving[0] is None:
        return MotionTransfer(None, None, None, 0)
    o0, d0 = np.asarray(output[0], np.float64), np.asarray(driving[0], np.float64)
    so, sd = max(rms_radius(o0), 1e-12), max(rms_radius(d0), 1e-12)
    do, dd = [], []
    for o, d in zip(output[1:], driving[1:]):
        if o is None or d is None:
            continue
        do.append((np.asarray(o, np.float64) - o0) / so)
        dd.append((np.asarray(d, np.float64) - d0) / sd)
    if not do:
        return MotionTransfer(None, None, None, 0)
    do_, dd_ = np.stack(do), np.stack(dd)
    error = float(np.linalg.norm(do_ - dd_, axis=-1).mean())
    mag_d = float(np.linalg.norm(dd_, axis=-1).mean())
    ratio = float(np.linalg.norm(do_, axis=-1).mean() / mag_d) if mag_d > 0 else None
    den = float(np.linalg.norm(do_) * np.linalg.norm(dd_))
    cosine = float((do_ * dd_).sum() / den) if den > 0 else 0.0
    return MotionTransfer(error, ratio, cosine, len(do))


def mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


@dataclass
class Following:
    """How a signal of the output follows the driver's (both as changes from their first frame).

    ``gain``: least-squares slope through the origin of output on driver (1 = as much as the driver,
    0 = a still photo); ``corr``: Pearson r (None when either does not vary); ``frames``: pairs used.
    """

    gain: Optional[float]
    corr: Optional[float]
    frames: int


def following(driver: Sequence[float], output: Sequence[float]) -> Following:
    """Gain and correlation of the output's changes on the driver's (see :class:`Following`)."""
    d, o = np.asarray(driver, np.float64), np.asarray(output, np.float64)
    if len(d) != len(o):
        raise ValueError(f"{len(d)} driver values but {len(o)} output values")
    dd = float((d * d).sum())
    gain = float((d * o).sum() / dd) if dd > 0 else None
    corr = float(np.corrcoef(d, o)[0, 1]) if len(d) > 1 and d.std() > 0 and o.std() > 0 else None
    return Following(gain=gain, corr=corr, frames=len(d))
