"""The portrait as the model sees it: the face crop of a source image (or the whole image resized)
and, for full-frame output, the portrait prepared for paste-back. Shared by mra-animate, mra-live,
mra-web's webcam tab and the benchmarks."""
from __future__ import annotations

import numpy as np

from nets import media
from nets.errors import UserError
from nets.media.face import CropBox, CropSettings, FaceDetector, crop_resize, face_crop, plausible_faces

from .pasteback import FrameSize, PasteBack

CROPS = ("auto", "none")


def source_box(rgb: np.ndarray, detector: "FaceDetector | None" = None, settings: CropSettings = CropSettings(),
               name: str = "the source image") -> CropBox:
    """The square face crop of the source, in its pixels (``UserError`` when it has no face, also
    when what the detector took for one is noise: :func:`nets.media.face.plausible_faces`)."""
    faces = plausible_faces(rgb, (detector or FaceDetector()).detect(rgb), settings.min_score)
    if not faces:
        raise UserError(f"no face found in {name}; use a photo where the face is clearly visible, or --crop none "
                        "to animate the whole image (resized to the model's size)")
    h, w = rgb.shape[:2]
    return face_crop(faces[0], w, h, settings)


def source_crop(rgb: np.ndarray, size: int, crop: str, detector: "FaceDetector | None" = None,
                settings: CropSettings = CropSettings(), name: str = "the source image") -> np.ndarray:
    """The source as the model sees it: ``(size, size, 3)`` uint8 (face crop, or the whole image resized)."""
    if crop == "none":
        return media.resize_rgb(rgb, size)
    return crop_resize(rgb, source_box(rgb, detector, settings, name), size)


def prepare_portrait(rgb: np.ndarray, size: int, crop: str, detector: "FaceDetector | None" = None,
                     out_size: "FrameSize | None | bool" = False, settings: CropSettings = CropSettings(),
                     name: str = "the source image") -> "tuple[np.ndarray, PasteBack | None]":
    """The source as the model sees it ``(size, size, 3)`` uint8 and, for full-frame output (crop
    auto, ``out_size`` a :class:`FrameSize` or None for the portrait's own size; False: crop
    output), the portrait prepared for paste-back."""
    if crop == "none":
        return media.resize_rgb(rgb, size), None
    box = source_box(rgb, detector, settings, name)
    paste = None if out_size is False else PasteBack.prepare(rgb, box, out_size)
    return crop_resize(rgb, box, size), paste
