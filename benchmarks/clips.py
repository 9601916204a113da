"""Evaluation clips and portraits, read and cropped exactly as mra-animate reads them.

A clip is a video file (``nets.media``); its frames come out as the model sees them, uint8
``(size, size, 3)`` RGB at the video's own frame rate, by ``live.animate.driving_frames``:

* ``crop="none"``: every frame resized to ``size`` (for square face crops such as ``mra-prepare``'s);
* ``crop="auto"``: the tools' face tracker (first face found, smoothed crop box), as mra-animate's
  default.

Portraits go through ``live.portrait.source_crop`` (one face crop, or a plain resize for ``none``).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from nets import media
from live.portrait import CROPS, source_crop
from live.animate import driving_frames
from nets.errors import UserError

__all__ = ["CROPS", "list_clips", "list_portraits", "read_clip", "read_portrait"]


def _listing(path: "str | Path", exts: tuple[str, ...], what: str) -> list[Path]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if path.is_file():
        if path.suffix.lower() not in exts:
            raise UserError(f"{path} is not {what} ({', '.join(exts)})")
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not found:
        raise UserError(f"no {what}s in {path} (expected {', '.join(exts)} files)")
    return found


def list_clips(path: "str | Path") -> list[Path]:
    """Video files in the folder ``path`` (sorted by name), or ``path`` itself when it is one."""
    return _listing(path, media.VIDEO_EXTS, "a video file")


def list_portraits(path: "str | Path") -> list[Path]:
    """Image files in the folder ``path`` (sorted by name), or ``path`` itself when it is one."""
    return _listing(path, media.IMAGE_EXTS, "an image file")


def read_clip(path: "str | Path", size: int, crop: str = "none", max_frames: Optional[int] = None,
              detector=None) -> Iterator[np.ndarray]:
    """Stream the clip's frames as the model sees them (at most ``max_frames``)."""
    info = media.probe_video(path, "clip")
    frames = driving_frames(info, size, info.fps, crop, detector)
    return itertools.islice(frames, max_frames) if max_frames is not None else frames


def read_portrait(path: "str | Path", size: int, crop: str = "none", detector=None) -> np.ndarray:
    """A portrait as the model sees it: ``(size, size, 3)`` uint8."""
    rgb = media.read_image(path, what="portrait")
    return source_crop(rgb, size, crop, detector, name=str(path))
