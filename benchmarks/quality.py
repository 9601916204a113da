"""Animation quality of a model on face clips, animated as the tools animate them.

    python benchmarks/quality.py --videos heldout/ --crop none --max-frames 60 --json q.json --sheet q.png

The model is the shipped default (``live/assets/lite256.pth``) unless ``--checkpoint`` is given;
it runs through the tools' engine factory (``live.engines.build_engine``; backend ``auto`` as mra-animate:
ONNX Runtime for the shipped model on the CPU, PyTorch otherwise), frames are read and cropped by
mra-animate's own reader (``benchmarks.clips``: ``--crop auto`` is its face tracker, ``--crop
none`` a plain resize for prepared square crops), every transfer is the engine's ``transfer``
from the driving frame of the first second whose mouth and eyes are most like the portrait's, and every output
gets the tools' expression path (``live.expression``, strength ``--expression``, 0 = off), as in
mra-animate.

1. **Self-reenactment**, per clip and per mode (``relative``, the tools' default; ``standard``;
   ``avd`` when the model has an AVD network): the clip's first frame is the portrait and the whole
   clip drives it. Each output frame is compared with the real frame: L1 (mean absolute error of
   RGB in [0, 1], every frame, the first included) and AKD (mean distance in pixels at 256 between
   mediapipe face-mesh landmarks of output and real frame, ``benchmarks/landmarks.py``, every
   ``--akd-every``-th frame where both have a face), each divided by the same figure for **no
   motion** (the first frame repeated). The score of a mode is the **mean of per-clip ratios**
   (no clip hides another) and the worst clip's L1 ratio. With the first frame as portrait,
   ``relative`` and ``standard`` give the same regions (up to rounding); ``avd`` differs.
2. **Identity fidelity**, per clip: the first frame driving itself (identity motion, the model's
   ``animate(src, r, r)``): L1 against the frame, and L1 in the outer 8 pixels against the inner
   part (a grid convention off by a pixel pulls in a dark border).
3. **Cross-identity** (relative mode): a portrait (by default the first frame of clip i; or the
   images of ``--portraits``) driven by another clip (clip i + 1). Without a face-recognition
   network, both figures come from face-mesh landmarks (every ``--akd-every``-th frame):

   * *motion followed*: landmark displacements from the first frame, each sequence divided by its
     first frame's RMS face radius, compared point by point between output and driving clip
     (``metrics.motion_transfer``: mean error; ``scale`` = output motion / driving motion;
     cosine). ``motion ratio`` = the model's error over that of no motion (the portrait repeated,
     whose error is the driving's own mean displacement): below 1 means the output follows.
   * *identity kept*: the face *shape* that expressions hardly move (face oval and nose
     landmarks), compared after similarity alignment (Procrustes distance in units of the face
     radius): ``s`` = output to portrait, ``d`` = output to driving frame; ``identity share`` = mean
     of ``d / (s + d)``: 1 = the portrait's shape, 0.5 = half-way, 0 = the driving person's shape.
     ``gap`` (portrait to driving frame) says how different the two shapes are to begin with: the
     share means little for two people of near-identical shape. Chosen over pixel L1/SSIM to the
     portrait, which any correct motion raises, and over colour statistics, which a model that
     copies the driving's shape but keeps the skin would pass. Limits: a 2-D measure, so large
     head turns change the projected shape too (compare models on the same pairs, not absolute
     values); it says nothing about texture (the contact sheet does).

4. **Expressions** (``../shared/reference/expression_transfer.md``), per self-reenactment clip
   (relative mode) and per cross-identity pair: mouth openness (inner-lip gap over the outer
   eye-corner distance) and eye openness (eyelid gap over eye width) from mediapipe's refined face
   mesh on every second frame of driver and output, as changes from the first frame; ``gain`` = the
   least-squares slope through the origin of the output's change on the driver's, ``corr`` = Pearson
   r; frames where either face is missing are left out (``missed``). Medians over pairs, self and
   cross apart. A still photo scores gain 0, the driver itself gain 1 and corr 1.

``--sheet PATH``: a contact sheet (per clip: driving frames, the outputs of each mode, and the
identity-motion output with its error to the portrait, amplified 4x; per
cross pair: portrait, driving frames, outputs; ``--sheet-frames`` evenly spaced frames).
``--json PATH``: every number (the dataclasses below, as JSON). Timings are not measured here.
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from nets.errors import ArgumentParser, UserError, run_cli  # noqa: E402

from benchmarks import clips as cl  # noqa: E402
from benchmarks import metrics as mt  # noqa: E402
from benchmarks import sheet as sh  # noqa: E402
from benchmarks.landmarks import GROUPS, SUBSET, FaceMesh, LandmarksUnavailable  # noqa: E402
from export.engine import MODES, RegionParams  # noqa: E402
from live import expression as ex  # noqa: E402
from live.animate import batched  # noqa: E402
from nets import media  # noqa: E402
from nets.media import facemesh as fm  # noqa: E402

AKD_SCALE = 256  # AKD is reported in pixels of a 256 x 256 frame
BORDER = 8  # identity fidelity: width of the outer band, pixels at the model's size
EXPRESSION_EVERY = 2  # the expression protocol measures every second frame
SHAPE_POINTS = np.isin(SUBSET, GROUPS["face_oval"] + GROUPS["nose"])  # identity shape: rows of SUBSET


# ---------------------------------------------------------------------------------------------
# Results (all numbers of a run; ``--json`` writes them as they are)
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    checkpoint: str
    sha256: str
    config: str
    shipped: bool  # the default model of the tools
    backend: str
    frame_size: int
    has_avd: bool


@dataclass
class ClipScore:
    """Self-reenactment of one clip in one mode; ``*_still``: the no-motion baseline (first frame repeated)."""

    clip: str
    mode: str
    frames: int
    l1: float
    l1_still: float
    l1_ratio: Optional[float]
    akd: Optional[float]  # pixels at AKD_SCALE
    akd_still: Optional[float]
    akd_ratio: Optional[float]
    akd_frames: int  # sampled frames where the real frame, the output and the first frame all have a face


@dataclass
class ModeSummary:
    """The score of a mode: mean of per-clip ratios, and the worst clip's L1 ratio."""

    mode: str
    clips: int
    mean_l1_ratio: Optional[float]
    mean_akd_ratio: Optional[float]
    worst_l1_ratio: Optional[float]
    worst_clip: Optional[str]
    mean_l1: float
    mean_l1_still: float
    mean_akd: Optional[float]
    mean_akd_still: Optional[float]


