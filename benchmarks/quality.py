"""Animation quality of a model on face clips (``python benchmarks/quality.py --help``).

Self-reenactment (the paper's reconstruction protocol): the first frame of each clip is the
source and every frame drives it with *standard* transfer (the driving region parameters as
they are, plus the predicted background motion, as the paper's reconstruction does); each
output is compared with the real frame: L1 (mean absolute error on [0, 1] RGB), SSIM, LPIPS
(only when its weights are on this machine), AKD (mean distance in pixels at 256 between
mediapipe face-mesh landmarks of output and real frame, see ``benchmarks/landmarks.py``) and MKR
(fraction of frames whose real frame has a face that the output lost). A no-motion baseline
(the source repeated) is scored in the same table.

Cross-identity animation (``--portraits``): each portrait is animated by a driving clip with
*relative* transfer (the live path); reported: how the output's landmark displacements follow
the driving's (both relative to their first frames, normalised by face size), and how much of
the portrait's face shape is kept (Procrustes distance of output landmarks to the portrait's and
to the driving frame's).

Writes ``quality.json`` and a contact sheet ``contact_sheet.png`` (per example: source, driving
and output rows) to ``--out``.

Examples::

    python benchmarks/quality.py --videos clips/ --checkpoint model.pt --out eval/
    python benchmarks/quality.py --videos raw/ --crop center --config lite256 --random-weights \\
        --portraits portraits/ --max-frames 40 --out /tmp/q
"""
from __future__ import annotations

import datetime
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import nets  # noqa: E402
from nets.errors import ArgumentParser, UserError, run_cli  # noqa: E402

from benchmarks import clips as cl  # noqa: E402
from benchmarks import metrics as mt  # noqa: E402
from benchmarks.landmarks import SUBSET, FaceMesh, LandmarksUnavailable  # noqa: E402
from live.animate import batched  # noqa: E402

AKD_SCALE = 256  # AKD is reported in pixels of a 256 x 256 frame
THUMB = 128


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def frames_to_tensor(frames: Sequence[np.ndarray], size: int, device: str) -> torch.Tensor:
    """uint8 ``(S, S, 3)`` frames -> float ``(B, 3, size, size)`` in [0, 1]."""
    x = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def tensor_to_frames(x: torch.Tensor) -> list[np.ndarray]:
    u8 = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(u8)


@dataclass
class Source:
    image: torch.Tensor  # (1, 3, S, S)
    regions: nets.Regions
    cache: nets.SourceCache


class Animator:
    """The model on a device, animating one source with batches of driving frames."""

    def __init__(self, model: nets.MRAA, device: str = "cpu", batch: int = 8):
        self.model = model.eval().to(device)
        self.device = device
        self.batch = batch
        self.size = model.frame_size

    @torch.inference_mode()
    def prepare(self, source: np.ndarray) -> Source:
        x = frames_to_tensor([source], self.size, self.device)
        r = self.model.regions(x)
        return Source(image=x, regions=r, cache=self.model.prepare_source(x, r))

    @torch.inference_mode()
    def regions(self, frame: np.ndarray) -> nets.Regions:
        return self.model.regions(frames_to_tensor([frame], self.size, self.device))

    @torch.inference_mode()
    def animate(self, src: Source, frames: Sequence[np.ndarray], mode: str, initial: Optional[nets.Regions] = None,
                background: bool = False) -> list[np.ndarray]:
        """Outputs (uint8, model size) for driving ``frames`` (``mode`` standard | relative)."""
        x = frames_to_tensor(frames, self.size, self.device)
        b = x.shape[0]
        drv = self.model.regions(x)
        ex = lambda r: r.map(lambda t: t.expand(b, *t.shape[1:]))  # noqa: E731
        init = ex(initial) if initial is not None else None
        new = self.model.transfer(ex(src.regions.without_heatmap()), drv, init, mode=mode)
        bg = self.model.background(src.image.expand(b, -1, -1, -1), x) if background else None
        out = self.model.animate_cached(src.cache, new, bg=bg, with_deformed=False).prediction
        return tensor_to_frames(out)


def load_model(args) -> tuple[Optional[nets.MRAA], dict[str, Any]]:
    if args.checkpoint:
        model = nets.load_model(args.checkpoint, config=args.config)
        return model, {"checkpoint": str(args.checkpoint), "sha256": nets.sha256_file(args.checkpoint),
                       "config": model.config.name, "random_weights": False}
    if args.random_weights:
        torch.manual_seed(args.seed)
        model = nets.build_model(args.config or "lite256").eval()
        return model, {"checkpoint": None, "config": model.config.name, "random_weights": True, "seed": args.seed}
    if args.baseline_only:
        return None, {"checkpoint": None, "config": None}
    raise UserError("give --checkpoint (and --config for an official checkpoint), or --config PRESET "
                    "--random-weights for a trial, or --baseline-only")


