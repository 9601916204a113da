"""The README's paste-back picture, from drawn material only and the shipped model:

    python -m tests.pasteback_figure docs/pasteback.png

portrait (mra-live's bundled example) | driving frame (a drawn face, another person, mouth open,
head turned) | the model's crop output | the crop pasted back into the portrait in a 1280x720 frame.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nets import media
from live.portrait import prepare_portrait
from live.engines import load_engine
from nets.media.face import FaceDetector, crop_resize, face_crop
from live.live import EXAMPLE_PORTRAIT, FULL_FRAME

from .webgen import draw_face

HEIGHT = 360  # of each panel
LABEL = 26


def figure() -> Image.Image:
    engine = load_engine(backend="onnx")
    size = engine.frame_size
    detector = FaceDetector()
    portrait = media.read_image(EXAMPLE_PORTRAIT)
    src, paste = prepare_portrait(portrait, size, "auto", detector, FULL_FRAME)
    avatar = engine.prepare_source(media.to_input(src[None]))

    def crop_of(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return crop_resize(rgb, face_crop(detector.detect(rgb)[0], w, h), size)

    neutral = draw_face(0, 480, 640)
    driving = draw_face(0, 480, 640, dx=0.015, dy=0.01, mouth=0.9, tilt=5.0)
    init = engine.regions(media.to_input(crop_of(neutral)[None]))
    new = engine.transfer(avatar, engine.regions(media.to_input(crop_of(driving)[None])), init, mode="relative")
    crop_out = media.to_uint8(engine.animate(avatar, new))[0]
    full = paste.apply(crop_out)
    detector.close()

    panels = [("portrait", portrait), ("driving frame", driving), ("crop output (256 px)", crop_out),
              (f"pasted back ({FULL_FRAME})", full)]
    ims = []
    for _, rgb in panels:
        h, w = rgb.shape[:2]
        ims.append(Image.fromarray(rgb).resize((round(w * HEIGHT / h), HEIGHT), Image.Resampling.LANCZOS))
    gap = 10
    out = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) + 1), HEIGHT + LABEL + gap), (255, 255, 255))
    d = ImageDraw.Draw(out)
    x = gap
    for (label, _), im in zip(panels, ims):
        out.paste(im, (x, LABEL))
        d.text((x, 6), label, fill=(20, 20, 20))
        x += im.width + gap
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/pasteback.png")
    figure().save(target, optimize=True)
    print(target)