@dataclass
class IdentityScore:
    """The first frame driving itself (identity motion), compared with the frame."""

    clip: str
    l1: float
    l1_border: float  # outer BORDER pixels
    l1_inner: float


@dataclass
class CrossScore:
    """A portrait driven by another person's clip (relative mode)."""

    portrait: str
    driving: str
    frames: int
    landmark_frames: int  # sampled frames where output, driving frame and portrait all have a face
    motion_error: Optional[float]  # units of face RMS radius
    motion_error_still: Optional[float]
    motion_ratio: Optional[float]  # motion_error / motion_error_still
    motion_scale: Optional[float]  # output motion / driving motion
    motion_cosine: Optional[float]
    identity_share: Optional[float]  # mean d / (s + d); 1 = the portrait's face shape
    shape_to_portrait: Optional[float]  # mean s
    shape_to_driving: Optional[float]  # mean d
    shape_gap: Optional[float]  # mean Procrustes distance portrait <-> driving frame


@dataclass
class CrossSummary:
    pairs: int
    mean_motion_ratio: Optional[float]
    mean_motion_error: Optional[float]
    mean_motion_error_still: Optional[float]
    mean_motion_scale: Optional[float]
    mean_motion_cosine: Optional[float]
    mean_identity_share: Optional[float]


@dataclass
class ExpressionScore:
    """How the output's mouth and eyes follow the driver's (``../shared/reference/expression_transfer.md``):
    openness changes from the first frame, every :data:`EXPRESSION_EVERY`-th frame, refined face mesh."""

    kind: str  # self | cross
    portrait: str
    driving: str
    frames: int  # sampled frames where driver and output both have a face
    missed: int  # sampled frames left out (no face in one of them)
    mouth_gain: Optional[float]
    mouth_corr: Optional[float]
    eye_gain: Optional[float]
    eye_corr: Optional[float]
    driver_mouth_range: Optional[float]  # max - min of the driver's mouth openness change


@dataclass
class ExpressionSummary:
    kind: str
    pairs: int
    median_mouth_gain: Optional[float]
    median_mouth_corr: Optional[float]
    median_eye_gain: Optional[float]
    median_eye_corr: Optional[float]


@dataclass
class Settings:
    videos: str
    clips: list[str]
    portraits: list[str]
    crop: str
    modes: list[str]
    max_frames: Optional[int]
    akd_every: int
    batch: int
    device: str
    threads: Optional[int]  # None: the backend's default
    date: str
    machine: str
    expression: float = 1.0  # the tools' --expression


@dataclass
class Report:
    model: ModelInfo
    settings: Settings
    per_clip: list[ClipScore]
    summaries: list[ModeSummary]
    identity: list[IdentityScore]
    cross: list[CrossScore]
    cross_summary: Optional[CrossSummary]
    expression: list[ExpressionScore] = field(default_factory=list)
    expression_summary: list[ExpressionSummary] = field(default_factory=list)
    sheet: Optional[str] = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255


def akd(a: Optional[np.ndarray], b: Optional[np.ndarray], side_a: int, side_b: int) -> Optional[float]:
    """AKD in pixels at AKD_SCALE between landmarks found in images of sides ``side_a`` / ``side_b``."""
    if a is None or b is None:
        return None
    return mt.keypoint_distance(a * (AKD_SCALE / side_a), b * (AKD_SCALE / side_b))


@dataclass
class Tally:
    """Per-frame figures of one method on one clip."""

    l1: list[float] = field(default_factory=list)
    akd: list[Optional[float]] = field(default_factory=list)  # sampled frames only


