"""mra-prepare: raw videos of people -> a training set laid out as the dataset reader expects.

    mra-prepare RAW_DIR OUT_DIR --size 256 [--format png|mp4] [--test-fraction 0.1 | --test-ids A,B]

As VoxCeleb was prepared: per video, faces are detected (mediapipe) on every ``--detect-every``-th
frame, the union of the face boxes (outliers dropped), enlarged by the crop margin, gives one
stable square crop (a "tube") for the whole clip; every frame is cut to it and resized to
``--size``. Clips go to ``OUT_DIR/train/`` and ``OUT_DIR/test/``: as folders of numbered PNG frames
(``--format png``, the fastest to read) or as compact H.264 files (``--format mp4``, to carry a
training set to another machine). The split is by identity: a name ``ID#clip...`` belongs to
identity ``ID`` (VoxCeleb naming), any other name is its own identity; ``--test-ids`` names the
test identities, otherwise a deterministic ``--test-fraction`` of them (ordered by a hash of the
name) is held out.

A video that cannot be read, has no frames, or has no (stable) face is reported and skipped; a
clip already present in OUT_DIR is kept (re-running continues an interrupted job); each clip is
written to a temporary name and renamed when complete.

Face-mesh landmarks: beside every clip, ``<clip>.landmarks.npy`` holds the face mesh of each of
its frames (:mod:`.landmarks`; what training with ``dataset.landmarks`` reads). They are computed on
the cropped frames as they are written (``--no-landmarks``: not at all); a kept clip without one
gets one. ``mra-prepare --landmarks-only OUT_DIR`` adds the missing sidecars to a prepared folder
without cropping anything again (``--overwrite``: re-create them all).
"""
from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nets import media
from nets.errors import ArgumentParser, UserError, run_cli
from nets.media.face import CropBox, CropSettings, FaceDetector, crop_resize, face_tube

from . import landmarks as lm
from .data import SPLITS, DataError, VideoEntry, iter_frames, list_videos
from .layout import identity

WORKING_SIDE = 1280


def split_identities(ids: Iterable[str], test_fraction: float = 0.1,
                     test_ids: "Sequence[str] | None" = None) -> set[str]:
    """The identities held out for ``test``.

    With ``test_ids``: exactly those. Otherwise ``round(fraction * n)`` identities, at least one
    when the fraction is above 0 and there are two or more, never all of them, chosen by the
    order of their SHA-1 (stable across runs and machines, independent of file order).
    """
    ids = sorted(set(ids))
    if test_ids is not None:
        return set(test_ids) & set(ids)
    n = len(ids)
    if n < 2 or test_fraction <= 0:
        return set()
    k = min(max(round(test_fraction * n), 1), n - 1)
    ranked = sorted(ids, key=lambda s: hashlib.sha1(s.encode("utf-8")).hexdigest())
    return set(ranked[:k])


@dataclass
class ClipResult:
    name: str
    split: str
    status: str  # prepared | exists | skipped
    frames: int = 0
    reason: str = ""
    crop: "CropBox | None" = None
    landmarks: "LandmarkResult | None" = None  # the sidecar written for this clip in this run


@dataclass
class LandmarkResult:
    """The landmark sidecar of one clip: ``status`` added | kept | skipped; frames and frames with a face."""

    name: str
    split: str
    status: str
    frames: int = 0
    faces: int = 0
    reason: str = ""


