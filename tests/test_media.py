"""nets.media: image reading, video probing/streaming, resampling, atomic writers (generated files only)."""
import os
import subprocess
import sys
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from nets import media
from nets.errors import UserError
from nets.media import Frame
from mediagen import (corrupt, count_frames, make_video, pattern, read_frames, save_image, truncate, unwritable_dir,
                      write_png16)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Images: the formats users have
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext,args", [(".png", {}), (".jpg", {"quality": 95}), (".jpeg", {"quality": 95}),
                                      (".webp", {"lossless": True}), (".bmp", {}), (".tif", {})])
def test_read_image_formats(tmp_path, ext, args):
    rgb = pattern(90, 70, 0.3)
    p = save_image(tmp_path / f"a{ext}", rgb, **args)
    out = media.read_image(p)
    assert out.shape == (70, 90, 3) and out.dtype == np.uint8
    tol = 8 if ext in (".jpg", ".jpeg") else 0
    assert np.abs(out.astype(int) - rgb).mean() <= tol


def test_read_grayscale_rgba_palette(tmp_path):
    g = pattern(64, 48)[..., 0]
    out = media.read_image(save_image(tmp_path / "g.png", g))
    assert out.shape == (48, 64, 3) and np.array_equal(out[..., 0], g) and np.array_equal(out[..., 2], g)

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255  # top opaque red, bottom fully transparent -> white
    rgba[20:30, :, 3] = 128  # half transparent
    out = media.read_image(save_image(tmp_path / "a.png", rgba))
    assert np.array_equal(out[5, 5], [200, 0, 0])
    assert np.array_equal(out[35, 5], [255, 255, 255])
    assert abs(int(out[25, 5, 1]) - 127) <= 2 and abs(int(out[25, 5, 0]) - 228) <= 2

    la = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    la.save(tmp_path / "la.png")
    assert np.array_equal(media.read_image(tmp_path / "la.png")[35, 5], [255, 255, 255])

    pal = Image.fromarray(rgba).convert("RGB").quantize(8)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert media.read_image(tmp_path / "p.png").shape == (40, 40, 3)


def test_read_16bit(tmp_path):
    g16 = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = media.read_image(tmp_path / "g16.png")
    assert out.shape == (32, 64, 3)
    ref = np.round(g16 / 257.0).astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - ref).max() <= 1  # scaled, not clipped at 255
    assert out.max() == 255 and out.min() == 0

    rgb16 = (pattern(48, 40).astype(np.uint16) * 257)
    out = media.read_image(write_png16(tmp_path / "rgb16.png", rgb16))
    assert np.abs(out.astype(int) - pattern(48, 40)).max() <= 1


