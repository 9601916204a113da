"""A synthetic video dataset for training tests: moving, deforming coloured shapes on a texture.

Each video has a fixed textured background (smooth noise plus a grid of lines, slowly panning) and
a few soft-edged ellipses whose centre follows a smooth trajectory while they rotate and stretch.
Videos are written in the official layouts (``ROOT/{train,test}/NAME`` with names ``idI#clipJ``):
folders of PNG frames, mp4 (H.264 through PyAV when installed, else OpenCV's mp4v), gif, or a
horizontal PNG strip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LAYOUTS = ("frames", "mp4", "gif", "strip")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth coloured texture ``(2*size, 2*size, 3)`` float in [0, 1] (room to pan)."""
    big = 2 * size
    coarse = rng.random((8, 8, 3)).astype(np.float32)
    tex = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((big, big), Image.BICUBIC),
                     dtype=np.float32) / 255
    yy, xx = np.mgrid[0:big, 0:big]
    lines = ((xx % 16) < 2) | ((yy % 16) < 2)
    tex = 0.35 + 0.3 * tex
    tex[lines] *= 0.6
    return tex


def make_video(rng: np.random.Generator, size: int = 64, frames: int = 12, shapes: int = 3) -> np.ndarray:
    """One video ``(frames, size, size, 3)`` uint8."""
    tex = _texture(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    params = []
    for _ in range(shapes):
        params.append(dict(
            color=rng.uniform(0.1, 1.0, 3).astype(np.float32),
            centre=rng.uniform(-0.5, 0.5, 2), amp=rng.uniform(0.1, 0.35, 2), freq=rng.uniform(0.5, 1.5, 2),
            phase=rng.uniform(0, 2 * np.pi, 2), axes=rng.uniform(0.15, 0.35, 2), angle=rng.uniform(0, np.pi),
            spin=rng.uniform(-0.3, 0.3), stretch=rng.uniform(0.1, 0.3)))
    pan = rng.uniform(-1, 1, 2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        s = t / max(1, frames - 1)
        ox = int(round(size / 2 + pan[0] * s * size / 4))
        oy = int(round(size / 2 + pan[1] * s * size / 4))
        img = tex[oy:oy + size, ox:ox + size].copy()
        for p in params:
            c = p["centre"] + p["amp"] * np.sin(2 * np.pi * p["freq"] * s + p["phase"])
            a = p["angle"] + p["spin"] * t
            k = 1 + p["stretch"] * np.sin(2 * np.pi * s)
            ax, ay = p["axes"][0] * k, p["axes"][1] / k
            dx, dy = xx - c[0], yy - c[1]
            u = (np.cos(a) * dx + np.sin(a) * dy) / ax
            v = (-np.sin(a) * dx + np.cos(a) * dy) / ay
            r = np.sqrt(u * u + v * v)
            alpha = np.clip((1 - r) * size * 0.15, 0, 1)[..., None]
            shade = p["color"] * (0.75 + 0.25 * np.clip(1 - r, 0, 1))[..., None]
            img = img * (1 - alpha) + shade * alpha
        out[t] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def write_frames(folder: Path, video: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(video):
        Image.fromarray(f).save(folder / f"{i:04d}.png")
    return folder


def write_mp4(path: Path, video: np.ndarray, fps: int = 25) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = video.shape[2], video.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "10", "preset": "ultrafast"}
            for f in video:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (video.shape[2], video.shape[1]))
    for f in video:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_gif(path: Path, video: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [Image.fromarray(f) for f in video]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=40, loop=0)
    return path


def write_strip(path: Path, video: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(list(video), axis=1)).save(path)
    return path


def write_video(split_dir: Path, name: str, video: np.ndarray, layout: str) -> Path:
    if layout == "frames":
        return write_frames(split_dir / name, video)
    if layout == "mp4":
        return write_mp4(split_dir / f"{name}.mp4", video)
    if layout == "gif":
        return write_gif(split_dir / f"{name}.gif", video)
    if layout == "strip":
        return write_strip(split_dir / f"{name}.png", video)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def make_dataset(root: "str | Path", layout: str = "frames", num_ids: int = 3, clips_per_id: int = 2,
                 frames: int = 12, size: int = 64, seed: int = 0, test_ids: int = 1) -> Path:
    """Write ``root/train`` (num_ids identities x clips_per_id clips, named ``idI#clipJ``) and ``root/test``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, ids in (("train", range(num_ids)), ("test", range(num_ids, num_ids + test_ids))):
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        for i in ids:
            for j in range(clips_per_id):
                write_video(d, f"id{i}#clip{j}", make_video(rng, size, frames), layout)
    return root
