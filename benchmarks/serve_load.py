"""Load test of mra-serve on loopback: N simulated mra-live clients (video-file cameras) on one worker.

The worker (the tools' engine for ``--checkpoint`` / default model, as mra-serve builds it) runs in
this process; each client is a child process running the live pipeline exactly as ``mra-live
--worker`` does (RemoteEngine, newest-frame camera loop, smoothing, relative transfer, JPEG both
ways) with a looping video file as the camera and a sink that only counts. After ``--warmup``
seconds, each client measures ``--seconds`` seconds: output frames per second and end-to-end
latency (capture timestamp to sink, so the network and both codecs are in it). The worker
reports how many frames its engine calls held on average.

    python benchmarks/serve_load.py --clients 1,2,4,8 --seconds 20 --json serve_load.json
    python benchmarks/serve_load.py --camera talk.mp4 --portrait face.png --crop auto

Clients and worker share this machine's CPU, so the per-client rate of N clients is bounded by
the worker's throughput divided by N, and the clients' own work (video decoding, JPEG coding,
face tracking with ``--crop auto``) takes cores from the worker.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import live  # noqa: E402,F401  (OMP_WAIT_POLICY before torch)
from nets.errors import ArgumentParser, UserError, run_cli  # noqa: E402


@dataclass
class ClientResult:
    """One client's measured window: output rate and end-to-end latency (ms)."""

    fps: float
    latency_p50_ms: float
    latency_p95_ms: float
    frames: int
    dropped: int
    events: list
    stages_ms: dict  # median per pipeline stage (regions and animate include the round trip to the worker)
    latencies_ms: list


@dataclass
class LoadRow:
    """N clients: the mean and lowest per-client rate, latency percentiles over all clients' frames, and
    the mean number of frames per engine call of the worker."""

    clients: int
    fps_per_client_mean: float
    fps_per_client_min: float
    latency_p50_ms: float
    latency_p95_ms: float
    total_fps: float
    mean_batch_regions: float
    mean_batch_animate: float


# ---------------------------------------------------------------------------------------------
# Media
# ---------------------------------------------------------------------------------------------

def make_camera_clip(path: Path, size: int = 512, frames: int = 250, fps: int = 25) -> Path:
    """A drawn moving scene (a bright ellipse 'face' sways over a gradient), H.264."""
    import av

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            cx, cy = 0.5 + 0.08 * np.sin(i / 9), 0.5 + 0.05 * np.cos(i / 13)
            face = ((xx - cx) / 0.22) ** 2 + ((yy - cy) / 0.3) ** 2 < 1
            img = np.stack([60 + 80 * xx, 70 + 60 * yy, np.full_like(xx, 90)], -1)
            img[face] = (215, 170, 140)
            for eye in (-0.08, 0.08):
                img[((xx - cx - eye) / 0.03) ** 2 + ((yy - cy + 0.08) / (0.02 + 0.01 * np.sin(i / 4) ** 2)) ** 2 < 1] = 40
            for p in s.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_portrait(path: Path, size: int = 256) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (90, 120, 150))
    d = ImageDraw.Draw(img)
    s = size / 256
    d.ellipse([70 * s, 40 * s, 186 * s, 200 * s], fill=(225, 185, 160))
    for x in (100, 156):
        d.ellipse([(x - 9) * s, 100 * s, (x + 9) * s, 112 * s], fill=(50, 40, 40))
    d.arc([100 * s, 140 * s, 156 * s, 175 * s], 20, 160, fill=(150, 60, 60), width=max(1, int(4 * s)))
    img.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# One client (child process)
# ---------------------------------------------------------------------------------------------

class CountingSink:
    name = "count"

    def write(self, frame) -> None:
        pass

    def close(self) -> None:
        pass