def test_exif_orientation_applied(tmp_path):
    rgb = np.zeros((60, 100, 3), np.uint8)  # landscape: left half red, right half blue
    rgb[:, :50, 0] = 255
    rgb[:, 50:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed turned 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = media.read_image(tmp_path / "r.jpg")
    assert out.shape == (100, 60, 3)  # portrait, as a photo viewer shows it
    assert out[10, 30, 0] > 200 and out[90, 30, 2] > 200  # left went to the top


def test_very_large_jpeg_is_decoded_small(tmp_path):
    """A 24-megapixel JPEG: decoded at reduced scale (draft), peak memory far below the full image."""
    big = np.tile(pattern(500, 500), (8, 12, 1))  # 6000 x 4000
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=80)
    del big
    code = ("import resource, json, sys; from nets.media import read_image;"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"a = read_image({str(tmp_path / 'big.jpg')!r}, max_side=2048);"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "print(json.dumps([a.shape, (after - before) / 1024]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    shape, grew_mb = json.loads(out.stdout)
    assert shape == [1365, 2048, 3]
    assert grew_mb < 60, f"reading grew the peak memory by {grew_mb:.0f} MB (the full image alone is 72 MB)"


def test_image_too_large_is_a_user_error(tmp_path, monkeypatch):
    save_image(tmp_path / "a.png", pattern(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match="too large.*downscale"):
        media.read_image(tmp_path / "a.png")


def test_size_limits_are_quoted_from_one_constant_each(tmp_path):
    """Issue 21 item 12: every too-large picture quotes the one limit (64 megapixels), whether the
    header check or PIL's own bomb check (at 178 megapixels) refuses it; a long thin picture is
    called by its own size, not by what downscaling made of it."""
    limit = f"at most {media.MAX_DECODED_PIXELS // 1_000_000} megapixels"
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")      # 81 megapixels, a 10 kB file
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")   # 400: PIL's own check refuses it first
    messages = {}
    for name in ("big.png", "huge.png"):
        with pytest.raises(UserError) as e:
            media.read_image(tmp_path / name)
        messages[name] = str(e.value)
    assert "big.png is 9000x9000 pixels, too large to decode (" + limit in messages["big.png"]
    assert "huge.png is too large to decode (" + limit in messages["huge.png"], messages
    assert "178" not in " ".join(messages.values())
    save_image(tmp_path / "strip.png", np.full((20, 20000, 3), 128, np.uint8))
    with pytest.raises(UserError) as e:
        media.read_image(tmp_path / "strip.png")
    assert "strip.png is 20000x20 pixels, too narrow" in str(e.value) and "2048x2" in str(e.value)
    assert "only" not in str(e.value)
    save_image(tmp_path / "tiny.png", np.full((300, 5, 3), 128, np.uint8))
    with pytest.raises(UserError, match="tiny.png is only 5x300 pixels; use an image at least 8 pixels"):
        media.read_image(tmp_path / "tiny.png")


# ---------------------------------------------------------------------------------------------
# Images: broken input
# ---------------------------------------------------------------------------------------------

def test_bad_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n%...\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "fake.png").write_bytes(os.urandom(2000))
    (tmp_path / "folder.png").mkdir()
    good = save_image(tmp_path / "good.png", pattern(200, 200))
    truncate(good, tmp_path / "cut.png", 0.5)
    jpg = save_image(tmp_path / "good.jpg", pattern(200, 200), quality=90)
    truncate(jpg, tmp_path / "cut.jpg", 0.4)
    corrupt(good, tmp_path / "bad.png", 0.3, 0.3)
    make_video(tmp_path / "clip.mp4", n=2, size=(32, 32))
    cases = {"missing.png": "not found", "notes.txt": "unsupported source image format '.txt'",
             "doc.pdf": "unsupported source image format '.pdf'", "empty.png": "empty file",
             "fake.png": "not a valid image", "folder.png": "is a directory", "cut.png": "corrupted or truncated",
             "cut.jpg": "corrupted or truncated", "bad.png": "corrupted or truncated", "clip.mp4": "is a video"}
    for name, msg in cases.items():
        with pytest.raises(UserError, match=msg):
            media.read_image(tmp_path / name)


# ---------------------------------------------------------------------------------------------
# Video input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".mp4", ".mov", ".avi", ".webm", ".gif", ".mkv"])
def test_video_containers(tmp_path, ext):
    p = make_video(tmp_path / f"v{ext}", n=9, size=(96, 80), fps=25)
    info = media.probe_video(p)
    assert (info.width, info.height) == (96, 80) and info.fps == 25
    frames = list(media.VideoReader(p, info=info))
    assert len(frames) == 9
    assert [round(f.time, 4) for f in frames] == [round(i / 25, 4) for i in range(9)]
    assert frames[0].rgb.shape == (80, 96, 3) and frames[0].rgb.dtype == np.uint8
    ref = pattern(96, 80, 4 / 9)
    assert np.abs(frames[4].rgb.astype(int) - ref).mean() < (25 if ext == ".gif" else 12)


@pytest.mark.parametrize("size,fps,pix", [((97, 75), Fraction(30000, 1001), "yuv444p"), ((50, 130), Fraction(1350, 61), "yuv444p"),
                                          ((64, 64), Fraction(8), None)])
def test_odd_sizes_and_rates(tmp_path, size, fps, pix):
    p = make_video(tmp_path / "odd.mp4", n=7, size=size, fps=fps, pix_fmt=pix)
    info = media.probe_video(p)
    assert (info.width, info.height) == size and abs(float(info.fps) - float(fps)) < 1e-3
    frames = list(media.VideoReader(p, size=(32, 32)))
    assert len(frames) == 7 and frames[0].rgb.shape == (32, 32, 3)
    assert abs(frames[-1].time - 6 / float(fps)) < 1e-3


def test_rotated_video_is_upright(tmp_path):
    def frame(i):
        a = np.zeros((64, 96, 3), np.uint8)
        a[:, :48, 0] = 255  # left half red
        return a
    p = make_video(tmp_path / "rot.mp4", n=3, size=(96, 64), frame_fn=frame, rotation=90)
    info = media.probe_video(p)
    assert info.rotation == 90 and (info.width, info.height) == (64, 96)
    f = next(iter(media.VideoReader(p)))
    assert f.rgb.shape == (96, 64, 3)
    # displayed turned 90 degrees counter-clockwise: the left half ends at the bottom
    assert f.rgb[80, 32, 0] > 200 and f.rgb[10, 32, 0] < 50


def test_working_size_bound(tmp_path):
    p = make_video(tmp_path / "v.mp4", n=2, size=(320, 180))
    f = next(iter(media.VideoReader(p, max_side=160)))
    assert f.rgb.shape == (90, 160, 3)


def test_bad_videos(tmp_path):
    good = make_video(tmp_path / "good.mp4", n=30, size=(96, 96))
    fast = make_video(tmp_path / "fast.mp4", n=30, size=(96, 96), faststart=True)
    avi = make_video(tmp_path / "good.avi", n=30, size=(96, 96))
    webm = make_video(tmp_path / "good.webm", n=30, size=(96, 96))
    truncate(good, tmp_path / "cut.mp4", 0.5)
    truncate(fast, tmp_path / "cut_fast.mp4", 0.7)
    truncate(avi, tmp_path / "cut.avi", 0.6)
    truncate(webm, tmp_path / "cut.webm", 0.6)
    corrupt(good, tmp_path / "bad.mp4", 0.1, 0.5)
    rng = np.random.default_rng(183)
    (tmp_path / "garbage.mov").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    save_image(tmp_path / "still.png", pattern(32, 32))
    with av.open(str(tmp_path / "zero.avi"), "w") as c:  # a header and no frames
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 64
        c.start_encoding()
    with av.open(str(tmp_path / "zero.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 64
        c.start_encoding()
    with av.open(str(tmp_path / "audio_only.mp4"), "w") as c:
        a = c.add_stream("aac", rate=48000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 4800), np.float32), format="fltp", layout="mono")
        f.sample_rate = 48000
        c.mux(a.encode(f))
        c.mux(a.encode(None))
    cases = {"missing.mp4": "not found", "notes.txt": "unsupported driving video format '.txt'",
             "still.png": "is an image", "empty.mp4": "empty file", "garbage.mov": "not a valid video",
             "cut.mp4": "corrupted, truncated", "cut_fast.mp4": "truncated", "cut.avi": "truncated",
             "cut.webm": "truncated", "bad.mp4": "corrupted", "zero.avi": "no video frames",
             "zero.mp4": "no video frames", "audio_only.mp4": "no video frames"}
    for name, msg in cases.items():
        with pytest.raises(UserError, match=msg):
            info = media.probe_video(tmp_path / name)
            for _ in media.VideoReader(info.path, info=info):
                pass


def test_garbage_gets_one_stable_message(tmp_path):
    """Random bytes named like a video: always 'not a valid video', whatever FFmpeg takes them for
    (seed 289 passes for a subtitle file)."""
    for seed in (289, *range(12)):
        path = tmp_path / f"garbage{seed}.mov"
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        with pytest.raises(UserError, match=rf"^cannot read driving video garbage{seed}.mov: not a valid video"):
            media.probe_video(path)


# ---------------------------------------------------------------------------------------------
# Resampling by timestamps
# ---------------------------------------------------------------------------------------------

def _frames(times, dur=None):
    return [Frame(index=i, time=t, duration=dur, rgb=np.full((1, 1, 3), i, np.uint8)) for i, t in enumerate(times)]


def _ids(frames):
    return [int(f.rgb[0, 0, 0]) for f in frames]


def test_resample_same_rate_is_identity():
    src = _frames([i / 30 for i in range(10)], 1 / 30)
    out = list(media.resample(src, Fraction(30)))
    assert _ids(out) == list(range(10))


def test_resample_changes_rate_but_not_duration():
    src = _frames([i / 30 for i in range(30)], 1 / 30)  # 1 s at 30 fps
    half = list(media.resample(src, Fraction(15)))
    assert len(half) == 15 and _ids(half) == list(range(0, 30, 2))
    double = list(media.resample(src, Fraction(60)))
    assert len(double) == 60 and _ids(double)[:6] == [0, 0, 1, 1, 2, 2]
    ntsc = list(media.resample(_frames([i / 25 for i in range(50)], 0.04), Fraction(30000, 1001)))
    assert abs(len(ntsc) - 2.0 * 30000 / 1001) <= 1


def test_resample_variable_rate_picks_nearest():
    src = _frames([0.0, 0.1, 0.12, 0.5], 0.1)
    out = list(media.resample(src, Fraction(10)))  # ticks 0.0 .. 0.5
    assert _ids(out) == [0, 1, 2, 2, 3, 3]  # t=0.3 is nearer 0.12 than 0.5, t=0.4 nearer 0.5


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def test_output_kinds_and_checks(tmp_path):
    assert media.check_output(tmp_path / "a.mp4").kind == "mp4"
    assert media.check_output(tmp_path / "a.GIF").kind == "gif"
    assert media.check_output(tmp_path / "frames").kind == "png"
    assert media.check_output(str(tmp_path / "frames.v1") + "/").kind == "png"
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "holiday.jpg").write_text("x")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "000000.png").write_text("x")
    assert media.check_output(tmp_path / "old").kind == "png"  # a previous output: replaced at the end
    cases = {tmp_path / "a.avi": "unsupported output format '.avi'", tmp_path / "a.txt": "unsupported output format",
             tmp_path / "nodir" / "a.mp4": "does not exist", tmp_path / "file" / "a.mp4": "is not a folder",
             tmp_path / "full": "not empty", tmp_path / "old" / "..": "not empty"}
    for path, msg in cases.items():
        with pytest.raises(UserError, match=msg):
            media.check_output(path)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        media.check_output(tmp_path / "dir.mp4")