def clip_score(clip: str, mode: str, model: Tally, still: Tally) -> ClipScore:
    both = [(m, s) for m, s in zip(model.akd, still.akd) if m is not None and s is not None]
    akd_m = float(np.mean([m for m, _ in both])) if both else None
    akd_s = float(np.mean([s for _, s in both])) if both else None
    l1_m, l1_s = float(np.mean(model.l1)), float(np.mean(still.l1))
    return ClipScore(clip=clip, mode=mode, frames=len(model.l1), l1=l1_m, l1_still=l1_s, l1_ratio=mt.ratio(l1_m, l1_s),
                     akd=akd_m, akd_still=akd_s, akd_ratio=mt.ratio(akd_m, akd_s), akd_frames=len(both))


def summarise(mode: str, scores: Sequence[ClipScore]) -> ModeSummary:
    l1r = [s.l1_ratio for s in scores if s.l1_ratio is not None]
    worst = max((s for s in scores if s.l1_ratio is not None), key=lambda s: s.l1_ratio, default=None)
    return ModeSummary(mode=mode, clips=len(scores), mean_l1_ratio=float(np.mean(l1r)) if l1r else None,
                       mean_akd_ratio=mt.mean_or_none([s.akd_ratio for s in scores]),
                       worst_l1_ratio=worst.l1_ratio if worst else None, worst_clip=worst.clip if worst else None,
                       mean_l1=float(np.mean([s.l1 for s in scores])),
                       mean_l1_still=float(np.mean([s.l1_still for s in scores])),
                       mean_akd=mt.mean_or_none([s.akd for s in scores]),
                       mean_akd_still=mt.mean_or_none([s.akd_still for s in scores]))


def identity_motion(engine, avatar) -> np.ndarray:
    """The portrait animated by its own regions (``model.animate(src, r, r)``): uint8 ``(S, S, 3)``."""
    return media.to_uint8(engine.animate(avatar, avatar.regions))[0]


def amplified_error(output: np.ndarray, frame: np.ndarray, gain: float = 4) -> np.ndarray:
    """``|output - frame| * gain`` as a uint8 image (for the contact sheet)."""
    d = np.abs(output.astype(np.int16) - frame.astype(np.int16)) * gain
    return np.clip(d, 0, 255).astype(np.uint8)


def identity_score(output: np.ndarray, frame: np.ndarray, clip: str) -> IdentityScore:
    """Identity motion's output against the portrait."""
    a, b = as_float(output), as_float(frame)
    border, inner = mt.border_l1(a, b, BORDER)
    return IdentityScore(clip=clip, l1=mt.l1(a, b), l1_border=border, l1_inner=inner)


def cross_score(portrait: str, driving: str, frames: int, lm_portrait: Optional[np.ndarray],
                lm_out: Sequence[Optional[np.ndarray]], lm_drv: Sequence[Optional[np.ndarray]]) -> CrossScore:
    """Figures of a cross-identity pair from the landmarks of the sampled frames (see the module docstring)."""
    motion = mt.motion_transfer(lm_out, lm_drv)
    still = mt.motion_transfer([lm_portrait] * len(lm_drv), lm_drv) if lm_portrait is not None else None
    s, d, g, share = [], [], [], []
    if lm_portrait is not None:
        p = lm_portrait[SHAPE_POINTS]
        for o, dr in zip(lm_out, lm_drv):
            if o is None or dr is None:
                continue
            s.append(mt.procrustes_distance(p, o[SHAPE_POINTS]))
            d.append(mt.procrustes_distance(dr[SHAPE_POINTS], o[SHAPE_POINTS]))
            g.append(mt.procrustes_distance(p, dr[SHAPE_POINTS]))
            share.append(d[-1] / (s[-1] + d[-1]) if s[-1] + d[-1] > 0 else 1.0)
    err_still = still.error if still is not None else None
    return CrossScore(portrait=portrait, driving=driving, frames=frames, landmark_frames=len(share),
                      motion_error=motion.error, motion_error_still=err_still,
                      motion_ratio=mt.ratio(motion.error, err_still), motion_scale=motion.ratio,
                      motion_cosine=motion.cosine, identity_share=mt.mean_or_none(share),
                      shape_to_portrait=mt.mean_or_none(s), shape_to_driving=mt.mean_or_none(d),
                      shape_gap=mt.mean_or_none(g))


Openness = Optional[tuple[float, float]]  # (mouth, eye) openness of one sampled frame; None: no face found


def openness(mesh: fm.FaceMesh, image: np.ndarray) -> Openness:
    marks = mesh(image)
    return None if marks is None else (float(fm.mouth_openness(marks)), float(fm.eye_openness(marks)))


