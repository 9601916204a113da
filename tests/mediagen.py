"""Generate test media (images, videos with audio, broken files) in temporary folders.

Nothing here reads ../shared; every file is made from numpy patterns, so the tests that use these
run anywhere.
"""
from __future__ import annotations

import os
import struct
import zlib
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
from PIL import Image


def pattern(w: int, h: int, t: float = 0.0, seed: int = 0) -> np.ndarray:
    """A smooth textured RGB scene ``(h, w, 3)`` uint8 with a disc that moves with ``t`` (0..1)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = rng.uniform(2, 5, size=2)
    img = np.stack([
        127 + 80 * np.sin(2 * np.pi * fx * x / w + 0.5),
        127 + 80 * np.sin(2 * np.pi * fy * y / h + 1.0),
        127 + 60 * np.cos(2 * np.pi * (x + y) / (w + h) * 3),
    ], axis=-1)
    cx = w * (0.35 + 0.3 * np.sin(2 * np.pi * t))
    cy = h * (0.5 + 0.15 * np.cos(2 * np.pi * t))
    r = 0.18 * min(w, h)
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < r ** 2
    img[disc] = (230, 60, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_image(path: Path, rgb: np.ndarray, **save_args) -> Path:
    Image.fromarray(rgb).save(path, **save_args)
    return path


def write_png16(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (PIL cannot write those), written by hand."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


CODECS = {".mp4": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p"), ".mkv": ("libx264", "yuv420p"),
          ".avi": ("mpeg4", "yuv420p"), ".webm": ("libvpx", "yuv420p"), ".gif": ("gif", "pal8")}


def tone(rate: int, seconds: float, bursts: Sequence[tuple[float, float]] = (), base: float = 0.05,
         burst: float = 0.6) -> np.ndarray:
    """A quiet 440 Hz tone with loud 1 kHz bursts at ``(start_s, length_s)``: ``(n,)`` float32."""
    t = np.arange(int(round(rate * seconds))) / rate
    x = base * np.sin(2 * np.pi * 440 * t)
    for start, length in bursts:
        m = (t >= start) & (t < start + length)
        x[m] = burst * np.sin(2 * np.pi * 1000 * t[m])
    return x.astype(np.float32)


def make_video(path: Path, n: int = 12, size: tuple[int, int] = (96, 96), fps: "Fraction | int | float" = 25,
               frame_fn: "Callable[[int], np.ndarray] | None" = None, audio: "np.ndarray | None" = None,
               audio_rate: int = 48000, video_start: float = 0.0, rotation: "int | None" = None,
               pix_fmt: "str | None" = None, faststart: bool = False) -> Path:
    """Encode ``n`` frames (``frame_fn(i)`` -> ``(h, w, 3)`` uint8; default a moving pattern) with the
    codec the extension suggests; optionally an AAC track (``audio`` mono float32 samples) and a
    video start offset in seconds (the first frame's pts)."""
    path = Path(path)
    codec, fmt = CODECS[path.suffix.lower()]
    w, h = size
    fps = Fraction(fps).limit_denominator(100000)
    frame_fn = frame_fn or (lambda i: pattern(w, h, i / max(n, 1)))
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = pix_fmt or fmt
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "12"}
        elif codec in ("mpeg4", "libvpx"):
            vs.bit_rate = 4_000_000
        if rotation is not None:
            vs.set_display_rotation(rotation)
        tb = Fraction(1) / fps
        offset = int(round(video_start / tb))
        astream = None
        if audio is not None:
            astream = c.add_stream("aac", rate=audio_rate, layout="mono")
        for i in range(n):
            rgb = frame_fn(i)
            if codec == "gif":
                q = Image.fromarray(rgb).quantize(256)
                pal = np.asarray(q.getpalette()[:768], np.uint8).reshape(-1, 3)
                argb = np.zeros((256, 4), np.uint8)
                argb[:, 0] = 255
                argb[:len(pal), 1:] = pal
                frame = av.VideoFrame.from_ndarray((np.asarray(q), argb), format="pal8")
            else:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = offset + i
            frame.time_base = tb
            c.mux(vs.encode(frame))
        c.mux(vs.encode(None))
        if astream is not None:
            step = 1000
            for j in range(0, len(audio), step):
                af = av.AudioFrame.from_ndarray(audio[None, j:j + step].copy(), format="fltp", layout="mono")
                af.sample_rate = audio_rate
                af.pts = j
                af.time_base = Fraction(1, audio_rate)
                c.mux(astream.encode(af))
            c.mux(astream.encode(None))
    return path


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def corrupt(src: Path, dst: Path, start: float = 0.3, length: float = 0.4, seed: int = 0) -> Path:
    data = bytearray(src.read_bytes())
    a, b = int(len(data) * start), int(len(data) * (start + length))
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


@contextmanager
def unwritable_dir(tmp_path: Path):
    """A folder this process cannot create files in: a read-only temp folder, or (as root, who may
    write anywhere on disk) /sys, whose folders refuse new files; skips when neither works."""
    import pytest

    if os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            yield ro
        finally:
            ro.chmod(0o755)
        return
    sys_dir = Path("/sys")
    try:
        with open(sys_dir / "mra-write-test", "wb"):
            pass
    except OSError:
        yield sys_dir
        return
    pytest.skip("running as root and no read-only folder is available")


@contextmanager
def small_tmpfs(path: Path, size: str = "64k", options: str = ""):
    """A real tiny file system mounted at ``path`` (a full disk, a read-only one, a mount point):
    needs root and the mount command; skips when they are not there."""
    import shutil
    import subprocess

    import pytest

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
