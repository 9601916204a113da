"""Face-mesh landmarks of the training clips: the sidecar files beside the clips.

A sidecar is ``<clip>.landmarks.npy`` in the clip's split folder (``train/alice#01.mp4`` and the
frame folder ``train/alice#01/`` both have ``train/alice#01.landmarks.npy``): float16
``(T, 468, 2)``, the face-mesh points of every frame of the clip in decode order
(:class:`nets.media.facemesh.FaceMesh`, one picture at a time: ``tracking=False, refine=True``, as
the expression figures measure), in pixel coordinates (x, y) of the clip's own frames, i.e. in
[0, W] x [0, H]; a row of NaN where no face was found. ``mra-prepare`` writes them with the clips,
``mra-prepare --landmarks-only OUT_DIR`` adds them to a folder prepared without them. They are
written to a hidden temporary name and renamed when complete.

Training reads a sidecar as :class:`ClipFaces`: per frame the face points of
:data:`nets.config.FACE_TARGETS` (mouth centre = mean of the inner lips, chin = point 152, each eye's
centre = mean of its lids), the mouth width (outer corners 61-291) and the eye width (mean of
33-133 and 362-263), all as fractions of the frame (x / W, y / H: free of the frame size), the mouth
and eye openness of :mod:`nets.media.facemesh` (for pair sampling), and whether a face was found.
:func:`to_model` maps fractions to the networks' coordinates; :func:`mirror` is the horizontal flip
(x -> 1 - x, and the subject's right eye becomes the left one).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ..config import FACE_TARGETS
from ..errors import UserError
from ..media import facemesh as fm
from ..media.facemesh import NUM_POINTS
from ..media.outputs import sweep_partials, temp_name

SUFFIX = ".landmarks.npy"
DTYPE = np.float16  # 0.125 px steps at 256 px: far below the face mesh's own jitter

Mesh = Callable[[np.ndarray], Optional[np.ndarray]]  # uint8 RGB (H, W, 3) -> (468, 2) pixel coordinates or None


class SidecarError(UserError):
    """A landmark sidecar that cannot be used (unreadable, wrong shape)."""


def sidecar_path(folder: "str | os.PathLike", name: str) -> Path:
    """The sidecar of the clip called ``name`` (file stem or frame-folder name) in ``folder``."""
    return Path(folder) / f"{name}{SUFFIX}"


def mark_frames(frames: Iterable[np.ndarray], mesh: Mesh) -> np.ndarray:
    """The face mesh of every frame: ``(T, 468, 2)`` float16, NaN rows where ``mesh`` finds no face."""
    rows = []
    for rgb in frames:
        pts = mesh(rgb)
        rows.append(np.full((NUM_POINTS, 2), np.nan, np.float32) if pts is None
                    else np.asarray(pts, np.float32).reshape(NUM_POINTS, 2))
    if not rows:
        return np.zeros((0, NUM_POINTS, 2), DTYPE)
    return np.stack(rows).astype(DTYPE)


def write_sidecar(path: "str | os.PathLike", marks: np.ndarray) -> Path:
    """Write ``marks`` ``(T, 468, 2)`` to ``path`` atomically (a hidden temporary, then a rename)."""
    path = Path(path)
    marks = np.asarray(marks)
    if marks.ndim != 3 or marks.shape[1:] != (NUM_POINTS, 2):
        raise ValueError(f"landmarks must be (T, {NUM_POINTS}, 2), got {marks.shape}")
    sweep_partials(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, marks.astype(DTYPE), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_sidecar(path: "str | os.PathLike") -> np.ndarray:
    """The landmarks of a sidecar as ``(T, 468, 2)`` float32 (NaN rows where no face)."""
    path = Path(path)
    try:
        marks = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SidecarError(f"cannot read the landmark sidecar {path} ({e}); re-create it with "
                           f"mra-prepare --landmarks-only --overwrite") from None
    if marks.ndim != 3 or marks.shape[1:] != (NUM_POINTS, 2) or not np.issubdtype(marks.dtype, np.floating):
        raise SidecarError(f"{path} is not a landmark sidecar ({marks.dtype} {marks.shape}, expected (T, "
                           f"{NUM_POINTS}, 2) floats); re-create it with mra-prepare --landmarks-only --overwrite")
    return marks.astype(np.float32)


# -- the targets training reads ------------------------------------------------------------------

_TARGET_POINTS = {"mouth": fm.LIPS_INNER_UPPER + fm.LIPS_INNER_LOWER, "chin": (152,),
                  "right_eye": fm.RIGHT_EYE_UPPER + fm.RIGHT_EYE_LOWER, "left_eye": fm.LEFT_EYE_UPPER + fm.LEFT_EYE_LOWER}
assert set(_TARGET_POINTS) == set(FACE_TARGETS)
MOUTH_CORNERS = (61, 291)
EXPRESSION_CANDIDATES = 16  # frames an expression pair chooses its driving frame from


def _mirror_order() -> list[int]:
    swap = {"right": "left", "left": "right"}
    names = []
    for name in FACE_TARGETS:
        side = name.split("_", 1)[0]
        names.append(name.replace(side, swap[side], 1) if side in swap else name)
    return [FACE_TARGETS.index(n) for n in names]


MIRROR = _mirror_order()  # FACE_TARGETS index -> the index of the same point in the mirrored face


@dataclass(frozen=True)
class ClipFaces:
    """The face targets of every frame of a clip (see the module doc); rows without a face are 0 and not valid."""

    points: np.ndarray  # (T, len(FACE_TARGETS), 2) float32 fractions of the frame
    widths: np.ndarray  # (T, 2) float32: mouth width, eye width (fractions of the frame's width)
    mouth: np.ndarray  # (T,) float32 mouth openness
    eyes: np.ndarray  # (T,) float32 eye openness
    valid: np.ndarray  # (T,) bool

    def __len__(self) -> int:
        return len(self.valid)

    @classmethod
    def from_marks(cls, marks: np.ndarray, width: int, height: int) -> "ClipFaces":
        """From landmarks ``(T, 468, 2)`` in pixels of ``width`` x ``height`` frames (NaN rows: no face)."""
        marks = np.asarray(marks, np.float64)
        valid = np.isfinite(marks).all(axis=(1, 2))
        safe = np.where(valid[:, None, None], marks, 0.0)
        frac = safe / np.array([width, height], np.float64)
        points = np.stack([frac[:, list(_TARGET_POINTS[n])].mean(1) for n in FACE_TARGETS], 1)
        mouth_w = np.linalg.norm(frac[:, MOUTH_CORNERS[0]] - frac[:, MOUTH_CORNERS[1]], axis=-1)
        c = fm.EYE_CORNERS
        eye_w = 0.5 * (np.linalg.norm(frac[:, c[0]] - frac[:, c[1]], axis=-1) +
                       np.linalg.norm(frac[:, c[2]] - frac[:, c[3]], axis=-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            mouth = np.where(valid, fm.mouth_openness(safe), 0.0)
            eyes = np.where(valid, fm.eye_openness(safe), 0.0)
        return cls(points=points.astype(np.float32), widths=np.stack([mouth_w, eye_w], -1).astype(np.float32),
                   mouth=mouth.astype(np.float32), eyes=eyes.astype(np.float32), valid=valid)


def expression_partner(faces: ClipFaces, first: int, candidates: np.ndarray) -> Optional[int]:
    """The candidate frame whose mouth + eye openness differs most from frame ``first``'s (the first such
    on a tie); None when ``first`` or every candidate has no face."""
    candidates = np.asarray(candidates, np.int64)
    ok = faces.valid[candidates]
    if not faces.valid[first] or not ok.any():
        return None
    score = np.abs(faces.mouth[candidates] - faces.mouth[first]) + np.abs(faces.eyes[candidates] - faces.eyes[first])
    return int(candidates[int(np.argmax(np.where(ok, score, -np.inf)))])


def mirror(points: np.ndarray) -> np.ndarray:
    """Face points ``(..., len(FACE_TARGETS), 2)`` (fractions) of the horizontally flipped frame."""
    out = points[..., MIRROR, :].copy()
    out[..., 0] = 1 - out[..., 0]
    return out


def to_model(frac: np.ndarray, size: int, pixel_centres: bool) -> np.ndarray:
    """Fractions of the frame -> the networks' coordinates of a ``size`` px frame.

    ``pixel_centres`` (nets.geometry.coordinate_grid): 2 f - 1 (pixel coordinate x in [0, W] -> 2x/W - 1);
    the official grid puts pixel i's centre (x = i + 0.5) at 2 i / (W - 1) - 1.
    """
    frac = np.asarray(frac, np.float32)
    if pixel_centres:
        return 2 * frac - 1
    return (2 * (frac * size - 0.5) / (size - 1) - 1).astype(np.float32)


def length_to_model(frac: np.ndarray, size: int, pixel_centres: bool) -> np.ndarray:
    """A length as a fraction of the frame -> in the networks' coordinates (see :func:`to_model`)."""
    frac = np.asarray(frac, np.float32)
    return (2 * frac if pixel_centres else 2 * frac * size / (size - 1)).astype(np.float32)
