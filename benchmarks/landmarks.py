"""Face landmarks for the quality metrics (AKD, MKR, motion transfer), by mediapipe FaceMesh.

Uses the legacy ``mediapipe.solutions.face_mesh`` graph bundled in mediapipe 0.10.21 (468
landmarks; its model files ship inside the wheel, nothing is downloaded). FaceMesh runs in
static-image mode (a fresh detection on every frame, no tracking carried between frames), so a
missed face counts as missed in that frame: this is what MKR measures.

The metrics use a fixed subset of the 468 points, :data:`SUBSET` (152 points): the contour
landmarks of mediapipe's own connection sets ``FACEMESH_FACE_OVAL`` (36), ``FACEMESH_LIPS`` (40),
``FACEMESH_LEFT_EYE`` / ``FACEMESH_RIGHT_EYE`` (16 each), ``FACEMESH_LEFT_EYEBROW`` /
``FACEMESH_RIGHT_EYEBROW`` (10 each) and ``FACEMESH_NOSE`` (24), i.e. the parts a 68-point
annotation covers (jaw line, brows, eyes, nose, mouth) rather than the dense cheek and forehead
tessellation, whose points are interpolated and move little. The indices are written out here
(checked against mediapipe's sets by the tests) so the subset cannot drift with a mediapipe
update. "left" and "right" are the subject's, as in mediapipe.

This lives in ``benchmarks/`` (it needs mediapipe, which the live tools' face tracking in
``nets/media/face.py`` may or may not share); an overlay in mra-live could import it from here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from nets.media import facemesh as fm

GROUPS: dict[str, tuple[int, ...]] = {
    "face_oval": (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251, 284,
                  288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454),
    "left_eyebrow": (276, 282, 283, 285, 293, 295, 296, 300, 334, 336),
    "right_eyebrow": (46, 52, 53, 55, 63, 65, 66, 70, 105, 107),
    "left_eye": (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466),
    "right_eye": (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246),
    "nose": (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440),
    "lips": (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270,
             291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415),
}
MEDIAPIPE_SETS = {"face_oval": "FACEMESH_FACE_OVAL", "left_eyebrow": "FACEMESH_LEFT_EYEBROW",
                  "right_eyebrow": "FACEMESH_RIGHT_EYEBROW", "left_eye": "FACEMESH_LEFT_EYE",
                  "right_eye": "FACEMESH_RIGHT_EYE", "nose": "FACEMESH_NOSE", "lips": "FACEMESH_LIPS"}
SUBSET: np.ndarray = np.array(sorted({i for g in GROUPS.values() for i in g}), dtype=np.int64)
NUM_MESH_POINTS = 468


LandmarksUnavailable = fm.FaceMeshUnavailable  # mediapipe's FaceMesh cannot be used here; the message says why


def unavailable_reason() -> Optional[str]:
    """None when FaceMesh can run, else why not."""
    try:
        fm.FaceMesh().close()
    except fm.FaceMeshUnavailable as e:
        return str(e)
    return None


class FaceMesh(fm.FaceMesh):
    """``landmarks(image)``: uint8 RGB ``(H, W, 3)`` -> ``(len(SUBSET), 2)`` float pixel coordinates (x, y), or None.

    The project's one FaceMesh (:class:`nets.media.facemesh.FaceMesh`) in static-image mode without
    the refinement model, as the AKD figures have always been measured. Use as a context manager
    (or call :meth:`close`): it holds a mediapipe graph.
    """

    def __init__(self, min_detection_confidence: float = 0.5):
        super().__init__(tracking=False, refine=False, min_confidence=min_detection_confidence)

    def landmarks(self, image: np.ndarray, subset: bool = True) -> Optional[np.ndarray]:
        pts = super().landmarks(image)
        return None if pts is None or not subset else pts[SUBSET]