def test_output_folder_not_writable(tmp_path):
    with unwritable_dir(tmp_path) as ro:
        with pytest.raises(UserError, match="cannot write to output folder .*Permission denied.*writable"):
            media.check_output(ro / "a.mp4")
        with pytest.raises(UserError, match="cannot write to output folder"):
            media.check_output(ro / "frames")


def _batches(n, size=(66, 66)):
    return np.stack([pattern(size[0], size[1], i / n) for i in range(n)])


def test_writers_roundtrip(tmp_path):
    frames = _batches(12)
    for name in ("o.mp4", "o.gif", "o"):
        with media.open_writer(tmp_path / name, Fraction(25), (66, 66)) as w:
            w.write(frames[:5])
            w.write(frames[5:])
    with av.open(str(tmp_path / "o.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.average_rate == 25 and s.codec_context.pix_fmt == "yuv420p"
    decoded = read_frames(tmp_path / "o.mp4")
    assert len(decoded) == 12 and np.abs(decoded[3].astype(int) - frames[3]).mean() < 8  # 4:2:0 chroma
    flat = np.zeros((2, 64, 64, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
    with media.open_writer(tmp_path / "flat.mp4", Fraction(25), (64, 64)) as w:
        w.write(flat)
    assert np.abs(read_frames(tmp_path / "flat.mp4")[1].astype(int) - flat[1]).max() <= 2  # colours kept
    assert count_frames(tmp_path / "o.gif") == 12
    pngs = sorted((tmp_path / "o").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(12)]
    assert all(np.array_equal(np.asarray(Image.open(p)), frames[i]) for i, p in enumerate(pngs))  # lossless
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".probe" in p.name]


def test_mp4_odd_size_is_rounded_down_to_even(tmp_path):
    """H.264 needs even sides: an odd side loses its last column or row (never padded up), and the
    writer says the size it writes."""
    with media.open_writer(tmp_path / "odd.mp4", Fraction(30000, 1001), (65, 33)) as w:
        assert w.size == (64, 32) == media.written_size("mp4", (65, 33))
        w.write(_batches(3, (65, 33)))
    with av.open(str(tmp_path / "odd.mp4")) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (64, 32) and abs(float(s.average_rate) - 29.97) < 0.01
    assert media.written_size("gif", (65, 33)) == (65, 33)


def test_failed_write_never_clobbers(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with media.open_writer(out, Fraction(25), (64, 64)) as w:
            w.write(_batches(3, (64, 64)))
            raise RuntimeError("boom")
    assert out.read_bytes() == b"previous result"
    frames_dir = tmp_path / "frames"
    with media.open_writer(frames_dir, Fraction(25), (64, 64)) as w:
        w.write(_batches(4, (64, 64)))
    with pytest.raises(KeyboardInterrupt):
        with media.open_writer(frames_dir, Fraction(25), (64, 64)) as w:
            w.write(_batches(2, (64, 64)))
            raise KeyboardInterrupt
    assert len(list(frames_dir.iterdir())) == 4
    with media.open_writer(frames_dir, Fraction(25), (64, 64)) as w:  # a new run replaces the old frames
        w.write(_batches(2, (64, 64)))
    assert len(list(frames_dir.iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "keep.mp4"]


def test_audio_is_carried_and_trimmed(tmp_path):
    from mediagen import tone
    src = make_video(tmp_path / "a.mp4", n=10, size=(64, 64), audio=tone(48000, 3.0, [(0.2, 0.1)]))
    with media.open_writer(tmp_path / "o.mp4", Fraction(25), (64, 64), audio_from=src) as w:
        w.write(_batches(25, (64, 64)))  # 1.0 s of video; the audio lasts 3 s
    with av.open(str(tmp_path / "o.mp4")) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.rate == 48000
        assert abs(float(a.duration * a.time_base) - 1.0) < 0.03
        x = np.concatenate([f.to_ndarray()[0] for f in c.decode(a)])
    onset = np.argmax(np.abs(x) > 0.3) / 48000
    assert abs(onset - 0.2) < 0.01
