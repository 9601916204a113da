"""Landmark-guided expression transfer: geometry against references and invariants, and on a real mesh.

The mesh tests run mediapipe's FaceMesh on the drawn example portrait that ships in the package
(no shared data needed) and move its landmarks as a driver would: a mouth that opens, an eye
that shuts, a head that only turns.
"""
from __future__ import annotations

import numpy as np
import pytest

from live import expression as ex
from live.live import EXAMPLE_PORTRAIT
from nets import media
from nets.media import facemesh as fm

S = 256


def _rotation(deg: float, scale: float = 1.0) -> np.ndarray:
    a = np.deg2rad(deg)
    return scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_fit_similarity_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 256, (40, 2))
    a, t = _rotation(17, 1.3), np.array([5.0, -12.0])
    got_a, got_t = ex.fit_similarity(src, src @ a.T + t)
    np.testing.assert_allclose(got_a, a, atol=1e-9)
    np.testing.assert_allclose(got_t, t, atol=1e-7)


def test_fit_similarity_never_reflects():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 256, (30, 2))
    got_a, _ = ex.fit_similarity(src, src * np.array([-1.0, 1.0]))  # a mirror image
    assert np.linalg.det(got_a) > 0


def test_fit_affine_recovers_a_known_affine():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 256, (40, 2))
    a, t = np.array([[1.1, 0.2], [-0.1, 0.9]]), np.array([3.0, 4.0])
    got_a, got_t = ex.fit_affine(src, src @ a.T + t)
    np.testing.assert_allclose(got_a, a, atol=1e-9)
    np.testing.assert_allclose(got_t, t, atol=1e-7)


