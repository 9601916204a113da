"""Reading evaluation clips and portraits as square uint8 RGB frames, streaming.

A clip is a video file (read with PyAV, decoded frame by frame) or a folder of PNG/JPEG frames
(sorted by name), as written by ``mra-prepare``. Frames come out as ``(size, size, 3)`` uint8 RGB.

Crops (``crop``):

* ``none``: the clip must already be square (a face crop); it is only resized.
* ``center``: a fixed centred square of ``center_fraction`` of the shorter side (no face
  detection; for trials on clips whose face sits in the middle).
* ``auto``: face detection and smoothed crops by ``live.face`` (see :func:`auto_crop`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from nets.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CROPS = ("none", "center", "auto")


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def list_clips(path: "str | Path") -> list[Path]:
    """Video files and frame folders under ``path`` (or ``path`` itself when it is one)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"{path} is not a video file ({', '.join(VIDEO_SUFFIXES)})")
        return [path]
    if _frame_files(path) and not any(p.suffix.lower() in VIDEO_SUFFIXES for p in path.iterdir()):
        return [path]
    clips = sorted(p for p in path.iterdir()
                   if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and _frame_files(p)))
    if not clips:
        raise UserError(f"no clips in {path}: expected video files or folders of PNG frames")
    return clips


def list_images(path: "str | Path") -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"no such file or folder: {path}")
    images = _frame_files(path)
    if not images:
        raise UserError(f"no images (.png, .jpg) in {path}")
    return images


def square(image: np.ndarray, size: int, crop: str = "none", center_fraction: float = 1.0,
           name: str = "frame") -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(size, size, 3)`` by the ``none`` / ``center`` crop and a LANCZOS resize."""
    h, w = image.shape[:2]
    if crop == "none":
        if abs(h - w) > 1:
            raise UserError(f"{name} is {w}x{h}, not a square face crop: prepare it with mra-prepare or pass "
                            "--crop center (a fixed centre crop) or --crop auto")
    elif crop == "center":
        side = int(round(min(h, w) * center_fraction))
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top:top + side, left:left + side]
    else:
        raise ValueError(f"square() handles crops none and center, not {crop!r}")
    if image.shape[0] != size or image.shape[1] != size:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
    return np.ascontiguousarray(image)


def _raw_frames(path: Path, max_frames: "int | None") -> Iterator[np.ndarray]:
    if path.is_dir():
        for i, f in enumerate(_frame_files(path)):
            if max_frames is not None and i >= max_frames:
                return
            yield np.asarray(Image.open(f).convert("RGB"))
        return
    try:
        import av
    except ImportError as e:
        raise UserError(f"reading video files needs PyAV (pip install av): {e}") from None
    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001 - av raises several error types
        raise UserError(f"cannot open {path} as a video: {e}") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if max_frames is not None and i >= max_frames:
                return
            yield frame.to_ndarray(format="rgb24")


def auto_crop(frames: Iterable[np.ndarray], size: int, detect_every: int = 2) -> Iterator[np.ndarray]:
    """One stable face crop per clip, as ``mra-prepare`` makes for training (``live.face.face_tube``:
    the union of the face boxes, enlarged), every frame cut to it and resized to ``size``.

    The frames are held in memory (clips are bounded by ``--max-frames``). A still image is a
    one-frame clip. UserError when no face is found.
    """
    from live.face import FaceDetector, crop_resize, face_tube

    frames = list(frames)
    if not frames:
        return iter(())
    h, w = frames[0].shape[:2]
    with FaceDetector() as detector:
        faces = []
        for i, f in enumerate(frames):
            if i % detect_every == 0:
                found = detector.detect(f)
                faces.append(found[0] if found else None)
    tube = face_tube(faces, w, h)
    if tube is None:
        raise UserError("--crop auto found no face in a clip or portrait; give square face crops (mra-prepare) or "
                        "use --crop center")
    return (crop_resize(f, tube, size) for f in frames)


def read_clip(path: "str | Path", size: int, max_frames: "int | None" = None, crop: str = "none",
              center_fraction: float = 1.0) -> Iterator[np.ndarray]:
    """Stream the clip's frames as uint8 ``(size, size, 3)`` RGB (at most ``max_frames``)."""
    path = Path(path)
    raw = _raw_frames(path, max_frames)
    if crop == "auto":
        yield from auto_crop(raw, size)
        return
    for frame in raw:
        yield square(frame, size, crop, center_fraction, name=str(path))


def read_image(path: "str | Path", size: int, crop: str = "none", center_fraction: float = 1.0) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("RGB"))
    if crop == "auto":
        return next(iter(auto_crop([image], size)))
    return square(image, size, crop, center_fraction, name=str(path))