def describe_landmarks(results: "Sequence[LandmarkResult]", out_dir: Path) -> list[str]:
    """Summary lines of the sidecars written (or kept, or not written) in ``out_dir``."""
    added = [r for r in results if r.status == "added"]
    lines = []
    if added:
        frames = sum(r.frames for r in added)
        faces = sum(r.faces for r in added)
        lines.append(f"landmarks: wrote {len(added)} sidecar(s) ({lm.SUFFIX}) in {out_dir}: {frames} frames, a face "
                     f"in {faces} ({100 * faces / max(frames, 1):.1f} %)")
        few = [r for r in added if r.faces < 0.5 * r.frames]
        if few:
            lines.append(f"landmarks: a face in fewer than half of the frames of {len(few)} clip(s) (these frames "
                         f"carry no landmark targets): {', '.join(f'{r.split}/{r.name}' for r in few[:10])}"
                         f"{' ...' if len(few) > 10 else ''}")
    kept = sum(1 for r in results if r.status == "kept")
    if kept:
        lines.append(f"landmarks: kept {kept} existing sidecar(s)")
    skipped = [r for r in results if r.status == "skipped"]
    if skipped:
        lines.append(f"landmarks: could not read {len(skipped)} clip(s):")
        lines += [f"  {r.split}/{r.name}: {r.reason}" for r in skipped]
    return lines


@dataclass
class PrepareSummary:
    clips: list[ClipResult] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    def count(self, status: str, split: "str | None" = None) -> int:
        return sum(1 for c in self.clips if c.status == status and (split is None or c.split == split))

    def describe(self, out_dir: Path) -> list[str]:
        done = [c for c in self.clips if c.status == "prepared"]
        lines = [f"prepared {len(done)} clip(s) in {out_dir} (train {self.count('prepared', 'train')}, "
                 f"test {self.count('prepared', 'test')}; {sum(c.frames for c in done)} frames)"]
        if self.count("exists"):
            lines.append(f"kept {self.count('exists')} clip(s) already prepared")
        skipped = [c for c in self.clips if c.status == "skipped"]
        if skipped:
            lines.append(f"skipped {len(skipped)} video(s):")
            lines += [f"  {c.name}: {c.reason}" for c in skipped]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} file(s) that are not videos ({', '.join(media.VIDEO_EXTS)})")
        return lines + describe_landmarks([c.landmarks for c in self.clips if c.landmarks is not None], out_dir)