def test_warp_with_zero_field_returns_the_image():
    img = np.random.default_rng(3).integers(0, 256, (S, S, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ex.warp(img, np.zeros((S, S, 2), np.float32)), img)


def test_warp_samples_where_the_field_points():
    img = np.random.default_rng(4).integers(0, 256, (S, S, 3), dtype=np.uint8)
    field = np.zeros((S, S, 2), np.float32)
    field[..., 0] = 3.0  # every pixel shows what is 3 px to its right
    np.testing.assert_array_equal(ex.warp(img, field)[:, :-3], img[:, 3:])


@pytest.fixture(scope="module")
def portrait():
    """The drawn example portrait as the model sees it, and its landmarks."""
    from live.portrait import prepare_portrait

    rgb, _ = prepare_portrait(media.read_image(EXAMPLE_PORTRAIT), S, "auto")
    with fm.FaceMesh() as mesh:
        marks = mesh(rgb)
    assert marks is not None, "FaceMesh finds no face in the example portrait"
    return rgb, marks


def _open_mouth(marks: np.ndarray, px: float) -> np.ndarray:
    """The landmarks with the lower lip, chin and jaw moved down by ``px`` (the upper lip stays)."""
    moved = marks.copy()
    lower = set(fm.LIPS_INNER_LOWER) | {17, 84, 181, 91, 146, 375, 321, 405, 314} | set(fm.JAW[3:-3]) | set(fm.CHIN)
    for i in lower:
        moved[i, 1] += px
    return moved


def _shut_eye(marks: np.ndarray, upper, lower) -> np.ndarray:
    moved = marks.copy()
    moved[list(upper)] = moved[list(lower)]
    return moved


def test_no_expression_returns_the_crop_unchanged(portrait):
    rgb, marks = portrait
    xf = ex.ExpressionTransfer(ex.PortraitFace(marks))
    np.testing.assert_array_equal(xf.apply(rgb, marks, marks), rgb)


def test_a_head_turn_alone_changes_nothing(portrait):
    """Pose is the model's job: a driver whose whole face only rotates and shifts has no expression."""
    rgb, marks = portrait
    centre = marks.mean(0)
    turned = (marks - centre) @ _rotation(8, 1.05).T + centre + np.array([4.0, -3.0])
    np.testing.assert_allclose(ex.expression_delta(turned, marks), 0, atol=1e-6)
    xf = ex.ExpressionTransfer(ex.PortraitFace(marks))
    a, t = xf.pose_from_driver(turned, marks)  # the portrait is the reference here: its pose is the turn
    np.testing.assert_allclose(a, _rotation(8, 1.05), atol=1e-6)
    cp = ex.control_points(xf.portrait, turned, marks, (a, t), ex.ExpressionSettings())
    np.testing.assert_allclose(cp.desired, cp.current, atol=1e-6)


def test_gain_zero_is_the_head_pose_only(portrait):
    rgb, marks = portrait
    xf = ex.ExpressionTransfer(ex.PortraitFace(marks), ex.ExpressionSettings(gain=0.0))
    np.testing.assert_array_equal(xf.apply(rgb, _open_mouth(marks, 20), marks), rgb)


def test_gain_out_of_range_is_refused():
    with pytest.raises(ValueError, match="between 0 and 2"):
        ex.ExpressionSettings(gain=2.5).validate()


def test_an_open_mouth_opens_the_portraits_mouth(portrait):
    rgb, marks = portrait
    iod = float(fm.inter_ocular(marks))
    driver = _open_mouth(marks, 0.25 * iod)
    xf = ex.ExpressionTransfer(ex.PortraitFace(marks))
    out = xf.apply(rgb, driver, marks)
    with fm.FaceMesh() as mesh:
        got = mesh(out)
    assert got is not None
    want = float(fm.mouth_openness(driver) - fm.mouth_openness(marks))
    change = float(fm.mouth_openness(got) - fm.mouth_openness(marks))
    assert 0.6 * want < change < 1.5 * want, (change, want)
    # the eyes are left alone
    assert abs(float(fm.eye_openness(got) - fm.eye_openness(marks))) < 0.1 * float(fm.eye_openness(marks))


def test_the_gain_scales_the_opening(portrait):
    rgb, marks = portrait
    driver = _open_mouth(marks, 0.2 * float(fm.inter_ocular(marks)))
    gaps = []
    for gain in (0.5, 1.0, 1.5):
        cp = ex.control_points(ex.PortraitFace(marks), driver, marks, (np.eye(2), np.zeros(2)),
                               ex.ExpressionSettings(gain=gain))
        gaps.append(cp.mouth_gap)
    assert gaps[0] < gaps[1] < gaps[2]
    np.testing.assert_allclose(gaps[2] / gaps[1], 1.5, rtol=0.15)


def test_a_wink_shuts_one_eye_only(portrait):
    rgb, marks = portrait
    driver = _shut_eye(marks, fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)
    cp_points = ex.desired_points(ex.PortraitFace(marks), driver, marks, 1.0)
    full = marks.copy()
    full[np.array(fm.EXPRESSIVE)] = cp_points
    right, left = fm.eye_openness_each(full)
    right0, left0 = fm.eye_openness_each(marks)
    assert left < 0.05 * left0
    assert abs(right - right0) < 1e-6


def test_a_big_eyed_portrait_blinks_fully(portrait):
    """Eyelids follow the driver's openness *ratio*: a small-eyed driver's blink shuts a big eye too."""
    rgb, marks = portrait
    big = marks.copy()
    for up, lo in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)):
        big[list(up)] = big[list(lo)] + 2.0 * (big[list(up)] - big[list(lo)])  # twice as open
    driver = _shut_eye(_shut_eye(marks, fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER), fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER)
    full = big.copy()
    full[np.array(fm.EXPRESSIVE)] = ex.desired_points(ex.PortraitFace(big), driver, marks, 1.0)
    assert float(fm.eye_openness(full)) < 0.05 * float(fm.eye_openness(big))


def test_closing_beyond_shut_keeps_the_lips_apart_never_crossed(portrait):
    rgb, marks = portrait
    driver = _open_mouth(marks, -0.3 * float(fm.inter_ocular(marks)))  # lower lip pushed far up
    full = marks.copy()
    full[np.array(fm.EXPRESSIVE)] = ex.desired_points(ex.PortraitFace(marks), driver, marks, 1.0)
    down = ex.face_down(marks)
    for a, b in ((13, 14), (82, 87), (312, 317)):
        assert (full[b] - full[a]) @ down >= -1e-9


def test_the_field_is_zero_far_from_the_face(portrait):
    rgb, marks = portrait
    driver = _open_mouth(marks, 0.25 * float(fm.inter_ocular(marks)))
    cp = ex.control_points(ex.PortraitFace(marks), driver, marks, (np.eye(2), np.zeros(2)), ex.ExpressionSettings())
    field = ex.displacement_field(cp, S, S)
    assert np.abs(field[:8]).max() < 0.05 and np.abs(field[:, :8]).max() < 0.05  # the crop's top and left edges
    lip = np.round(cp.desired[list(fm.WARP_MOUTH).index(14)]).astype(int)
    assert field[lip[1], lip[0], 1] < -0.15 * float(fm.inter_ocular(marks))  # the lower lip samples from above


