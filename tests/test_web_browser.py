"""mra-web driven in a real headless browser: Debian's Chromium through Playwright.

Skipped, with the reason, when the ``playwright`` package or a Chromium binary is missing
(install: ``apt-get install -y chromium`` and ``pip install playwright``; Playwright's own
browser download is not needed). Chromium's fake media devices stand in for the webcam and the
microphone. Set ``MRA_CHROMIUM`` to use another Chromium binary.
"""
import os
import shutil
import time
from pathlib import Path

import av
import pytest

import nets
from live.engines import load_engine
from live.web.app import BackgroundServer, WebConfig
from mediagen import count_frames, make_video, pattern, save_image, tone, truncate

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install playwright; the browser itself comes from apt: chromium)")


def chromium_path() -> str:
    for p in (os.environ.get("MRA_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
              shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if p and Path(p).exists():
            return p
    pytest.skip("no Chromium browser on this machine (apt-get install -y chromium), so the page cannot be "
                "driven; the HTTP-level tests in test_web.py still run")


ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("webpage")
    nets.save_model(nets.build_model("tiny").eval(), d / "tiny.pth")
    save_image(d / "portrait.png", pattern(120, 120, seed=5))
    make_video(d / "talk.mp4", n=15, size=(96, 96), audio=tone(48000, 15 / 25, bursts=[(0.2, 0.1)]))
    (d / "notes.txt").write_text("not a portrait")
    truncate(d / "talk.mp4", d / "broken.mp4", 0.5)
    return d


@pytest.fixture(scope="module")
def server(files):
    with BackgroundServer(load_engine(files / "tiny.pth"), WebConfig(port=0)) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    with sync_api.sync_playwright() as p:
        try:  # Playwright gives every launch a fresh temporary profile (its own --user-data-dir)
            b = p.chromium.launch(executable_path=exe, headless=True, args=ARGS)
        except Exception as e:  # a broken install: say so rather than fail every test
            pytest.skip(f"Chromium at {exe} does not start under Playwright: {' '.join(str(e).split())[:200]}")
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1100, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.page_url)  # the printed address, with the launch token
    pg.wait_for_selector('body[data-ready="1"]', timeout=20000)
    yield pg
    ctx.close()
    assert errors == []  # no JavaScript exceptions


def generate(pg, timeout_ms: int = 60000) -> str:
    pg.click("#generate")
    pg.wait_for_function("['done', 'error', 'cancelled'].includes(document.getElementById('status').dataset.state)",
                         timeout=timeout_ms)
    return pg.get_attribute("#status", "data-state")


def cli_message(capfd, folder: Path, source: str, driving: str, ckpt: Path, crop: str = "none") -> str:
    from live import animate
    capfd.readouterr()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert animate.main(["--source", source, "--driving", driving, "--output", "o.mp4", "--checkpoint", str(ckpt),
                             "--crop", crop]) == 2
    finally:
        os.chdir(cwd)
    return capfd.readouterr().err.strip().splitlines()[-1]


def test_upload_generate_preview_download(page, server, files, tmp_path):
    import threading

    import httpx
    pg = page
    pg.set_input_files("#source", str(files / "portrait.png"))
    pg.set_input_files("#driving", str(files / "talk.mp4"))
    pg.select_option("#crop", "none")
    assert pg.input_value("#mode") == "relative"
    # another user's job runs first (held at a gate): this page shows its place in the queue
    queue, run, gate = server.web.queue, server.web.queue.run, threading.Event()
    queue.run = lambda job, progress: (gate.wait(30), run(job, progress))[1]
    try:
        from live.web.guard import cookie_name
        with httpx.Client(base_url=server.url, cookies={cookie_name(server.port): server.token}) as c:
            r = c.post("api/jobs", data={"crop": "none"}, files={"source": ("p.png", (files / "portrait.png").read_bytes()),
                                                                 "driving": ("t.mp4", (files / "talk.mp4").read_bytes())})
            assert r.status_code == 200
        pg.click("#generate")
        pg.wait_for_selector('#status[data-state="queued"]', timeout=20000)
        assert pg.inner_text("#status") == "Waiting in the queue: place 1 (1 job ahead of yours)"
    finally:
        gate.set()
        queue.run = run
    pg.wait_for_function("['done', 'error'].includes(document.getElementById('status').dataset.state)", timeout=60000)
    assert pg.get_attribute("#status", "data-state") == "done"
    assert pg.is_hidden("#error")
    status = pg.inner_text("#status")
    assert "15 frames" in status and "audio" in status
    # the result plays beside the driving video
    pg.wait_for_function("document.getElementById('result').readyState >= 2 && "
                         "document.getElementById('driving-preview').readyState >= 2", timeout=20000)
    assert pg.evaluate("document.getElementById('result').videoWidth") == 64
    with pg.expect_download() as dl:
        pg.click("#download")
    out = tmp_path / dl.value.suggested_filename
    dl.value.save_as(out)
    assert out.name == "portrait-talk.mp4"
    assert count_frames(out) == 15
    with av.open(str(out)) as c:
        assert c.streams.audio and abs(float(c.streams.video[0].average_rate) - 25) < 0.01
    shot = os.environ.get("MRA_WEB_SCREENSHOT")
    if shot:
        pg.screenshot(path=shot, full_page=True)


def test_bad_uploads_show_the_mra_animate_message(page, files, capfd):
    pg = page
    pg.select_option("#crop", "none")
    pg.set_input_files("#source", str(files / "notes.txt"))
    pg.set_input_files("#driving", str(files / "talk.mp4"))
    assert generate(pg) == "error"
    pg.wait_for_selector("#error:not([hidden])")
    shown = pg.inner_text("#error")
    assert shown == cli_message(capfd, files, "notes.txt", "talk.mp4", files / "tiny.pth")
    assert shown.startswith("error: unsupported source image format '.txt'")
    assert "Traceback" not in pg.content()

    pg.set_input_files("#source", str(files / "portrait.png"))
    pg.set_input_files("#driving", str(files / "broken.mp4"))
    pg.click("#generate")
    pg.wait_for_function("document.getElementById('error').textContent.includes('broken.mp4')")
    assert pg.inner_text("#error") == cli_message(capfd, files, "portrait.png", "broken.mp4", files / "tiny.pth")

    # a failure found while animating: no face in the portrait under crop auto
    pg.set_input_files("#driving", str(files / "talk.mp4"))
    pg.select_option("#crop", "auto")
    assert generate(pg) == "error"
    assert pg.inner_text("#error") == cli_message(capfd, files, "portrait.png", "talk.mp4", files / "tiny.pth", "auto")

    # the server keeps serving: the same page generates right after
    pg.select_option("#crop", "none")
    assert generate(pg) == "done" and pg.is_hidden("#error")


def test_record_driving_video_with_the_webcam(page, tmp_path):
    """MediaRecorder on Chromium's fake camera and microphone -> webm upload -> mp4 with audio."""
    pg = page
    pg.click('.examples button[data-name="drawn-1"]')
    pg.click("#record")
    pg.wait_for_selector('#record-status[data-state="recording"]')
    time.sleep(1.6)
    pg.click("#record")
    pg.wait_for_selector('#record-status[data-state="recorded"]', timeout=10000)
    pg.select_option("#crop", "none")
    assert generate(pg) == "done", pg.inner_text("#error")
    with pg.expect_download() as dl:
        pg.click("#download")
    out = tmp_path / "rec.mp4"
    dl.value.save_as(out)
    assert dl.value.suggested_filename == "drawn-1-recording.mp4"
    n = count_frames(out)
    with av.open(str(out)) as c:
        assert c.streams.audio  # the fake microphone's beeps came along
        seconds = float(c.streams.video[0].frames / c.streams.video[0].average_rate) if c.streams.video[0].frames else n / 25
    assert n >= 10 and 0.8 < seconds < 4


def test_webcam_tab_shows_live_frames_fps_and_latency(page):
    pg = page
    pg.click('.examples button[data-name="drawn-2"]')
    pg.click("#tab-webcam")
    pg.select_option("#live-crop", "none")
    pg.click("#live-start")
    pg.wait_for_selector('#live-stats[data-state="running"]', timeout=20000)
    pg.wait_for_function("window.mraLive.frames >= 25 && window.mraLive.server !== null", timeout=30000)
    m = pg.evaluate("window.mraLive")
    assert m["fps"] > 1 and 0 < m["p50"] <= m["p95"] < 5000
    text = pg.inner_text("#live-stats")
    assert "fps" in text and "latency" in text and "server" in text
    assert pg.evaluate("document.getElementById('live-output').width") == 512  # --live-size (long side)
    pg.click("#live-recalibrate")
    pg.click("#live-stop")
    pg.wait_for_selector('#live-stats[data-state="stopped"]', timeout=20000)
    assert pg.is_hidden("#live-error")
