"""Temporal smoothing of region parameters (One-Euro filter) and easing back to a neutral pose."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

P = TypeVar("P")  # region parameters: any dataclass with numpy shift, covar, affine (e.g. RegionParams)


def _alpha(cutoff: "float | np.ndarray", dt: float) -> "float | np.ndarray":
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class OneEuroConfig:
    """One-Euro filter settings: ``min_cutoff`` (Hz) sets smoothing at rest (lower = smoother),
    ``beta`` how fast the cutoff rises with speed (higher = less lag on fast moves)."""

    min_cutoff: float = 1.5
    beta: float = 0.3
    d_cutoff: float = 1.0


class OneEuroFilter:
    """Casiez et al.'s One-Euro filter, element-wise on numpy arrays of any fixed shape."""

    def __init__(self, config: OneEuroConfig | None = None):
        self.config = config or OneEuroConfig()
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` (seconds, increasing)."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or x.shape != self._x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = max(t - self._t, 1e-4)
        c = self.config
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(c.d_cutoff, dt) * (dx - self._dx)
        cutoff = c.min_cutoff + c.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t = t
        return self._x.copy()


class RegionSmoother:
    """One-Euro filters on shift, affine and covar of a single frame's region parameters
    (``export.engine.RegionParams``)."""

    def __init__(self, config: OneEuroConfig | None = None, enabled: bool = True):
        self.enabled = enabled
        self.filters = {k: OneEuroFilter(config) for k in ("shift", "affine", "covar")}

    def reset(self) -> None:
        for f in self.filters.values():
            f.reset()

    def __call__(self, params: P, t: float) -> P:
        if not self.enabled:
            return params
        out = {}
        for k, f in self.filters.items():
            v = getattr(params, k)
            out[k] = None if v is None else f(v, t).astype(np.float32)
        return replace(params, **out)


def blend(a: P, b: P, w: float) -> P:
    """``(1 - w) * a + w * b`` field by field (w in [0, 1])."""
    f = lambda x, y: None if x is None or y is None else ((1 - w) * x + w * y).astype(np.float32)  # noqa: E731
    return replace(a, shift=f(a.shift, b.shift), covar=f(a.covar, b.covar), affine=f(a.affine, b.affine))


@dataclass
class LostFacePolicy:
    """When the face is lost: hold the last pose for ``hold_s``, then ease to neutral over ``ease_s``."""

    hold_s: float = 1.0
    ease_s: float = 1.0

    def weight(self, lost_for: float) -> float:
        """Blend weight towards neutral after the face has been lost for ``lost_for`` seconds."""
        if lost_for <= self.hold_s:
            return 0.0
        x = min(1.0, (lost_for - self.hold_s) / max(self.ease_s, 1e-6))
        return x * x * (3 - 2 * x)  # smoothstep
