"""Dataset reader (every official layout, id_sampling), sampler and augmentation."""
import numpy as np
import pytest
import torch

from nets.config import AugmentationConfig
from nets.train import augment as aug
from nets.train.data import DataError, PairDataset, PairSampler, count_frames, list_videos, read_video

from synthetic import make_dataset, make_video, write_video

SIZE = 32


@pytest.fixture(scope="module")
def videos():
    rng = np.random.default_rng(1)
    return [make_video(rng, SIZE, 6) for _ in range(2)]


@pytest.mark.parametrize("layout,kind,tol", [("frames", "frames", 0), ("strip", "strip", 0),
                                             ("gif", "gif", 40), ("mp4", "video", 12)])
def test_read_each_layout(tmp_path, videos, layout, kind, tol):
    for i, v in enumerate(videos):
        write_video(tmp_path, f"id{i}#clip0", v, layout)
    entries = list_videos(tmp_path)
    assert [e.kind for e in entries] == [kind, kind]
    assert [e.identity for e in entries] == ["id0", "id1"]
    for e, v in zip(entries, videos):
        frames = read_video(e, SIZE)
        assert frames.shape == v.shape and frames.dtype == np.uint8
        assert count_frames(e) == len(v)
        err = np.abs(frames.astype(int) - v.astype(int)).mean()
        assert err <= tol, (layout, err)
        # two chosen frames only
        two = read_video(e, SIZE, [4, 1])
        assert np.array_equal(two, frames[[4, 1]])
        # resized on read
        assert read_video(e, 24).shape == (6, 24, 24, 3)


