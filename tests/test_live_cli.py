"""mra-live end to end: a generated video as the camera, file sink, stats; clear failures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nets
from live import live as live_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import av
    from PIL import Image
    d = tmp_path_factory.mktemp("live")
    ckpt = d / "tiny.pth"
    nets.save_model(nets.build_model("tiny").eval(), ckpt)
    src = d / "portrait.png"
    yy, xx = np.mgrid[0:96, 0:96]
    img = np.stack([(xx * 2) % 255, (yy * 2) % 255, np.full_like(xx, 120)], -1).astype(np.uint8)
    Image.fromarray(img).save(src)
    cam = d / "camera.mp4"
    with av.open(str(cam), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 128
        s.pix_fmt = "yuv420p"
        for i in range(100):
            f = np.full((128, 128, 3), 40, np.uint8)
            x = 30 + int(20 * np.sin(i / 6))
            f[30:90, x:x + 50] = (210, 170, 130)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return d, ckpt, src, cam


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCV_LOG_LEVEL", "MRA_DEBUG")}  # the user's view
    return subprocess.run([sys.executable, "-m", "live.live", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def assert_no_native_noise(stderr):
    """Only mra-live's own lines: no OpenCV / TFLite log lines such as ``[ERROR:0@0.013] global ...``."""
    for line in stderr.splitlines():
        assert not line.lstrip("\r").startswith(("[", "W0", "I0", "E0", "INFO:", "WARNING:")), stderr


def test_whole_loop_video_camera_to_file(assets, tmp_path):
    d, ckpt, src, cam = assets
    out = tmp_path / "out.mp4"
    stats = tmp_path / "stats.json"
    r = run_cli("--source", src, "--camera", cam, "--output", out, "--checkpoint", ckpt, "--crop", "none",
                "--max-frames", 30, "--stats", stats, "--output-size", 128, "--backend", "torch", "--quiet")
    assert r.returncode == 0, r.stderr
    import av
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        assert (v.width, v.height) == (128, 128)
        assert float(v.average_rate) == pytest.approx(25, abs=0.01)  # the camera's frame rate
    data = json.loads(stats.read_text())
    assert data["frames_out"] == frames and 1 <= frames <= 30
    assert data["fps_out"] > 0 and data["latency_ms"]["p95"] >= data["latency_ms"]["p50"] > 0
    assert {"regions", "animate", "transfer"} <= set(data["stages"])


def test_no_virtual_camera_device_is_explained(assets):
    d, ckpt, src, cam = assets
    r = run_cli("--source", src, "--camera", cam, "--checkpoint", ckpt, "--crop", "none", "--max-frames", 5,
                "--backend", "torch")
    try:
        import pyvirtualcam
        pyvirtualcam.Camera(width=64, height=64, fps=25).close()
        pytest.skip("this machine has a virtual camera device; the missing-device path cannot be shown")
    except RuntimeError:
        pass
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no virtual camera device") and "modprobe v4l2loopback" in lines[-1]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--source", "missing.png"], "source not found"),
    (["--camera", "7"], "no camera at index 7"),
    (["--camera", "nope.mp4"], "camera file not found"),
    (["--output-size", "10"], "--output-size"),
    (["--mode", "avd", "--crop", "none"], "AVD"),
    (["--config", "vox265", "--checkpoint"], "--config vox265 describes the checkpoint"),  # not silently ignored
])
def test_failures_are_one_line_errors(assets, args, needle):
    d, ckpt, src, cam = assets
    base = {"--source": str(src), "--camera": str(cam), "--checkpoint": str(ckpt), "--output": str(d / "x.mp4"),
            "--backend": "torch"}
    argv = []
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    if args[-1] == "--checkpoint":  # named last: left out
        args = args[:-1]
    if "--mode" in args:
        nets.save_model(nets.build_model("tiny").eval(), d / "noavd.pth")
        m = nets.load_model(d / "noavd.pth")
        m.has_avd = False
        nets.save_model(m, d / "noavd.pth")
        argv[argv.index("--checkpoint") + 1] = str(d / "noavd.pth")
    r = run_cli(*argv, *args)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, r.stderr
    assert "Traceback" not in r.stderr
    assert_no_native_noise(r.stderr)


