"""Landmark-guided expression transfer: the portrait's mouth, eyelids and brows follow the driver's.

The learned regions of the shipped model carry the head pose but hardly any expression (mouth
gain 0.00 on unseen people, see the model card), so the expression comes from face-mesh landmarks
and is applied to the animated crop as a warp, as peers retarget eyes and lips from landmarks:

1. *Driver's expression*: the driver's landmarks now and at the reference frame (relative mode's
   neutral), the head pose removed by an affine fit on points that expressions hardly move
   (:data:`facemesh.STABLE`): ``delta_d`` per expressive point, in the driver's reference frame.
2. *Onto the portrait*: ``delta_d`` turned and scaled by the similarity from the driver's reference
   face to the portrait's (face size ratio), times the expression gain. Eyelids move by their
   *openness ratio* instead (upper lid towards the lower one), so a big-eyed portrait blinks as
   fully as a small-eyed driver; the inner lips never cross.
3. *Onto the animated crop*: the portrait's points carried by the output's head pose (an affine
   fit of the portrait's stable points onto the pose the model rendered: by default the driver's
   relative head motion, or the output's own landmarks when given) give where each expressive point
   is and where it should be; a Gaussian radial-basis field through those displacements (zero on
   nose, forehead and cheeks) warps the crop, evaluated separably at full resolution
   (``(H, N) @ (N, W)``: about a millisecond at 256 px).
4. *An open mouth*: the warp stretches the lips apart; what lies between them (the portrait never
   showed it) is painted as a dark mouth cavity with soft edges, in proportion to the opening.

Everything that depends only on the portrait is computed once (:class:`PortraitFace`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np

from nets.media import facemesh as fm

_EXPR = np.array(fm.EXPRESSIVE)
_STABLE = np.array(fm.STABLE)
_WARP = np.array([fm.EXPRESSIVE.index(i) for i in fm.WARP_MOUTH + fm.WARP_EYES + fm.WARP_BROWS])  # rows of _EXPR
_WARP_EYE = np.isin(_EXPR[_WARP], np.array(fm.WARP_EYES))
_WARP_LOWER_LIDS = [np.flatnonzero(np.isin(_EXPR[_WARP], np.array(lo))) for _, lo in
                    ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER))]
_ANCHORS = np.array(fm.WARP_ANCHORS)
_ANCHOR_EYE = np.isin(_ANCHORS, np.array(fm.EYE_CORNERS))
_EYE_PAIRS = ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER))
_EYE_ROWS = [(np.array([fm.EXPRESSIVE.index(i) for i in up]), np.array([fm.EXPRESSIVE.index(i) for i in lo]))
             for up, lo in _EYE_PAIRS]
_LIP_PAIRS = ((81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (80, 88), (310, 318), (191, 95), (415, 324))
_LIP_ROWS = (np.array([fm.EXPRESSIVE.index(a) for a, _ in _LIP_PAIRS]),
             np.array([fm.EXPRESSIVE.index(b) for _, b in _LIP_PAIRS]))
_INNER_LIPS = np.array([fm.EXPRESSIVE.index(i) for i in fm.LIPS_INNER_UPPER + fm.LIPS_INNER_LOWER])
GAIN_RANGE = (0.0, 2.0)
CAVITY_RGB = np.array([52.0, 18.0, 22.0])  # the inside of an open mouth in shadow, when the portrait shows none


@dataclass(frozen=True)
class ExpressionSettings:
    """``gain``: expression strength (0 = head pose only, 1 = as the driver, up to 2); ``sigma`` /
    ``eye_sigma``: width of the warp's radial functions in inter-ocular distances (mouth and brows
    / eyelids); ``ridge``: regularisation of the fit; ``cavity``: paint the inside of an open mouth."""

    gain: float = 1.0
    sigma: float = 0.12
    eye_sigma: float = 0.05
    ridge: float = 1e-3
    cavity: bool = True

    def validate(self) -> "ExpressionSettings":
        lo, hi = GAIN_RANGE
        if not lo <= self.gain <= hi:
            raise ValueError(f"expression gain must be between {lo:g} and {hi:g}, got {self.gain:g}")
        return self


def fit_affine(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine map ``dst ~ src @ A.T + t`` for ``(N, 2)`` points: ``A (2, 2)``, ``t (2,)``."""
    x = np.concatenate([src, np.ones((len(src), 1))], 1)
    m, *_ = np.linalg.lstsq(x, dst, rcond=None)
    return m[:2].T, m[2]


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (rotation, uniform scale, shift; no reflection) ``dst ~ src @ A.T + t``."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sv, vt = np.linalg.svd(d.T @ s)
    flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ flip @ vt
    scale = (sv * np.diag(flip)).sum() / max((s**2).sum(), 1e-12)
    a = scale * rot
    return a, md - ms @ a.T