def test_id_sampling_groups_clips_of_one_identity(tmp_path):
    root = make_dataset(tmp_path, "frames", num_ids=3, clips_per_id=2, frames=5, size=SIZE)
    ds = PairDataset(root, SIZE, id_sampling=True, num_repeats=4)
    assert ds.num_items == 3 and len(ds) == 12
    assert all(len({v.identity for v in g}) == 1 and len(g) == 2 for g in ds.groups)
    flat = PairDataset(root, SIZE, id_sampling=False, num_repeats=4)
    assert flat.num_items == 6 and len(flat) == 24
    # a sample of an identity comes from one of its clips, and each clip gets drawn
    clips = [read_video(v, SIZE) for v in ds.groups[1]]
    drawn = set()
    for s in range(30):
        x = ds[(1, (0, 0, s))]
        src = (x["source"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        drv = (x["driving"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        which = [c for c, frames in enumerate(clips) if any(np.array_equal(src, f) for f in frames)
                 and any(np.array_equal(drv, f) for f in frames)]
        assert len(which) == 1
        drawn.add(which[0])
    assert drawn == {0, 1}


def test_samples_are_pure_functions_of_their_seed(tmp_path):
    root = make_dataset(tmp_path, "frames", num_ids=2, clips_per_id=1, frames=6, size=SIZE)
    cfg = AugmentationConfig()
    ds = PairDataset(root, SIZE, id_sampling=True, augmentation=cfg, num_repeats=2)
    a = ds[(1, (5, 2, 7))]
    b = ds[(1, (5, 2, 7))]
    c = ds[(1, (5, 2, 8))]
    assert a["source"].shape == (3, SIZE, SIZE) and a["source"].dtype == torch.float32
    assert torch.equal(a["source"], b["source"]) and torch.equal(a["driving"], b["driving"])
    assert not torch.equal(a["source"], c["source"]) or not torch.equal(a["driving"], c["driving"])
    assert 0 <= float(a["source"].min()) and float(a["source"].max()) <= 1
    pre = PairDataset(root, SIZE, id_sampling=True, augmentation=cfg, num_repeats=2, preload=True)
    assert pre.preloaded_bytes == 2 * 6 * SIZE * SIZE * 3
    p = pre[(1, (5, 2, 7))]
    assert torch.equal(p["source"], a["source"]) and torch.equal(p["driving"], a["driving"])


def test_sampler_shards_and_resumes():
    full = list(PairSampler(10, seed=3))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full == list(PairSampler(10, seed=3))
    s = PairSampler(10, seed=3)
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]
    r0, r1 = PairSampler(10, seed=3, rank=0, world_size=3), PairSampler(10, seed=3, rank=1, world_size=3)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 3 and not {i for i, _ in a} & {i for i, _ in b}
    seeds = [sd for _, sd in a] + [sd for _, sd in b]
    assert len(set(seeds)) == 6
    r0.set_start(2)
    assert list(r0) == a[2:]


def test_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PairDataset(tmp_path / "nope", SIZE)
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="no train/ split"):
        PairDataset(tmp_path, SIZE)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no videos"):
        PairDataset(tmp_path, SIZE)
    (tmp_path / "train" / "bad.png").write_bytes(b"not a png")
    ds = PairDataset(tmp_path, SIZE)
    with pytest.raises(DataError, match="cannot read image"):
        ds[0]


def test_hsv_round_trip_and_hue_shift():
    rng = np.random.default_rng(0)
    img = rng.random((8, 8, 3)).astype(np.float32)
    assert np.allclose(aug.hsv_to_rgb(aug.rgb_to_hsv(img)), img, atol=1e-5)
    red = np.zeros((1, 1, 3), np.float32)
    red[..., 0] = 1
    assert np.allclose(aug.adjust_hue(red, 1 / 3), [[[0, 1, 0]]], atol=1e-5)  # red -> green
    assert np.allclose(aug.adjust_hue(img, 0.0), img)
    # the OpenCV path and the numpy one agree
    hsv = aug.rgb_to_hsv(img)
    hsv[..., 0] = (hsv[..., 0] + 0.13) % 1.0
    assert np.allclose(aug.adjust_hue(img, 0.13), aug.hsv_to_rgb(hsv), atol=1e-4)


def test_augmentation_is_identical_for_both_frames():
    rng = np.random.default_rng(0)
    f = rng.random((8, 10, 3)).astype(np.float32)
    cfg = AugmentationConfig(horizontal_flip=True, time_flip=False, brightness=0.3, contrast=0.3,
                             saturation=0.3, hue=0.2)
    changed = 0
    for s in range(10):
        a, b = aug.augment_frames([f, f.copy()], cfg, np.random.default_rng(s))
        assert np.array_equal(a, b)
        changed += not np.allclose(a, f)
    assert changed >= 8
    # flips: horizontal mirrors both frames; time flip swaps them
    only_flip = AugmentationConfig(horizontal_flip=True, time_flip=True, brightness=0, contrast=0, saturation=0, hue=0)
    g = rng.random((8, 10, 3)).astype(np.float32)
    seen = set()
    for s in range(20):
        a, b = aug.augment_frames([f, g], only_flip, np.random.default_rng(s))
        hflip = np.array_equal(a, f[:, ::-1]) or np.array_equal(a, g[:, ::-1])
        swapped = np.array_equal(a, g) or np.array_equal(a, g[:, ::-1])
        assert np.array_equal(b, (f if swapped else g)[:, ::-1] if hflip else (f if swapped else g))
        seen.add((hflip, swapped))
    assert len(seen) == 4
    assert aug.augment_frames([f], None, np.random.default_rng(0))[0] is f


# -- face landmarks (dataset.landmarks) ---------------------------------------------------------------

def _landmark_data(tmp_path, no_face=(), frames=8, num_ids=2, layout="frames"):
    from synthetic import write_landmarks
    root = make_dataset(tmp_path, layout, num_ids=num_ids, clips_per_id=1, frames=frames, size=SIZE)
    write_landmarks(root, seed=3, no_face=no_face)
    return root


def _frame_index(clip, frame):
    """Which frame of ``clip`` (uint8 (T, S, S, 3)) the sample's float frame is, and whether it is mirrored."""
    img = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for i, f in enumerate(clip):
        if np.array_equal(img, f):
            return i, False
        if np.array_equal(img, f[:, ::-1]):
            return i, True
    raise AssertionError("not a frame of the clip")


def test_face_targets_follow_the_frames_and_their_flips(tmp_path):
    from nets.config import FACE_TARGETS
    from nets.media import facemesh as fm
    from nets.train import landmarks as lm
    root = _landmark_data(tmp_path, no_face=(3,))
    flips = AugmentationConfig(horizontal_flip=True, time_flip=True, brightness=0, contrast=0, saturation=0, hue=0)
    for pixel_centres in (True, False):
        ds = PairDataset(root, SIZE, augmentation=flips, landmarks=True, pixel_centres=pixel_centres)
        clip = read_video(ds.videos[0], SIZE)
        marks = lm.read_sidecar(lm.sidecar_path(ds.videos[0].path.parent, ds.videos[0].name))
        seen = set()
        for s in range(40):
            x = ds[(0, (1, 0, s))]
            for role in ("source", "driving"):
                i, mirrored = _frame_index(clip, x[role])
                seen.add((mirrored, role))
                if i == 3:  # no face in this frame: no target
                    assert float(x[f"{role}_valid"]) == 0 and not x[f"{role}_points"].any()
                    continue
                assert float(x[f"{role}_valid"]) == 1
                m = marks[i].astype(np.float64)
                want = {"mouth": m[list(fm.LIPS_INNER_UPPER + fm.LIPS_INNER_LOWER)].mean(0), "chin": m[152],
                        "right_eye": m[list(fm.RIGHT_EYE_UPPER + fm.RIGHT_EYE_LOWER)].mean(0),
                        "left_eye": m[list(fm.LEFT_EYE_UPPER + fm.LEFT_EYE_LOWER)].mean(0)}
                if mirrored:  # the picture's x is mirrored, and the subject's right eye is now where the left was
                    want = {k: np.array([SIZE - want[k.replace("right", "L").replace("left", "right").replace("L", "left")][0],
                                         want[k.replace("right", "L").replace("left", "right").replace("L", "left")][1]])
                            for k in want}
                for k, name in enumerate(FACE_TARGETS):
                    px = want[name]
                    expect = 2 * px / SIZE - 1 if pixel_centres else 2 * (px - 0.5) / (SIZE - 1) - 1
                    assert np.allclose(x[f"{role}_points"][k].numpy(), expect, atol=2e-3), (name, mirrored, role)
                mouth_w = np.linalg.norm(m[61] - m[291]) / SIZE
                scale = 2 if pixel_centres else 2 * SIZE / (SIZE - 1)
                assert float(x[f"{role}_widths"][0]) == pytest.approx(scale * mouth_w, rel=1e-3)
        assert seen == {(a, b) for a in (False, True) for b in ("source", "driving")}


def test_landmarks_do_not_change_the_draws(tmp_path):
    """Reading landmarks adds targets but the same frames and augmentation (official sampling unchanged)."""
    root = _landmark_data(tmp_path)
    cfg = AugmentationConfig()
    plain = PairDataset(root, SIZE, id_sampling=True, augmentation=cfg, num_repeats=3, identity_pairs=0.2)
    marked = PairDataset(root, SIZE, id_sampling=True, augmentation=cfg, num_repeats=3, identity_pairs=0.2,
                         landmarks=True)
    for s in range(12):
        a, b = plain[(s % 2, (0, 1, s))], marked[(s % 2, (0, 1, s))]
        assert set(b) - set(a) == {f"{r}_{w}" for r in ("source", "driving") for w in ("points", "widths", "valid")}
        assert torch.equal(a["source"], b["source"]) and torch.equal(a["driving"], b["driving"])


def test_expression_partner_is_the_most_different_candidate():
    from nets.train import landmarks as lm
    n = 6
    faces = lm.ClipFaces(points=np.zeros((n, 4, 2), np.float32), widths=np.zeros((n, 2), np.float32),
                         mouth=np.array([0.0, 0.1, 0.6, 0.2, 0.9, 0.0], np.float32),
                         eyes=np.array([0.3, 0.3, 0.3, 0.0, 0.3, 0.3], np.float32),
                         valid=np.array([True, True, True, True, False, True]))
    assert lm.expression_partner(faces, 0, np.array([1, 3, 2, 5])) == 2  # mouth 0.6 beats mouth 0.2 + eyes 0.3
    assert lm.expression_partner(faces, 0, np.array([5, 0, 1])) == 1  # 0.1 beats 0 (frame 5 = frame 0)
    assert lm.expression_partner(faces, 0, np.array([1, 3, 5])) == 3  # mouth 0.2 + eyes 0.3
    assert lm.expression_partner(faces, 0, np.array([4, 1])) == 1  # frame 4 has no face
    assert lm.expression_partner(faces, 4, np.array([0, 1])) is None  # the first frame has no face
    assert lm.expression_partner(faces, 0, np.array([4])) is None


def test_expression_pairs_differ_in_openness(tmp_path):
    root = _landmark_data(tmp_path, frames=24, num_ids=1)
    kw = dict(augmentation=None, num_repeats=1, landmarks=True)
    ds = {share: PairDataset(root, SIZE, expression_pairs=share, **kw) for share in (0.0, 1.0)}
    clip = read_video(ds[0.0].videos[0], SIZE)
    faces = ds[0.0].faces[ds[0.0].videos[0].path]

    def diff(x):
        i, _ = _frame_index(clip, x["source"])
        j, _ = _frame_index(clip, x["driving"])
        return abs(faces.mouth[i] - faces.mouth[j]) + abs(faces.eyes[i] - faces.eyes[j]), (i, j)

    random_pairs = [diff(ds[0.0][(0, (2, 0, s))])[0] for s in range(40)]
    expression = [diff(ds[1.0][(0, (2, 0, s))]) for s in range(40)]
    assert np.mean([d for d, _ in expression]) > 1.5 * np.mean(random_pairs)
    # the draws of the module doc: the clip, two frames, then a number, the first frame and 16 candidates; the
    # driving frame is the candidate whose mouth + eye openness differs most from the first frame's
    for s, (_, (i, j)) in enumerate(expression):
        rng = np.random.default_rng([2, 0, s])
        rng.integers(1), rng.choice(24, size=2, replace=False), rng.random()
        first, candidates = int(rng.integers(24)), rng.integers(24, size=16)
        score = np.abs(faces.mouth[candidates] - faces.mouth[first]) + np.abs(faces.eyes[candidates] - faces.eyes[first])
        assert (i, j) == (first, candidates[np.argmax(score)])
    again = [diff(ds[1.0][(0, (2, 0, s))])[1] for s in range(40)]
    assert again == [p for _, p in expression]  # a pure function of the seed


def test_missing_or_stale_landmarks_are_data_errors(tmp_path):
    from nets.train import landmarks as lm
    root = _landmark_data(tmp_path)
    side = next((root / "train").glob("*.landmarks.npy"))
    marks = np.load(side)
    side.unlink()
    with pytest.raises(DataError, match=rf"1 of the 2 clips .* mra-prepare --landmarks-only {root}"):
        PairDataset(root, SIZE, landmarks=True)
    PairDataset(root, SIZE)  # without landmarks nobody asks for them
    lm.write_sidecar(side, marks[:-1])  # one frame short
    ds = PairDataset(root, SIZE, landmarks=True, num_repeats=1)
    with pytest.raises(DataError, match="has 8 frames but its landmark sidecar 7.*--overwrite"):
        for s in range(4):
            ds[(s % 2, (0, 0, s))]
    side.write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read the landmark sidecar"):
        PairDataset(root, SIZE, landmarks=True)