def test_first_run_without_source_uses_the_bundled_portrait_and_no_camera_is_one_clear_line(assets):
    """`mra-live` alone: the example portrait (said so), then, on this camera-less machine, one error line
    and none of OpenCV's own ("[ERROR:0@0.013] global obsensor_uvc_stream_channel.cpp:158 ...")."""
    d, ckpt, src, cam = assets
    r = run_cli("--checkpoint", ckpt, "--backend", "torch", "--camera", "5", "--output", d / "first.mp4")
    assert r.returncode == 2, r.stderr
    assert "bundled example portrait" in r.stderr and "--source" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: no camera at index 5")
    assert_no_native_noise(r.stderr)
    assert not (d / "first.mp4").exists()


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A drawn portrait (600x800) and a drawn talking clip as the camera (faces the detector finds)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mediagen import make_video, save_image
    from webgen import draw_face, talking
    d = tmp_path_factory.mktemp("drawn")
    save_image(d / "portrait.png", draw_face(1, 800, 600))
    make_video(d / "talk.mp4", n=40, size=(160, 160), frame_fn=lambda i: talking(i, 40, seed=2, size=160))
    return d


@pytest.mark.parametrize("extra,expect", [((), (1280, 720)), (("--output-size", "640x480"), (640, 480)),
                                          (("--no-paste-back",), (512, 512))])