def expression_score(kind: str, portrait: str, driving: str, drv: Sequence[Openness],
                     out: Sequence[Openness]) -> ExpressionScore:
    """Mouth and eye gain / correlation of one pair from the openness of its sampled frames (changes
    from the first frame; a frame where either face is missing is left out)."""
    n = min(len(drv), len(out))
    if n == 0 or drv[0] is None or out[0] is None:
        return ExpressionScore(kind, portrait, driving, 0, n, None, None, None, None, None)
    both = [(d, o) for d, o in zip(drv[:n], out[:n]) if d is not None and o is not None]
    d = np.array([b[0] for b in both]) - np.array(drv[0])
    o = np.array([b[1] for b in both]) - np.array(out[0])
    mouth, eye = mt.following(d[:, 0], o[:, 0]), mt.following(d[:, 1], o[:, 1])
    return ExpressionScore(kind=kind, portrait=portrait, driving=driving, frames=len(both), missed=n - len(both),
                           mouth_gain=mouth.gain, mouth_corr=mouth.corr, eye_gain=eye.gain, eye_corr=eye.corr,
                           driver_mouth_range=float(np.ptp(d[:, 0])))


def expression_summary(kind: str, scores: Sequence[ExpressionScore]) -> Optional[ExpressionSummary]:
    """Medians over the pairs of one kind (self | cross), as the acceptance figures are stated."""
    mine = [s for s in scores if s.kind == kind]
    if not mine:
        return None

    def med(k: str) -> Optional[float]:
        v = [getattr(s, k) for s in mine if getattr(s, k) is not None]
        return float(np.median(v)) if v else None

    return ExpressionSummary(kind=kind, pairs=len(mine), median_mouth_gain=med("mouth_gain"),
                             median_mouth_corr=med("mouth_corr"), median_eye_gain=med("eye_gain"),
                             median_eye_corr=med("eye_corr"))


def cross_summary(scores: Sequence[CrossScore]) -> Optional[CrossSummary]:
    if not scores:
        return None
    m = lambda k: mt.mean_or_none([getattr(s, k) for s in scores])  # noqa: E731
    return CrossSummary(pairs=len(scores), mean_motion_ratio=m("motion_ratio"), mean_motion_error=m("motion_error"),
                        mean_motion_error_still=m("motion_error_still"), mean_motion_scale=m("motion_scale"),
                        mean_motion_cosine=m("motion_cosine"), mean_identity_share=m("identity_share"))


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------

@dataclass
class ClipRun:
    """One clip's self-reenactment, plus what its cross-identity pairs reuse."""

    name: str
    first: np.ndarray  # uint8 (S, S, 3): the portrait of the clip
    scores: list[ClipScore]
    identity: IdentityScore
    regions: list[RegionParams]  # per batch, as the engine returned them
    landmarks: list[Optional[np.ndarray]]  # of the sampled real frames
    block: Optional[sh.Block]
    initial: RegionParams  # the reference frame's regions (of the first second, the face most like the portrait's)
    reference: int  # its index
    fps: float  # of the clip (the reference window of cross pairs)
    marks: list[Optional[np.ndarray]]  # the driver's face mesh on every frame, gaps held (the tools' expression input)
    ref_marks: Optional[np.ndarray]
    openness: list[Openness]  # of every EXPRESSION_EVERY-th real frame
    expression: Optional[ExpressionScore] = None


@dataclass
class Options:
    modes: list[str]
    size: int
    crop: str
    max_frames: Optional[int]
    akd_every: int
    batch: int
    sheet: bool
    expression: float = 1.0  # the tools' --expression (0: the networks alone)
    fps: float = 25.0  # of the clips, for the reference window (set per clip)


def expression_transfer(face: "ex.PortraitFace | None", opt: Options) -> "ex.ExpressionTransfer | None":
    """The tools' expression path for this portrait face (None when off or when the portrait has no face mesh)."""
    if face is None or opt.expression <= 0:
        return None
    return ex.ExpressionTransfer(face, ex.ExpressionSettings(gain=opt.expression))


def regions_row(batches: Sequence[RegionParams], i: int) -> RegionParams:
    """Frame ``i``'s region parameters (batch 1) out of the per-batch parameters of a clip."""
    for r in batches:
        if i < r.batch_size:
            return RegionParams(*(None if a is None else a[i:i + 1].copy() for a in (r.shift, r.covar, r.affine)))
        i -= r.batch_size
    raise IndexError("frame index beyond the clip")


def with_expression(outs: np.ndarray, transfer: "ex.ExpressionTransfer | None", marks: Sequence[Optional[np.ndarray]],
                    ref_marks: Optional[np.ndarray]) -> np.ndarray:
    """The animated crops ``(B, S, S, 3)`` with the driver's expression, as the tools apply it."""
    if transfer is None or ref_marks is None:
        return outs
    return np.stack([transfer.apply(o, m, ref_marks) if m is not None else o for o, m in zip(outs, marks)])


