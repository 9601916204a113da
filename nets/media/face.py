"""Face detection (mediapipe's bundled BlazeFace detectors) and the square face crops the models see.

* :class:`FaceDetector`: ``detect(rgb) -> list[FaceBox]`` (best first): the short-range model,
  then the full-range one when it finds nothing. mediapipe is imported on first use (it takes
  about a second) and its native start-up chatter on stderr is silenced.
* :func:`face_crop`: a face box -> the square :class:`CropBox` around the head, framed like the
  VoxCeleb training clips (1.75 times the face box, centred slightly above it: measured on the
  VoxCeleb-style clips of ../shared, where mediapipe's face box spans 0.5-0.65 of the frame and
  sits a little below its centre), kept inside the image.
* :func:`face_tube`: one stable crop for a whole clip (the union of its face boxes, enlarged), as
  VoxCeleb was prepared: used by mra-prepare for training data.
* :class:`FaceTracker`: a smoothed per-frame crop for driving videos and the webcam. The crop
  stays put while the head moves inside a dead zone (so head motion reaches the model, as within
  a training clip) and glides after the head when it leaves it; detection runs every
  ``detect_every`` frames and every frame while the face is lost; the crop holds while the face
  is missing and jumps to the face when it comes back somewhere else. ``update(frame)`` is the
  only per-frame call, so mra-live can run it frame by frame.
* :func:`crop_resize`: cut a :class:`CropBox` out of a frame at sub-pixel precision and resize it.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Protocol, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixels (``x0, y0`` top-left, ``x1, y1`` bottom-right) with its score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    @property
    def size(self) -> float:
        """Side of the face: the larger of width and height."""
        return max(self.width, self.height)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class CropBox:
    """A square crop: centre ``(cx, cy)`` and ``side``, in pixels of the frame it was made for."""

    cx: float
    cy: float
    side: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = 0.5 * self.side
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def scaled(self, s: float) -> "CropBox":
        """The same crop in a frame scaled by ``s``."""
        return CropBox(self.cx * s, self.cy * s, self.side * s)


@dataclass(frozen=True)
class CropSettings:
    """Framing of the face crops (relative to the detector's face box).

    ``scale``: crop side / face box side; ``shift_y``: centre offset as a fraction of the face
    side (negative = up, to keep the hair in); ``min_score``: detector confidence threshold.
    """

    scale: float = 1.75
    shift_y: float = -0.08
    min_score: float = 0.5


def fit_crop(crop: CropBox, width: int, height: int) -> CropBox:
    """Keep a square crop inside a ``width`` x ``height`` frame: shrink it to the shorter side if
    needed, then shift it in (a crop never shows pixels that are not in the frame)."""
    side = min(crop.side, float(width), float(height))
    h = 0.5 * side
    cx = min(max(crop.cx, h), width - h)
    cy = min(max(crop.cy, h), height - h)
    return CropBox(cx, cy, side)


def face_crop(face: FaceBox, width: int, height: int, settings: CropSettings = CropSettings()) -> CropBox:
    """The square crop around one face, framed as in training and kept inside the frame."""
    cx, cy = face.center
    s = face.size
    return fit_crop(CropBox(cx, cy + settings.shift_y * s, settings.scale * s), width, height)


def face_tube(faces: Sequence["FaceBox | None"], width: int, height: int,
              settings: CropSettings = CropSettings(), outlier: float = 0.6) -> "CropBox | None":
    """One stable crop for a clip: the union of its face boxes, enlarged by the crop margin.

    ``faces``: the main face of each sampled frame (None where none was found). Boxes whose centre
    is more than ``outlier`` face sides from the median centre, or whose size is off by more than
    2x, are false detections and are left out. Returns None when no face is left.
    """
    boxes = [f for f in faces if f is not None and f.score >= settings.min_score and f.size > 0]
    if not boxes:
        return None
    centers = np.array([b.center for b in boxes])
    sizes = np.array([b.size for b in boxes])
    mc, ms = np.median(centers, axis=0), float(np.median(sizes))
    keep = [b for b, c, s in zip(boxes, centers, sizes)
            if np.hypot(*(c - mc)) <= outlier * ms + 1e-6 and 0.5 <= s / ms <= 2.0]
    keep = keep or boxes
    x0 = min(b.x0 for b in keep)
    y0 = min(b.y0 for b in keep)
    x1 = max(b.x1 for b in keep)
    y1 = max(b.y1 for b in keep)
    margin = (settings.scale - 1.0) * ms
    side = max(x1 - x0, y1 - y0) + margin
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1) + settings.shift_y * ms
    return fit_crop(CropBox(cx, cy, side), width, height)


def crop_resize(rgb: np.ndarray, crop: CropBox, size: int) -> np.ndarray:
    """Cut ``crop`` (sub-pixel) out of ``rgb`` ``(H, W, 3)`` uint8 and resize it to ``(size, size, 3)``.

    Parts of the crop outside the frame (only when the crop was not fitted) are edge-replicated.
    """
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = crop.box
    pad = int(math.ceil(max(0.0, -x0, -y0, x1 - w, y1 - h)))
    if pad:
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    im = Image.fromarray(rgb)
    out = im.resize((size, size), Image.Resampling.BICUBIC, box=(x0, y0, x1, y1), reducing_gap=2.0)
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native code (TFLite, glog) writes straight to file descriptor 2."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


RANGES = ("short", "full")  # mediapipe's BlazeFace models: model_selection 0 and 1
# The short-range model's box is a little tighter and lower on the face than the full-range one's,
# which the crop framing (CropSettings) was measured with: its boxes are mapped to the full-range
# frame (median over the 7 portraits of ../shared/data/faces/portraits and the drawn example where
# both models find the face: side x1.07, centre up by 0.045 of the side), so crops look the same
# whichever model found the face.
SHORT_TO_FULL_SCALE = 1.07
SHORT_TO_FULL_SHIFT_Y = -0.045


def _as_full_range(face: FaceBox) -> FaceBox:
    cx, cy = face.center
    hw, hh = 0.5 * face.width * SHORT_TO_FULL_SCALE, 0.5 * face.height * SHORT_TO_FULL_SCALE
    cy += SHORT_TO_FULL_SHIFT_Y * face.size
    return FaceBox(cx - hw, cy - hh, cx + hw, cy + hh, face.score)


# BlazeFace finds "faces" in pure noise: 5 of 40 noise pictures (256-640 px, uniform and gaussian)
# gave one, scored 0.50-0.69 (real faces: 0.86-0.97). What they hold is told apart by structure:
# the correlation of neighbouring pixels in the face box (see structure()) was -0.03..0.00 for those
# boxes and 0.85-0.98 for the faces of the 7 portraits and 34 clip first frames of ../shared and
# the drawn example portrait.
MIN_STRUCTURE = 0.5
STRUCTURE_SIDE = 64  # the face box's content is measured at this size (gray, area averages)


def structure(rgb: np.ndarray, face: FaceBox) -> float:
    """How much the content of ``face`` in ``rgb`` is a picture rather than noise: the smaller of
    the correlations of horizontally and vertically neighbouring pixels, with the box brought to
    :data:`STRUCTURE_SIDE` pixels (gray, area averages). Near 1 for photos and drawings, near 0 for
    noise; 0 for a flat box or one outside the picture."""
    h, w = rgb.shape[:2]
    x0, y0 = max(int(math.floor(face.x0)), 0), max(int(math.floor(face.y0)), 0)
    x1, y1 = min(int(math.ceil(face.x1)), w), min(int(math.ceil(face.y1)), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    g = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1])).convert("L")
    a = np.asarray(g.resize((STRUCTURE_SIDE, STRUCTURE_SIDE), Image.Resampling.BOX), dtype=np.float64)

    def corr(u: np.ndarray, v: np.ndarray) -> float:
        u, v = u - u.mean(), v - v.mean()
        d = math.sqrt(float((u * u).sum()) * float((v * v).sum()))
        return float((u * v).sum()) / d if d > 1e-9 else 0.0
    return min(corr(a[:, :-1], a[:, 1:]), corr(a[:-1], a[1:]))


def plausible_faces(rgb: np.ndarray, faces: "Sequence[FaceBox]", min_score: float) -> list[FaceBox]:
    """The detections of ``rgb`` worth believing: at least ``min_score`` and a picture inside the
    box (:func:`structure` at least :data:`MIN_STRUCTURE`), best first as given."""
    return [f for f in faces if f.score >= min_score and structure(rgb, f) >= MIN_STRUCTURE]


class FaceDetector:
    """mediapipe's bundled BlazeFace detectors (no download; CPU, a few ms a frame).

    ``detect(rgb)`` takes ``(H, W, 3)`` uint8 RGB and returns faces in pixels, best first (score
    times a small preference for larger faces). ``ranges``: the models tried in turn until one
    finds a face: by default the short-range model (faces within about 2 m, including faces that
    fill the frame, which the full-range model misses), then the full-range one (small, distant
    faces). Boxes are in the full-range model's framing whichever model found them. Not
    thread-safe: one detector per thread.
    """

    def __init__(self, min_score: float = 0.5, ranges: "Sequence[str]" = RANGES):
        if not ranges or any(r not in RANGES for r in ranges):
            raise ValueError(f"ranges must be a non-empty sequence of {RANGES}, got {ranges!r}")
        self.min_score = min_score
        self.ranges = tuple(ranges)
        self._impl: "dict[str, object]" = {}
        self._warm: "set[str]" = set()
        self.found_by: "dict[str, int]" = {r: 0 for r in RANGES}  # detections per model, for diagnostics

    def _open(self, which: str):
        if which not in self._impl:
            os.environ.setdefault("GLOG_minloglevel", "2")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            from mediapipe.python.solutions import face_detection
            self._impl[which] = face_detection.FaceDetection(model_selection=RANGES.index(which),
                                                             min_detection_confidence=self.min_score)
        return self._impl[which]

    def _process(self, which: str, rgb: np.ndarray):
        if which not in self._warm:
            # mediapipe opens its TFLite calculator asynchronously after construction and logs
            # (TFLite, absl) straight to fd 2 then: one quiet window from construction to the end
            # of the first run covers it whatever the thread timing
            with quiet_native_stderr():
                result = self._open(which).process(rgb)
            self._warm.add(which)
            return result
        return self._impl[which].process(rgb)

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        faces: list[FaceBox] = []
        for which in self.ranges:
            result = self._process(which, rgb)
            for d in result.detections or []:
                b = d.location_data.relative_bounding_box
                score = float(d.score[0]) if d.score else 0.0
                if score < self.min_score:
                    continue
                face = FaceBox(b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h, score)
                if which == "short":
                    face = _as_full_range(face)
                x0, y0 = max(face.x0, 0.0), max(face.y0, 0.0)
                x1, y1 = min(face.x1, float(w)), min(face.y1, float(h))
                if x1 - x0 < 2 or y1 - y0 < 2:
                    continue
                faces.append(FaceBox(x0, y0, x1, y1, score))
            if faces:
                self.found_by[which] += 1
                break
        area = float(w * h)
        faces.sort(key=lambda f: f.score * (1.0 + math.sqrt(f.area / area)), reverse=True)
        return faces

    def close(self) -> None:
        for impl in self._impl.values():
            impl.close()
        self._impl.clear()
        self._warm.clear()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Tracking
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrackerSettings:
    """How the per-frame crop follows the face.

    ``deadband``: the crop does not move while the face centre stays within this fraction of the
    crop side from where it should be (and the size within ``size_deadband``, relative);
    ``smoothing``: per-frame fraction of the remaining excess the crop moves (0..1, 1 = jump);
    ``detect_every``: run the detector every N frames while tracking (every frame while lost);
    ``lost_after``: frames without a face before the track counts as lost (then the next face
    found is jumped to, wherever it is).
    """

    deadband: float = 0.08
    size_deadband: float = 0.12
    smoothing: float = 0.25
    detect_every: int = 1
    lost_after: int = 10


def _excess(d: float, band: float) -> float:
    """The part of ``d`` beyond ``+-band`` (0 inside the band)."""
    return math.copysign(max(abs(d) - band, 0.0), d)


class FaceTracker:
    """A smoothed square face crop, frame by frame (see the module doc).

    ``update(rgb)`` -> the :class:`CropBox` for this frame (None until a face was ever seen).
    ``start(crop)`` seeds the track (e.g. with a crop found by a look-ahead scan).
    """

    def __init__(self, detector: Detector, crop: CropSettings = CropSettings(),
                 settings: TrackerSettings = TrackerSettings()):
        self.detector = detector
        self.crop_settings = crop
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        self.crop: "CropBox | None" = None
        self.target: "CropBox | None" = None
        self.misses = 0
        self.frame_index = 0
        self.detections = 0

    @property
    def lost(self) -> bool:
        return self.crop is None or self.misses >= self.settings.lost_after

    def start(self, crop: CropBox) -> None:
        self.crop = self.target = crop
        self.misses = 0

    def _choose(self, faces: list[FaceBox]) -> "FaceBox | None":
        faces = [f for f in faces if f.score >= self.crop_settings.min_score]
        if not faces:
            return None
        if self.crop is None or self.lost:
            return faces[0]
        cx, cy = self.crop.cx, self.crop.cy  # the same person: the face nearest the current crop
        return min(faces, key=lambda f: math.hypot(f.center[0] - cx, f.center[1] - cy))

    def update(self, rgb: np.ndarray) -> "CropBox | None":
        h, w = rgb.shape[:2]
        s = self.settings
        detect = self.crop is None or self.lost or self.misses > 0 or self.frame_index % max(s.detect_every, 1) == 0
        self.frame_index += 1
        if detect:
            face = self._choose(self.detector.detect(rgb))
            if face is None:
                self.misses += 1
            else:
                self.detections += 1
                target = face_crop(face, w, h, self.crop_settings)
                jump = self.crop is None or self.lost or not self._inside(face, self.crop)
                self.misses = 0
                self.target = target
                if jump:
                    self.crop = target
                    return self.crop
        if self.crop is not None and self.target is not None:
            self.crop = fit_crop(self._glide(self.crop, self.target), w, h)
        return self.crop

    @staticmethod
    def _inside(face: FaceBox, crop: CropBox) -> bool:
        x0, y0, x1, y1 = crop.box
        cx, cy = face.center
        return x0 <= cx <= x1 and y0 <= cy <= y1

    def _glide(self, crop: CropBox, target: CropBox) -> CropBox:
        s = self.settings
        band = s.deadband * crop.side
        dx = _excess(target.cx - crop.cx, band)
        dy = _excess(target.cy - crop.cy, band)
        dl = _excess(math.log(target.side / crop.side), s.size_deadband)
        a = min(max(s.smoothing, 0.0), 1.0)
        return replace(crop, cx=crop.cx + a * dx, cy=crop.cy + a * dy, side=crop.side * math.exp(a * dl))
