"""Paste-back: the animated face crop goes back into the full portrait, so only the face is re-rendered.

The model animates a square crop around the portrait's face (:func:`nets.media.face.face_crop`). To
show the whole portrait (hair, shoulders, background, at its own sharpness), each animated crop
is mapped back through the inverse of the crop transform and blended in through a feathered
mask. Everything that depends only on the portrait is done once per avatar by
:meth:`PasteBack.prepare`; :meth:`PasteBack.apply` is the per-frame part (one copy of the
prepared canvas, a resize of the crop into the face's box and a masked blend there):

    paste = PasteBack.prepare(portrait_rgb, crop_box, FrameSize(1280, 720))   # once per avatar
    frame = paste.apply(animated_crop)                                          # (720, 1280, 3) uint8

Fitting: the portrait is *contained* in the output frame (scaled to fit, never stretched, never
cut), and the bars left over are filled with a blurred, darkened copy of the portrait scaled to
cover the frame (what phones do with a portrait photo in a landscape video). A portrait photo in
a 16:9 frame is the common case: cropping it to fill would cut the head off (the face crop alone
is usually taller than a 16:9 band of the photo), padding with black looks broken in a call.

Coordinates: pixel ``i`` covers ``[i, i + 1)``, its centre is ``i + 0.5`` (the convention of
:func:`nets.media.face.crop_resize`, PIL's ``resize(box=...)``); a crop box is in portrait pixels.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from nets.errors import UserError
from nets.media import even_size
from nets.media.face import CropBox, CropSettings


# feathered mask, in units of the crop side. The animation is used fully over the head (a disc of
# radius FACE_INNER around the face's centre, which lies FACE_DROP below the crop's, as
# CropSettings frames it), fading out
# to FACE_OUTER; the crop's corners and background come from the still portrait, so what the
# model's background motion moves there (window frames, edges) does not show twice. A rectangular
# ramp from FEATHER_START to FEATHER_END of the border makes the weight 0 at the crop's border.
FACE_DROP = -CropSettings.shift_y / CropSettings.scale
FACE_INNER = 0.38
FACE_OUTER = 0.52
FEATHER_START = 0.02
FEATHER_END = 0.10
FILL_DIM = 0.6  # brightness of the blurred fill around a contained portrait
MIN_SIDE, MAX_SIDE = 64, 4096


@dataclass(frozen=True)
class FrameSize:
    """An output frame size in pixels."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def wh(self) -> tuple[int, int]:
        return (self.width, self.height)