def find_videos(raw_dir: Path) -> tuple[list[Path], list[Path]]:
    """(videos, other files) under ``raw_dir``, recursively, sorted."""
    videos, other = [], []
    for p in sorted(raw_dir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            (videos if p.suffix.lower() in media.VIDEO_EXTS else other).append(p)
    return videos, other


def open_face_mesh() -> lm.Mesh:
    """mediapipe's face mesh as the sidecars use it (one picture at a time, refined lips and eyelids)."""
    from nets.media.facemesh import FaceMesh, FaceMeshUnavailable
    try:
        return FaceMesh(tracking=False, refine=True)
    except FaceMeshUnavailable as e:
        raise UserError(f"cannot compute face landmarks: {e} (or prepare with --no-landmarks)") from None


def _close(mesh) -> None:
    close = getattr(mesh, "close", None)
    if close is not None:
        close()


def mark_clip(entry: VideoEntry, split: str, mesh: lm.Mesh, overwrite: bool = False) -> LandmarkResult:
    """Write the landmark sidecar of a prepared clip (kept when it exists, unless ``overwrite``)."""
    path = lm.sidecar_path(entry.path.parent, entry.name)
    if path.exists() and not overwrite:
        return LandmarkResult(entry.name, split, "kept")
    try:
        marks = lm.mark_frames(iter_frames(entry), mesh)
    except DataError as e:
        return LandmarkResult(entry.name, split, "skipped", reason=_reason(str(e)))
    lm.write_sidecar(path, marks)
    return LandmarkResult(entry.name, split, "added", len(marks), int(np.isfinite(marks[:, 0, 0]).sum()))


def add_landmarks(out_dir: "str | Path", overwrite: bool = False, progress: bool = True,
                  mesh: "lm.Mesh | None" = None) -> list[LandmarkResult]:
    """``mra-prepare --landmarks-only``: a sidecar for every clip of ``out_dir/{train,test}/`` that has none."""
    out = Path(out_dir).expanduser()
    if not out.is_dir():
        raise UserError(f"OUT_DIR {out} is not a folder; give the folder mra-prepare wrote (with train/ and test/)")
    entries = [(split, e) for split in SPLITS if (out / split).is_dir() for e in list_videos(out / split)]
    if not entries:
        raise UserError(f"no clips in {out}/train or {out}/test; give the folder mra-prepare wrote")
    for split in SPLITS:
        if (out / split).is_dir():
            media.check_writable(out / split, out / split / f"x{lm.SUFFIX}")
    todo = [(split, e) for split, e in entries
            if overwrite or not lm.sidecar_path(e.path.parent, e.name).exists()]
    results = [LandmarkResult(e.name, split, "kept") for split, e in entries if (split, e) not in todo]
    if not todo:
        return results
    own = mesh is None
    mesh = mesh or open_face_mesh()
    from tqdm import tqdm
    bar = tqdm(todo, unit="clip", desc="landmarks", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)
    try:
        for split, entry in bar:
            bar.set_postfix_str(f"{split}/{entry.name}", refresh=False)
            result = mark_clip(entry, split, mesh, overwrite=True)
            if result.status == "skipped":
                bar.write(f"skipped {split}/{entry.name}: {result.reason}", file=sys.stderr)
            results.append(result)
    finally:
        bar.close()
        if own:
            _close(mesh)
    return results


class Preparer:
    """Turns one raw video into one training clip (see the module doc) and its landmark sidecar."""

    def __init__(self, size: int = 256, fmt: str = "png", detect_every: int = 2, min_face_fraction: float = 0.5,
                 crop: CropSettings = CropSettings(), detector: "FaceDetector | None" = None,
                 landmarks: bool = True, mesh: "lm.Mesh | None" = None):
        self.size = size
        self.fmt = fmt
        self.detect_every = max(1, detect_every)
        self.min_face_fraction = min_face_fraction
        self.crop = crop
        self.crf = 22  # --format mp4: compact, visually clean at 256 px
        self.detector = detector or FaceDetector(min_score=crop.min_score)
        self.landmarks = landmarks
        self._mesh = mesh
        self._own_mesh = False

    @property
    def mesh(self) -> lm.Mesh:
        if self._mesh is None:
            self._mesh = open_face_mesh()
            self._own_mesh = True
        return self._mesh

    def close(self) -> None:
        if self._own_mesh:
            _close(self._mesh)
            self._mesh = None
            self._own_mesh = False

    def tube(self, info: media.VideoInfo) -> "tuple[CropBox | None, int, int, int]":
        """(crop at the working size or None, frames, frames checked, frames with a face)."""
        reader = media.VideoReader(info.path, max_side=WORKING_SIDE, info=info)
        faces = []
        frames = 0
        shape = None
        for f in reader.frames():
            frames += 1
            shape = f.rgb.shape
            if f.index % self.detect_every == 0:
                found = [x for x in self.detector.detect(f.rgb) if x.score >= self.crop.min_score]
                faces.append(found[0] if found else None)
        if shape is None:
            return None, 0, 0, 0
        found = sum(1 for x in faces if x is not None)
        return face_tube(faces, shape[1], shape[0], self.crop), frames, len(faces), found

    def target(self, out_dir: Path, split: str, name: str) -> media.OutputSpec:
        folder = out_dir / split
        if self.fmt == "mp4":
            return media.OutputSpec(folder / f"{name}.mp4", "mp4")
        return media.OutputSpec(folder / name, "png")

    def run(self, video: Path, out_dir: Path, split: str, overwrite: bool = False) -> ClipResult:
        name = video.stem
        spec = self.target(out_dir, split, name)
        sidecar = lm.sidecar_path(spec.path.parent, name)
        if spec.path.exists() and not overwrite:
            marked = None
            if self.landmarks and not sidecar.exists():  # e.g. prepared before sidecars existed
                marked = mark_clip(VideoEntry(spec.path, "video" if self.fmt == "mp4" else "frames"), split,
                                   self.mesh)
            return ClipResult(name, split, "exists", landmarks=marked)
        try:
            info = media.probe_video(video, "video")
            crop, frames, checked, found = self.tube(info)
            if frames == 0:
                return ClipResult(name, split, "skipped", reason="no frames (zero-length video)")
            if crop is None:
                return ClipResult(name, split, "skipped", frames, reason="no face found")
            if found < self.min_face_fraction * checked:
                return ClipResult(name, split, "skipped", frames,
                                  reason=f"a face in only {found} of {checked} checked frames "
                                         f"(below --min-face-fraction {self.min_face_fraction:g})")
            spec.path.parent.mkdir(parents=True, exist_ok=True)
            writer = media.open_writer(spec, info.fps, self.size, crf=self.crf)
            marked = None
            try:
                reader = media.VideoReader(info.path, max_side=WORKING_SIDE, info=info)
                rows = []
                for f in reader.frames():
                    face = crop_resize(f.rgb, crop, self.size)
                    writer.write(face)
                    if self.landmarks:
                        rows.append(lm.mark_frames([face], self.mesh))
                written = writer.frames_written
                # the sidecar before the clip: a run killed in between redoes the clip and replaces it
                if self.landmarks:
                    marks = np.concatenate(rows) if rows else lm.mark_frames([], self.mesh)
                    lm.write_sidecar(sidecar, marks)
                    marked = LandmarkResult(name, split, "added", len(marks), int(np.isfinite(marks[:, 0, 0]).sum()))
                elif sidecar.exists():  # a re-created clip must not keep the old clip's landmarks
                    sidecar.unlink()
                writer.close()
            except BaseException:
                writer.abort()
                raise
            return ClipResult(name, split, "prepared", written, crop=crop, landmarks=marked)
        except UserError as e:
            return ClipResult(name, split, "skipped", reason=_reason(str(e)))


def _reason(msg: str) -> str:
    """A UserError message without the file name and the advice (the summary names the file)."""
    msg = " ".join(msg.split())
    for cut in ("; re-", "; give", "; check", "; use"):
        if cut in msg:
            msg = msg.split(cut, 1)[0]
    return msg


def prepare(raw_dir: "str | Path", out_dir: "str | Path", size: int = 256, fmt: str = "png",
            test_fraction: float = 0.1, test_ids: "Sequence[str] | None" = None, detect_every: int = 2,
            min_face_fraction: float = 0.5, overwrite: bool = False, progress: bool = True,
            detector: "FaceDetector | None" = None, landmarks: bool = True,
            mesh: "lm.Mesh | None" = None) -> PrepareSummary:
    """Prepare every video under ``raw_dir`` into ``out_dir/{train,test}/`` (see the module doc)."""
    raw, out = Path(raw_dir).expanduser(), Path(out_dir).expanduser()
    if not raw.is_dir():
        raise UserError(f"RAW_DIR {raw} is not a folder; give the folder that holds your videos")
    if fmt not in ("png", "mp4"):
        raise UserError(f"--format must be png or mp4, got {fmt!r}")
    if not 16 <= size <= 2048:
        raise UserError(f"--size must be between 16 and 2048, got {size}")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction:g}")
    videos, other = find_videos(raw)
    if not videos:
        raise UserError(f"no videos ({', '.join(media.VIDEO_EXTS)}) found in {raw}")
    if out.resolve() == raw.resolve() or raw.resolve() in out.resolve().parents:
        raise UserError("OUT_DIR must not be inside RAW_DIR; choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create OUT_DIR {out} ({e.strerror}); choose a writable folder") from None
    media.check_writable(out, out / "train")
    names = [v.stem for v in videos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"several videos share the name {dupes[0]!r} (in different folders); rename them so every "
                        "clip name is unique")
    test = split_identities((identity(n) for n in names), test_fraction, test_ids)
    if test_ids is not None:
        unknown = sorted(set(test_ids) - {identity(n) for n in names})
        if unknown:
            raise UserError(f"--test-ids names unknown identities: {', '.join(unknown[:5])}; identities are the part "
                            "of a file name before '#' (or the whole name)")

    preparer = Preparer(size=size, fmt=fmt, detect_every=detect_every, min_face_fraction=min_face_fraction,
                        detector=detector, landmarks=landmarks, mesh=mesh)
    summary = PrepareSummary(ignored=other)
    from tqdm import tqdm
    bar = tqdm(videos, unit="video", desc="preparing", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)
    try:
        for video in bar:
            bar.set_postfix_str(video.name, refresh=False)
            split = "test" if identity(video.stem) in test else "train"
            result = preparer.run(video, out, split, overwrite)
            if result.status == "skipped":
                bar.write(f"skipped {video.name}: {result.reason}", file=sys.stderr)
            summary.clips.append(result)
    finally:
        bar.close()
        preparer.close()
    return summary


