"""The model card's expression pictures, committed from drawn material only (the shipped model):

    python -m tests.expression_figure docs/expressions.png docs/regions.png

1. ``expressions.png``: three drawn portraits (mra-live's example and two of mra-web's), each driven
   by a real held-out talking clip (``../shared``: its frames are picked by their landmarks and are
   *not* drawn in the picture, licence): the reference frame, the widest-open mouth, the widest
   smile, the most shut eyes; the networks alone (``--expression 0``) above the tools' output.
2. ``regions.png``: the shipped model's regions (centres and one-sigma covariance ellipses) on the
   same drawn portraits: where the learned motion representation looks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks import clips as cl
from live import expression as ex
from live.engines import load_engine
from live.live import EXAMPLE_PORTRAIT
from live.portrait import prepare_portrait
from nets import media
from nets.media import facemesh as fm

from .conftest import shared_path

EXAMPLES = Path(__file__).resolve().parents[1] / "live" / "web" / "static" / "examples"
PORTRAITS = [EXAMPLE_PORTRAIT, EXAMPLES / "drawn-1.png", EXAMPLES / "drawn-2.png"]
DRIVER = ("data", "faces", "videos", "d6.mp4")  # held out of the shipped model's training
COLUMNS = ("reference", "mouth open", "smile", "eyes shut")
LABEL = 22


def pick_frames(marks: list) -> list[int]:
    """Reference (most neutral of the first second), widest mouth, widest smile (mouth corners apart), most shut eyes."""
    ref = ex.best_reference(marks[:25])  # the drawn portraits are neutral: the most neutral face
    ok = [i for i, m in enumerate(marks) if m is not None]
    mouth = max(ok, key=lambda i: fm.mouth_openness(marks[i]))
    smile = max(ok, key=lambda i: float(np.linalg.norm(marks[i][61] - marks[i][291]) / fm.inter_ocular(marks[i]))
                - 2 * float(fm.mouth_openness(marks[i])))
    shut = min(ok, key=lambda i: float(fm.eye_openness(marks[i])))
    return [ref, mouth, smile, shut]


def label(img: np.ndarray, text: str) -> Image.Image:
    im = Image.new("RGB", (img.shape[1], img.shape[0] + LABEL), "white")
    im.paste(Image.fromarray(img), (0, LABEL))
    ImageDraw.Draw(im).text((6, 5), text, fill="black")
    return im


def grid(rows: list[list[Image.Image]]) -> Image.Image:
    w, h = rows[0][0].size
    out = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            out.paste(im, (c * w, r * h))
    return out


def figures() -> tuple[Image.Image, Image.Image]:
    engine = load_engine(backend="onnx")
    size = engine.frame_size
    frames = list(cl.read_clip(shared_path(*DRIVER), size, "auto", 400))
    with fm.FaceMesh(tracking=True) as mesh:
        marks = [mesh(f) for f in frames]
    picks = pick_frames(marks)
    ref = picks[0]
    initial = engine.regions(media.to_input(frames[ref][None]))
    rows, region_row = [], []
    for path in PORTRAITS:
        crop, _ = prepare_portrait(media.read_image(path), size, "auto")
        avatar = engine.prepare_source(media.to_input(crop[None]))
        face = ex.portrait_face(crop)
        plain, expressive = [], []
        with ex.ExpressionTransfer(face) as transfer:
            for k, i in enumerate(picks):
                out = media.to_uint8(engine.animate(avatar, engine.transfer(
                    avatar, engine.regions(media.to_input(frames[i][None])), initial)))[0]
                plain.append(label(out, f"{path.stem}: {COLUMNS[k]}, networks alone"))
                expressive.append(label(transfer.apply(out, marks[i], marks[ref]), f"{COLUMNS[k]}, with expressions"))
        rows += [plain, expressive]
        region_row.append(label(draw_regions(crop, avatar.regions), f"{path.stem}: regions of lite256 v2"))
    return grid(rows), grid([region_row])


def draw_regions(crop: np.ndarray, regions) -> np.ndarray:
    """Region centres and one-sigma ellipses of the covariance (normalised coordinates -> pixels)."""
    im = Image.fromarray(crop).convert("RGB")
    d = ImageDraw.Draw(im)
    s = crop.shape[0]
    colours = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
    for k in range(regions.shift.shape[1]):
        centre = (regions.shift[0, k] + 1) * s / 2
        cov = regions.covar[0, k] * (s / 2) ** 2
        vals, vecs = np.linalg.eigh(cov)
        t = np.linspace(0, 2 * np.pi, 48)
        pts = centre + (vecs @ (np.sqrt(np.maximum(vals, 0))[:, None] * np.stack([np.cos(t), np.sin(t)]))).T
        c = colours[k % len(colours)]
        d.line([tuple(p) for p in pts] + [tuple(pts[0])], fill=c, width=2)
        d.ellipse([centre[0] - 3, centre[1] - 3, centre[0] + 3, centre[1] + 3], fill=c)
    return np.asarray(im)


def main(argv: "list[str]") -> int:
    expressions, regions = figures()
    out = [Path(a) for a in argv] or [Path("docs/expressions.png"), Path("docs/regions.png")]
    expressions.save(out[0], optimize=True)
    if len(out) > 1:
        regions.save(out[1], optimize=True)
    print(f"wrote {', '.join(map(str, out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
