"""mra-prepare: identity split, skip paths (generated videos), layout, a real clip (../shared)."""
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from nets.train import prepare
from nets.media.face import CropBox, FaceBox, crop_resize
from nets.train.layout import identity
from nets.train.prepare import split_identities
from mediagen import count_frames, make_video, pattern, read_frames, truncate

ROOT = Path(__file__).resolve().parents[1]


def test_identity_and_split():
    assert identity("id10001#7w0IBEWc9Qw#000993#001143") == "id10001" and identity("clip") == "clip"
    ids = [f"id{i:03d}" for i in range(20)]
    test = split_identities(ids, 0.2)
    assert len(test) == 4 and test == split_identities(reversed(ids), 0.2)  # deterministic, order-free
    assert len(split_identities(["a", "b"], 0.01)) == 1  # at least one
    assert len(split_identities(["a", "b"], 0.99)) == 1  # never all
    assert split_identities(["a"], 0.5) == set() and split_identities(ids, 0.0) == set()
    assert split_identities(ids, 0.5, test_ids=["id003", "zzz"]) == {"id003"}


class FixedFace:
    """A detector that 'finds' a face at a fixed box, or none, depending on the frame content."""

    def __init__(self, box):
        self.box = box

    def detect(self, rgb):
        return [] if rgb.mean() < 10 else [self.box]


