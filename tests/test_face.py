"""nets.media.face: crop geometry, tube, tracker (scripted detector), mediapipe on real portraits and a real clip."""
import math

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from nets import media
from nets.media.face import (CropBox, CropSettings, FaceBox, FaceDetector, FaceTracker, TrackerSettings, crop_resize,
                             face_crop, face_tube, fit_crop, structure)
from mediagen import make_video, pattern


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------

def test_fit_crop_keeps_square_inside():
    assert fit_crop(CropBox(50, 50, 40), 100, 100) == CropBox(50, 50, 40)
    assert fit_crop(CropBox(5, 95, 40), 100, 100) == CropBox(20, 80, 40)  # shifted in
    c = fit_crop(CropBox(50, 30, 300), 200, 100)  # larger than the frame: shrunk to its height
    assert c == CropBox(50, 50, 100)


def test_face_crop_framing():
    s = CropSettings(scale=2.0, shift_y=-0.1)
    c = face_crop(FaceBox(100, 100, 160, 180), 1000, 1000, s)  # 60 x 80 face
    assert c.side == pytest.approx(160) and c.cx == pytest.approx(130) and c.cy == pytest.approx(140 - 8)


def test_face_tube_union_and_outliers():
    s = CropSettings(scale=1.5, shift_y=0.0)
    faces = [FaceBox(100 + i, 100, 200 + i, 200) for i in range(10)] + [None, FaceBox(800, 800, 830, 830)]
    tube = face_tube(faces, 2000, 2000, s)
    # union x 100..209, y 100..200, plus half a face (0.5 * 100) of margin; the far-away box is ignored
    assert tube.side == pytest.approx(109 + 50) and tube.cx == pytest.approx(154.5) and tube.cy == pytest.approx(150)
    assert face_tube([None, None], 100, 100, s) is None
    assert face_tube([FaceBox(0, 0, 10, 10, score=0.1)], 100, 100, s) is None  # below min_score


def test_crop_resize_matches_reference():
    rgb = pattern(120, 90)
    out = crop_resize(rgb, CropBox(60, 45, 40), 40)  # a 1:1 integer crop
    assert np.array_equal(out, rgb[25:65, 40:80])
    small = crop_resize(rgb, CropBox(60, 45, 80), 20)
    ref = np.asarray(Image.fromarray(rgb[5:85, 20:100]).resize((20, 20), Image.Resampling.BICUBIC, reducing_gap=2.0))
    err = np.abs(small.astype(int) - ref)  # (the resampling filter also sees pixels just outside the box)
    assert err.mean() < 1.0 and err.max() <= 6
    edge = crop_resize(rgb, CropBox(0, 0, 20), 20)  # outside the frame: edge pixels repeated
    assert np.array_equal(edge[0, 0], rgb[0, 0]) and np.array_equal(edge[15, 15], rgb[5, 5])


# ---------------------------------------------------------------------------------------------
# Tracker (scripted detector)
# ---------------------------------------------------------------------------------------------

