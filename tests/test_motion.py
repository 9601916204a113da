"""live.loop.motion: the motion state of a live session (smoothing, neutral face, lost face), without threads."""
import numpy as np
import pytest

from export.engine import RegionParams
from live.loop.motion import MotionSettings, MotionState
from live.loop.smoothing import LostFacePolicy


def params(x: float, k: int = 3) -> RegionParams:
    shift = np.full((1, k, 2), x, np.float32)
    return RegionParams(shift=shift, covar=np.tile(np.eye(2, dtype=np.float32), (1, k, 1, 1)) * (1 + x),
                        affine=np.tile(np.eye(2, dtype=np.float32), (1, k, 1, 1)))


RAW = MotionSettings(smoothing=False, lost=LostFacePolicy(hold_s=1.0, ease_s=1.0))


def test_nothing_to_animate_before_the_first_face():
    m = MotionState(RAW)
    assert m.update(None, None, 0.0) is None and m.update(None, None, 0.1) is None and m.reference is None and m.lost


def test_the_first_face_is_neutral_and_later_ones_drive():
    m = MotionState(RAW)
    first = m.update(params(0.1), None, 0.0)
    assert np.allclose(first.driving.shift, 0.1) and np.allclose(first.reference.shift, 0.1)
    later = m.update(params(0.4), None, 0.04)
    assert np.allclose(later.driving.shift, 0.4) and np.allclose(later.reference.shift, 0.1)


def test_recalibrate_takes_the_next_face_as_neutral():
    m = MotionState(RAW)
    m.update(params(0.1), None, 0.0)
    m.recalibrate()
    m.update(None, None, 0.04)  # no face: the request waits for one
    assert np.allclose(m.reference.shift, 0.1)
    got = m.update(params(0.3), None, 0.08)
    assert np.allclose(got.reference.shift, 0.3) and np.allclose(m.reference.shift, 0.3)
    assert np.allclose(m.update(params(0.5), None, 0.12).reference.shift, 0.3)


def test_a_lost_face_holds_then_eases_back_to_neutral():
    m = MotionState(RAW)
    m.update(params(0.0), None, 0.0)
    m.update(params(1.0), None, 0.1)
    held = m.update(None, None, 0.2)
    assert m.lost and held.lost_for_s == 0.0 and np.allclose(held.driving.shift, 1.0)
    assert np.allclose(m.update(None, None, 1.1).driving.shift, 1.0)  # within hold_s
    half = m.update(None, None, 1.7).driving.shift  # halfway through the ease: smoothstep(0.5) = 0.5
    assert np.allclose(half, 0.5, atol=1e-6)
    done = m.update(None, None, 5.0)
    assert np.allclose(done.driving.shift, 0.0) and np.allclose(done.driving.covar, done.reference.covar)
    back = m.update(params(0.7), None, 5.1)
    assert back.found_again and back.lost_for_s is None and not m.lost and np.allclose(back.driving.shift, 0.7)


def test_smoothing_follows_slowly_and_restarts_after_a_lost_face():
    m = MotionState(MotionSettings())
    m.update(params(0.0), None, 0.0)
    step = m.update(params(1.0), None, 1 / 30).driving.shift
    assert 0.0 < float(step.mean()) < 0.5  # a jump is smoothed
    m.update(None, None, 0.5)
    again = m.update(params(1.0), None, 0.6)  # no smoothing across the gap: the new track starts where the face is
    assert again.found_again and np.allclose(again.driving.shift, 1.0)


def test_settings_are_a_small_typed_object():
    with pytest.raises(Exception):
        MotionSettings().smoothing = False  # frozen


def test_landmarks_ease_back_with_the_pose_and_no_mesh_keeps_the_last():
    m = MotionState(RAW)
    neutral, smile = np.zeros((468, 2), np.float32), np.ones((468, 2), np.float32)
    m.update(params(0.0), neutral, 0.0)
    assert m.update(params(0.5), None, 0.04).marks is neutral  # no mesh in this frame: the last landmarks
    m.recalibrate()  # at once: the next face
    m.update(params(0.0), neutral, 0.05)
    m.update(params(1.0), smile, 0.1)
    m.update(None, None, 0.2)  # the face is lost
    half = m.update(None, None, 1.7)  # 1.5 s later: halfway through the ease
    assert np.allclose(half.marks, 0.5) and half.reference_marks is neutral


def test_a_new_avatar_searches_the_first_second_for_the_most_neutral_face():
    from live.expression import neutral_score

    m = MotionState(RAW)
    rng = np.random.default_rng(0)
    faces = [rng.random((468, 2)).astype(np.float32) * 100 for _ in range(4)]
    scores = [neutral_score(f) for f in faces]
    m.update(params(0.0), faces[0], 0.0)
    m.recalibrate(at_once=False)
    for i, f in enumerate(faces[1:], 1):
        m.update(params(float(i)), f, 1.0 + 0.2 * i)
    best = 1 + int(np.argmin(scores[1:]))
    assert m.reference_marks is faces[best] and np.allclose(m.reference.shift, float(best))


def test_with_a_portrait_face_the_reference_is_the_face_most_like_it():
    from live.expression import PortraitFace, reference_score

    m = MotionState(RAW)
    rng = np.random.default_rng(1)
    faces = [rng.random((468, 2)).astype(np.float32) * 100 for _ in range(5)]
    m.like = PortraitFace(faces[4])  # a portrait shaped like the last one
    for i, f in enumerate(faces):
        m.update(params(float(i)), f, 0.2 * i)
    scores = [reference_score(f, m.like) for f in faces]
    assert int(np.argmin(scores)) == 4 and m.reference_marks is faces[4] and np.allclose(m.reference.shift, 4.0)