def run_client(args) -> int:
    import threading

    from nets import media
    from live.portrait import source_crop
    from live.loop.capture import open_capture
    from live.loop.pipeline import Avatars, CenterCropper, FaceCropper, LiveOptions, LivePipeline
    from live.remote.client import RemoteEngine, WorkerSpec

    if args.client == "local":  # the baseline: the same pipeline with the engine in this process
        from live.engines import engine_from_args
        engine = engine_from_args(args)
    else:
        engine = RemoteEngine(WorkerSpec(args.client, image_format=args.format, quality=args.quality), log=lambda s: None)
    detector = None
    if args.crop == "auto":
        from nets.media.face import FaceDetector, FaceTracker, TrackerSettings
        detector = FaceDetector()
        cropper = FaceCropper(FaceTracker(detector, settings=TrackerSettings(detect_every=2)))
    else:
        cropper = CenterCropper()

    def load(path: Path):
        return media.to_input(source_crop(media.read_image(path), engine.frame_size, args.crop, detector,
                                           name=path.name)[None])

    pipe = LivePipeline(engine, open_capture(args.camera, loop=True), cropper,
                        Avatars(engine, [Path(args.portrait)], load), [CountingSink()],
                        # the worker's load is measured: the clients' own expression path (face mesh and warp,
                        # local work that never reaches the worker) is left out
                        LiveOptions(output_size=engine.frame_size, status_every_s=1e9, expression=0.0))
    runner = threading.Thread(target=pipe.run, daemon=True)
    runner.start()
    time.sleep(args.warmup)
    n0, t0 = len(pipe.stats.all_latency_ms), time.monotonic()
    d0 = pipe.capture.slot.dropped
    time.sleep(args.seconds)
    n1, t1 = len(pipe.stats.all_latency_ms), time.monotonic()
    lat = np.asarray(pipe.stats.all_latency_ms[n0:n1])
    pipe.commands.put("q")
    runner.join(10)
    getattr(engine, "close", lambda: None)()
    result = ClientResult(fps=(n1 - n0) / (t1 - t0), latency_p50_ms=float(np.percentile(lat, 50)) if len(lat) else
                          float("nan"), latency_p95_ms=float(np.percentile(lat, 95)) if len(lat) else float("nan"),
                          frames=n1 - n0, dropped=pipe.capture.slot.dropped - d0, events=pipe.stats.events,
                          stages_ms={k: round(v.median_ms, 1) for k, v in pipe.stats.snapshot().stages.items()},
                          latencies_ms=[round(float(x), 2) for x in lat])
    Path(args.json).write_text(json.dumps(asdict(result)))
    return 0


# ---------------------------------------------------------------------------------------------
# The load test (parent: worker + N children)
# ---------------------------------------------------------------------------------------------

def load_row(worker, n: int, args, camera: Path, portrait: Path, tmp: Path) -> tuple[LoadRow, list[ClientResult]]:
    """``n`` clients on ``worker`` (None: one client with its own engine, mra-live without --worker)."""
    st = worker.batcher.stats if worker is not None else None
    outs = [tmp / f"client{n}_{i}.json" for i in range(max(n, 1))]
    url = f"ws://127.0.0.1:{worker.port}" if worker is not None else "local"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--client", url, *engine_args(args),
           "--camera", str(camera), "--portrait", str(portrait), "--crop", args.crop, "--format", args.format,
           "--quality", str(args.quality), "--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    children = [subprocess.Popen([*cmd, "--json", str(o)], cwd=ROOT) for o in outs]
    # the worker's batches in the measured window (children take a few seconds to start: estimated)
    time.sleep(args.startup + args.warmup)
    calls1, frames1 = (dict(st.calls), dict(st.frames)) if st else ({}, {})
    for c in children:
        c.wait(timeout=args.startup + args.warmup + args.seconds + 120)
    calls2, frames2 = (dict(st.calls), dict(st.frames)) if st else ({}, {})
    results = []
    for c, o in zip(children, outs):
        if c.returncode != 0 or not o.exists():
            raise UserError(f"a client exited with status {c.returncode}")
        results.append(ClientResult(**json.loads(o.read_text())))
    batch = {k: (frames2[k] - frames1[k]) / max(1, calls2[k] - calls1[k]) if st else float("nan")
             for k in ("regions", "animate")}
    lat = np.concatenate([r.latencies_ms for r in results])
    fps = [r.fps for r in results]
    row = LoadRow(clients=n, fps_per_client_mean=float(np.mean(fps)), fps_per_client_min=float(np.min(fps)),
                  latency_p50_ms=float(np.percentile(lat, 50)), latency_p95_ms=float(np.percentile(lat, 95)),
                  total_fps=float(np.sum(fps)), mean_batch_regions=batch["regions"], mean_batch_animate=batch["animate"])
    return row, results