def self_reenactment(path: Path, engine, mesh: FaceMesh, opt: Options, detector=None,
                     progress=lambda n: None, expr_mesh: "fm.FaceMesh | None" = None) -> ClipRun:
    """Animate the clip's first frame with the whole clip in every mode and score it against the clip.

    As the tools do: relative motion from the frame of the first second most like the portrait, and the
    expression path (:mod:`live.expression`) on every output unless ``opt.expression`` is 0.
    """
    frames = cl.read_clip(path, opt.size, opt.crop, opt.max_frames, detector)
    first = next(frames, None)
    if first is None:
        raise UserError(f"{path} has no frames")
    avatar = engine.prepare_source(media.to_input(first[None]))
    same = identity_motion(engine, avatar)
    identity = identity_score(same, first, path.name)
    lm_first = mesh(first)
    f_first = as_float(first)
    still, tallies = Tally(), {m: Tally() for m in opt.modes}
    block = None
    if opt.sheet:
        same_row = sh.Strip("identity,\nerror x4", [sh.thumbnail(same), sh.thumbnail(amplified_error(same, first))])
        block = sh.Block(f"{path.name}: self-reenactment; identity motion (the first frame driving itself)",
                         [sh.Strip("driving")] + [sh.Strip(m) for m in opt.modes] + [same_row])
    regions: list[RegionParams] = []
    landmarks: list[Optional[np.ndarray]] = []
    marks: list[Optional[np.ndarray]] = []
    drv_open: list[Openness] = []
    out_open: list[Openness] = []
    scored = "relative" if "relative" in opt.modes else opt.modes[0]
    face = ex.portrait_face(first)
    transfers = {m: expression_transfer(face, opt) for m in opt.modes}
    track = fm.FaceMesh(tracking=True)
    try:
        start = ex.neutral_start(((f, track(f)) for f in itertools.chain([first], frames)), opt.fps, face)
        initial = engine.regions(media.to_input(start.frame[None]))
        last = start.marks
        t = 0
        for batch in batched(start.stream, opt.batch):
            images = [f for f, _ in batch]
            for _, m in batch:
                last = m if m is not None else last
                marks.append(last)
            r = engine.regions(media.to_input(np.stack(images)))
            regions.append(r)
            outs = {m: with_expression(media.to_uint8(engine.animate(avatar, engine.transfer(avatar, r, initial, mode=m))),
                                       transfers[m], marks[-len(batch):], start.marks) for m in opt.modes}
            for i, real in enumerate(images):
                f_real = as_float(real)
                still.l1.append(mt.l1(f_first, f_real))
                sampled = t % opt.akd_every == 0
                lm_real = mesh(real) if sampled else None
                if sampled:
                    landmarks.append(lm_real)
                    still.akd.append(akd(lm_first, lm_real, opt.size, opt.size))
                if expr_mesh is not None and t % EXPRESSION_EVERY == 0:
                    drv_open.append(openness(expr_mesh, real))
                    out_open.append(openness(expr_mesh, outs[scored][i]))
                if block:
                    block.rows[0].add(real)
                for k, m in enumerate(opt.modes):
                    out = outs[m][i]
                    f_out = as_float(out)
                    tallies[m].l1.append(mt.l1(f_out, f_real))
                    if sampled:
                        tallies[m].akd.append(akd(mesh(out), lm_real, opt.size, opt.size))
                    if block:
                        block.rows[1 + k].add(out)
                t += 1
            progress(len(batch))
    finally:
        track.close()
        for tr in transfers.values():
            if tr is not None:
                tr.close()
    scores = [clip_score(path.name, m, tallies[m], still) for m in opt.modes]
    run = ClipRun(path.name, first, scores, identity, regions, landmarks, block, initial=initial, reference=start.index,
                  fps=opt.fps, marks=marks, ref_marks=start.marks, openness=drv_open)
    if expr_mesh is not None:
        run.expression = expression_score("self", f"{path.name}[0]", path.name, drv_open, out_open)
    return run


def cross_identity(portrait: np.ndarray, portrait_name: str, driving: ClipRun, engine, mesh: FaceMesh, opt: Options,
                   driving_frames: Optional[sh.Strip] = None, progress=lambda n: None,
                   expr_mesh: "fm.FaceMesh | None" = None
                   ) -> tuple[CrossScore, Optional[sh.Block], Optional[ExpressionScore]]:
    """Animate ``portrait`` with the driving clip's regions (relative mode, from the clip's reference
    frame) and its expression, as the tools do."""
    avatar = engine.prepare_source(media.to_input(portrait[None]))
    block = sh.Block(f"{portrait_name} driven by {driving.name} (relative)",
                     [sh.Strip("portrait", [sh.thumbnail(portrait)]), driving_frames or sh.Strip("driving"),
                      sh.Strip("output")]) if opt.sheet else None
    lm_out: list[Optional[np.ndarray]] = []
    out_open: list[Openness] = []
    face = ex.portrait_face(portrait)
    transfer = expression_transfer(face, opt)
    # the reference for this portrait: the clip's face of the first second most like the portrait's
    ref = ex.best_reference(driving.marks[:max(1, round(driving.fps * ex.REFERENCE_WINDOW_S))], face)
    initial = regions_row(driving.regions, ref)
    t = 0
    try:
        for r in driving.regions:
            outs = media.to_uint8(engine.animate(avatar, engine.transfer(avatar, r, initial, mode="relative")))
            outs = with_expression(outs, transfer, driving.marks[t:t + len(outs)], driving.marks[ref])
            for out in outs:
                if t % opt.akd_every == 0:
                    lm_out.append(mesh(out))
                if expr_mesh is not None and t % EXPRESSION_EVERY == 0:
                    out_open.append(openness(expr_mesh, out))
                if block:
                    block.rows[2].add(out)
                t += 1
            progress(r.batch_size)
    finally:
        if transfer is not None:
            transfer.close()
    score = expression_score("cross", portrait_name, driving.name, driving.openness, out_open) \
        if expr_mesh is not None else None
    return (cross_score(portrait_name, driving.name, t, mesh(portrait), lm_out, driving.landmarks), block, score)


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------