class Scripted:
    """A detector that returns a scripted list of faces per call."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def detect(self, rgb):
        self.calls += 1
        return self.script.pop(0) if self.script else []


def box(cx, cy, s=100):
    return FaceBox(cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2, 0.9)


FRAME = np.zeros((1000, 1000, 3), np.uint8)
SET = CropSettings(scale=2.0, shift_y=0.0)


def test_tracker_is_still_inside_deadband_and_glides_beyond():
    t = FaceTracker(Scripted([[box(500, 500)]] + [[box(505, 497)]] * 5 + [[box(600, 500)]] * 40), SET,
                    TrackerSettings(deadband=0.08, smoothing=0.25))
    first = t.update(FRAME)
    assert first == CropBox(500, 500, 200)
    for _ in range(5):  # small head motion (5 px of a 200 px crop): the crop does not move
        assert t.update(FRAME) == first
    xs = [t.update(FRAME).cx for _ in range(40)]
    assert all(b >= a for a, b in zip(xs, xs[1:])) and xs[0] < 560  # smooth, no jump
    assert xs[-1] == pytest.approx(600 - 0.08 * 200, abs=0.5)  # settles at the edge of the dead zone


def test_tracker_holds_when_lost_and_recovers():
    script = [[box(300, 300)]] + [[]] * 15 + [[box(700, 600)]]
    t = FaceTracker(Scripted(script), SET, TrackerSettings(lost_after=10))
    c0 = t.update(FRAME)
    for i in range(15):
        assert t.update(FRAME) == c0  # holds the last crop
    assert t.lost
    c = t.update(FRAME)  # the face is back elsewhere: jump to it
    assert (c.cx, c.cy) == (700, 600) and not t.lost


def test_tracker_follows_the_same_person_and_detect_every():
    two = [box(300, 500), box(700, 500, 120)]  # the second is the "best" but not the one tracked
    det = Scripted([[box(300, 500)]] + [two] * 9)
    t = FaceTracker(det, SET, TrackerSettings(detect_every=3))
    t.update(FRAME)
    crops = [t.update(FRAME) for _ in range(9)]
    assert all(abs(c.cx - 300) < 1 for c in crops)
    assert det.calls == 4  # frames 0, 3, 6, 9


def test_tracker_face_leaving_crop_jumps():
    t = FaceTracker(Scripted([[box(200, 200)], [box(800, 800)]]), SET)
    t.update(FRAME)
    assert t.update(FRAME) == CropBox(800, 800, 200)


# ---------------------------------------------------------------------------------------------
# mediapipe
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector():
    d = FaceDetector()
    yield d
    d.close()


def test_no_face_in_generated_images(detector, capfd):
    rng = np.random.default_rng(0)
    for rgb in (pattern(320, 240), rng.integers(0, 256, (200, 300, 3), dtype=np.uint8),
                np.full((128, 128, 3), 127, np.uint8)):
        assert detector.detect(rgb) == []
    assert capfd.readouterr().err == ""  # mediapipe's start-up chatter is silenced


def noise_portrait(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)


def test_faces_found_in_noise_are_not_believed(detector):
    """Issue 21 item 13: BlazeFace finds a "face" (score 0.5-0.7) in some noise pictures; what is in
    its box is noise (structure about 0), which a drawn face (or any picture) is not."""
    from nets.media.face import MIN_STRUCTURE, plausible_faces
    from webgen import draw_face

    fooled = {s: detector.detect(noise_portrait(s)) for s in (1, 2, 3)}
    assert any(fooled.values()), "the detector found no face in these noise pictures: the case is gone"
    for s, faces in fooled.items():
        assert all(abs(structure(noise_portrait(s), f)) < 0.1 for f in faces)
        assert plausible_faces(noise_portrait(s), faces, 0.5) == []
    drawn = draw_face(1, 800, 600)
    faces = detector.detect(drawn)
    assert faces and structure(drawn, faces[0]) > 0.8 > MIN_STRUCTURE
    assert plausible_faces(drawn, faces, 0.5)[0] == faces[0]


@pytest.mark.shared
def test_faces_in_real_portraits(detector):
    folder = shared_path("data", "faces", "portraits")
    files = sorted(folder.glob("*.jpg"))
    assert files
    for f in files:
        rgb = media.read_image(f)
        faces = detector.detect(rgb)
        assert faces, f"no face found in {f.name}"
        b = faces[0]
        h, w = rgb.shape[:2]
        assert b.score > 0.6 and 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h
        assert structure(rgb, b) > 0.8  # a photo, not noise: believed (see test_faces_found_in_noise...)
        assert 0.1 < b.size / min(w, h) < 0.9
        c = face_crop(b, w, h)
        x0, y0, x1, y1 = c.box
        assert x0 >= -1e-6 and y0 >= -1e-6 and x1 <= w + 1e-6 and y1 <= h + 1e-6
        assert x0 <= b.x0 + 1 and x1 >= b.x1 - 1  # the face is inside its crop


def test_tracker_on_a_real_clip_is_stable(detector):
    clip = shared_path("data", "faces", "videos", "vx_10.mp4")
    t = FaceTracker(detector)
    crops = []
    for f in media.VideoReader(clip):
        crops.append(t.update(f.rgb))
        if f.index >= 59:
            break
    assert all(c is not None for c in crops) and t.detections >= 55
    cx = np.array([c.cx for c in crops])
    side = np.array([c.side for c in crops])
    # a talking head: the crop barely moves (dead zone), never jitters frame to frame
    assert np.abs(np.diff(cx)).max() < 0.02 * side.mean()
    assert side.std() < 0.05 * side.mean()


def test_tracker_recovers_after_face_leaves_video(tmp_path, detector):
    """A real face, then frames without it, then the face again somewhere else: the track comes back."""
    folder = shared_path("data", "faces", "portraits")
    face = np.asarray(Image.fromarray(media.read_image(folder / "s5.jpg")).resize((200, 200)))
    bg = np.full((360, 640, 3), 90, np.uint8)

    def frame(i):
        a = bg.copy()
        if i < 5:
            a[80:280, 40:240] = face
        elif i >= 20:
            a[100:300, 400:600] = face
        return a
    clip = make_video(tmp_path / "away.mp4", n=25, size=(640, 360), frame_fn=frame)
    t = FaceTracker(detector, settings=TrackerSettings(lost_after=5))
    crops = [t.update(f.rgb) for f in media.VideoReader(clip)]
    assert crops[0].cx < 320 and crops[10] == crops[4] and t.lost is False
    assert crops[-1].cx > 400 and math.isclose(crops[-1].cx, crops[-2].cx, abs_tol=20)


# ---------------------------------------------------------------------------------------------
# Close faces: the short-range model first, the full-range one as the fallback
# ---------------------------------------------------------------------------------------------

def tight_crop(rgb, face, fraction):
    """A square cut of ``rgb`` around ``face`` whose side is ``face.size / fraction`` (edge-padded)."""
    side = face.size / fraction
    return crop_resize(rgb, CropBox(face.center[0], face.center[1], side), int(round(side)))


def test_close_up_drawn_faces_are_found_where_the_full_range_model_alone_misses_some():
    from webgen import draw_face
    full = FaceDetector(ranges=("full",))
    detector = FaceDetector()
    missed_by_full = 0
    for seed in range(4):
        rgb = draw_face(seed, 512)
        face = detector.detect(rgb)[0]
        for fraction in (0.7, 0.8, 0.9, 1.1):  # the face box covers 70 % .. all of the picture
            close = tight_crop(rgb, face, fraction)
            found = detector.detect(close)
            assert found, f"drawn face {seed} at {fraction:.0%} of the side: not found"
            h, w = close.shape[:2]
            f = found[0]
            assert abs(f.center[0] - w / 2) < 0.15 * w and abs(f.center[1] - h / 2) < 0.15 * h
            assert f.size > 0.6 * min(w, h)
            missed_by_full += not full.detect(close)
    assert detector.found_by["short"] >= 16 and missed_by_full >= 1  # why the short-range model goes first
    full.close()
    detector.close()


def test_a_distant_face_falls_back_to_the_full_range_model():
    from webgen import draw_face
    frame = np.full((720, 1280, 3), 120, np.uint8)
    frame[200:400, 600:800] = draw_face(1, 200)  # a small face in a wide frame: beyond the short range
    short = FaceDetector(ranges=("short",))
    detector = FaceDetector()
    assert short.detect(frame) == []
    faces = detector.detect(frame)
    assert faces and detector.found_by == {"short": 0, "full": 1}
    assert 600 <= faces[0].center[0] <= 800 and 200 <= faces[0].center[1] <= 400
    tracker = FaceTracker(detector)  # the tracker is the same whichever model found the face
    crop = tracker.update(frame)
    assert crop is not None and 600 < crop.cx < 800
    short.close()
    detector.close()


def test_short_range_boxes_are_framed_like_full_range_ones(detector):
    """Crops keep the framing measured with the full-range model (CropSettings), whichever model finds the face."""
    from webgen import draw_face
    full = FaceDetector(ranges=("full",))
    for seed in range(3):
        rgb = draw_face(seed, 400, 520)
        a, b = detector.detect(rgb)[0], full.detect(rgb)[0]
        assert abs(a.size / b.size - 1) < 0.1 and abs(a.center[1] - b.center[1]) < 0.06 * b.size
    full.close()


@pytest.mark.shared
def test_tight_crops_of_real_portraits():
    """Faces covering 70-90 % of the picture (a webcam user close to the camera, a close-up portrait)."""
    folder = shared_path("data", "faces", "portraits")
    files = sorted(folder.glob("*.jpg"))
    assert files
    detector = FaceDetector()
    for f in files:
        rgb = media.read_image(f)
        face = detector.detect(rgb)[0]
        for fraction in (0.7, 0.8, 0.9):
            close = tight_crop(rgb, face, fraction)
            found = detector.detect(close)
            assert found, f"{f.name} at {fraction:.0%}: no face"
            h, w = close.shape[:2]
            assert abs(found[0].center[0] - w / 2) < 0.15 * w and found[0].size > 0.6 * min(w, h)
    detector.close()
