"""Measure mra-web's webcam tab in headless Chromium, and take the README screenshot.

    python -m tests.web_probe --checkpoint model.pth | --shipped [--backend torch|onnx] [--seconds 20] \
        [--crop auto] [--screenshot docs/screenshot-web.png] [--json out.json]

Chromium's fake camera plays a generated y4m (a drawn face that talks and nods, 640x480 at
25 fps) into the page; the page streams it to the server (web socket, JPEG), the mra-live
pipeline animates the chosen portrait and the page shows each frame. Reported: frames shown per
second and the latency from grabbing a camera frame in the page to drawing the animated frame made
from it (p50/p95 over the last 200 frames), plus the server's own numbers. Without
``--checkpoint`` a randomly initialised lite256 network is used (same speed as a trained one).
With ``--screenshot`` the Video tab is first run once (example portrait + a drawn talking clip,
crop auto) and the page with its finished result is saved.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint")
    ap.add_argument("--config")
    ap.add_argument("--shipped", action="store_true", help="the model shipped with the package (no --checkpoint)")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                    help="as mra-web's (default auto: ONNX Runtime on the CPU)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--crop", default="auto")
    ap.add_argument("--screenshot")
    ap.add_argument("--json")
    ap.add_argument("--chromium", default=os.environ.get("MRA_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()

    import nets
    from playwright.sync_api import sync_playwright

    from live.engines import EngineSpec, build_engine
    from live.web.app import BackgroundServer, WebConfig
    from mediagen import make_video, tone
    from webgen import talking, write_y4m

    tmp = Path(tempfile.mkdtemp(prefix="mra-web-probe-"))
    ckpt = args.checkpoint
    if ckpt is None and not args.shipped:
        ckpt = tmp / "lite256-random.pth"
        nets.save_model(nets.build_model("lite256").eval(), ckpt)
    engine = build_engine(EngineSpec(ckpt, args.config, args.backend, export_checkpoints=True))
    cam = write_y4m(tmp / "camera.y4m", [talking(i, 100, 0, 480, 640) for i in range(100)], fps=25)
    result: dict = {"engine": engine.describe(), "crop": args.crop, "camera": "y4m 640x480 @ 25 fps",
                    "load_average_before": os.getloadavg()}
    with BackgroundServer(engine, WebConfig(port=0)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                    args=ARGS + [f"--use-file-for-fake-video-capture={cam}"])
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        page.goto(server.page_url)
        page.wait_for_selector('body[data-ready="1"]')
        if args.screenshot:
            clip = make_video(tmp / "talking.mp4", n=75, size=(320, 240), frame_fn=lambda i: talking(i, 75, 1, 240, 320),
                              audio=tone(48000, 3.0, bursts=[(0.5, 0.3), (1.8, 0.3)]))
            page.click('.examples button[data-name="drawn-1"]')
            page.set_input_files("#driving", str(clip))
            page.select_option("#crop", "auto")
            page.click("#generate")
            page.wait_for_selector('#status[data-state="done"]', timeout=600_000)
            page.wait_for_function("document.getElementById('result').readyState >= 2")
            page.evaluate("for (const v of document.querySelectorAll('video')) { v.pause(); v.currentTime = 1.2; }")
            time.sleep(1.0)
            page.screenshot(path=args.screenshot, full_page=True)
            result["generate_status"] = page.inner_text("#status")
            print(f"screenshot: {args.screenshot} ({result['generate_status']})", file=sys.stderr)
        page.click('.examples button[data-name="drawn-2"]')
        page.click("#tab-webcam")
        page.select_option("#live-crop", args.crop)
        page.click("#live-start")
        page.wait_for_function("window.mraLive.frames > 0", timeout=120_000)
        time.sleep(3.0)  # warm-up
        f0, t0 = page.evaluate("window.mraLive.frames"), time.monotonic()
        time.sleep(args.seconds)
        m = page.evaluate("window.mraLive")
        elapsed = time.monotonic() - t0
        result.update(seconds=round(elapsed, 1), frames_shown=m["frames"] - f0,
                      fps_shown=round((m["frames"] - f0) / elapsed, 2), latency_ms_p50=round(m["p50"], 1),
                      latency_ms_p95=round(m["p95"], 1), server=m["server"], stats_line=page.inner_text("#live-stats"),
                      load_average_after=os.getloadavg())
        page.click("#live-stop")
        page.wait_for_selector('#live-stats[data-state="stopped"]', timeout=30_000)
        browser.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
