"""Face-mesh landmarks of the training clips: the sidecar files beside the clips.

A sidecar is ``<clip>.landmarks.npy`` in the clip's split folder (``train/alice#01.mp4`` and the
frame folder ``train/alice#01/`` both have ``train/alice#01.landmarks.npy``): float16
``(T, 468, 2)``, the face-mesh points of every frame of the clip in decode order
(:class:`nets.media.facemesh.FaceMesh`, one picture at a time: ``tracking=False, refine=True``, as
the expression figures measure), in pixel coordinates (x, y) of the clip's own frames, i.e. in
[0, W] x [0, H]; a row of NaN where no face was found. ``mra-prepare`` writes them with the clips,
``mra-prepare --landmarks-only OUT_DIR`` adds them to a folder prepared without them. They are
written to a hidden temporary name and renamed when complete.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import UserError
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
