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