def _raw(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(raw / "alice#001.mp4", n=6, size=(160, 120))
    make_video(raw / "alice#002.mov", n=5, size=(160, 120))
    make_video(raw / "bob#001.avi", n=4, size=(160, 120))
    (raw / "sub").mkdir()
    make_video(raw / "sub" / "carol.webm", n=3, size=(160, 120))
    make_video(raw / "dark.mp4", n=5, size=(160, 120), frame_fn=lambda i: np.zeros((120, 160, 3), np.uint8))
    truncate(make_video(tmp_path / "long.mp4", n=30, size=(160, 120)), raw / "broken.mp4", 0.4)
    with av.open(str(raw / "zero.avi"), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 64
        c.start_encoding()
    (raw / "notes.txt").write_text("not a video")
    return raw


def test_prepare_layout_split_and_skips(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out"
    box = FaceBox(60, 40, 100, 80, 0.9)
    summary = prepare.prepare(raw, out, size=32, test_ids=["bob"], progress=False, detector=FixedFace(box))
    got = {(c.name, c.split, c.status) for c in summary.clips}
    assert got == {("alice#001", "train", "prepared"), ("alice#002", "train", "prepared"),
                   ("bob#001", "test", "prepared"), ("carol", "train", "prepared"),
                   ("dark", "train", "skipped"), ("broken", "train", "skipped"), ("zero", "train", "skipped")}
    reasons = {c.name: c.reason for c in summary.clips if c.status == "skipped"}
    assert reasons["dark"] == "no face found" and "truncated" in reasons["broken"] and "no video frames" in reasons["zero"]
    assert [p.name for p in summary.ignored] == ["notes.txt"]
    frames = sorted((out / "train" / "alice#001").iterdir())
    assert [f.name for f in frames] == [f"{i:06d}.png" for i in range(6)]
    assert len(list((out / "test" / "bob#001").iterdir())) == 4
    # every frame is the same tube crop of its source frame, resized
    src = read_frames(raw / "alice#001.mp4")
    crop = summary.clips[0].crop
    assert crop == CropBox(80, 60 - 0.08 * 40, 40 * 1.75)
    ref = crop_resize(src[2], crop, 32)
    assert np.array_equal(np.asarray(Image.open(frames[2])), ref)
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    lines = summary.describe(out)
    assert lines[0].startswith("prepared 4 clip(s)") and any("dark: no face found" in x for x in lines)

    again = prepare.prepare(raw, out, size=32, test_ids=["bob"], progress=False, detector=FixedFace(box))
    assert again.count("exists") == 4 and again.count("prepared") == 0  # a re-run continues, never redoes


def test_prepare_mp4_format(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(raw / "a.mp4", n=8, size=(160, 120))
    make_video(raw / "b.mp4", n=5, size=(160, 120))
    out = tmp_path / "out"
    s = prepare.prepare(raw, out, size=64, fmt="mp4", test_fraction=0.5, progress=False,
                        detector=FixedFace(FaceBox(60, 40, 100, 80, 0.9)))
    assert s.count("prepared") == 2 and s.count("prepared", "test") == 1
    files = sorted(out.rglob("*.mp4"))
    assert len(files) == 2
    with av.open(str(out / "train" / "a.mp4") if (out / "train" / "a.mp4").exists() else str(files[0])) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (64, 64) and v.average_rate == 25
    assert sorted(count_frames(f) for f in files) == [5, 8]


def test_cli_no_faces_and_bad_dirs(tmp_path, capfd):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(raw / "shapes.mp4", n=4, size=(96, 96))  # real mediapipe: no face in generated shapes
    code = prepare.main([str(raw), str(tmp_path / "out"), "--size", "32"])
    out, err = capfd.readouterr()
    assert code == 2 and "shapes: no face found" in out
    assert err.strip().splitlines()[-1].startswith("error: no clip could be prepared")
    assert "Traceback" not in err

    code = prepare.main([str(tmp_path / "missing"), str(tmp_path / "out")])
    _, err = capfd.readouterr()
    assert code == 2 and err.startswith("error: RAW_DIR") and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code = prepare.main([str(empty), str(tmp_path / "out")])
    _, err = capfd.readouterr()
    assert code == 2 and "no videos" in err and err.count("\n") == 1
    code = prepare.main([str(raw), str(tmp_path / "out"), "--test-ids", "nobody"])
    _, err = capfd.readouterr()
    assert code == 2 and "unknown identities: nobody" in err


def test_prepare_real_clip(tmp_path):
    """One real talking-head clip (../shared) -> a folder of 256x256 face frames, one per video frame."""
    clip = shared_path("data", "faces", "videos", "hdtf1.mp4")
    raw = tmp_path / "raw"
    raw.mkdir()
    os.symlink(clip, raw / "person#hdtf1.mp4")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "nets.train.prepare", str(raw), str(out), "--size", "256"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "prepared 1 clip(s)" in p.stdout
    frames = sorted((out / "train" / "person#hdtf1").iterdir())
    assert len(frames) == count_frames(clip)
    im = np.asarray(Image.open(frames[0]))
    assert im.shape == (256, 256, 3)
    from nets.media.face import FaceDetector
    faces = FaceDetector().detect(im)  # the crop is a face crop: the face fills a good part of it
    assert faces and 0.35 < faces[0].size / 256 < 0.8
    cx, cy = faces[0].center
    assert abs(cx - 128) < 40 and abs(cy - 128) < 50
    # the face mesh of every frame, beside the clip: on the face, mouth below the eyes
    side = out / "train" / "person#hdtf1.landmarks.npy"
    marks = np.load(side).astype(np.float32)
    assert marks.shape == (len(frames), 468, 2) and np.isfinite(marks).all()
    assert faces[0].x0 < marks[0, 13, 0] < faces[0].x1 and faces[0].y0 < marks[0, 13, 1] < faces[0].y1
    assert marks[0, 13, 1] > marks[0, 159, 1] + 20 and marks[0, 33, 0] < marks[0, 263, 0]
    # --landmarks-only on the prepared folder finds the same points (same frames, same mesh)
    side.unlink()
    p = subprocess.run([sys.executable, "-m", "nets.train.prepare", "--landmarks-only", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "landmarks: wrote 1 sidecar(s)" in p.stdout
    assert np.abs(np.load(side).astype(np.float32) - marks).max() < 0.26


class FakeMesh:
    """A face mesh that 'finds' a face in bright frames (468 points that encode the frame's mean) and none in dark."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rgb):
        self.calls += 1
        m = float(rgb.mean())
        if m < 90:
            return None
        return np.stack([np.arange(468) * 0.5, np.full(468, m)], -1)


def _blinking(path, n):
    """Frames alternately bright (a face for FakeMesh) and dark (none)."""
    return make_video(path, n=n, size=(160, 120), frame_fn=lambda i: (pattern(160, 120, i / n) * (1.0 if i % 2 == 0
                                                                                                   else 0.4)).astype(np.uint8))


def test_prepare_writes_landmark_sidecars(tmp_path):
    from nets.train import landmarks as lm
    from nets.train.data import list_videos
    raw = tmp_path / "raw"
    raw.mkdir()
    _blinking(raw / "alice#001.mp4", 6)
    _blinking(raw / "bob#001.mp4", 5)
    out = tmp_path / "out"
    box = FaceBox(60, 40, 100, 80, 0.9)
    mesh = FakeMesh()
    s = prepare.prepare(raw, out, size=32, test_ids=["bob"], progress=False, detector=FixedFace(box), mesh=mesh)
    assert s.count("prepared") == 2 and mesh.calls == 11
    side = out / "train" / "alice#001.landmarks.npy"
    marks = np.load(side)
    assert marks.dtype == np.float16 and marks.shape == (6, 468, 2)
    assert np.isnan(marks[1::2]).all() and np.isfinite(marks[0::2]).all()  # no face in the dark frames
    frames = sorted((out / "train" / "alice#001").iterdir())
    for i in (0, 2, 4):  # the points of the frame as written (the crop at its own size)
        assert marks[i, 0, 1] == np.float16(np.asarray(Image.open(frames[i])).mean())
        assert marks[i, 467, 0] == np.float16(233.5)
    assert (out / "test" / "bob#001.landmarks.npy").exists()
    assert [e.name for e in list_videos(out / "train")] == ["alice#001"]  # the reader does not take it for a clip
    assert lm.read_sidecar(side).dtype == np.float32
    lines = s.describe(out)
    assert any(line.startswith("landmarks: wrote 2 sidecar(s)") and "11 frames, a face in 6 (54.5 %)" in line
               for line in lines), lines

    # a kept clip without a sidecar (an interrupted or older run) gets one; one with a sidecar is left alone
    side.unlink()
    again = prepare.prepare(raw, out, size=32, test_ids=["bob"], progress=False, detector=FixedFace(box), mesh=mesh)
    assert again.count("exists") == 2 and np.array_equal(np.load(side), marks, equal_nan=True)
    assert mesh.calls == 17
    # re-created without landmarks: the old clip's sidecar goes
    prepare.prepare(raw, out, size=32, test_ids=["bob"], progress=False, detector=FixedFace(box), overwrite=True,
                    landmarks=False)
    assert not side.exists() and not (out / "test" / "bob#001.landmarks.npy").exists()


def test_landmarks_only_adds_missing_sidecars(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    _blinking(raw / "alice#001.mp4", 6)
    _blinking(raw / "bob#001.mp4", 4)
    out = tmp_path / "out"
    prepare.prepare(raw, out, size=48, fmt="mp4", test_ids=["bob"], progress=False,
                    detector=FixedFace(FaceBox(60, 40, 100, 80, 0.9)), landmarks=False)
    assert not list(out.rglob("*.npy"))
    mesh = FakeMesh()
    results = prepare.add_landmarks(out, progress=False, mesh=mesh)
    assert sorted((r.split, r.name, r.status, r.frames, r.faces) for r in results) == [
        ("test", "bob#001", "added", 4, 2), ("train", "alice#001", "added", 6, 3)]
    marks = np.load(out / "train" / "alice#001.landmarks.npy")
    assert marks.shape == (6, 468, 2) and np.isnan(marks[1::2]).all() and np.isfinite(marks[0::2]).all()
    again = prepare.add_landmarks(out, progress=False, mesh=mesh)
    assert [r.status for r in again] == ["kept", "kept"] and mesh.calls == 10
    (out / "test" / "bob#001.landmarks.npy").unlink()
    assert sorted(r.status for r in prepare.add_landmarks(out, progress=False, mesh=mesh)) == ["added", "kept"]
    assert len(prepare.add_landmarks(out, overwrite=True, progress=False, mesh=mesh)) == 2 and mesh.calls == 24
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    lines = prepare.describe_landmarks(results, out)
    assert lines[0].startswith("landmarks: wrote 2 sidecar(s)") and "10 frames, a face in 5 (50.0 %)" in lines[0]


def test_landmarks_only_cli(tmp_path, capfd):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_video(raw / "shapes.mp4", n=3, size=(96, 96))
    out = tmp_path / "out"
    prepare.prepare(raw, out, size=32, progress=False, detector=FixedFace(FaceBox(20, 20, 60, 60, 0.9)),
                    landmarks=False)
    assert prepare.main(["--landmarks-only", str(out)]) == 0  # real mediapipe: no face in shapes, NaN rows
    o, _ = capfd.readouterr()
    assert "landmarks: wrote 1 sidecar(s)" in o and "a face in 0 (0.0 %)" in o and "fewer than half" in o
    marks = np.load(out / "train" / "shapes.landmarks.npy")
    assert marks.shape == (3, 468, 2) and np.isnan(marks).all()
    assert prepare.main(["--landmarks-only", str(out)]) == 0
    o, _ = capfd.readouterr()
    assert "kept 1 existing sidecar(s)" in o
    for argv, msg in ((["--landmarks-only", str(raw), str(out)], "takes one folder"),
                      (["--landmarks-only", str(tmp_path / "nothing")], "is not a folder"),
                      (["--landmarks-only", str(raw)], "no clips in"),
                      ([str(raw)], "give RAW_DIR and OUT_DIR")):
        assert prepare.main(argv) == 2
        _, err = capfd.readouterr()
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
