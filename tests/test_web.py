"""mra-web over HTTP and its web socket (no browser): jobs, queue, bad uploads, limits, cleanup, CLI.

The browser-driven tests are in test_web_browser.py; these run everywhere.
"""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="httpx is needed to talk to the mra-web test server (pip install httpx)")
pytest.importorskip("starlette", reason="mra-web needs starlette (pip install starlette uvicorn python-multipart)")

import nets  # noqa: E402
from live import animate  # noqa: E402
from live.engines import load_engine  # noqa: E402
from live.web.app import BackgroundServer, JobQueue, WebConfig, is_loopback, safe_name  # noqa: E402
from live.pasteback import FrameSize  # noqa: E402
from mediagen import count_frames, make_video, pattern, save_image, tone, truncate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("web")
    nets.save_model(nets.build_model("tiny").eval(), d / "tiny.pth")
    save_image(d / "face.png", pattern(96, 96, seed=3))
    make_video(d / "clip.mp4", n=12, size=(80, 80), audio=tone(48000, 12 / 25, bursts=[(0.1, 0.1)]))
    return d


@pytest.fixture(scope="module")
def engine(files):
    return load_engine(files / "tiny.pth")


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine, WebConfig(port=0, max_upload_mb=2)) as s:
        yield s


def client(server) -> "httpx.Client":
    """An API client of the test server: its requests carry the launch token in the cookie that the
    page's address sets in a browser."""
    from live.web.guard import cookie_name
    return httpx.Client(base_url=server.url, timeout=60, cookies={cookie_name(server.port): server.token})


def live_url(server) -> str:
    """The webcam tab's socket, with the launch token."""
    return server.url.replace("http", "ws") + f"api/live?token={server.token}"


def post_job(c, source: Path, driving: Path, **fields):
    data = {"mode": "relative", "crop": "none", **fields}
    return c.post("api/jobs", data=data, files={"source": (source.name, source.read_bytes()),
                                                 "driving": (driving.name, driving.read_bytes())})


