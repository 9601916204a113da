"""Measure resident memory of the mra-animate pipeline over a long driving video.

    python tests/memory_probe.py --frames 15000 --width 1920 --height 1080 --checkpoint tiny.pth --work /tmp/mem

Generates (or reuses, ``--driving``) a driving video of ``--frames`` frames at ``--fps`` with an AAC
tone, animates it to an mp4 with :func:`live.animate.animate_file` (``--crop none``), samples the
process's resident set size after every batch and prints one JSON line: frames, wall time,
frames/s, RSS at the end of warm-up (the first quarter of the frames), at the end and its peak
(MB), and the least-squares slope of RSS over the frames after warm-up (KB per frame).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_long_video(path: Path, frames: int, w: int, h: int, fps: int) -> None:
    """A moving 1080p pattern with a 440 Hz tone, streamed to the encoder (x264 ultrafast)."""
    import av
    from mediagen import pattern, tone

    base = np.tile(pattern(480, 270, 0.2), (h // 270 + 1, w // 480 + 1, 1))[:h, :w]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "28"}
        a = c.add_stream("aac", rate=48000, layout="mono")
        seconds_per_chunk = 1.0
        chunk = tone(48000, seconds_per_chunk)
        audio_pos = 0
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.roll(base, (i * 7) % w, axis=1), format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
            while audio_pos < (i + 1) * 48000 // fps:
                af = av.AudioFrame.from_ndarray(chunk[None].copy(), format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 48000, audio_pos, Fraction(1, 48000)
                c.mux(a.encode(af))
                audio_pos += len(chunk)
        c.mux(v.encode(None))
        c.mux(a.encode(None))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--driving", help="reuse this driving video instead of generating one")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=None)
    args = p.parse_args()

    from live.animate import AnimateOptions, animate_file
    from live.engines import load_engine

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    driving = Path(args.driving) if args.driving else work / "long.mp4"
    t = time.perf_counter()
    if not args.driving:
        make_long_video(driving, args.frames, args.width, args.height, args.fps)
    gen_s = time.perf_counter() - t

    engine = load_engine(args.checkpoint)
    samples: list[tuple[int, float]] = []
    t = time.perf_counter()
    res = animate_file(engine, driving_source(work), driving, work / "out.mp4",
                       AnimateOptions(crop="none", batch_size=args.batch_size, size=args.size),
                       progress=lambda done, total: samples.append((done, rss_mb())))
    wall = time.perf_counter() - t
    frames = np.array([s[0] for s in samples], float)
    rss = np.array([s[1] for s in samples])
    warm = frames >= 0.25 * frames[-1]
    slope = float(np.polyfit(frames[warm], rss[warm], 1)[0]) * 1024 if warm.sum() > 2 else float("nan")
    rss_warm = float(rss[warm][0])
    print(json.dumps({"frames": res.frames, "generate_s": round(gen_s, 1), "wall_s": round(wall, 1),
                      "fps": round(res.frames / wall, 2), "rss_after_warmup_mb": round(rss_warm, 1),
                      "rss_end_mb": round(float(rss[-1]), 1), "rss_peak_mb": round(float(rss.max()), 1),
                      "growth_mb": round(float(rss[warm].max()) - rss_warm, 1),
                      "slope_kb_per_frame": round(slope, 3), "has_audio": res.has_audio,
                      "driving_mb": round(driving.stat().st_size / 2**20, 1)}))


def driving_source(work: Path) -> Path:
    from mediagen import pattern, save_image
    p = work / "source.png"
    save_image(p, pattern(256, 256, 0.5))
    return p


if __name__ == "__main__":
    main()
