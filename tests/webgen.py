"""Drawn faces for mra-web: the bundled example portraits, talking driving clips and a y4m fake camera.

The faces are simple shapes (no photo, no third-party material) that mediapipe's face detector
still finds. Regenerate the bundled examples with

    python -m tests.webgen examples live/web/static/examples
    python -m tests.webgen portrait live/assets/example-portrait.png   # mra-live's first-run portrait
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN = [(224, 172, 140), (141, 85, 54), (240, 200, 170), (198, 134, 96)]
HAIR = [(40, 30, 20), (20, 20, 20), (160, 120, 60), (90, 60, 30)]
BACKGROUND = [(178, 150, 130), (180, 96, 80), (120, 130, 170), (120, 160, 120)]
SHIRT = [(80, 90, 40), (90, 110, 200), (70, 60, 160), (200, 40, 50)]


def draw_face(seed: int = 0, size: int = 256, width: "int | None" = None, dx: float = 0.0, dy: float = 0.0,
              mouth: float = 0.25, eyes: float = 1.0, tilt: float = 0.0) -> np.ndarray:
    """A drawn head and shoulders ``(size, width or size, 3)`` uint8.

    ``dx``, ``dy``: head offset (fractions of the height); ``mouth``: 0 closed .. 1 wide open;
    ``eyes``: 1 open .. 0 shut; ``tilt``: head roll in degrees."""
    k = seed % len(SKIN)
    skin, hair = SKIN[k], HAIR[k]
    s = 2 * size  # drawn at twice the size, then downscaled (smooth edges)
    w2 = 2 * (width or size)
    im = Image.new("RGB", (w2, s), BACKGROUND[k])
    d = ImageDraw.Draw(im)
    cx, cy = w2 / 2 + dx * s, s * 0.52 + dy * s
    fw, fh = s * 0.25, s * 0.34
    d.ellipse([cx - s * 0.42, cy + fh * 0.85, cx + s * 0.42, cy + fh * 2.4], fill=SHIRT[k])
    d.rectangle([cx - fw * 0.35, cy + fh * 0.5, cx + fw * 0.35, cy + fh * 1.0], fill=tuple(int(c * 0.9) for c in skin))
    head = Image.new("RGBA", (w2, s), (0, 0, 0, 0))
    h = ImageDraw.Draw(head)
    h.ellipse([cx - fw * 1.12, cy - fh * 1.15, cx + fw * 1.12, cy + fh * 0.4], fill=hair)
    h.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    for side in (-1, 1):
        h.ellipse([cx + side * fw * 0.95 - fw * 0.12, cy - fh * 0.15, cx + side * fw * 0.95 + fw * 0.12, cy + fh * 0.2],
                  fill=skin)
    h.chord([cx - fw * 1.02, cy - fh * 1.1, cx + fw * 1.02, cy - fh * 0.25], 180, 360, fill=hair)
    ey = cy - fh * 0.12
    for side in (-1, 1):
        x = cx + side * fw * 0.42
        oh = fh * 0.07 * max(eyes, 0.08)
        h.ellipse([x - fw * 0.2, ey - oh, x + fw * 0.2, ey + oh], fill=(250, 250, 250))
        if eyes > 0.3:
            h.ellipse([x - fw * 0.08, ey - min(oh, fh * 0.065), x + fw * 0.08, ey + min(oh, fh * 0.065)], fill=(70, 50, 30))
            h.ellipse([x - fw * 0.035, ey - fh * 0.03, x + fw * 0.035, ey + fh * 0.03], fill=(10, 10, 10))
        h.line([x - fw * 0.22, ey - fh * 0.17, x + fw * 0.22, ey - fh * 0.2], fill=hair, width=max(2, int(s * 0.012)))
    h.polygon([(cx, ey + fh * 0.05), (cx - fw * 0.1, cy + fh * 0.25), (cx + fw * 0.1, cy + fh * 0.25)],
              fill=tuple(int(c * 0.85) for c in skin))
    mo = fh * (0.05 + 0.25 * mouth)
    h.chord([cx - fw * 0.33, cy + fh * 0.45 - mo * 0.4, cx + fw * 0.33, cy + fh * 0.45 + mo], 0, 180, fill=(150, 50, 60))
    if tilt:
        head = head.rotate(tilt, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    im.paste(head, (0, 0), head)
    im = im.filter(ImageFilter.GaussianBlur(s * 0.003)).resize(((width or size), size), Image.Resampling.LANCZOS)
    return np.asarray(im)


def talking(i: int, n: int, seed: int = 0, size: int = 256, width: "int | None" = None) -> np.ndarray:
    """Frame ``i`` of a clip of a drawn face that talks, nods and turns a little (``n`` frames a cycle)."""
    t = 2 * np.pi * i / max(n, 1)
    return draw_face(seed, size, width, dx=0.03 * np.sin(t), dy=0.015 * np.sin(2 * t),
                     mouth=0.5 + 0.5 * np.sin(3 * t), eyes=0.0 if i % 40 == 20 else 1.0, tilt=6 * np.sin(t))


def write_y4m(path: Path, frames, fps: int = 25) -> Path:
    """A YUV4MPEG2 (4:2:0) file, the format Chromium's ``--use-file-for-fake-video-capture`` plays."""
    import cv2

    frames = list(frames)
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def write_examples(folder: Path, n: int = 3, size: int = 256) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        p = folder / f"drawn-{k + 1}.png"
        Image.fromarray(draw_face(k, size)).save(p, optimize=True)
        out.append(p)
    return out


def draw_portrait(seed: int = 2) -> np.ndarray:
    """A drawn portrait photo ``(840, 600, 3)`` uint8: head and shoulders in a room (a window, a
    picture on the wall), the face well inside the picture, as in most portrait photos."""
    face = draw_face(seed, 480, 400)
    img = Image.fromarray(np.pad(face, ((120, 240), (100, 100), (0, 0)), mode="edge"))  # wall above, torso below
    d = ImageDraw.Draw(img)
    wall = BACKGROUND[seed % len(BACKGROUND)]
    d.rectangle([18, 50, 150, 330], fill=(235, 235, 225))                      # window frame
    d.rectangle([28, 60, 140, 320], fill=(170, 205, 235))                      # sky
    d.line([84, 60, 84, 320], fill=(235, 235, 225), width=6)
    d.line([28, 190, 140, 190], fill=(235, 235, 225), width=6)
    d.rectangle([465, 90, 575, 230], fill=(110, 80, 50))                       # picture frame
    d.rectangle([475, 100, 565, 220], fill=(90, 140, 90))
    d.polygon([(475, 220), (515, 150), (545, 190), (565, 170), (565, 220)], fill=(60, 90, 60))
    d.rectangle([0, 560, 600, 566], fill=tuple(int(c * 0.8) for c in wall))  # a rail behind the shoulders
    img.paste(Image.fromarray(face[260:]), (100, 380))  # the shoulders in front of the rail
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)))


def write_portrait(path: Path, seed: int = 2) -> Path:
    """mra-live's bundled example portrait (:func:`draw_portrait`)."""
    Image.fromarray(draw_portrait(seed)).save(path, optimize=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "examples":
        for p in write_examples(Path(sys.argv[2])):
            print(p)
    elif len(sys.argv) == 3 and sys.argv[1] == "portrait":
        print(write_portrait(Path(sys.argv[2])))
    else:
        print("usage: python -m tests.webgen examples FOLDER", file=sys.stderr)
        sys.exit(2)
