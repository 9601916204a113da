"""Frames <-> the networks' tensors: the one conversion between uint8 frames and the networks' float
input and output."""

from __future__ import annotations

import numpy as np


def to_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 frames ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [0, 1] (the networks' input)."""
    return np.ascontiguousarray(np.moveaxis(rgb, -1, -3), dtype=np.float32) / 255.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float ``(..., 3, H, W)`` in [0, 1] (the networks' output) -> uint8 frames ``(..., H, W, 3)``, rounded."""
    return np.moveaxis((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), -3, -1)