def parse_frame_size(spec: str, option: str = "--output-size") -> FrameSize:
    """``"1280x720"`` -> ``FrameSize(1280, 720)``; ``"512"`` -> a square. One ``UserError`` line otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(spec))
    if not m:
        raise UserError(f"{option} must look like 1280x720 (width x height) or 512 (a square), got {spec!r}")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) else w
    check_sides(option, w, h)
    return FrameSize(w, h)


def check_sides(option: str, *sides: int) -> None:
    """Output frame sides within :data:`MIN_SIDE` .. :data:`MAX_SIDE` pixels; the one message otherwise."""
    if not all(MIN_SIDE <= s <= MAX_SIDE for s in sides):
        got = "x".join(str(s) for s in sides)
        raise UserError(f"{option} must be between {MIN_SIDE} and {MAX_SIDE} pixels a side, got {got}")


def capped_size(width: int, height: int, long_side: int) -> FrameSize:
    """The size of a ``width`` x ``height`` image with its long side at most ``long_side`` (aspect
    kept; even sides, as H.264 wants, rounded down: ``nets.media.even_size``)."""
    s = min(1.0, long_side / max(width, height))
    return FrameSize(*even_size(round(width * s), round(height * s)))


@dataclass(frozen=True)
class Placement:
    """Where the portrait lies in the output frame: output = ``scale * portrait + offset``
    (continuous pixel coordinates), per axis."""

    sx: float
    sy: float
    tx: float
    ty: float

    def box(self, crop: CropBox) -> tuple[float, float, float, float]:
        """``crop`` (portrait pixels) in output pixels: ``(x0, y0, x1, y1)``."""
        x0, y0, x1, y1 = crop.box
        return (self.tx + self.sx * x0, self.ty + self.sy * y0, self.tx + self.sx * x1, self.ty + self.sy * y1)


def contain(width: int, height: int, out: FrameSize) -> "tuple[Placement, tuple[int, int, int, int]]":
    """Fit a ``width`` x ``height`` image inside ``out`` without stretching: the placement and the
    integer rectangle ``(x, y, w, h)`` the resized image occupies."""
    s = min(out.width / width, out.height / height)
    rw = min(out.width, max(1, int(round(width * s))))
    rh = min(out.height, max(1, int(round(height * s))))
    x, y = (out.width - rw) // 2, (out.height - rh) // 2
    return Placement(rw / width, rh / height, float(x), float(y)), (x, y, rw, rh)


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return np.ascontiguousarray(rgb)
    shrink = w < rgb.shape[1] or h < rgb.shape[0]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def fill_background(rgb: np.ndarray, out: FrameSize) -> np.ndarray:
    """A blurred, darkened copy of ``rgb`` scaled to cover ``out``: ``(H, W, 3)`` uint8."""
    import cv2
    h, w = rgb.shape[:2]
    s = max(out.width / w, out.height / h)
    cw, ch = max(out.width, int(math.ceil(w * s))), max(out.height, int(math.ceil(h * s)))
    # blur at a small size (cheap, and the blur is what it is meant to look like), then scale up
    small_w, small_h = max(8, cw // 16), max(8, ch // 16)
    small = cv2.resize(rgb, (small_w, small_h), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=2.0, borderType=cv2.BORDER_REFLECT)
    big = cv2.resize(small, (cw, ch), interpolation=cv2.INTER_LINEAR)
    x, y = (cw - out.width) // 2, (ch - out.height) // 2
    return np.ascontiguousarray((big[y:y + out.height, x:x + out.width] * FILL_DIM).astype(np.uint8))


def _ramp(u: np.ndarray, start: float, end: float) -> np.ndarray:
    """Smoothstep from 0 at ``start`` to 1 at ``end`` (``u`` in units of the crop side)."""
    t = np.clip((u - start) / max(end - start, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def feather_mask(box: tuple[float, float, float, float], roi: tuple[int, int, int, int]) -> np.ndarray:
    """The blend weight of the animated crop over the pixels of ``roi`` ``(x, y, w, h)``: ``(h, w)``
    float32 in [0, 1], 1 over the face in the middle of ``box`` (the crop in output pixels), falling
    smoothly to 0 towards the crop's corners and border (see the constants above)."""
    x0, y0, x1, y1 = box
    rx, ry, rw, rh = roi
    u = (rx + np.arange(rw) + 0.5 - x0) / max(x1 - x0, 1e-6)  # crop-relative coordinates of pixel centres
    v = (ry + np.arange(rh) + 0.5 - y0) / max(y1 - y0, 1e-6)

    def border(t: np.ndarray) -> np.ndarray:
        return _ramp(t, FEATHER_START, FEATHER_END) * _ramp(1.0 - t, FEATHER_START, FEATHER_END) * ((t >= 0) & (t <= 1))
    r = np.hypot(u[None, :] - 0.5, v[:, None] - 0.5 - FACE_DROP)
    disc = 1.0 - _ramp(r, FACE_INNER, FACE_OUTER)
    return np.ascontiguousarray(disc * np.outer(border(v), border(u)), dtype=np.float32)