def _f(v: Optional[float], spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def clip_table(scores: Sequence[ClipScore]) -> str:
    w = max([len("clip")] + [len(s.clip) for s in scores])
    lines = [f"{'clip':<{w}} {'frames':>6} {'L1':>7} {'L1 still':>8} {'L1 ratio':>8} {'AKD':>6} {'AKD still':>9} "
             f"{'AKD ratio':>9}"]
    for s in scores:
        lines.append(f"{s.clip:<{w}} {s.frames:>6} {_f(s.l1):>7} {_f(s.l1_still):>8} {_f(s.l1_ratio, '.3f'):>8} "
                     f"{_f(s.akd, '.2f'):>6} {_f(s.akd_still, '.2f'):>9} {_f(s.akd_ratio, '.3f'):>9}")
    return "\n".join(lines)


def summary_line(m: ModeSummary) -> str:
    return (f"mean of per-clip ratios ({m.mode}, {m.clips} clips): L1 {_f(m.mean_l1_ratio, '.3f')}, "
            f"AKD {_f(m.mean_akd_ratio, '.3f')}; worst clip L1 ratio {_f(m.worst_l1_ratio, '.3f')} ({m.worst_clip})")


def identity_table(scores: Sequence[IdentityScore]) -> str:
    w = max([len("clip")] + [len(s.clip) for s in scores])
    lines = [f"{'clip':<{w}} {'L1':>7} {f'L1 outer {BORDER}px':>12} {'L1 inner':>8}"]
    lines += [f"{s.clip:<{w}} {s.l1:>7.4f} {s.l1_border:>12.4f} {s.l1_inner:>8.4f}" for s in scores]
    return "\n".join(lines)


def cross_table(scores: Sequence[CrossScore]) -> str:
    w = max([len("portrait")] + [len(s.portrait) for s in scores])
    v = max([len("driving")] + [len(s.driving) for s in scores])
    lines = [f"{'portrait':<{w}} {'driving':<{v}} {'frames':>6} {'motion err':>10} {'still err':>9} "
             f"{'motion ratio':>12} {'scale':>5} {'cosine':>6} {'identity share':>14} {'gap':>6}"]
    for s in scores:
        lines.append(f"{s.portrait:<{w}} {s.driving:<{v}} {s.frames:>6} {_f(s.motion_error):>10} "
                     f"{_f(s.motion_error_still):>9} {_f(s.motion_ratio, '.3f'):>12} {_f(s.motion_scale, '.2f'):>5} "
                     f"{_f(s.motion_cosine, '.2f'):>6} {_f(s.identity_share, '.3f'):>14} {_f(s.shape_gap, '.3f'):>6}")
    return "\n".join(lines)


def expression_table(scores: Sequence[ExpressionScore]) -> str:
    w = max([len("portrait")] + [len(s.portrait) for s in scores])
    v = max([len("driving")] + [len(s.driving) for s in scores])
    lines = [f"{'kind':<5} {'portrait':<{w}} {'driving':<{v}} {'frames':>6} {'missed':>6} {'mouth gain':>10} "
             f"{'corr':>5} {'eye gain':>8} {'corr':>5} {'driver mouth range':>18}"]
    for s in scores:
        lines.append(f"{s.kind:<5} {s.portrait:<{w}} {s.driving:<{v}} {s.frames:>6} {s.missed:>6} "
                     f"{_f(s.mouth_gain, '.2f'):>10} {_f(s.mouth_corr, '.2f'):>5} {_f(s.eye_gain, '.2f'):>8} "
                     f"{_f(s.eye_corr, '.2f'):>5} {_f(s.driver_mouth_range, '.3f'):>18}")
    return "\n".join(lines)


def print_report(rep: Report) -> None:
    st = rep.settings
    frames = f"up to {st.max_frames} frames" if st.max_frames else "all frames"
    print(f"model: {rep.model.config} {rep.model.checkpoint}{' (shipped)' if rep.model.shipped else ''}, "
          f"{rep.model.backend}, sha256 {rep.model.sha256[:12]}")
    print(f"Self-reenactment: {len(st.clips)} clip(s), {frames}, --crop {st.crop}, AKD every {st.akd_every} frames")
    for m in rep.summaries:
        print(f"\nmode {m.mode}")
        print(clip_table([s for s in rep.per_clip if s.mode == m.mode]))
        print(summary_line(m))
    print("\nIdentity fidelity (the first frame driving itself)")
    print(identity_table(rep.identity))
    if rep.cross_summary:
        c = rep.cross_summary
        print(f"\nCross-identity (relative), {c.pairs} pair(s)")
        print(cross_table(rep.cross))
        print(f"mean: motion ratio {_f(c.mean_motion_ratio, '.3f')} (error {_f(c.mean_motion_error)} vs "
              f"{_f(c.mean_motion_error_still)} still), scale {_f(c.mean_motion_scale, '.2f')}, cosine "
              f"{_f(c.mean_motion_cosine, '.2f')}, identity share {_f(c.mean_identity_share, '.3f')}")
    if rep.expression:
        print(f"\nExpressions (--expression {st.expression:g}): mouth and eye openness changes from the first frame, "
              f"every {EXPRESSION_EVERY}nd frame")
        print(expression_table(rep.expression))
        for x in rep.expression_summary:
            print(f"median of {x.pairs} {x.kind} pair(s): mouth gain {_f(x.median_mouth_gain, '.2f')}, corr "
                  f"{_f(x.median_mouth_corr, '.2f')}; eyes gain {_f(x.median_eye_gain, '.2f')}, corr "
                  f"{_f(x.median_eye_corr, '.2f')}")
    for n in rep.notes:
        print(f"note: {n}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="quality.py", description="Animation quality of a model on face clips, as the tools "
                       "animate them (self-reenactment, identity fidelity, cross-identity).")
    p.add_argument("--videos", required=True, metavar="DIR|VIDEO", help="folder of face clips (video files)")
    p.add_argument("--checkpoint", metavar="PATH", help="model (default: the model shipped with the package)")
    p.add_argument("--config", metavar="PRESET|YAML", help="config of the checkpoint (needed for official checkpoints)")
    p.add_argument("--crop", choices=cl.CROPS, default="auto",
                   help="auto: the tools' face tracker (default, as mra-animate); none: resize only (square crops)")
    p.add_argument("--modes", default="all",
                   help="comma list of relative, standard, avd; all (default): every mode the model has")
    p.add_argument("--max-frames", type=int, metavar="N", help="frames per clip (default: all)")
    p.add_argument("--max-clips", type=int, metavar="N", help="only the first N clips (by name)")
    p.add_argument("--akd-every", type=int, default=3, metavar="N", help="landmarks on every N-th frame (default 3)")
    p.add_argument("--portraits", metavar="DIR|IMAGE",
                   help="cross-identity portraits, paired with the clips in turn (default: each clip's first frame, "
                        "driven by the next clip)")
    p.add_argument("--cross", type=int, metavar="N",
                   help="cross-identity pairs (default: one per clip, or per portrait; 0: none)")
    ex.add_expression_argument(p)
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="engine backend (default auto, as mra-animate: onnx for the shipped model on cpu, else torch)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of the engine")
    p.add_argument("--batch", type=int, default=4, metavar="N", help="frames animated together (default 4)")
    p.add_argument("--json", metavar="PATH", help="write every number here (JSON)")
    p.add_argument("--sheet", metavar="PATH", help="write a contact sheet here (PNG)")
    p.add_argument("--sheet-frames", type=int, default=6, metavar="N", help="frames per contact-sheet row (default 6)")
    return p