def test_full_frame_output_by_default(assets, drawn, tmp_path, extra, expect):
    d, ckpt, src, cam = assets
    out = tmp_path / "o.mp4"
    stats = tmp_path / "s.json"
    r = run_cli("--source", drawn / "portrait.png", "--camera", drawn / "talk.mp4", "--checkpoint", ckpt,
                "--backend", "torch", "--output", out, "--max-frames", 5, "--stats", stats, "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    import av
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == expect
    assert "post" in json.loads(stats.read_text())["stages"]


def test_an_odd_recording_size_is_said(assets, drawn, tmp_path):
    """--output-size 641x481 into an mp4: the file is 640x480 (H.264's even sides, rounded down) and
    the start line says so."""
    d, ckpt, src, cam = assets
    out = tmp_path / "o.mp4"
    r = run_cli("--source", drawn / "portrait.png", "--camera", drawn / "talk.mp4", "--checkpoint", ckpt,
                "--backend", "torch", "--output", out, "--max-frames", 3, "--quiet", "--output-size", "641x481")
    assert r.returncode == 0, r.stderr
    import av
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (640, 480)
    assert "at 641x481" in r.stderr and "o.mp4 at 640x480 (H.264 needs even sides)" in r.stderr, r.stderr


def test_source_without_face_under_crop_auto(assets, tmp_path):
    d, ckpt, src, cam = assets
    r = run_cli("--source", src, "--camera", cam, "--checkpoint", ckpt, "--output", tmp_path / "o.mp4",
                "--backend", "torch", "--max-frames", 3)
    assert r.returncode == 2
    assert "no face found" in r.stderr and "--crop none" in r.stderr


class FakeCv2:
    """OpenCV's VideoCapture for cameras ``{index: (width, height, fps, delivers_frames)}``."""

    CAP_PROP_FRAME_WIDTH, CAP_PROP_FRAME_HEIGHT, CAP_PROP_FPS = 3, 4, 5

    def __init__(self, cameras):
        self.cameras, self.released = cameras, []
        fake = self

        class VideoCapture:
            def __init__(self, index):
                self.index = index

            def isOpened(self):
                return self.index in fake.cameras

            def read(self):
                return fake.cameras[self.index][3], None

            def get(self, prop):
                w, h, fps, _ = fake.cameras[self.index]
                return {3: w, 4: h, 5: fps}[prop]

            def release(self):
                fake.released.append(self.index)

        self.VideoCapture = VideoCapture


def test_list_cameras_prints_each_camera_that_delivers_frames(monkeypatch, capsys):
    import live.loop.capture as capture
    fake = FakeCv2({0: (640, 480, 30.0, True), 2: (1920, 1080, 29.97, True), 3: (320, 240, 15.0, False)})
    monkeypatch.setattr(capture, "_cv2", lambda: fake)
    assert live_cli.cli(["--list-cameras"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0: 640x480 @ 30 fps", "2: 1920x1080 @ 29.97 fps"]
    assert fake.released == list(range(10))  # every probed index is released, opened or not
    monkeypatch.setattr(capture, "_cv2", lambda: FakeCv2({}))
    assert live_cli.cli(["--list-cameras"]) == 0
    assert capsys.readouterr().out.strip() == "no cameras found (is one plugged in, and not used by another program?)"


def test_folder_with_an_unreadable_image_and_a_damaged_camera_file(assets, tmp_path):
    """Bad images in a --source folder are skipped with a warning; a camera file damaged part-way is an
    error (exit 2, one line, no libav noise) and the recording keeps the frames before the damage."""
    from mediagen import corrupt
    d, ckpt, src, cam = assets
    folder = tmp_path / "portraits"
    folder.mkdir()
    (folder / "a.png").write_bytes(src.read_bytes())
    (folder / "b.png").write_text("not an image")
    from mediagen import make_video
    bad_cam = corrupt(make_video(tmp_path / "camera.mp4", n=100, size=(128, 128)), tmp_path / "damaged.mp4",
                      start=0.5, length=0.3)
    out = tmp_path / "rec.mp4"
    r = run_cli("--source", folder, "--camera", bad_cam, "--output", out, "--checkpoint", ckpt, "--crop", "none",
                "--backend", "torch", "--quiet")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("warning: skipping b.png: cannot read source image b.png")
    assert lines[-1].startswith("error: cannot read camera file damaged.mp4: the video is corrupted") and \
        f"the recording {out} keeps the frames before the damage" in lines[-1]
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert "Traceback" not in r.stderr and "[h264" not in r.stderr and "@ 0x" not in r.stderr
    import av
    with av.open(str(out)) as c:
        assert 1 <= sum(1 for _ in c.decode(video=0)) < 100
    (folder / "a.png").write_text("not an image either")
    r = run_cli("--source", folder, "--camera", cam, "--output", out, "--checkpoint", ckpt, "--crop", "none",
                "--backend", "torch")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "error: none of the 2 images can be used as a portrait")


def test_stats_path_is_checked_before_the_session(assets, tmp_path):
    d, ckpt, src, cam = assets
    r = run_cli("--source", src, "--camera", cam, "--output", tmp_path / "o.mp4", "--checkpoint", ckpt,
                "--stats", tmp_path / "missing" / "s.json")
    assert r.returncode == 2 and r.stderr.startswith("error: output folder") and "does not exist" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "o.mp4").exists()


def test_delay_has_an_upper_bound(assets, tmp_path):
    d, ckpt, src, cam = assets
    r = run_cli("--source", src, "--camera", cam, "--output", tmp_path / "o.mp4", "--checkpoint", ckpt,
                "--delay", 100000)
    assert r.returncode == 2 and r.stderr.startswith("error: --delay must be at most 2000 ms") and \
        r.stderr.count("\n") == 1


def test_recording_on_a_full_disk(assets, tmp_path):
    from mediagen import small_tmpfs
    d, ckpt, src, cam = assets
    with small_tmpfs(tmp_path / "disk", "8k") as disk:
        r = run_cli("--source", src, "--camera", cam, "--output", disk / "rec.mp4", "--checkpoint", ckpt,
                    "--crop", "none", "--backend", "torch", "--quiet", "--output-size", 512)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot write {disk / 'rec.mp4'}: no space left on the device")
        assert "Traceback" not in r.stderr and list(disk.iterdir()) == []