def wait_job(c, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.get(f"api/jobs/{job_id}").json()
        if j["state"] in ("done", "error", "cancelled"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {j}")


def cli_error(capfd, tmp: Path, source: str, driving: str, ckpt: Path, crop: str = "none") -> str:
    """What mra-animate prints for these files, run in their folder (relative names, as a user would)."""
    capfd.readouterr()
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        code = animate.main(["--source", source, "--driving", driving, "--output", "cli-out.mp4", "--checkpoint",
                             str(ckpt), "--crop", crop])
    finally:
        os.chdir(cwd)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err, err
    return err[-1]


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------

def test_generate_and_download(server, files):
    with client(server) as c:
        info = c.get("api/info").json()
        assert info["frame_size"] == 64 and info["defaults"] == {"mode": "relative", "crop": "auto",
                                                                 "paste_back": True, "expression": 1.0}
        assert info["expression_range"] == [0.0, 2.0]
        assert len(info["examples"]) >= 2
        assert info["all_modes"] == ["relative", "avd", "standard"]
        assert info["modes"] == [m for m in info["all_modes"] if m != "avd" or info["has_avd"]]
        r = post_job(c, files / "face.png", files / "clip.mp4")
        assert r.status_code == 200, r.text
        j = wait_job(c, r.json()["id"])
        assert j["state"] == "done", j
        assert j["frames"] == 12 and j["fps"] == 25 and j["has_audio"] and j["total"] == 12
        assert j["download_name"] == "face-clip.mp4"
        d = c.get(j["download_url"])
        assert d.status_code == 200 and 'attachment; filename="face-clip.mp4"' in d.headers["content-disposition"]
        out = files / "downloaded.mp4"
        out.write_bytes(d.content)
        assert count_frames(out) == 12
        with av.open(str(out)) as f:
            assert f.streams.audio and f.streams.video[0].width == 64
        inline = c.get(j["result_url"], headers={"Range": "bytes=0-99"})  # the <video> preview seeks with ranges
        assert inline.status_code == 206 and len(inline.content) == 100


def test_the_expression_strength_is_checked_with_the_form(server, files):
    """The Generate form's expression slider: out of range or not a number is one clear error, before any work."""
    with client(server) as c:
        for bad in ("2.5", "-1", "loud", "nan"):
            r = c.post("api/jobs", data={"example": "drawn-1", "crop": "none", "expression": bad},
                       files={"driving": ("clip.mp4", (files / "clip.mp4").read_bytes())})
            assert r.status_code == 400 and "expression strength" in r.json()["error"], (bad, r.text)
        r = c.post("api/jobs", data={"example": "drawn-1", "crop": "none", "expression": "0.5"},
                   files={"driving": ("clip.mp4", (files / "clip.mp4").read_bytes())})
        assert r.status_code == 200, r.text
        assert wait_job(c, r.json()["id"])["state"] == "done"


def test_example_portrait_and_crop_auto(server, files):
    """A bundled example portrait with the face crop (mediapipe) on a drawn talking clip."""
    from webgen import talking
    clip = make_video(files / "talk.mp4", n=8, size=(160, 120), frame_fn=lambda i: talking(i, 8, 2, 120, 160))
    with client(server) as c:
        r = c.post("api/jobs", data={"example": "drawn-1", "crop": "auto", "mode": "standard"},
                   files={"driving": ("talk.mp4", clip.read_bytes())})
        assert r.status_code == 200, r.text
        j = wait_job(c, r.json()["id"])
        assert j["state"] == "done" and j["frames"] == 8 and not j["has_audio"], j
        assert (j["width"], j["height"]) == (256, 256)  # the whole portrait, the face pasted back (the default)
        r = c.post("api/jobs", data={"example": "drawn-1", "crop": "auto", "mode": "standard", "paste_back": "0"},
                   files={"driving": ("talk.mp4", clip.read_bytes())})
        j = wait_job(c, r.json()["id"])
        assert j["state"] == "done" and (j["width"], j["height"]) == (64, 64), j  # the page's box unticked: the crop


def test_several_jobs_at_once_queue_in_order_and_all_finish(server, files):
    """Four users press Generate together: each sees its place, one job runs at a time, all results are right."""
    clips = [make_video(files / f"c{n}.mp4", n=n, size=(64, 64), fps=20) for n in (5, 7, 9, 11)]
    queue = server.web.queue
    gate = threading.Event()
    run = queue.run
    running_at_once = []
    active = [0]

    def gated(job, progress):
        gate.wait(30)
        active[0] += 1
        running_at_once.append(active[0])
        try:
            return run(job, progress)
        finally:
            active[0] -= 1

    queue.run = gated
    try:
        results: dict = {}

        def submit(clip):
            with client(server) as c:
                results[clip.name] = post_job(c, files / "face.png", clip).json()

        threads = [threading.Thread(target=submit, args=(clip,)) for clip in clips]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with client(server) as c:
            ids = {name: r["id"] for name, r in results.items()}
            status = {name: c.get(f"api/jobs/{i}").json() for name, i in ids.items()}
            # the first job is held at the gate (running); the other three wait in line, each with its own place
            places = sorted(s["position"] for s in status.values() if s["state"] == "queued")
            assert places == [1, 2, 3], status
            assert sum(s["state"] == "running" for s in status.values()) == 1
            assert sorted(s["ahead"] for s in status.values() if s["state"] == "queued") == [1, 2, 3]
            gate.set()
            done = {name: wait_job(c, i) for name, i in ids.items()}
            for clip, n in zip(clips, (5, 7, 9, 11)):
                j = done[clip.name]
                assert j["state"] == "done" and j["frames"] == n, j
                data = c.get(j["download_url"]).content
                (files / f"got-{clip.name}").write_bytes(data)
                assert count_frames(files / f"got-{clip.name}") == n
    finally:
        queue.run = run
        gate.set()
    assert max(running_at_once) == 1


def test_queue_unit_positions_cancel_and_expiry(tmp_path):
    """JobQueue on its own: places, cancelling a waiting job, a failing job not stopping the next, expiry."""
    from live.animate import AnimateOptions
    from live.web.app import Job
    from nets.errors import UserError

    gate = threading.Event()
    ran = []

    def run(job, progress):
        gate.wait(10)
        ran.append(job.id)
        if job.id == "bad":
            raise UserError("no face found in the source image; use a photo where the face is clearly visible")
        if job.id == "bug":
            raise ZeroDivisionError("a bug")
        progress(3, 3)
        return animate.AnimateResult(output=job.output, kind="mp4", frames=3, fps=25, size=FrameSize(64, 64),
                                     has_audio=False,
                                     seconds=0.1)

    logs = []
    q = JobQueue(run, max_pending=3, keep_s=0.2, log=logs.append).start()
    jobs = []
    for name in ("first", "bad", "bug", "last"):
        (tmp_path / name).mkdir()
        jobs.append(Job(id=name, folder=tmp_path / name, source=tmp_path / "s.png", driving=tmp_path / "d.mp4",
                        options=AnimateOptions(), download_name="x.mp4"))
    q.submit(jobs[0])
    time.sleep(0.2)  # "first" is taken by the worker (held at the gate)
    for j in jobs[1:]:
        q.submit(j)
    with pytest.raises(UserError, match="queue is full"):
        q.submit(Job(id="extra", folder=tmp_path, source=tmp_path, driving=tmp_path, options=AnimateOptions(),
                     download_name="x.mp4"))
    assert [q.position(j) for j in jobs] == [0, 1, 2, 3]
    assert q.cancel("bug") and jobs[2].state == "cancelled" and not (tmp_path / "bug").exists()
    assert q.position(jobs[3]) == 2
    gate.set()
    deadline = time.monotonic() + 10
    while jobs[3].state != "done" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ran == ["first", "bad", "last"]
    assert jobs[0].state == jobs[3].state == "done"
    assert jobs[1].state == "error" and jobs[1].message.startswith("error: no face found")
    assert not (tmp_path / "bad").exists()  # a failed job's uploads are removed at once
    time.sleep(0.3)
    q._expire()
    assert q.get("first") is None and not (tmp_path / "first").exists()  # results expire
    q.close()

    # an unexpected exception: one line for the page, the traceback only in the server log
    q = JobQueue(run, log=logs.append).start()
    (tmp_path / "bug").mkdir()
    bug = Job(id="bug", folder=tmp_path / "bug", source=tmp_path, driving=tmp_path, options=AnimateOptions(),
              download_name="x.mp4")
    q.submit(bug)
    deadline = time.monotonic() + 10
    while bug.state != "error" and time.monotonic() < deadline:
        time.sleep(0.02)
    q.close()
    assert bug.message == "error: internal error while animating (ZeroDivisionError); the server log has the details"
    assert any("Traceback" in line and "ZeroDivisionError" in line for line in logs)


def test_cancel_a_running_job(server, files):
    long_clip = make_video(files / "long.mp4", n=150, size=(64, 64))
    with client(server) as c:
        job_id = post_job(c, files / "face.png", long_clip).json()["id"]
        deadline = time.monotonic() + 30
        while c.get(f"api/jobs/{job_id}").json()["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.01)
        c.delete(f"api/jobs/{job_id}")
        j = wait_job(c, job_id)
        assert j["state"] == "cancelled" and j["done"] < 150
        assert not (server.web.root / job_id).exists()
        r = c.get(f"api/jobs/{job_id}/result")
        assert r.status_code == 409 and r.json()["error"].startswith("error: the job is cancelled")


# ---------------------------------------------------------------------------------------------
# Bad uploads: the same one-line messages as mra-animate; the server keeps serving
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_files(files):
    d = files / "bad"
    d.mkdir()
    (d / "notes.txt").write_text("not an image")
    (d / "paper.pdf").write_bytes(b"%PDF-1.4\n")
    (d / "empty.png").write_bytes(b"")
    good = save_image(d / "good.png", pattern(120, 120))
    truncate(good, d / "cut.png", 0.5)
    (d / "noise.jpg").write_bytes(os.urandom(2000))
    truncate(files / "clip.mp4", d / "cut.mp4", 0.5)
    (d / "noise.mp4").write_bytes(os.urandom(3000))
    with av.open(str(d / "zero.avi"), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 64
        c.start_encoding()
    avi = make_video(d / "long.avi", n=24, size=(64, 64))
    truncate(avi, d / "midcut.avi", 0.6)
    shutil.copy(files / "clip.mp4", d / "clip.mp4")
    shutil.copy(files / "face.png", d / "face.png")
    return d


BAD_CASES = [  # (source, driving, crop, when the page learns it)
    ("notes.txt", "clip.mp4", "none", "upload"),
    ("paper.pdf", "clip.mp4", "none", "upload"),
    ("empty.png", "clip.mp4", "none", "upload"),
    ("cut.png", "clip.mp4", "none", "upload"),
    ("noise.jpg", "clip.mp4", "none", "upload"),
    ("clip.mp4", "clip.mp4", "none", "upload"),
    ("face.png", "notes.txt", "none", "upload"),
    ("face.png", "face.png", "none", "upload"),
    ("face.png", "cut.mp4", "none", "upload"),
    ("face.png", "noise.mp4", "none", "upload"),
    ("face.png", "zero.avi", "none", "upload"),
    ("face.png", "midcut.avi", "none", "job"),  # decodes until the cut: fails while animating
    ("face.png", "clip.mp4", "auto", "job"),  # no face in the source image
]


@pytest.mark.parametrize("source,driving,crop,when", BAD_CASES, ids=[f"{s}+{d}+{c}" for s, d, c, _ in BAD_CASES])
def test_bad_upload_gives_the_mra_animate_message(server, files, bad_files, capfd, source, driving, crop, when):
    expected = cli_error(capfd, bad_files, source, driving, files / "tiny.pth", crop)
    with client(server) as c:
        r = post_job(c, bad_files / source, bad_files / driving, crop=crop)
        if when == "upload":
            assert r.status_code == 400, r.text
            message = r.json()["error"]
        else:
            assert r.status_code == 200, r.text
            j = wait_job(c, r.json()["id"])
            assert j["state"] == "error"
            message = j["message"]
            assert not (server.web.root / j["id"]).exists()
        assert message == expected
        assert "\n" not in message and "Traceback" not in message and str(server.web.root) not in message
        # the server keeps serving, and the next job is fine
        ok = post_job(c, files / "face.png", files / "clip.mp4")
        assert wait_job(c, ok.json()["id"])["state"] == "done"


def test_missing_fields_and_bad_options(server, files):
    with client(server) as c:
        r = c.post("api/jobs", data={"crop": "none"}, files={"driving": ("clip.mp4", (files / "clip.mp4").read_bytes())})
        assert r.status_code == 400 and r.json()["error"] == "error: no portrait: upload an image or pick one of the examples"
        r = c.post("api/jobs", data={"crop": "none"}, files={"source": ("face.png", (files / "face.png").read_bytes())})
        assert r.json()["error"] == "error: no driving video: upload one or record one with the webcam"
        r = c.post("api/jobs", data={"example": "../../etc/passwd"},
                   files={"driving": ("clip.mp4", (files / "clip.mp4").read_bytes())})
        assert r.status_code == 400 and "no example portrait named" in r.json()["error"]
        r = post_job(c, files / "face.png", files / "clip.mp4", mode="sideways")
        assert r.json()["error"] == "error: --mode must be one of relative, avd, standard, got 'sideways'"
        r = c.post("api/jobs", data={"crop": "none"}, files={"source": ("", b""),  # a form with no file chosen
                                                             "driving": ("clip.mp4", (files / "clip.mp4").read_bytes())})
        assert r.json()["error"] == "error: no portrait: upload an image or pick one of the examples"
        r = c.post("api/jobs", json={"source": "x"})
        assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]
        r = c.get("api/jobs/nope")
        assert r.status_code == 404 and r.json()["error"].startswith("error: no such job")
    assert list(server.web.root.iterdir()) == [p for p in server.web.root.iterdir() if (p / "result").exists()]


def test_upload_size_limit(server, files):
    big = make_video(files / "big.mp4", n=40, size=(320, 320), frame_fn=lambda i: np.random.default_rng(i).integers(
        0, 256, (320, 320, 3), dtype=np.uint8))
    assert big.stat().st_size > 2 * 1024 * 1024
    with client(server) as c:
        r = post_job(c, files / "face.png", big)
        assert r.status_code == 413
        assert r.json()["error"] == ("error: the driving video big.mp4 is larger than the upload limit of 2 MB; use a "
                                     "smaller file (or start mra-web with a higher --max-upload-mb)")
    # a body whose declared length is over the bound is refused before it is read
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /api/jobs?token={server.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                     + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 52428800\r\n\r\n--b\r\n")
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 2 MB per file" in answer
    with client(server) as c:
        assert wait_job(c, post_job(c, files / "face.png", files / "clip.mp4").json()["id"])["state"] == "done"
    leftovers = [p for p in server.web.root.iterdir() if not (p / "result" / "result.mp4").exists()]
    assert leftovers == []  # refused uploads leave nothing behind


def test_safe_names_and_loopback():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\me\\face photo.JPG") == "face photo.JPG"
    assert safe_name("") == "upload" and safe_name("...") == "upload"
    assert safe_name("a<b>|c.png") == "a_b_c.png"
    assert safe_name("x" * 300 + ".png").endswith(".png") and len(safe_name("x" * 300 + ".png")) == 100
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")


# ---------------------------------------------------------------------------------------------
# Webcam tab protocol (what the page does, from Python)
# ---------------------------------------------------------------------------------------------

def _jpeg(rgb) -> bytes:
    import cv2
    return cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()


def test_live_socket_round_trip(server, files):
    from websockets.sync.client import connect

    url = live_url(server)
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "upload": "face.png", "crop": "none", "mode": "relative"}))
        ws.send((files / "face.png").read_bytes())
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["size"] == 512
        got, stats = [], None
        for i in range(1, 31):
            ws.send(struct.pack("<I", i) + _jpeg(pattern(160, 120, i / 30)))
            time.sleep(0.03)
            while True:
                try:
                    m = ws.recv(timeout=0.001)
                except TimeoutError:
                    break
                if isinstance(m, bytes):
                    got.append(m)
                else:
                    stats = json.loads(m)
        deadline = time.monotonic() + 10
        while (not got or stats is None) and time.monotonic() < deadline:
            m = ws.recv(timeout=10)
            (got.append(m) if isinstance(m, bytes) else None)
            stats = json.loads(m) if isinstance(m, str) else stats
        ws.send(json.dumps({"type": "stop"}))
        final = None
        for _ in range(100):
            m = ws.recv(timeout=10)
            if isinstance(m, str) and json.loads(m)["type"] == "stopped":
                final = json.loads(m)
                break
    assert len(got) >= 5
    ids = [struct.unpack_from("<I", m)[0] for m in got]
    assert ids == sorted(ids) and all(1 <= i <= 30 for i in ids)  # each frame says which camera frame it came from
    import cv2
    img = cv2.imdecode(np.frombuffer(got[-1][4:], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (512, 512, 3)
    assert final is not None and final["frames_out"] >= len(got) and final["frames_in"] == 30
    assert {"regions", "animate"} <= set(final["stages_ms"])
    deadline = time.monotonic() + 5
    while server.web.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.web.live  # the session is gone
    assert [p for p in server.web.root.iterdir() if not (p / "result").exists()] == []  # its portrait too


def test_live_socket_errors(server, files, bad_files, capfd):
    from websockets.sync.client import connect

    url = live_url(server)

    def first_error(start: dict, data: "bytes | None" = None) -> str:
        with connect(url, max_size=None) as ws:
            ws.send(json.dumps(start))
            if data is not None:
                ws.send(data)
            while True:
                m = json.loads(ws.recv(timeout=30))
                if m["type"] == "error":
                    return m["message"]

    expected = cli_error(capfd, bad_files, "face.png", "clip.mp4", files / "tiny.pth", crop="auto")
    assert first_error({"type": "start", "upload": "face.png", "crop": "auto"}, (files / "face.png").read_bytes()) == expected
    expected = cli_error(capfd, bad_files, "cut.png", "clip.mp4", files / "tiny.pth")
    assert first_error({"type": "start", "upload": "cut.png", "crop": "none"}, (bad_files / "cut.png").read_bytes()) == expected
    assert first_error({"type": "start", "example": "nope"}).startswith("error: no portrait")
    # one webcam session at a time (--max-live 1)
    with connect(url) as ws:
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        assert first_error({"type": "start", "example": "drawn-2", "crop": "none"}).startswith("error: the webcam tab is busy")
        ws.send(struct.pack("<I", 1) + _jpeg(pattern(160, 120)))
    # the page went away without saying stop: the session ends and the next one may start
    deadline = time.monotonic() + 10
    while server.web.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.web.live


# ---------------------------------------------------------------------------------------------
# Command line: binding, warnings, errors, cleanup
# ---------------------------------------------------------------------------------------------

def _start_cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "live.web.app", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _read_until(proc, words: str, timeout: float = 60) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if words in line:
            return lines
    proc.kill()
    raise AssertionError(f"no {words!r} in {lines}")


def test_cli_serves_warns_off_loopback_and_cleans_up(files, tmp_path):
    proc = _start_cli("--host", "0.0.0.0", "--port", 0, "--checkpoint", files / "tiny.pth", "--workdir", tmp_path)
    try:
        lines = _read_until(proc, "serving on")
        warning = [line for line in lines if line.startswith("warning:")]
        assert len(warning) == 1 and "the token in its address" in warning[0] and "0.0.0.0" in warning[0]
        import re
        port, token = re.search(r"serving on http://0\.0\.0\.0:(\d+)/\?token=([\w-]{32}) \(Ctrl-C", lines[-1]).groups()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/", timeout=30) as c:
            assert c.get("/").status_code == 403  # the address without its token
            assert "mra-web" in c.get("/", params={"token": token}).text  # (and the cookie it sets)
            assert c.get("api/info").json()["frame_size"] == 64
            j = wait_job(c, post_job(c, files / "face.png", files / "clip.mp4").json()["id"])
            assert j["state"] == "done"
        assert len(list(tmp_path.iterdir())) == 1  # the server's temporary folder, with the result
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.iterdir()) == []  # removed at shutdown

    # SIGTERM, even right after start-up: exit 0 and nothing left behind
    proc = _start_cli("--port", 0, "--checkpoint", files / "tiny.pth", "--workdir", tmp_path)
    try:
        lines = _read_until(proc, "serving on")
        assert not [line for line in lines if line.startswith("warning:")] and "http://127.0.0.1:" in lines[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(files, tmp_path, capfd, monkeypatch):
    from live.web import app as web

    def run(*args):
        capfd.readouterr()
        try:
            code = web.main([str(a) for a in args])
        except SystemExit as e:  # argparse's one-line errors exit directly
            code = e.code
        lines = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert "already in use" in run("--port", port, "--checkpoint", files / "tiny.pth")
    assert "checkpoint not found" in run("--port", 0, "--checkpoint", tmp_path / "nope.pth")
    assert "--max-upload-mb must be positive" in run("--max-upload-mb", 0)
    assert "invalid int value" in run("--port", "x")
    assert "cannot listen on no-such-host.invalid" in run("--host", "no-such-host.invalid", "--port", 0)
    assert "--config vox265 describes the checkpoint" in run("--port", 0, "--config", "vox265")
    from live import default_model
    monkeypatch.setattr(default_model, "ASSETS", tmp_path)  # as installed before the default model ships
    assert "no default model is shipped" in run("--port", 0)


def test_live_session_and_job_share_the_one_engine(server, files):
    """A webcam session and a Generate job at the same time, on the same engine: both work."""
    from websockets.sync.client import connect

    url = live_url(server)
    with connect(url, max_size=None) as ws, client(server) as c:
        ws.send(json.dumps({"type": "start", "example": "drawn-3", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        job_id = post_job(c, files / "face.png", files / "clip.mp4").json()["id"]
        got = 0
        for i in range(1, 41):
            ws.send(struct.pack("<I", i) + _jpeg(pattern(160, 120, i / 40)))
            time.sleep(0.02)
            try:
                while True:
                    got += isinstance(ws.recv(timeout=0.001), bytes)
            except TimeoutError:
                pass
        j = wait_job(c, job_id)
        assert j["state"] == "done" and j["frames"] == 12
        assert got >= 5


# ---------------------------------------------------------------------------------------------
# Hostile input and server-side faults
# ---------------------------------------------------------------------------------------------

def test_other_sites_and_addresses_are_refused(server, files):
    """Issue 21 item 2: a page of another site, or a DNS-rebound name, cannot use mra-web: foreign Origins are
    refused on the socket and on state-changing requests, foreign Host names everywhere, and every request
    needs the launch token that the printed address carries."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    evil = "http://evil.example.com"
    ws_root = server.url.replace("http", "ws") + "api/live"
    form = {"data": {"mode": "relative", "crop": "none"},
            "files": {"source": ("face.png", (files / "face.png").read_bytes()),
                      "driving": ("clip.mp4", (files / "clip.mp4").read_bytes())}}
    queued = len(server.web.queue.jobs)

    # what the probe did (no token, as a foreign page has none): each one is refused
    with pytest.raises(InvalidStatus) as refused:
        with connect(ws_root, origin=evil) as ws:
            ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
            pytest.fail(f"the socket from {evil} was answered: {ws.recv(timeout=30)[:80]}")
    assert refused.value.response.status_code == 403
    r = httpx.post(server.url + "api/jobs", headers={"Origin": evil}, **form)
    assert r.status_code == 403, r.text
    r = httpx.get(server.url + "api/info", headers={"Host": "attacker.example"})
    assert r.status_code == 421, r.text

    # even with the token, a foreign Origin or Host is refused, each with its reason
    token = {"token": server.token}
    with pytest.raises(InvalidStatus) as refused:
        with connect(live_url(server), origin=evil):
            pass
    assert refused.value.response.status_code == 403 and b"evil.example.com' are refused" in refused.value.response.body
    r = httpx.post(server.url + "api/jobs", params=token, headers={"Origin": evil}, **form)
    assert r.status_code == 403 and r.json()["error"].startswith("error: requests from the page 'http://evil.example"
                                                                 ".com' are refused"), r.text
    for host in ("attacker.example", "attacker.example:%d" % server.port, "127.0.0.1.attacker.example", "[::2]"):
        r = httpx.get(server.url + "api/info", params=token, headers={"Host": host})
        assert r.status_code == 421 and "does not answer for the address" in r.json()["error"], (host, r.text)
    with client(server) as c:  # (the cookie) a request from the page's own origin is fine
        assert c.delete("api/jobs/nope", headers={"Origin": server.url.rstrip("/")}).status_code == 404
        assert c.delete("api/jobs/nope", headers={"Origin": "null"}).status_code == 403
    assert len(server.web.queue.jobs) == queued  # nothing was queued

    # the token: the page's address sets it as a cookie; without it, nothing but the favicon is answered
    r = httpx.get(server.url)
    assert r.status_code == 403 and "/?token=" in r.json()["error"]
    assert httpx.get(server.url + "api/info", params={"token": "x" * 32}).status_code == 403
    assert httpx.get(server.url + "static/app.js").status_code == 403
    assert httpx.get(server.url + "favicon.ico").status_code == 204
    page = httpx.get(server.page_url)
    assert page.status_code == 200 and "mra-web" in page.text
    cookie = page.headers["set-cookie"]
    assert f"={server.token};" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    with httpx.Client(base_url=server.url, cookies=page.cookies) as c:
        assert c.get("api/info").status_code == 200 and c.get("static/app.js").status_code == 200
    for name in ("localhost", "127.0.0.1", "[::1]"):  # the names this server answers for (with their port)
        assert httpx.get(server.url + "api/info", params=token, headers={"Host": f"{name}:{server.port}"}).status_code == 200
    with pytest.raises(InvalidStatus) as refused:  # the page's own socket without the token
        with connect(ws_root, origin=server.url.rstrip("/")):
            pass
    assert refused.value.response.status_code == 403 and b"needs mra-web's token" in refused.value.response.body
    with connect(live_url(server), origin=server.url.rstrip("/")) as ws:  # and with it
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"


def test_the_names_a_server_answers_for():
    from live.web.guard import Door, host_name

    assert [host_name(h) for h in ("LocalHost:7860", "[::1]:80", "[::1]", "127.0.0.1", "localhost.", "::1", "")] == \
        ["localhost", "::1", "::1", "127.0.0.1", "localhost", "::1", ""]
    loopback = Door.serving("127.0.0.1", "t" * 32)
    assert all(loopback.host_allowed(h) for h in ("localhost:7860", "127.0.0.1", "[::1]:7860"))
    assert not any(loopback.host_allowed(h) for h in ("192.168.1.5:7860", "attacker.example", "", None, "[::1"))
    anywhere = Door.serving("0.0.0.0", "t" * 32)  # every address of this machine: IP addresses and its own names
    assert anywhere.host_allowed("192.168.1.5:7860") and anywhere.host_allowed("[fe80::1]:7860")
    assert not anywhere.host_allowed("attacker.example:7860")
    named = Door.serving("studio.lan", "t" * 32)
    assert named.host_allowed("studio.lan:7860") and named.host_allowed("localhost") and not named.host_allowed("10.0.0.2")


def _strict_json(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"not valid JSON: bare {name} in {text[:200]}")
    return json.loads(text, parse_constant=refuse)


def test_live_socket_garbage_gets_one_line_answers(server, files, capfd):
    from websockets.sync.client import connect

    url = live_url(server)

    def first_answer(*messages) -> dict:
        with connect(url, max_size=None) as ws:
            for m in messages:
                ws.send(m)
            return _strict_json(ws.recv(timeout=30))

    capfd.readouterr()
    for garbage in ("not json", b"\x00\x01binary", "null", "42", "[1, 2]", '"start"', '{"type": "hello"}'):
        m = first_answer(garbage)
        assert m["type"] == "error" and m["message"].startswith("error: the webcam tab must start with a 'start' "
                                                                "message"), (garbage, m)
    big = b"\x89PNG" + bytes(3 * 1024 * 1024)  # over the 2 MB limit, under the socket's own bound
    start = {"type": "start", "upload": "big.png", "crop": "none"}
    for messages in ([json.dumps(start), big], [json.dumps({**start, "size": len(big)})]):  # declared: not read
        m = first_answer(*messages)
        assert m["message"].startswith("error: the source image is larger than the upload limit of 2 MB"), m
    assert "Traceback" not in capfd.readouterr().err
    # during a session, text that is not a JSON object is ignored; stats are strict JSON from the start
    with connect(url) as ws:
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert _strict_json(ws.recv(timeout=30))["type"] == "ready"
        for garbage in ("null", "7", "nonsense", "[]"):
            ws.send(garbage)
        stats = _strict_json(ws.recv(timeout=30))  # no frame has come out yet: no NaN
        assert stats["type"] == "stats" and stats["frames_out"] == 0 and stats["server_latency_ms"]["p50"] is None
        ws.send(struct.pack("<I", 1) + _jpeg(pattern(160, 120)))
        ws.send(json.dumps({"type": "stop"}))
        kinds = []
        while True:
            m = ws.recv(timeout=30)
            if isinstance(m, str):
                kinds.append(_strict_json(m)["type"])
                if kinds[-1] in ("stopped", "error"):
                    break
        assert "error" not in kinds
    assert "Traceback" not in capfd.readouterr().err


def test_an_idle_webcam_socket_is_closed(server, monkeypatch):
    from websockets.sync.client import connect

    from live.web import app as web
    monkeypatch.setattr(web, "START_TIMEOUT_S", 0.5)
    with connect(live_url(server)) as ws:
        m = json.loads(ws.recv(timeout=30))  # nothing sent
    assert m["type"] == "error" and m["message"].startswith("error: nothing received for 0.5 s")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of JPEG whose header claims ``width`` x ``height`` pixels (its SOF0 patched)."""
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_webcam_frames_are_checked_from_their_header_and_their_size(server, files):
    """Issue 21 item 1: a frame larger than a webcam's picture, or a message over the frame limit, ends the
    session with one line to the page before anything is decoded (a 300-byte JPEG claiming 20000x20000
    took the server from 2.6 to 7.5 GB); frames that are not pictures are dropped and counted."""
    from websockets.sync.client import connect

    url = live_url(server)

    def free() -> None:  # the last session's place is given back
        deadline = time.monotonic() + 10
        while server.web.live and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.web.live

    def answer_to(frame: bytes) -> dict:
        free()
        with connect(url, max_size=None) as ws:
            ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            ws.send(struct.pack("<I", 1) + frame)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                m = ws.recv(timeout=10)
                if isinstance(m, str) and json.loads(m)["type"] in ("error", "stopped"):
                    return json.loads(m)
            return {"type": "none"}

    for w, h in ((4000, 3000), (1080, 1921), (20000, 20000)):
        jpeg = _jpeg_claiming(w, h)
        assert len(jpeg) < 1000
        m = answer_to(jpeg)
        assert m["type"] == "error" and m["message"].startswith(f"error: a webcam frame was refused: the image is "), m
        assert "1920x1080" in m["message"], m
    padded = _jpeg(pattern(160, 120)) + bytes(4 * 1024 * 1024)  # a small picture in a 4 MB message
    m = answer_to(padded)
    assert m["type"] == "error" and m["message"] == ("error: a webcam frame of 4.0 MB was refused: frames may be at "
                                                     "most 4 MB; the page sends JPEGs of some 50 kB"), m
    # a webcam's own size either way round is fine, and so is garbage (dropped and counted)
    free()
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for i, frame in enumerate((_jpeg(pattern(1920, 1080)), _jpeg(pattern(1080, 1920)), b"garbage"), 1):
            ws.send(struct.pack("<I", i) + frame)
            time.sleep(0.2)
        ws.send(json.dumps({"type": "stop"}))
        last = {"type": ""}
        while last["type"] not in ("stopped", "error"):
            m = ws.recv(timeout=30)
            last = json.loads(m) if isinstance(m, str) else last
        assert last["type"] == "stopped" and last["frames_in"] == 2, last  # the garbage was not queued
    free()


def test_pictures_in_memory_are_refused_from_their_header():
    from nets import media

    assert media.check_image_bytes(_jpeg_claiming(1080, 1920), (1920, 1080)) == (1080, 1920)  # either way round
    for size, text in (((1921, 1080), "the image is 1921x1080 pixels, larger than 1920x1080"),
                       ((1200, 1200), "the image is 1200x1200 pixels, larger than 1920x1080"),
                       ((60000, 60000), "the image is far larger than 1920x1080 pixels")):  # PIL's own bomb check
        with pytest.raises(media.ImageSizeError, match=text):
            media.decode_image_bytes(_jpeg_claiming(*size), (1920, 1080))
    with pytest.raises(media.ImageSizeError, match="expected a 64x64 image, got a far larger one"):
        media.check_image_bytes(_jpeg_claiming(60000, 60000), (64, 64), exact=True)
    with pytest.raises(media.ImageBytesError, match="not a JPEG, WebP or PNG image"):
        media.check_image_bytes(b"GIF89a" + bytes(100), (64, 64))


def test_a_started_webcam_session_that_goes_silent_ends(server, monkeypatch):
    """Issue 21 item 7: a socket that sent 'start' and then nothing held the webcam slot forever (a second
    one got "busy"); now the session ends after live_idle_s without a message, and the place is free."""
    from websockets.sync.client import connect

    monkeypatch.setattr(server.web.config, "live_idle_s", 1.0, raising=False)
    with connect(live_url(server)) as ws:
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "command", "key": "r"}))  # any message keeps it alive
        time.sleep(0.6)
        ws.send(struct.pack("<I", 1) + _jpeg(pattern(160, 120)))
        started = time.monotonic()
        kinds, error = [], None
        while time.monotonic() - started < 15 and error is None:
            m = ws.recv(timeout=15)
            if isinstance(m, str):
                kinds.append(json.loads(m)["type"])
                error = json.loads(m)["message"] if kinds[-1] == "error" else None
        waited = time.monotonic() - started
    assert error == ("error: nothing received from the webcam for 1 s, so the session was stopped (a tab in the "
                     "background stops sending frames); press Start again"), kinds
    assert 0.9 < waited < 5
    deadline = time.monotonic() + 10
    while server.web.live and time.monotonic() < deadline:
        time.sleep(0.05)
    with connect(live_url(server)) as ws:  # the place is free again
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"


def test_mode_and_crop_are_checked_in_one_place(server):
    """Issue 19: mra-animate's options and the webcam tab checked --mode and --crop each with their own copy;
    now both use live.engines.check_mode_and_crop, and the page gets the command line's words."""
    from websockets.sync.client import connect

    from live.animate import AnimateOptions

    sources = "".join(p.read_text() for p in (ROOT / "live").rglob("*.py"))
    assert sources.count("must be one of {', '.join(MODES)}") == 1 and sources.count("--crop must be") == 1
    for mode, crop in (("relative", "sideways"), ("sideways", "none")):
        with pytest.raises(Exception) as cli:
            AnimateOptions(mode=mode, crop=crop).validate()
        with connect(live_url(server)) as ws:
            ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": crop, "mode": mode}))
            m = json.loads(ws.recv(timeout=30))
        assert m == {"type": "error", "message": f"error: {cli.value}"}, m
        assert str(cli.value) in ("--crop must be auto or none, got 'sideways'",
                                  "--mode must be one of relative, avd, standard, got 'sideways'")


def test_webcam_places_are_a_typed_state():
    from live.web.session import LivePlaces

    places = LivePlaces(2)
    a, b = places.take(), places.take()
    assert len(places) == 2 and places.sessions() == []  # taken, portraits not prepared yet
    with pytest.raises(Exception, match=r"the webcam tab is busy \(2 session\(s\) at a time, --max-live\)"):
        places.take()
    sentinel = object()
    b.session = sentinel  # (any session object)
    assert places.sessions() == [sentinel]
    places.release(a)
    places.release(a)  # twice: once
    assert len(places) == 1 and places.take() is not b and len(places) == 2


def test_a_busy_webcam_tab_refuses_before_reading_the_portrait(server, files):
    from websockets.sync.client import connect

    url = live_url(server)
    with connect(url) as ws:
        ws.send(json.dumps({"type": "start", "example": "drawn-1", "crop": "none"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        with connect(url) as other:
            other.send(json.dumps({"type": "start", "upload": "face.png", "crop": "none"}))  # bytes never sent
            m = json.loads(other.recv(timeout=30))
            assert m["type"] == "error" and m["message"].startswith("error: the webcam tab is busy")


def test_uploads_are_checked_one_at_a_time(server, files, monkeypatch):
    from live.web import app as web

    running, peak, lock = [0], [0], threading.Lock()
    real = web.check_inputs

    def counting(*args):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return real(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(web, "check_inputs", counting)
    with client(server) as c:
        threads = [threading.Thread(target=lambda: post_job(c, files / "face.png", files / "clip.mp4"))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak[0] == 1


def test_huge_decoded_images_are_refused_from_their_header(server, files, tmp_path):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(bomb)  # a small file that would decode to 72 megapixels
    assert bomb.stat().st_size < 2 * 1024 * 1024
    with client(server) as c:
        r = post_job(c, bomb, files / "clip.mp4")
    assert r.status_code == 400 and r.json()["error"] == (
        "error: source image bomb.png is 9000x8000 pixels, too large to decode (at most 64 megapixels); downscale it")


def test_the_servers_disk_full_is_said_without_its_paths(server, files, monkeypatch):
    import errno as errno_

    from live.web import upload as web_upload
    from nets import media

    class FullFile:
        def __init__(self, *a, **k):
            pass

        def write(self, data):
            raise OSError(errno_.ENOSPC, "No space left on device")

        def close(self):
            pass

    with client(server) as c:
        monkeypatch.setattr(web_upload, "open", FullFile, raising=False)
        r = post_job(c, files / "face.png", files / "clip.mp4")
        monkeypatch.undo()
        assert r.status_code == 507
        assert r.json()["error"].startswith("error: the server cannot store files (no space left on the device)")
        real = media.Mp4Writer._write_one

        def failing(self, rgb):
            if self.frames_written == 3:
                raise OSError(errno_.ENOSPC, "No space left on device", str(self.tmp))
            real(self, rgb)

        monkeypatch.setattr(media.Mp4Writer, "_write_one", failing)
        j = wait_job(c, post_job(c, files / "face.png", files / "clip.mp4").json()["id"])
    assert j["state"] == "error" and j["message"].startswith("error: the server cannot store files (no space left")
    assert str(server.web.root) not in j["message"]


def test_workdir_that_cannot_be_written(engine, tmp_path, capfd):
    from live.web import app as web
    from mediagen import small_tmpfs, unwritable_dir

    with unwritable_dir(tmp_path) as ro:
        with pytest.raises(web.UserError, match="cannot make mra-web's temporary folder in .*choose a writable --workdir"):
            web.WebApp(engine, WebConfig(workdir=ro / "work"))
    with small_tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        capfd.readouterr()
        code = web.main(["--port", "0", "--workdir", str(ro)])
        err = capfd.readouterr().err
        assert code == 2 and err.startswith(f"error: cannot make mra-web's temporary folder in {ro} (Read-only file "
                                            "system)") and err.count("\n") == 1


def test_stale_leftovers_of_killed_runs_are_swept(engine, tmp_path):
    """Folders and temporaries of processes that are gone (by name and age) go; nothing else does."""
    from live.web import app as web
    from nets import media

    dead = 2 ** 22 + 12345  # above Linux's pid_max default: no such process
    old = time.time() - 3600
    work = tmp_path / "work"
    work.mkdir()
    names = {f"mra-web-{dead}-abcd1234": True, f"mra-web-{os.getpid()}-abcd1234": False,
             "mra-web-notapid-abcd1234": False, "mine": False, f"mra-web-{dead}-young123": False}
    for name in names:
        (work / name).mkdir()
        (work / name / "x").write_text("x")
        if name != f"mra-web-{dead}-young123":
            os.utime(work / name, (old, old))
    app = web.WebApp(engine, WebConfig(workdir=work))
    try:
        for name, swept in names.items():
            assert (work / name).exists() != swept, name
    finally:
        app.close()
    out = tmp_path / "out"
    out.mkdir()
    partials = {f".clip.mp4.partial-{dead}-0123abcd.mp4": True, f".clip.mp4.partial-{os.getpid()}-0123abcd.mp4": False,
                f".frames.partial-{dead}-0123abcd.old": False, f".other.mp4.partial-{dead}-0123abcd.mp4": False,
                "clip.mp4.partial": False}
    for name in partials:
        (out / name).write_bytes(b"x")
        os.utime(out / name, (old, old))
    media.check_output(out / "clip.mp4")
    for name, swept in partials.items():
        assert (out / name).exists() != swept, name