def engine_args(args) -> list[str]:
    """The engine options, for the local baseline client."""
    out = ["--backend", args.backend, "--device", args.device, "--precision", args.precision]
    for name in ("checkpoint", "config", "threads"):
        if getattr(args, name):
            out += [f"--{name}", str(getattr(args, name))]
    return out


def parse_args(argv):
    p = ArgumentParser(prog="serve_load.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,2,4,8", help="numbers of simultaneous clients, one row each")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=6.0, help="seconds before measuring")
    p.add_argument("--startup", type=float, default=4.0, help="seconds a client process takes to start (estimate)")
    p.add_argument("--camera", help="video file for the cameras (default: a drawn 512x512 25 fps clip)")
    p.add_argument("--portrait", help="portrait image (default: a drawn one)")
    p.add_argument("--crop", choices=("none", "auto"), default="none", help="auto: face tracking in each client")
    p.add_argument("--format", choices=("jpeg", "webp", "png"), default="jpeg")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--checkpoint", help="model (default: the shipped model)")
    p.add_argument("--config")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, help="engine threads (default: as mra-serve)")
    p.add_argument("--batch-window", type=float, default=3.0, metavar="MS")
    p.add_argument("--local", action="store_true", help="first a row with one client running its own engine "
                   "(mra-live without --worker), for comparison")
    p.add_argument("--json", help="write the rows and every client's numbers there")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one client against this worker URL
    return p.parse_args(argv)


def main(argv: "Sequence[str] | None" = None) -> int:
    args = parse_args(argv)
    if args.client:
        return run_client(args)
    from live.engines import engine_from_args
    from live.serve import ServeOptions, Worker, model_info

    counts = [int(c) for c in args.clients.split(",")]
    load_start = os.getloadavg()
    engine = engine_from_args(args)
    worker = Worker(engine, model_info(engine, args.checkpoint),
                    ServeOptions(port=0, max_sessions=max(counts), batch_window_ms=args.batch_window)).start_thread()
    print(f"worker: {engine.describe()} on ws://127.0.0.1:{worker.port}; {os.cpu_count()} cores", flush=True)
    rows, clients = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        camera = Path(args.camera) if args.camera else make_camera_clip(tmp / "camera.mp4")
        portrait = Path(args.portrait) if args.portrait else make_portrait(tmp / "portrait.png")
        if args.local:
            row, results = load_row(None, 0, args, camera, portrait, tmp)
            rows.append(row)
            clients[0] = [asdict(r) for r in results]
            print(f"local engine: {row.fps_per_client_mean:.1f} fps, latency p50 {row.latency_p50_ms:.0f} / p95 "
                  f"{row.latency_p95_ms:.0f} ms; stages {results[0].stages_ms}", flush=True)
        for n in counts:
            row, results = load_row(worker, n, args, camera, portrait, tmp)
            rows.append(row)
            clients[n] = [asdict(r) for r in results]
            print(f"{n} clients: {row.fps_per_client_mean:.1f} fps per client (min {row.fps_per_client_min:.1f}), "
                  f"latency p50 {row.latency_p50_ms:.0f} / p95 {row.latency_p95_ms:.0f} ms, worker batches "
                  f"{row.mean_batch_regions:.1f} / {row.mean_batch_animate:.1f}; stages (first client) "
                  f"{results[0].stages_ms}", flush=True)
    worker.join()
    print("\n| clients | fps per client (mean / min) | latency p50 / p95 | total fps | mean batch (regions / animate) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.clients or 'local engine'} | {r.fps_per_client_mean:.1f} / {r.fps_per_client_min:.1f} | {r.latency_p50_ms:.0f} / "
              f"{r.latency_p95_ms:.0f} ms | {r.total_fps:.1f} | {r.mean_batch_regions:.2f} / {r.mean_batch_animate:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows], "clients": clients,
                                               "engine": engine.describe(), "argv": sys.argv[1:],
                                               "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                                               "cores": os.cpu_count()}, indent=2))
    print(f"load average (1 min) {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