USAGE = """mra-prepare RAW_DIR OUT_DIR [--size N] [--format png|mp4] [--test-fraction F | --test-ids ID,...] [...]
       mra-prepare --landmarks-only OUT_DIR [--overwrite]"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-prepare", usage=USAGE,
                       description="Crop raw videos of faces into an MRAA training set (with face-mesh landmarks).")
    p.add_argument("raw_dir", metavar="RAW_DIR", help="folder of raw videos (searched recursively)")
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="output folder (receives train/ and test/)")
    p.add_argument("--size", type=int, default=256, help="side of the square frames (default 256)")
    p.add_argument("--format", choices=("png", "mp4"), default="png",
                   help="png: a folder of PNG frames per clip (default); mp4: one H.264 file per clip")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="fraction of identities held out for test/ (default 0.1)")
    p.add_argument("--test-ids", metavar="ID[,ID...]", help="identities for test/ (instead of --test-fraction)")
    p.add_argument("--detect-every", type=int, default=2, metavar="N", help="detect faces every N frames (default 2)")
    p.add_argument("--min-face-fraction", type=float, default=0.5,
                   help="skip a video with a face in fewer of its checked frames than this (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="re-create clips that already exist in OUT_DIR (with "
                                                             "--landmarks-only: re-create every landmark sidecar)")
    p.add_argument("--no-landmarks", action="store_true",
                   help=f"do not store the face mesh of every frame (<clip>{lm.SUFFIX}, which training with "
                        "dataset.landmarks needs)")
    p.add_argument("--landmarks-only", action="store_true",
                   help=f"add the missing <clip>{lm.SUFFIX} to a prepared OUT_DIR (the only folder given); "
                        "nothing is cropped again")
    return p


def cli(argv: "Sequence[str] | None" = None) -> int:
    """The command (errors propagate; :func:`main` turns them into one-line messages)."""
    args = build_parser().parse_args(argv)
    if args.landmarks_only:
        if args.out_dir is not None:
            raise UserError("--landmarks-only takes one folder, the prepared OUT_DIR (mra-prepare --landmarks-only "
                            "OUT_DIR)")
        if args.no_landmarks:
            raise UserError("--landmarks-only and --no-landmarks exclude each other")
        out = Path(args.raw_dir)
        results = add_landmarks(out, overwrite=args.overwrite)
        for line in describe_landmarks(results, out):
            print(line)
        if not any(r.status in ("added", "kept") for r in results):
            raise UserError("no landmark sidecar could be written (see the reasons above)")
        return 0
    if args.out_dir is None:
        raise UserError("give RAW_DIR and OUT_DIR (or --landmarks-only OUT_DIR)")
    test_ids = [s.strip() for s in args.test_ids.split(",") if s.strip()] if args.test_ids else None
    summary = prepare(args.raw_dir, args.out_dir, size=args.size, fmt=args.format, test_fraction=args.test_fraction,
                      test_ids=test_ids, detect_every=args.detect_every, min_face_fraction=args.min_face_fraction,
                      overwrite=args.overwrite, landmarks=not args.no_landmarks)
    for line in summary.describe(Path(args.out_dir)):
        print(line)
    if summary.count("prepared") + summary.count("exists") == 0:
        raise UserError("no clip could be prepared (see the reasons above); check that the videos show a face")
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    """Console entry point: exit status 0, 2 with one ``error:`` line for a problem to fix, 130 on Ctrl-C."""
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
