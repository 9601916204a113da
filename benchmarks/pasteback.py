"""Per-frame cost of the paste-back (live.pasteback) on one CPU thread, per output size.

    python -m benchmarks.pasteback [--portrait IMG] [--frames 300]

The portrait (default: mra-live's bundled example) is prepared once per size, then a 256 px crop
is pasted back ``--frames`` times; prints the median and p95 in ms. OpenCV runs on one thread, as
the live loop's animate stage does it per frame.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SIZES = ("640x480", "1280x720", "1920x1080")


def measure(portrait: np.ndarray, size: str, frames: int, crop_side: int = 256) -> "tuple[float, float, float]":
    """(prepare ms, median ms, p95 ms) for one output size."""
    from live.portrait import source_box
    from nets.media.face import crop_resize
    from live.pasteback import PasteBack, parse_frame_size

    box = source_box(portrait)
    crop = crop_resize(portrait, box, crop_side)
    t0 = time.perf_counter()
    paste = PasteBack.prepare(portrait, box, parse_frame_size(size))
    prep = (time.perf_counter() - t0) * 1000
    times = []
    for i in range(frames):
        frame = np.roll(crop, i % 7, axis=1)  # a different crop each frame, like the animation's
        t0 = time.perf_counter()
        paste.apply(frame)
        times.append((time.perf_counter() - t0) * 1000)
    return prep, float(np.median(times)), float(np.percentile(times, 95))


def main(argv=None) -> int:
    import cv2

    from nets import media
    from live.live import EXAMPLE_PORTRAIT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--portrait", type=Path, default=EXAMPLE_PORTRAIT)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--sizes", default=",".join(SIZES))
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    portrait = media.read_image(args.portrait)
    print(f"portrait {args.portrait.name} {portrait.shape[1]}x{portrait.shape[0]}, {args.frames} frames, 1 thread")
    print("| output | prepare (once per avatar) | apply median | apply p95 |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        prep, med, p95 = measure(portrait, size, args.frames)
        print(f"| {size} | {prep:.1f} ms | {med:.2f} ms | {p95:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
