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


def face_marks(rng: np.random.Generator, frames: int, size: int, no_face: tuple[int, ...] = ()) -> np.ndarray:
    """Face-mesh-like landmarks ``(frames, 468, 2)`` in pixels of ``size`` px frames: the subject's right eye on the
    image's left, the mouth below, the chin lowest; now and then the mouth opens or the eyes blink; NaN rows at
    ``no_face``."""
    from nets.media import facemesh as fm
    s = float(size)
    marks = np.tile(rng.uniform(0.3 * s, 0.7 * s, (1, 468, 2)), (frames, 1, 1))
    # as in talking clips: mostly a closed mouth and open eyes, now and then an open mouth or a blink
    gap = np.where(rng.random(frames) < 0.2, rng.uniform(0.08 * s, 0.15 * s, frames), rng.uniform(0, 0.01 * s, frames))
    lid = np.where(rng.random(frames) < 0.15, rng.uniform(0.002 * s, 0.01 * s, frames),
                   rng.uniform(0.035 * s, 0.045 * s, frames))
    for t in range(frames):
        m = marks[t]
        m[list(fm.LIPS_INNER_UPPER)] = (0.5 * s, 0.7 * s - gap[t] / 2)
        m[list(fm.LIPS_INNER_LOWER)] = (0.5 * s, 0.7 * s + gap[t] / 2)
        m[61], m[291], m[152] = (0.4 * s, 0.7 * s), (0.6 * s, 0.7 * s), (0.5 * s, 0.9 * s)
        for upper, lower, x in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER, 0.35), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER,
                                                                                 0.65)):
            m[list(upper)] = (x * s, 0.4 * s - lid[t] / 2)
            m[list(lower)] = (x * s, 0.4 * s + lid[t] / 2)
        m[33], m[133], m[362], m[263] = (0.3 * s, 0.4 * s), (0.4 * s, 0.4 * s), (0.6 * s, 0.4 * s), (0.7 * s, 0.4 * s)
    marks[list(no_face)] = np.nan
    return marks


def write_landmarks(root: "str | Path", seed: int = 0, no_face: tuple[int, ...] = ()) -> list[Path]:
    """A landmark sidecar (:func:`face_marks`) beside every clip of ``root/train`` and ``root/test``."""
    from nets.train import landmarks as lm
    from nets.train.data import count_frames, frame_shape, list_videos
    rng = np.random.default_rng(seed)
    written = []
    for split in ("train", "test"):
        if not (Path(root) / split).is_dir():
            continue
        for e in list_videos(Path(root) / split):
            w, _ = frame_shape(e)
            written.append(lm.write_sidecar(lm.sidecar_path(e.path.parent, e.name),
                                            face_marks(rng, count_frames(e), w, no_face)))
    return written
