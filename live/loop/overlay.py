"""The overlay of mra-live (hot key o): the region centres on the animated crop, and on the output
frame the driving crop as a thumbnail and one line of figures."""
from __future__ import annotations

import numpy as np

from export.engine import RegionParams


def draw_regions(image: np.ndarray, params: RegionParams) -> np.ndarray:
    """A copy of the square ``image`` with a dot at each region's centre (``params.shift``, in [-1, 1])."""
    import cv2
    image = image.copy()
    s = image.shape[0]
    for x, y in params.shift[0]:
        cv2.circle(image, (int((x + 1) / 2 * (s - 1)), int((y + 1) / 2 * (s - 1))), max(2, s // 128),
                   (255, 64, 64), -1)
    return image


def draw_overlay(image: np.ndarray, crop: "np.ndarray | None", text: str) -> np.ndarray:
    """``image`` (drawn on in place and returned) with the driving ``crop`` in the bottom-left
    corner (a quarter of the side) and ``text`` at the top."""
    import cv2
    s = min(image.shape[:2])
    if crop is not None:
        thumb = cv2.resize(crop, (s // 4, s // 4))
        image[-thumb.shape[0]:, :thumb.shape[1]] = thumb
    cv2.putText(image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image
