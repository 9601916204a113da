"""Augmentation of a training sample: the same random flips and colour jitter for all its frames.

Frames are float32 numpy arrays ``(H, W, 3)`` in [0, 1]. Every random number comes from the numpy
``Generator`` passed in (one per sample, seeded by the sampler), so a sample is a pure function of
its seed: the data order and augmentation replay exactly on ``--resume`` and with any number of
workers. Colour operations follow torchvision's definitions (grayscale = 0.299 R + 0.587 G +
0.114 B; hue shifts the HSV hue by a fraction of a turn) and are applied in a random order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import AugmentationConfig

try:
    import cv2 as _cv2
except ImportError:  # numpy fallback below
    _cv2 = None

_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def grayscale(img: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` -> ``(H, W, 1)`` luma."""
    return (img @ _GRAY)[..., None]


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn), any leading shape."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(-1)
    minc = rgb.min(-1)
    delta = maxc - minc
    v = maxc
    s = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1), 0)
    safe = np.where(delta > 0, delta, 1)
    rc = (maxc - r) / safe
    gc = (maxc - g) / safe
    bc = (maxc - b) / safe
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1).astype(rgb.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    choices_r = [v, q, p, p, t, v]
    choices_g = [t, v, v, q, p, p]
    choices_b = [p, p, t, v, v, q]
    r = np.choose(i, choices_r)
    g = np.choose(i, choices_g)
    b = np.choose(i, choices_b)
    return np.stack([r, g, b], -1).astype(hsv.dtype)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(img * factor, 0, 1)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = grayscale(img).mean()
    return np.clip((img - mean) * factor + mean, 0, 1)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    gray = grayscale(img)
    return np.clip((img - gray) * factor + gray, 0, 1)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` turns (``shift`` in [-0.5, 0.5]); OpenCV when installed (10x faster)."""
    if shift == 0:
        return img
    if _cv2 is not None and img.dtype == np.float32 and img.ndim == 3:
        hsv = _cv2.cvtColor(img, _cv2.COLOR_RGB2HSV)  # float input: H in degrees [0, 360)
        hsv[..., 0] = (hsv[..., 0] + 360.0 * shift) % 360.0
        return _cv2.cvtColor(hsv, _cv2.COLOR_HSV2RGB)
    hsv = rgb_to_hsv(img)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return hsv_to_rgb(hsv)


@dataclass(frozen=True)
class Flips:
    """The flips one sample got: ``horizontal`` (mirrored left-right), ``time`` (frame order reversed)."""

    horizontal: bool = False
    time: bool = False


def augment_frames(frames: list[np.ndarray], cfg: "AugmentationConfig | None",
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Apply one random draw of flips and colour jitter to every frame of a sample."""
    return augment_sample(frames, cfg, rng)[0]


def augment_sample(frames: list[np.ndarray], cfg: "AugmentationConfig | None",
                   rng: np.random.Generator) -> tuple[list[np.ndarray], Flips]:
    """Apply one random draw of flips and colour jitter to every frame of a sample; also say which
    flips were applied (what rides along with the frames, e.g. face points, must follow them).

    The same number of random numbers is drawn whatever ``cfg`` enables, so turning one
    augmentation off does not change the draws of the others.
    """
    u = rng.random(2)
    factors = rng.random(4)
    order = rng.permutation(4)
    if cfg is None:
        return frames, Flips()
    flips = Flips(horizontal=bool(cfg.horizontal_flip and u[0] < 0.5), time=bool(cfg.time_flip and u[1] < 0.5))
    if flips.horizontal:
        frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    if flips.time:
        frames = frames[::-1]

    def factor(strength: float, x: float) -> "float | None":
        if strength <= 0:
            return None
        return float(max(0.0, 1 - strength) + x * (1 + strength - max(0.0, 1 - strength)))

    ops = []
    b = factor(cfg.brightness, factors[0])
    c = factor(cfg.contrast, factors[1])
    s = factor(cfg.saturation, factors[2])
    h = (2 * factors[3] - 1) * min(cfg.hue, 0.5) if cfg.hue > 0 else None
    for k in order:
        if k == 0 and b is not None:
            ops.append(lambda f, b=b: adjust_brightness(f, b))
        elif k == 1 and c is not None:
            ops.append(lambda f, c=c: adjust_contrast(f, c))
        elif k == 2 and s is not None:
            ops.append(lambda f, s=s: adjust_saturation(f, s))
        elif k == 3 and h is not None:
            ops.append(lambda f, h=h: adjust_hue(f, h))
    out = []
    for f in frames:
        for op in ops:
            f = op(f)
        out.append(f.astype(np.float32, copy=False))
    return out, flips