def apply(a: np.ndarray, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ a.T + t


@dataclass
class PortraitFace:
    """The portrait's landmarks ``(468, 2)`` in pixels of the animated crop, found once per avatar."""

    landmarks: np.ndarray
    cavity_rgb: np.ndarray = field(default_factory=lambda: CAVITY_RGB.copy())  # (3,) the inside of its mouth
    lid_rgb: "np.ndarray | None" = None  # (2, 3) each eye's upper-lid skin (None: shut eyes are not painted)
    lash_rgb: "np.ndarray | None" = None  # (2, 3) each eye's lash line

    @property
    def inter_ocular(self) -> float:
        return float(fm.inter_ocular(self.landmarks))


@dataclass
class ControlPoints:
    """Where the expressive points are in the animated crop (``current``) and where they should be
    (``desired``), ``(N, 2)`` pixels, plus the anchors that stay ``(M, 2)`` and the sigma per point."""

    current: np.ndarray
    desired: np.ndarray
    anchors: np.ndarray
    sigma: np.ndarray  # (N + M,) pixels
    mouth_gap: float  # desired inner-lip gap in pixels (for the cavity)
    inner_lips: np.ndarray  # desired inner-lip outline (for the cavity)
    inner_lips_now: "np.ndarray | None" = None  # the portrait's own inner-lip outline in the crop (its open mouth)
    own_gap: float = 0.0  # the portrait's own inner-lip gap in pixels of the crop
    eyes: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # each eye's opening outline (upper lid, then lower
    # lid back) as it is in the crop and as it is to be
    eye_open: np.ndarray = field(default_factory=lambda: np.ones(2))  # each eye's desired / own opening (0 = shut)


def expression_delta(driver: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The driver's expression: expressive points ``(len(EXPRESSIVE), 2)`` moved since the reference,
    head pose removed (affine fit on the stable points), in the reference frame's pixels."""
    a, t = fit_affine(driver[_STABLE], reference[_STABLE])
    return apply(a, t, driver[_EXPR]) - reference[_EXPR]


def eye_ratio(driver: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each eye's openness now over at the reference ``(2,)`` (subject's right, left)."""
    return fm.eye_openness_each(driver) / np.maximum(fm.eye_openness_each(reference), 1e-3)


def desired_points(portrait: PortraitFace, driver: np.ndarray, reference: np.ndarray, gain: float) -> np.ndarray:
    """Where the portrait's expressive points go ``(len(EXPRESSIVE), 2)``, in the portrait's frame."""
    p = portrait.landmarks
    a, _ = fit_similarity(reference[_STABLE], p[_STABLE])
    out = p[_EXPR] + gain * (expression_delta(driver, reference) @ a.T)
    # eyelids: the upper lid goes towards the lower one by the driver's openness ratio
    ratio = np.clip(1.0 + gain * (eye_ratio(driver, reference) - 1.0), 0.0, 1.6)
    for (up, lo), r in zip(_EYE_ROWS, ratio):
        lower = p[_EXPR[lo]]
        out[up] = lower + (p[_EXPR[up]] - lower) * r
        out[lo] = lower
    # inner lips never cross: the lower one stays below the upper one along the face's vertical
    down = face_down(p)
    upper, lower = out[_LIP_ROWS[0]], out[_LIP_ROWS[1]]
    gap = (lower - upper) @ down
    out[_LIP_ROWS[1]] = lower + np.maximum(-gap, 0.0)[:, None] * down
    return out


def face_down(pts: np.ndarray) -> np.ndarray:
    """Unit vector from the eyes towards the chin (the face's vertical)."""
    across = pts[263] - pts[33]
    down = np.array([-across[1], across[0]])
    return down / max(np.linalg.norm(down), 1e-6)


def control_points(portrait: PortraitFace, driver: np.ndarray, reference: np.ndarray,
                   pose: tuple[np.ndarray, np.ndarray], settings: ExpressionSettings) -> ControlPoints:
    """Control points in the animated crop; ``pose`` maps the portrait's pixels to the crop's (affine)."""
    a, t = pose
    p = portrait.landmarks
    desired = apply(a, t, desired_points(portrait, driver, reference, settings.gain))
    iod = portrait.inter_ocular * np.sqrt(abs(np.linalg.det(a)))
    sigma = np.concatenate([np.where(_WARP_EYE, settings.eye_sigma, settings.sigma),
                            np.where(_ANCHOR_EYE, settings.eye_sigma, settings.sigma)]) * iod
    down_now = face_down(apply(a, t, p))
    gap = float(np.max((desired[_LIP_ROWS[1]] - desired[_LIP_ROWS[0]]) @ down_now))
    lips_now = apply(a, t, p[_EXPR[_INNER_LIPS]])
    own_gap = float(max(0.0, np.max((apply(a, t, p[_EXPR[_LIP_ROWS[1]]]) - apply(a, t, p[_EXPR[_LIP_ROWS[0]]])) @ down_now)))
    own = [np.linalg.norm(p[_EXPR[up]] - p[_EXPR[lo]], axis=-1).mean() for up, lo in _EYE_ROWS]
    now = [np.linalg.norm(desired[up] - desired[lo], axis=-1).mean() / np.sqrt(abs(np.linalg.det(a)))
           for up, lo in _EYE_ROWS]
    current, steer = apply(a, t, p[_EXPR[_WARP]]), desired[_WARP].copy()
    down = face_down(apply(a, t, p))
    for rows, o, n in zip(_WARP_LOWER_LIDS, own, now):  # a shutting upper lid lands on the lower one: the lower lid's
        # (still) points step below it by the closed part of the opening, so two points never meet
        shift = max(0.0, float(o - n)) * np.sqrt(abs(np.linalg.det(a))) * 0.6
        steer[rows] += shift * down
        current[rows] += shift * down
    return ControlPoints(current=current, desired=steer, anchors=apply(a, t, p[_ANCHORS]),
                         sigma=sigma, mouth_gap=gap, inner_lips=desired[_INNER_LIPS], inner_lips_now=lips_now,
                         own_gap=own_gap,
                         eyes=tuple((apply(a, t, np.concatenate([p[_EXPR[up]], p[_EXPR[lo]][::-1]])),
                                     np.concatenate([desired[up], desired[lo][::-1]])) for up, lo in _EYE_ROWS),
                         eye_open=np.array([n / max(o, 1e-6) for n, o in zip(now, own)]))


def displacement_field(cp: ControlPoints, height: int, width: int, ridge: float = 1e-3) -> np.ndarray:
    """Backward displacement ``(H, W, 2)`` float32: the crop at ``x`` is to show what is at ``x + f(x)``.

    A Gaussian radial-basis interpolation through ``f(desired) = current - desired`` and ``f(anchor) = 0``,
    with one sigma per point; Gaussians factor into x and y, so the field is ``(Gy * w) @ Gx.T``.
    """
    centres = np.concatenate([cp.desired, cp.anchors])
    values = np.concatenate([cp.current - cp.desired, np.zeros_like(cp.anchors)])
    s2 = 2.0 * cp.sigma**2
    d = centres[:, None, :] - centres[None, :, :]
    k = np.exp(-(d**2).sum(-1) / s2[None, :])
    w = np.linalg.solve(k + ridge * np.eye(len(k)), values)  # (N, 2)
    gx = np.exp(-(np.arange(width, dtype=np.float64)[:, None] - centres[None, :, 0]) ** 2 / s2)  # (W, N)
    gy = np.exp(-(np.arange(height, dtype=np.float64)[:, None] - centres[None, :, 1]) ** 2 / s2)  # (H, N)
    fx = (gy * w[:, 0]) @ gx.T
    fy = (gy * w[:, 1]) @ gx.T
    return np.stack([fx, fy], -1).astype(np.float32)


def warp(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``image`` ``(H, W, C)`` uint8 sampled at ``x + field(x)`` (bilinear, edges repeated)."""
    import cv2

    h, w = image.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + field[..., 0], gy + field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _region(points: np.ndarray, margin: float, h: int, w: int) -> tuple[int, int, int, int]:
    """The pixel box ``(x0, y0, x1, y1)`` around ``points`` ``(N, 2)`` widened by ``margin``, inside the image."""
    x0, y0 = np.floor(points.min(0) - margin).astype(int)
    x1, y1 = np.ceil(points.max(0) + margin).astype(int) + 1
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _soft(size: tuple[int, int], origin: tuple[int, int], blur: float, fill=(), lines=(), width: int = 1) -> np.ndarray:
    """A soft mask ``(h, w, 1)`` float32 in [0, 1] of a box at ``origin``: polygons ``fill`` filled and
    polylines ``lines`` drawn (sub-pixel, anti-aliased), blurred by ``blur`` pixels."""
    import cv2

    mask = np.zeros(size, np.uint8)
    shift = np.asarray(origin, np.float64)
    for poly in fill:
        cv2.fillPoly(mask, [np.round((poly - shift) * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    for line in lines:
        cv2.polylines(mask, [np.round((line - shift) * 4).astype(np.int32)], False, 255, thickness=width,
                      lineType=cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), blur)[..., None]


def paint_cavity(image: np.ndarray, cp: ControlPoints, iod: float, rgb: np.ndarray = CAVITY_RGB) -> np.ndarray:
    """Darken what the mouth opens beyond the portrait's own opening (the desired inner-lip outline
    less the portrait's: a smiling portrait keeps its teeth), in proportion to the extra opening
    (only the mouth's box is touched)."""
    strength = float(np.clip((cp.mouth_gap - cp.own_gap - 0.02 * iod) / (0.06 * iod), 0.0, 1.0))
    if strength <= 0.0:
        return image
    soft = max(1.0, 0.02 * iod)
    x0, y0, x1, y1 = _region(cp.inner_lips, 3 * soft, *image.shape[:2])
    if x1 <= x0 or y1 <= y0:
        return image
    size, origin = (y1 - y0, x1 - x0), (x0, y0)
    alpha = _soft(size, origin, soft, fill=[cp.inner_lips])
    if cp.inner_lips_now is not None and cp.own_gap > 0.02 * iod:
        alpha = np.clip(alpha - _soft(size, origin, soft, fill=[cp.inner_lips_now]), 0.0, 1.0)
    alpha = alpha * strength
    box = image[y0:y1, x0:x1].astype(np.float32)
    # keep the texture a little (lit teeth edges, tongue) but mostly shadow
    shade = 0.25 * box + 0.75 * np.asarray(rgb, np.float32)
    out = image.copy()
    out[y0:y1, x0:x1] = np.clip(box * (1 - alpha) + shade * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


SHUT_BELOW = 0.45  # an eye opened less than this share of its own opening gets its lid painted over


def paint_lids(image: np.ndarray, cp: ControlPoints, face: PortraitFace, iod: float) -> np.ndarray:
    """Cover what a shutting eye no longer shows (its opening now, less the opening it is to keep)
    with its own lid skin, and draw the lash line where the lid comes to rest, fading in as the eye
    shuts (the warp alone leaves a squeezed sliver of eye white and iris). Only the eyes' boxes are touched."""
    import cv2

    if face.lid_rgb is None or face.lash_rgb is None:
        return image
    out = image
    soft = max(0.8, 0.012 * iod)
    for k, (now, kept) in enumerate(cp.eyes):
        strength = float(np.clip((SHUT_BELOW - cp.eye_open[k]) / (SHUT_BELOW - 0.1), 0.0, 1.0))
        if strength <= 0.0:
            continue
        x0, y0, x1, y1 = _region(np.concatenate([now, kept]), 4 * soft + 2, *image.shape[:2])
        if x1 <= x0 or y1 <= y0:
            continue
        size, origin = (y1 - y0, x1 - x0), (x0, y0)
        opening = _soft(size, origin, 0.01, fill=[now])  # crisp: the difference is dilated and blurred below
        keep = _soft(size, origin, 0.01, fill=[kept])
        cover = cv2.dilate(np.clip(opening - keep, 0, 1)[..., 0], np.ones((3, 3), np.uint8))
        alpha = cv2.GaussianBlur(cover, (0, 0), soft)[..., None] * strength
        lid_line = kept[: len(kept) - len(kept) // 2]  # the upper lid, where it is to be
        beta = _soft(size, origin, soft * 0.7, lines=[lid_line], width=max(1, int(round(0.015 * iod)))) * strength
        box = out[y0:y1, x0:x1].astype(np.float32)
        box = box * (1 - alpha) + face.lid_rgb[k].astype(np.float32) * alpha
        box = box * (1 - beta) + face.lash_rgb[k].astype(np.float32) * beta
        out = out.copy() if out is image else out
        out[y0:y1, x0:x1] = np.clip(box + 0.5, 0, 255).astype(np.uint8)
    return out


class ExpressionTransfer:
    """Per-avatar expression transfer: ``apply(crop, driver, reference)`` -> the animated crop with the
    driver's expression. The crop's head pose is measured on the crop itself (a tracking FaceMesh,
    about 3-5 ms; the driver's relative head motion when the mesh loses the face): where the model
    put the face, not where it should have. Holds a mediapipe graph: :meth:`close` it (or use ``with``).
    """

    def __init__(self, portrait: "PortraitFace | None", settings: ExpressionSettings = ExpressionSettings()):
        self.portrait = portrait  # None: set before apply (the live loop switches avatars)
        self.settings = settings.validate()
        self._mesh: "fm.FaceMesh | None" = None

    def pose_from_driver(self, driver: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The output's head pose as relative mode renders it: the driver's head motion since the
        reference (affine on stable points), conjugated into the portrait's frame."""
        p = self.portrait.landmarks
        b, bt = fit_similarity(reference[_STABLE], p[_STABLE])  # driver reference -> portrait
        m, mt = fit_affine(reference[_STABLE], driver[_STABLE])  # driver reference -> driver now
        b_inv = np.linalg.inv(b)
        # portrait -> driver reference -> driver now -> portrait
        a = b @ m @ b_inv
        t = b @ (m @ (-b_inv @ bt) + mt) + bt
        return a, t

    def pose_of(self, crop: np.ndarray) -> "tuple[np.ndarray, np.ndarray] | None":
        """The affine map from the portrait's pixels to the face in ``crop`` (None: no face found)."""
        if self._mesh is None:
            self._mesh = fm.FaceMesh(tracking=True, refine=True)  # as the portrait's own landmarks
        marks = self._mesh(crop)
        return None if marks is None else fit_affine(self.portrait.landmarks[_STABLE], marks[_STABLE])

    def apply(self, crop: np.ndarray, driver: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """``crop`` uint8 ``(S, S, 3)`` animated by the model; ``driver`` / ``reference`` the driver's landmarks
        now and at the reference frame (pixels of a crop of the same size)."""
        if self.settings.gain == 0.0 or self.portrait is None:
            return crop
        pose = self.pose_of(crop) or self.pose_from_driver(driver, reference)
        cp = control_points(self.portrait, driver, reference, pose, self.settings)
        if np.allclose(cp.current, cp.desired, atol=1e-3):
            return crop
        out = warp(crop, displacement_field(cp, crop.shape[0], crop.shape[1], self.settings.ridge))
        if self.settings.cavity:
            iod = self.portrait.inter_ocular * np.sqrt(abs(np.linalg.det(pose[0])))
            out = paint_cavity(out, cp, iod, self.portrait.cavity_rgb)
            out = paint_lids(out, cp, self.portrait, iod)
        return out

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> "ExpressionTransfer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the reference frame -------------------------------------------------------------------------
REFERENCE_WINDOW_S = 1.0  # the neutral reference is chosen among the driver's first second


def neutral_score(marks: np.ndarray) -> float:
    """How far a face is from neutral (lower is more neutral): mouth openness minus eye openness."""
    return float(fm.mouth_openness(marks) - fm.eye_openness(marks))


def reference_score(marks: np.ndarray, like: "PortraitFace | None" = None) -> float:
    """How poor a reference a driving face makes (lower is better): how far its mouth and eye openness
    are from the portrait's own (the portrait's expression is taken to match the reference's), or,
    without a portrait face, how far it is from neutral (:func:`neutral_score`)."""
    if like is None:
        return neutral_score(marks)
    p = like.landmarks
    return float(abs(fm.mouth_openness(marks) - fm.mouth_openness(p)) + abs(fm.eye_openness(marks) - fm.eye_openness(p)))


def best_reference(marks: "list[Optional[np.ndarray]]", like: "PortraitFace | None" = None) -> int:
    """Index of the face among ``marks`` most like the portrait's expression (``like``; None: the most
    neutral one: mouth closed, eyes open); 0 when none has a face. A neutral portrait gets the most
    neutral driving face; a clip's own first frame as portrait gets that frame."""
    scores = [reference_score(m, like) if m is not None else np.inf for m in marks]
    return int(np.argmin(scores)) if scores and np.isfinite(min(scores)) else 0


def portrait_face(rgb: np.ndarray) -> Optional[PortraitFace]:
    """The portrait's landmarks (one FaceMesh run on the crop the model animates) and the colour of the
    inside of its mouth; None without a face."""
    with fm.FaceMesh(tracking=False, refine=True) as mesh:
        marks = mesh(rgb)
    if marks is None:
        return None
    lid, lash = eyelid_colours(rgb, marks)
    return PortraitFace(marks, mouth_shadow(rgb, marks), lid, lash)


def _colours_at(rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    xy = np.clip(np.round(pts).astype(int), 0, [w - 1, h - 1])
    return rgb[xy[:, 1], xy[:, 0]].astype(np.float64)


_LUMA = np.array([0.299, 0.587, 0.114])
_BROWS_LOW = ((46, 53, 52, 65, 55), (276, 283, 282, 295, 285))  # each brow's lower edge, outer to inner


def eyelid_colours(rgb: np.ndarray, marks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each eye's upper-lid skin (median of the lighter half of the colours half-way from the lid to the brow) and lash
    line (the darkest third of the upper lid's edge): ``(2, 3)`` each, what a shut eye is painted with."""
    lids, lashes = [], []
    for (up, _), brow in zip(_EYE_PAIRS, _BROWS_LOW):
        lid = marks[list(up)]
        b = marks[list(brow)]
        b = np.stack([np.interp(np.linspace(0, 1, len(lid)), np.linspace(0, 1, len(b)), b[:, k]) for k in (0, 1)], -1)
        skin = _colours_at(rgb, lid + 0.5 * (b - lid))
        lids.append(np.median(skin[np.argsort(skin @ _LUMA)[len(skin) // 2:]], 0))  # the lighter half: skin, not liner
        edge = _colours_at(rgb, lid)
        lashes.append(edge[np.argsort(edge @ _LUMA)[: max(1, len(edge) // 3)]].mean(0))
    return np.array(lids), np.array(lashes)


def mouth_shadow(rgb: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """The colour of the portrait's lip seam, darkened: its open mouth's inside (grey in a grey photo,
    the painting's own palette in a painting). ``(3,)`` float RGB."""
    upper, lower = marks[list(fm.LIPS_INNER_UPPER)], marks[list(fm.LIPS_INNER_LOWER)[::-1]]
    px = _colours_at(rgb, 0.5 * (upper[1:-1] + lower))  # between the inner lips, corner to corner
    dark = px[np.argsort(px @ _LUMA)[: max(1, len(px) // 3)]].mean(0)
    return 0.35 * dark


NO_PORTRAIT_MESH = "no face mesh found in the portrait: its mouth and eyes will not follow the driver's"


@dataclass
class NeutralStart:
    """A driving stream with its reference chosen: ``index`` of the frame of the first
    :data:`REFERENCE_WINDOW_S` s most like the portrait (:func:`best_reference`), that frame and its landmarks, and ``stream``: every ``(frame, landmarks)``
    from the first one on (the window's frames are buffered, nothing is read twice)."""

    index: int
    frame: np.ndarray
    marks: Optional[np.ndarray]
    stream: "Iterator[tuple[np.ndarray, Optional[np.ndarray]]]"


def neutral_start(marked: "Iterable[tuple[np.ndarray, Optional[np.ndarray]]]", fps: float,
                  like: "PortraitFace | None" = None) -> Optional[NeutralStart]:
    """Buffer the first second of ``(frame, landmarks)`` and choose its reference: the face most like
    the portrait's expression ``like`` (:func:`best_reference`; None: no frames)."""
    it = iter(marked)
    head = list(itertools.islice(it, max(1, round(fps * REFERENCE_WINDOW_S))))
    if not head:
        return None
    i = best_reference([m for _, m in head], like)
    return NeutralStart(index=i, frame=head[i][0], marks=head[i][1], stream=itertools.chain(head, it))


def gain_argument(text: str) -> float:
    """``--expression`` as argparse reads it: a number in :data:`GAIN_RANGE`."""
    import argparse

    try:
        gain = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    lo, hi = GAIN_RANGE
    if not lo <= gain <= hi:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}, got {text}")
    return gain


def add_expression_argument(parser) -> None:
    """``--expression GAIN``, the same in every tool."""
    lo, hi = GAIN_RANGE
    parser.add_argument("--expression", type=gain_argument, default=ExpressionSettings.gain, metavar="GAIN",
                        help=f"strength of the mouth, eye and brow motion: {lo:g} = head pose only, 1 = as the driver "
                             f"(default), up to {hi:g}")