def parse_modes(text: str, has_avd: bool) -> list[str]:
    if text == "all":
        return [m for m in MODES if m != "avd" or has_avd]
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UserError(f"--modes takes all or a comma list of {', '.join(MODES)}, got {text!r}")
    if "avd" in modes and not has_avd:
        raise UserError("this model has no trained AVD network: leave avd out of --modes")
    return list(dict.fromkeys(modes))


def check_args(args) -> None:
    for name in ("max_frames", "max_clips", "batch", "sheet_frames", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.akd_every < 1:
        raise UserError(f"--akd-every must be at least 1, got {args.akd_every}")
    if args.cross is not None and args.cross < 0:
        raise UserError(f"--cross must be 0 or more, got {args.cross}")
    if args.sheet and Path(args.sheet).suffix.lower() != ".png":
        raise UserError(f"--sheet writes a PNG: give a .png path, got {args.sheet}")
    for flag, target in (("--json", args.json), ("--sheet", args.sheet)):
        if target:
            check_writable(flag, Path(target))


def check_writable(flag: str, path: Path) -> None:
    """Fail before the (long) run when ``path`` cannot be written."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {flag} {path}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write {flag} {path}: its folder is not writable")


def frames_to_do(clip_paths: Sequence[Path], max_frames: Optional[int], n_cross: int, offset: int) -> Optional[int]:
    """Frames the run animates (self-reenactment, then cross pair i driven by clip i + offset), for the progress bar."""
    try:
        counts = [media.probe_video(p, "clip").estimated_frames() for p in clip_paths]
    except UserError:
        return None  # reported with its message when the clip is read
    if any(c is None for c in counts):
        return None
    counts = [min(c, max_frames) if max_frames else c for c in counts]
    return sum(counts) + sum(counts[(i + offset) % len(counts)] for i in range(n_cross))


def open_model(args):
    """(engine, ModelInfo): the checkpoint given, or the shipped default, through the tools' engine loader."""
    import nets
    from live.default_model import default_checkpoint
    from live.engines import EngineSpec, build_engine

    engine = build_engine(EngineSpec(args.checkpoint, args.config, args.backend, args.device, threads=args.threads))
    path = Path(args.checkpoint).expanduser() if args.checkpoint else default_checkpoint()
    return engine, ModelInfo(checkpoint=str(path), sha256=nets.sha256_file(path) if path.is_file() else "-",
                             config=engine.config_name, shipped=args.checkpoint is None, backend=engine.backend,
                             frame_size=engine.frame_size, has_avd=engine.has_avd)


def run(args) -> Report:
    from tqdm import tqdm

    check_args(args)
    clip_paths = cl.list_clips(args.videos)[: args.max_clips]
    portrait_paths = cl.list_portraits(args.portraits) if args.portraits else []
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    engine, info = open_model(args)
    modes = parse_modes(args.modes, engine.has_avd)
    opt = Options(modes=modes, size=engine.frame_size, crop=args.crop, max_frames=args.max_frames,
                  akd_every=args.akd_every, batch=args.batch, sheet=bool(args.sheet), expression=args.expression)
    n_cross = args.cross if args.cross is not None else len(portrait_paths or clip_paths)
    if not portrait_paths and len(clip_paths) < 2:
        n_cross = 0  # a clip's own first frame driven by itself is self-reenactment
    detector = None
    if args.crop == "auto":
        from live.animate import AnimateOptions
        from nets.media.face import FaceDetector
        detector = FaceDetector(min_score=AnimateOptions().crop_settings.min_score)  # as mra-animate
    try:
        mesh = FaceMesh()
        expr_mesh = fm.FaceMesh(tracking=False, refine=True)  # the expression protocol's landmarks
    except (LandmarksUnavailable, fm.FaceMeshUnavailable) as e:
        raise UserError(str(e)) from None
    offset = 0 if portrait_paths else 1  # portraits: portrait i with clip i; else clip i's first frame with clip i+1
    bar = tqdm(total=frames_to_do(clip_paths, args.max_frames, n_cross, offset), desc="quality", unit="frame",
               file=sys.stderr, leave=False)
    runs: list[ClipRun] = []
    cross: list[CrossScore] = []
    expression: list[ExpressionScore] = []
    blocks: list[sh.Block] = []
    try:
        with mesh, expr_mesh:
            for path in clip_paths:
                opt.fps = float(media.probe_video(path, "clip").fps)
                runs.append(self_reenactment(path, engine, mesh, opt, detector, bar.update, expr_mesh))
                if runs[-1].expression:
                    expression.append(runs[-1].expression)
                if runs[-1].block:
                    blocks.append(runs[-1].block)
            for i in range(n_cross):
                drv = runs[(i + offset) % len(runs)]
                if portrait_paths:
                    p = portrait_paths[i % len(portrait_paths)]
                    portrait, name = cl.read_portrait(p, opt.size, args.crop, detector), p.name
                else:
                    portrait, name = runs[i % len(runs)].first, f"{runs[i % len(runs)].name}[0]"
                score, block, expr = cross_identity(portrait, name, drv, engine, mesh, opt,
                                                    drv.block.rows[0] if drv.block else None, bar.update, expr_mesh)
                cross.append(score)
                if expr:
                    expression.append(expr)
                if block:
                    blocks.append(block)
    finally:
        bar.close()
        if detector is not None:
            detector.close()
    per_clip = [s for r in runs for s in r.scores]
    import torch
    settings = Settings(videos=str(args.videos), clips=[p.name for p in clip_paths],
                        portraits=[p.name for p in portrait_paths], crop=args.crop, modes=modes,
                        max_frames=args.max_frames, akd_every=args.akd_every, batch=args.batch, device=args.device,
                        threads=args.threads, date=datetime.date.today().isoformat(), expression=args.expression,
                        machine=f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip())
    notes = []
    if "avd" not in modes and not engine.has_avd:
        notes.append("avd not scored: this model has no trained AVD network")
    rep = Report(model=info, settings=settings, per_clip=per_clip,
                 summaries=[summarise(m, [s for s in per_clip if s.mode == m]) for m in modes],
                 identity=[r.identity for r in runs], cross=cross, cross_summary=cross_summary(cross), notes=notes,
                 expression=expression,
                 expression_summary=[x for x in (expression_summary(k, expression) for k in ("self", "cross")) if x])
    if args.sheet:
        try:
            rep.sheet = str(sh.write_sheet(blocks, args.sheet, args.sheet_frames))
        except OSError as e:
            raise UserError(f"cannot write --sheet {args.sheet}: {e.strerror or e}") from None
    return rep


def main(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    rep = run(args)
    print_report(rep)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(asdict(rep), indent=1))
        except OSError as e:
            raise UserError(f"cannot write --json {args.json}: {e.strerror or e}") from None
        print(f"wrote {args.json}")
    if rep.sheet:
        print(f"wrote {rep.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