def lpips_status() -> tuple[Optional[Any], str]:
    """(an LPIPS metric, note) when the lpips package and its AlexNet weights are on this machine, else (None, why)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None, "LPIPS not computed: the lpips package is not installed (nothing is downloaded)"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return None, f"LPIPS not computed: AlexNet weights are not in {hub} (nothing is downloaded)"
    import lpips
    metric = lpips.LPIPS(net="alex", verbose=False).eval()
    return metric, "LPIPS (AlexNet, lpips package) on [-1, 1] images"


# ---------------------------------------------------------------------------------------------
# Per-frame scoring
# ---------------------------------------------------------------------------------------------

@dataclass
class Scores:
    """Per-frame scores of one method on one clip (None where a metric is undefined)."""

    l1: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lpips: list[Optional[float]] = field(default_factory=list)
    akd: list[Optional[float]] = field(default_factory=list)
    real_found: list[bool] = field(default_factory=list)
    out_found: list[bool] = field(default_factory=list)

    def extend(self, other: "Scores") -> None:
        for k in self.__dataclass_fields__:
            getattr(self, k).extend(getattr(other, k))

    def summary(self) -> dict[str, Any]:
        real = np.asarray(self.real_found, bool)
        out = np.asarray(self.out_found, bool)
        akd = [a for a in self.akd if a is not None]
        return {"frames": len(self.l1), "l1": mt.mean_or_none(self.l1), "ssim": mt.mean_or_none(self.ssim),
                "lpips": mt.mean_or_none(self.lpips), "akd": float(np.mean(akd)) if akd else None,
                "akd_frames": len(akd),
                "mkr": float((real & ~out).sum() / real.sum()) if real.sum() else None,
                "frames_with_face": int(real.sum())}


def to_float(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] != size:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
    return image.astype(np.float64) / 255


def lpips_value(metric, a: np.ndarray, b: np.ndarray) -> Optional[float]:
    if metric is None:
        return None
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() * 2 - 1  # noqa: E731
    with torch.inference_mode():
        return float(metric(t(a), t(b)).mean())


def score(output: np.ndarray, real: np.ndarray, lm_out: Optional[np.ndarray], lm_real: Optional[np.ndarray],
          size: int, lpips_metric=None) -> Scores:
    """Scores of one output frame against the real frame (images uint8; landmarks in their own pixels)."""
    a, b = to_float(output, size), to_float(real, size)
    s = Scores(l1=[mt.l1(a, b)], ssim=[mt.ssim(a, b)], lpips=[lpips_value(lpips_metric, a, b)],
               real_found=[lm_real is not None], out_found=[lm_out is not None])
    if lm_out is not None and lm_real is not None:
        s.akd.append(mt.keypoint_distance(lm_out * AKD_SCALE / output.shape[0], lm_real * AKD_SCALE / real.shape[0]))
    else:
        s.akd.append(None)
    return s


# ---------------------------------------------------------------------------------------------
# Evaluations
# ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    """Thumbnails of one clip or pair for the contact sheet."""

    title: str
    source: np.ndarray
    driving: list[np.ndarray] = field(default_factory=list)
    output: list[np.ndarray] = field(default_factory=list)


def thumb(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.LANCZOS))


def reconstruct_clip(path: Path, animator: Optional[Animator], mesh: FaceMesh, args, lpips_metric,
                     mode: str, progress) -> tuple[dict[str, Scores], Example, list[Optional[np.ndarray]]]:
    """Self-reenactment of one clip: per-frame scores of the model and of the no-motion baseline."""
    frames = cl.read_clip(path, args.size, args.max_frames, args.crop, args.center_fraction)
    try:
        first = next(frames)
    except StopIteration:
        raise UserError(f"{path} has no frames") from None
    src = animator.prepare(first) if animator else None
    lm_src = mesh(first)
    scores = {"no-motion": Scores()}
    if animator:
        scores["model"] = Scores()
    example = Example(title=f"{path.name} (self-reenactment, {mode})", source=thumb(first))
    lm_real_all: list[Optional[np.ndarray]] = []

    def all_frames():
        yield first
        yield from frames

    for batch in batched(all_frames(), args.batch):
        outs = animator.animate(src, batch, mode, initial=src.regions if mode == "relative" else None,
                                background=args.bg) if animator else None
        for i, real in enumerate(batch):
            lm_real = mesh(real)
            lm_real_all.append(lm_real)
            scores["no-motion"].extend(score(first, real, lm_src, lm_real, args.size, lpips_metric))
            example.driving.append(thumb(real))
            if outs is not None:
                out = outs[i]
                scores["model"].extend(score(out, real, mesh(out), lm_real, args.size, lpips_metric))
                example.output.append(thumb(out))
            else:
                example.output.append(thumb(first))
        progress(len(batch))
    return scores, example, lm_real_all


@dataclass
class CrossResult:
    portrait: str
    clip: str
    motion: dict[str, mt.MotionTransfer]
    shape_to_source: dict[str, Optional[float]]
    shape_to_driving: dict[str, Optional[float]]
    shape_frame0: dict[str, Optional[float]]
    mkr: dict[str, Optional[float]]
    frames: int


def cross_pair(portrait: Path, clip: Path, animator: Optional[Animator], mesh: FaceMesh, args,
               progress) -> tuple[CrossResult, Example]:
    """Animate a portrait by a clip (relative transfer) and compare landmark motion and shape."""
    src_img = cl.read_image(portrait, args.size, args.portrait_crop, args.center_fraction)
    lm_src = mesh(src_img)
    frames = cl.read_clip(clip, args.size, args.max_frames, args.crop, args.center_fraction)
    src = animator.prepare(src_img) if animator else None
    example = Example(title=f"{portrait.name} driven by {clip.name} (relative)", source=thumb(src_img))
    lm_drv: list[Optional[np.ndarray]] = []
    lm_out: list[Optional[np.ndarray]] = []
    initial = None
    for batch in batched(frames, args.batch):
        if animator and initial is None:
            initial = animator.regions(batch[0])
        outs = animator.animate(src, batch, "relative", initial=initial) if animator else [src_img] * len(batch)
        for real, out in zip(batch, outs):
            lm_drv.append(mesh(real))
            lm_out.append(mesh(out) if animator else lm_src)
            example.driving.append(thumb(real))
            example.output.append(thumb(out))
        progress(len(batch))
    methods = {"no-motion": [lm_src] * len(lm_drv)}
    if animator:
        methods["model"] = lm_out
    res = CrossResult(portrait=portrait.name, clip=clip.name, motion={}, shape_to_source={}, shape_to_driving={},
                      shape_frame0={}, mkr={}, frames=len(lm_drv))
    for name, lms in methods.items():
        res.motion[name] = mt.motion_transfer(lms, lm_drv)
        both = [(o, d) for o, d in zip(lms, lm_drv) if o is not None and d is not None]
        res.shape_to_source[name] = (mt.mean_or_none([mt.procrustes_distance(lm_src, o) for o, _ in both])
                                     if lm_src is not None else None)
        res.shape_to_driving[name] = mt.mean_or_none([mt.procrustes_distance(d, o) for o, d in both])
        res.shape_frame0[name] = (mt.procrustes_distance(lm_src, lms[0])
                                  if lm_src is not None and lms and lms[0] is not None else None)
        real = np.array([d is not None for d in lm_drv])
        lost = np.array([o is None for o in lms])
        res.mkr[name] = float((real & lost).sum() / real.sum()) if real.sum() else None
    return res, example


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def contact_sheet(examples: Sequence[Example], path: Path, columns: int = 6) -> Path:
    """One block per example: rows source | driving | output, ``columns`` evenly spaced frames."""
    label_w, title_h, pad = 70, 18, 6
    width = label_w + columns * THUMB
    block_h = title_h + 3 * THUMB + pad
    sheet = Image.new("RGB", (width, max(1, len(examples)) * block_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for e_i, ex in enumerate(examples):
        y0 = e_i * block_h
        draw.text((4, y0 + 3), ex.title, fill=(0, 0, 0))
        n = len(ex.driving)
        picks = sorted(set(np.linspace(0, n - 1, min(columns, n)).round().astype(int).tolist())) if n else []
        for r_i, (label, images) in enumerate((("source", None), ("driving", ex.driving), ("output", ex.output))):
            y = y0 + title_h + r_i * THUMB
            draw.text((4, y + THUMB // 2 - 6), label, fill=(0, 0, 0))
            for c_i, t in enumerate(picks):
                img = ex.source if images is None else images[t]
                sheet.paste(Image.fromarray(img), (label_w + c_i * THUMB, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _f(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _gain(model: Optional[float], base: Optional[float]) -> str:
    if model is None or base is None or base == 0:
        return "-"
    return f"{(model - base) / base * 100:+.1f}%"


def recon_table(rows: list[dict]) -> str:
    lines = [f"{'method':<10} {'mode':<9} {'bg':<3} {'clips':>5} {'frames':>6} {'L1':>7} {'SSIM':>7} "
             f"{'LPIPS':>7} {'AKD px':>7} {'MKR':>6}"]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['mode']:<9} {'yes' if r['bg'] else 'no':<3} {r['clips']:>5} "
                     f"{r['frames']:>6} {_f(r['l1']):>7} {_f(r['ssim']):>7} {_f(r['lpips']):>7} "
                     f"{_f(r['akd'], '.2f'):>7} {_f(r['mkr'], '.3f'):>6}")
    return "\n".join(lines)


def cross_table(rows: list[dict]) -> str:
    lines = [f"{'method':<10} {'pairs':>5} {'motion err':>10} {'ratio':>6} {'cosine':>7} {'shape->src':>10} "
             f"{'shape->drv':>10} {'frame0->src':>11} {'MKR':>6}"]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['pairs']:>5} {_f(r['motion_error']):>10} {_f(r['motion_ratio'], '.2f'):>6} "
                     f"{_f(r['motion_cosine'], '.3f'):>7} {_f(r['shape_to_source']):>10} "
                     f"{_f(r['shape_to_driving']):>10} {_f(r['shape_frame0']):>11} {_f(r['mkr'], '.3f'):>6}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv: "Sequence[str] | None"):
    p = ArgumentParser(prog="quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", required=True, help="folder of square face clips (video files or PNG-frame folders)")
    p.add_argument("--crop", default="none", choices=cl.CROPS,
                   help="none: clips are square face crops already; center: fixed centre square; auto: live.face")
    p.add_argument("--center-fraction", type=float, default=1.0, help="side of the --crop center square / shorter side")
    p.add_argument("--checkpoint", help="model to evaluate (own format, or official with --config)")
    p.add_argument("--config", help="config of an official checkpoint, or the preset for --random-weights")
    p.add_argument("--random-weights", action="store_true", help="evaluate an untrained model of --config (a trial)")
    p.add_argument("--baseline-only", action="store_true", help="no model: only the no-motion baseline")
    p.add_argument("--portraits", help="portraits (folder or file) for cross-identity animation")
    p.add_argument("--portrait-crop", choices=("none", "center", "auto"), default="auto",
                   help="how portraits are cropped (default auto: the face, as mra-animate does)")
    p.add_argument("--pairs", type=int, default=None,
                   help="cross-identity pairs (portrait i with clip i mod #clips; default: one per portrait)")
    p.add_argument("--max-clips", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=100, help="frames per clip (default 100)")
    p.add_argument("--size", type=int, default=256, help="evaluation resolution (default 256)")
    p.add_argument("--modes", default="standard",
                   help="self-reenactment transfer: standard (the paper's protocol), relative, or both (comma list)")
    p.add_argument("--no-bg", dest="bg", action="store_false",
                   help="no background motion in self-reenactment (the paper's protocol uses it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sheet-examples", type=int, default=4, help="examples on the contact sheet per part")
    p.add_argument("--out", required=True, help="output folder (quality.json, contact_sheet.png)")
    return p.parse_args(argv)


def main(argv: "Sequence[str] | None" = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("standard", "relative")]
    if bad or not modes:
        raise UserError(f"--modes takes standard and/or relative, got {args.modes!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU here")
    if not 0 < args.center_fraction <= 1:
        raise UserError("--center-fraction must be in (0, 1]")
    clips = cl.list_clips(args.videos)[: args.max_clips]
    portraits = cl.list_images(args.portraits) if args.portraits else []
    model, model_info = load_model(args)
    if model is not None and model.config.model.background.bg_type == "zero":
        args.bg = False
    animator = Animator(model, args.device, args.batch) if model is not None else None
    lpips_metric, lpips_note = lpips_status()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        mesh = FaceMesh()
    except LandmarksUnavailable as e:
        raise UserError(str(e)) from None

    total = len(clips) * len(modes) * args.max_frames + (args.pairs or len(portraits)) * args.max_frames
    bar = tqdm(total=total, desc="quality", unit="frame", file=sys.stderr, leave=False)
    recon_rows, per_clip, examples = [], [], []
    with mesh:
        for mode in modes:
            agg: dict[str, Scores] = {}
            for path in clips:
                scores, example, _ = reconstruct_clip(path, animator, mesh, args, lpips_metric, mode, bar.update)
                if mode != modes[0]:
                    scores.pop("no-motion")  # the same for every mode: scored once
                for name, s in scores.items():
                    agg.setdefault(name, Scores()).extend(s)
                    per_clip.append({"clip": path.name, "method": name, "mode": mode if name == "model" else "-",
                                     "bg": args.bg and name == "model", **s.summary()})
                if len(examples) < args.sheet_examples:
                    examples.append(example)
            for name in ("model", "no-motion"):
                if name in agg:
                    recon_rows.append({"method": name, "mode": mode if name == "model" else "-",
                                       "bg": bool(args.bg and name == "model"), "clips": len(clips),
                                       **agg[name].summary()})
        cross_rows, per_pair = [], []
        if portraits:
            n_pairs = args.pairs or len(portraits)
            pairs = [(portraits[i % len(portraits)], clips[i % len(clips)]) for i in range(n_pairs)]
            results = []
            for i, (portrait, clip) in enumerate(pairs):
                res, example = cross_pair(portrait, clip, animator, mesh, args, bar.update)
                results.append(res)
                if i < args.sheet_examples:
                    examples.append(example)
                for name in res.motion:
                    m = res.motion[name]
                    per_pair.append({"portrait": res.portrait, "clip": res.clip, "method": name, "frames": res.frames,
                                     "motion_error": m.error, "motion_ratio": m.ratio, "motion_cosine": m.cosine,
                                     "shape_to_source": res.shape_to_source[name],
                                     "shape_to_driving": res.shape_to_driving[name],
                                     "shape_frame0": res.shape_frame0[name], "mkr": res.mkr[name]})
            for name in ("model", "no-motion"):
                rows = [r for r in per_pair if r["method"] == name]
                if rows:
                    cross_rows.append({"method": name, "pairs": len(rows), **{
                        k: mt.mean_or_none([r[k] for r in rows])
                        for k in ("motion_error", "motion_ratio", "motion_cosine", "shape_to_source",
                                  "shape_to_driving", "shape_frame0", "mkr")}})
    bar.close()
    sheet = contact_sheet(examples, out_dir / "contact_sheet.png")
    notes = [lpips_note,
             "self-reenactment: first frame = source, every frame (the first included) drives it; 'standard' transfer "
             "uses the driving region parameters as they are" + (" plus background motion" if args.bg else "")
             + "; with the first frame as source, 'relative' transfer gives the same regions (covariances aside)",
             f"AKD in pixels at {AKD_SCALE} px over {len(SUBSET)} face-mesh landmarks (benchmarks/landmarks.py); MKR: "
             "frames with a face in the real frame but none in the output / frames with a face in the real frame",
             "cross-identity: relative transfer; motion error / ratio / cosine compare landmark displacements from "
             "frame 0, each sequence scaled by its frame-0 RMS face radius; shape->src / shape->drv: Procrustes "
             "distance (units of RMS face radius) of output landmarks to the portrait's / the driving frame's"]
    if model_info.get("random_weights"):
        notes.append("RANDOM WEIGHTS: an untrained model; these numbers only show that the pipeline runs")
    result = {"model": model_info,
              "settings": {"videos": str(args.videos), "clips": [p.name for p in clips], "crop": args.crop,
                           "center_fraction": args.center_fraction, "max_frames": args.max_frames, "size": args.size,
                           "modes": modes, "background": args.bg, "portraits": [p.name for p in portraits],
                           "device": args.device, "threads": torch.get_num_threads()},
              "machine": {"cpu": platform.processor(), "torch": torch.__version__,
                          "date": datetime.date.today().isoformat()},
              "reconstruction": {"rows": recon_rows, "per_clip": per_clip},
              "cross_identity": {"rows": cross_rows, "per_pair": per_pair},
              "contact_sheet": str(sheet), "notes": notes}
    (out_dir / "quality.json").write_text(json.dumps(result, indent=1))

    print(f"Self-reenactment, {len(clips)} clip(s), up to {args.max_frames} frames each, at {args.size} px")
    print(recon_table(recon_rows))
    model_rows = {r["mode"]: r for r in recon_rows if r["method"] == "model"}
    base = next((r for r in recon_rows if r["method"] == "no-motion"), None)
    for mode, r in model_rows.items():
        print(f"model ({mode}) vs no-motion: L1 {_gain(r['l1'], base['l1'])}, AKD {_gain(r['akd'], base['akd'])}")
    if cross_rows:
        print(f"\nCross-identity (relative transfer), {cross_rows[0]['pairs']} pair(s)")
        print(cross_table(cross_rows))
    print("\n" + "\n".join(f"note: {n}" for n in notes))
    print(f"wrote {out_dir / 'quality.json'} and {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