def test_the_mouth_inside_takes_the_portraits_colours(portrait):
    """A grey photo gets a grey mouth inside, darker than its lips."""
    rgb, marks = portrait
    grey = np.repeat((rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None], 3, -1).astype(np.uint8)
    shade = ex.mouth_shadow(grey, marks)
    assert np.ptp(shade) < 1.0
    lips = grey[np.round(marks[list(fm.LIPS_OUTER)][:, 1]).astype(int), np.round(marks[list(fm.LIPS_OUTER)][:, 0]).astype(int)]
    assert shade[0] < lips.mean()


def test_the_portrait_face_is_found_once_with_its_colours(portrait):
    rgb, marks = portrait
    face = ex.portrait_face(rgb)
    assert face is not None
    np.testing.assert_allclose(face.landmarks, marks, atol=1.0)
    assert ex.portrait_face(np.full((S, S, 3), 127, np.uint8)) is None  # no face: the path is off


def test_the_most_neutral_frame_has_the_mouth_shut_and_the_eyes_open(portrait):
    _, marks = portrait
    iod = float(fm.inter_ocular(marks))
    frames = [_open_mouth(marks, 0.2 * iod), _shut_eye(marks, fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER), marks,
              _open_mouth(marks, 0.05 * iod), None]
    assert ex.best_reference(frames) == 2
    assert ex.best_reference([None, None]) == 0


def test_the_reference_is_the_face_most_like_the_portraits(portrait):
    """A neutral portrait takes the most neutral driving face; a portrait with an open mouth takes the driving face
    whose mouth is as open (a clip's own first frame as portrait: that frame), so nothing is added twice."""
    _, marks = portrait
    iod = float(fm.inter_ocular(marks))
    talking = _open_mouth(marks, 0.12 * iod)
    frames = [_open_mouth(marks, 0.25 * iod), marks, talking, _shut_eye(marks, fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)]
    assert ex.best_reference(frames, ex.PortraitFace(marks)) == 1
    assert ex.best_reference(frames, ex.PortraitFace(talking)) == 2


def test_a_blink_shuts_the_portraits_eyes(portrait):
    """Both eyes shut on the driver: the portrait's eyelids come down (warp + painted lids), as a face mesh sees it."""
    rgb, marks = portrait
    driver = _shut_eye(_shut_eye(marks, fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER), fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER)
    with ex.ExpressionTransfer(ex.portrait_face(rgb)) as xf:
        out = xf.apply(rgb, driver, marks)
    with fm.FaceMesh() as mesh:
        got = mesh(out)
    assert got is not None
    assert float(fm.eye_openness(got)) < 0.5 * float(fm.eye_openness(marks))
    assert abs(float(fm.mouth_openness(got) - fm.mouth_openness(marks))) < 0.05  # the mouth is left alone


def test_a_mouth_already_open_keeps_its_inside_and_only_the_new_opening_darkens():
    """A smiling portrait's teeth stay: the cavity is the desired opening less the portrait's own."""
    img = np.full((S, S, 3), 200, np.uint8)
    box = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)  # noqa: E731
    cp = ex.ControlPoints(current=np.zeros((1, 2)), desired=np.zeros((1, 2)), anchors=np.zeros((1, 2)),
                          sigma=np.ones(2), mouth_gap=60.0, inner_lips=box(80, 100, 180, 180),
                          inner_lips_now=box(100, 120, 160, 150), own_gap=30.0)
    out = ex.paint_cavity(img, cp, iod=100.0)
    assert (out[135, 130] == 200).all()  # inside the portrait's own opening: untouched
    assert out[170, 130].max() < 120  # the new opening below it: dark
    assert (out[20, 20] == 200).all()  # far away: untouched
    closed = ex.paint_cavity(img, ex.ControlPoints(**{**cp.__dict__, "inner_lips_now": None, "own_gap": 0.0}), 100.0)
    assert closed[135, 130].max() < 120  # a closed portrait mouth: the whole opening is dark
