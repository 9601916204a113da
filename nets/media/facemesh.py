"""Face-mesh landmarks (mediapipe's bundled FaceMesh, 468 points) and the openness of mouth and eyes.

The one place for the landmark numbers the expression path and the expression figures use
(mediapipe's canonical mesh; "left"/"right" are the subject's) and for the two openness
measures of ``../shared/reference/expression_transfer.md``:

* mouth openness = |p13 - p14| / |p33 - p263| (inner-lip gap over the outer eye-corner distance);
* eye openness = mean of |p159 - p145| / |p33 - p133| and |p386 - p374| / |p362 - p263|.

:class:`FaceMesh` wraps ``mediapipe.solutions.face_mesh`` (its model files ship inside the
mediapipe 0.10.21 wheel; nothing is downloaded). ``tracking=True`` follows the face from frame to
frame (about 3-5 ms on a 256 px crop on one core here, against 5-7 ms for a fresh detection):
use it on a video stream; ``tracking=False`` for single pictures and for measurements.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

NUM_POINTS = 468  # the mesh without the iris points that refine_landmarks adds

# -- the parts ----------------------------------------------------------------------------------
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)  # corner to corner, over the gap
LIPS_INNER_LOWER = (324, 318, 402, 317, 14, 87, 178, 88, 95)  # back from corner 308 to corner 78
RIGHT_EYE_UPPER = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER = (7, 163, 144, 145, 153, 154, 155)
LEFT_EYE_UPPER = (466, 388, 387, 386, 385, 384, 398)
LEFT_EYE_LOWER = (249, 390, 373, 374, 380, 381, 382)
EYE_CORNERS = (33, 133, 362, 263)
BROWS = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
CHIN = (18, 200, 199, 175, 83, 313, 201, 421, 208, 428, 32, 262)  # between the lower lip and the jaw line
# points that expressions hardly move: the head pose is measured on them
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 64, 294, 48, 278, 115, 344, 220, 440)
UPPER_FACE = (10, 338, 297, 332, 284, 251, 389, 356, 454, 109, 67, 103, 54, 21, 162, 127, 234, 151, 9, 8)
CHEEKS = (50, 280, 123, 352, 116, 345, 117, 346, 118, 347, 101, 330, 36, 266, 203, 423)

# the sparse set that steers the warp (spaced about as wide as the warp's radial functions)
WARP_MOUTH = (61, 40, 0, 270, 291, 321, 17, 91, 82, 13, 312, 87, 14, 317, 152, 148, 377, 199)
WARP_EYES = (160, 159, 158, 144, 145, 153, 387, 386, 385, 373, 374, 380)
WARP_BROWS = (70, 105, 107, 300, 334, 336)
WARP_ANCHORS = (6, 197, 4, 1, 98, 327, 50, 280, 123, 352, 117, 346, 205, 425, 10, 109, 338, 151, 127, 356, 234, 454,
                33, 133, 362, 263)

MOUTH_POINTS = LIPS_OUTER + LIPS_INNER_UPPER + LIPS_INNER_LOWER + JAW + CHIN
EYE_POINTS = RIGHT_EYE_UPPER + RIGHT_EYE_LOWER + LEFT_EYE_UPPER + LEFT_EYE_LOWER
EXPRESSIVE = MOUTH_POINTS + EYE_POINTS + BROWS  # what the expression path moves
STABLE = NOSE + UPPER_FACE + EYE_CORNERS  # what it aligns the head pose on
ANCHORS = NOSE + UPPER_FACE + CHEEKS  # what it keeps in place (besides the crop's outside)

_MOUTH = (13, 14, 33, 263)
_EYES = ((159, 145, 33, 133), (386, 374, 362, 263))


def _dist(pts: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(pts[..., a, :] - pts[..., b, :], axis=-1)


def mouth_openness(pts: np.ndarray) -> np.ndarray:
    """Inner-lip gap over the outer eye-corner distance; ``pts`` ``(..., 468, 2)`` -> ``(...)``."""
    gap, corner_a, corner_b = _MOUTH[0], _MOUTH[2], _MOUTH[3]
    return _dist(pts, gap, _MOUTH[1]) / np.maximum(_dist(pts, corner_a, corner_b), 1e-6)


def eye_openness(pts: np.ndarray) -> np.ndarray:
    """Mean over both eyes of eyelid gap over eye width; ``pts`` ``(..., 468, 2)`` -> ``(...)``."""
    return np.mean([_dist(pts, up, lo) / np.maximum(_dist(pts, c0, c1), 1e-6) for up, lo, c0, c1 in _EYES], axis=0)


def eye_openness_each(pts: np.ndarray) -> np.ndarray:
    """Eyelid gap over eye width per eye (subject's right, left); ``(..., 468, 2)`` -> ``(..., 2)``."""
    return np.stack([_dist(pts, up, lo) / np.maximum(_dist(pts, c0, c1), 1e-6) for up, lo, c0, c1 in _EYES], -1)


def inter_ocular(pts: np.ndarray) -> np.ndarray:
    """Outer eye-corner distance |p33 - p263| in the points' units: ``(..., 468, 2)`` -> ``(...)``."""
    return _dist(pts, 33, 263)


class FaceMeshUnavailable(RuntimeError):
    """mediapipe's FaceMesh cannot run here; the message says why."""


class FaceMesh:
    """``landmarks(rgb)``: uint8 RGB ``(H, W, 3)`` -> ``(468, 2)`` float64 pixel coordinates (x, y), or None.

    ``refine=True`` runs mediapipe's attention model, which places lips and eyelids more precisely
    (the expression figures use it). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, tracking: bool = False, refine: bool = True, min_confidence: float = 0.5):
        try:
            import mediapipe as mp
            self._solution = mp.solutions.face_mesh
        except Exception as e:  # noqa: BLE001 - ImportError, AttributeError on newer mediapipe
            raise FaceMeshUnavailable(f"mediapipe FaceMesh is not available ({type(e).__name__}: {e}); "
                                      "pip install mediapipe==0.10.21") from None
        self._args = dict(static_image_mode=not tracking, max_num_faces=1, refine_landmarks=refine,
                          min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)
        self._mesh = None  # made at the first picture, in a quiet window (see _process)
        self._closed = False

    def __call__(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        return self.landmarks(rgb)

    def landmarks(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {rgb.dtype} {rgb.shape}")
        result = self._process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        marks = result.multi_face_landmarks[0].landmark
        return np.array([(marks[i].x * w, marks[i].y * h) for i in range(NUM_POINTS)], dtype=np.float64)

    def _process(self, rgb: np.ndarray):
        if self._closed:
            raise RuntimeError("this FaceMesh is closed")
        if self._mesh is None:
            # mediapipe's native code (TFLite, absl) prints its start-up chatter straight to fd 2
            # while the graph is built and first run: one quiet window covers both
            from .face import quiet_native_stderr
            with quiet_native_stderr():
                self._mesh = self._solution.FaceMesh(**self._args)
                return self._mesh.process(rgb)
        return self._mesh.process(rgb)

    def close(self) -> None:
        self._closed = True
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> "FaceMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