@dataclass
class PasteBack:
    """One portrait, ready to take animated crops back (built by :meth:`prepare`, once per avatar).

    ``canvas``: the output frame without animation ``(H, W, 3)`` uint8; ``box``: the crop in
    output pixels, snapped to whole pixels ``(x, y, side_w, side_h)`` (at most half a pixel off the
    exact position: invisible, and it turns the inverse crop transform into a plain resize, six
    times cheaper than a sub-pixel warp); ``roi``: the part of ``box`` inside the frame ``(x, y, w,
    h)``; ``mask`` / ``inverse``: blend weights of the animation / the canvas over the roi ``(h, w)``
    float32.
    """

    canvas: np.ndarray
    box: tuple[int, int, int, int]
    roi: tuple[int, int, int, int]
    mask: np.ndarray
    inverse: np.ndarray

    @property
    def size(self) -> FrameSize:
        return FrameSize(self.canvas.shape[1], self.canvas.shape[0])

    @classmethod
    def prepare(cls, portrait: np.ndarray, crop: CropBox, out_size: "FrameSize | tuple[int, int] | None" = None
                ) -> "PasteBack":
        """``portrait``: ``(H, W, 3)`` uint8 RGB; ``crop``: the square crop the model sees, in
        portrait pixels; ``out_size``: the output frame (``FrameSize`` or ``(w, h)``; None: the
        portrait's own size)."""
        h, w = portrait.shape[:2]
        out = FrameSize(w, h) if out_size is None else (out_size if isinstance(out_size, FrameSize)
                                                        else FrameSize(*out_size))
        place, (px, py, pw, ph) = contain(w, h, out)
        if (pw, ph) == out.wh:
            canvas = _resize(portrait, pw, ph).copy()
        else:
            canvas = fill_background(portrait, out)
            canvas[py:py + ph, px:px + pw] = _resize(portrait, pw, ph)
        fx0, fy0, fx1, fy1 = place.box(crop)
        bx, by = int(round(fx0)), int(round(fy0))
        bw, bh = max(1, int(round(fx1 - fx0))), max(1, int(round(fy1 - fy0)))
        x0, y0 = max(bx, 0), max(by, 0)
        x1, y1 = min(bx + bw, out.width), min(by + bh, out.height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"the crop {crop} lies outside the portrait ({w}x{h})")
        roi = (x0, y0, x1 - x0, y1 - y0)
        mask = feather_mask((bx, by, bx + bw, by + bh), roi)
        return cls(canvas=canvas, box=(bx, by, bw, bh), roi=roi, mask=mask, inverse=np.ascontiguousarray(1.0 - mask))

    def apply(self, crop_frame: np.ndarray) -> np.ndarray:
        """``crop_frame``: the animated crop ``(S, S, 3)`` uint8 -> the output frame ``(H, W, 3)`` uint8
        (a new array; the prepared canvas is never changed)."""
        import cv2
        bx, by, bw, bh = self.box
        x, y, rw, rh = self.roi
        up = bw >= crop_frame.shape[1]
        face = cv2.resize(np.ascontiguousarray(crop_frame), (bw, bh),
                          interpolation=cv2.INTER_CUBIC if up else cv2.INTER_AREA)
        if (rw, rh) != (bw, bh):
            face = np.ascontiguousarray(face[y - by:y - by + rh, x - bx:x - bx + rw])
        frame = self.canvas.copy()
        region = frame[y:y + rh, x:x + rw]
        region[...] = cv2.blendLinear(face, np.ascontiguousarray(region), self.mask, self.inverse)
        return frame


def fit_square(image: np.ndarray, out: FrameSize) -> np.ndarray:
    """A square frame (the crop output) contained in ``out``, centred on black: ``(H, W, 3)`` uint8."""
    h, w = image.shape[:2]
    _, (x, y, rw, rh) = contain(w, h, out)
    scaled = _resize(image, rw, rh)
    if (rw, rh) == out.wh:
        return scaled
    frame = np.zeros((out.height, out.width, 3), np.uint8)
    frame[y:y + rh, x:x + rw] = scaled
    return frame
