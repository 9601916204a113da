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
"""
from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from nets import media
from nets.errors import ArgumentParser, UserError, run_cli
from nets.media.face import CropBox, CropSettings, FaceDetector, crop_resize, face_tube

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
        return lines


def find_videos(raw_dir: Path) -> tuple[list[Path], list[Path]]:
    """(videos, other files) under ``raw_dir``, recursively, sorted."""
    videos, other = [], []
    for p in sorted(raw_dir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            (videos if p.suffix.lower() in media.VIDEO_EXTS else other).append(p)
    return videos, other


class Preparer:
    """Turns one raw video into one training clip (see the module doc)."""

    def __init__(self, size: int = 256, fmt: str = "png", detect_every: int = 2, min_face_fraction: float = 0.5,
                 crop: CropSettings = CropSettings(), detector: "FaceDetector | None" = None):
        self.size = size
        self.fmt = fmt
        self.detect_every = max(1, detect_every)
        self.min_face_fraction = min_face_fraction
        self.crop = crop
        self.crf = 22  # --format mp4: compact, visually clean at 256 px
        self.detector = detector or FaceDetector(min_score=crop.min_score)

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
        if spec.path.exists() and not overwrite:
            return ClipResult(name, split, "exists")
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
            try:
                reader = media.VideoReader(info.path, max_side=WORKING_SIDE, info=info)
                for f in reader.frames():
                    writer.write(crop_resize(f.rgb, crop, self.size))
                written = writer.frames_written
                writer.close()
            except BaseException:
                writer.abort()
                raise
            return ClipResult(name, split, "prepared", written, crop=crop)
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
            detector: "FaceDetector | None" = None) -> PrepareSummary:
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
                        detector=detector)
    summary = PrepareSummary(ignored=other)
    from tqdm import tqdm
    bar = tqdm(videos, unit="video", desc="preparing", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)
    for video in bar:
        bar.set_postfix_str(video.name, refresh=False)
        split = "test" if identity(video.stem) in test else "train"
        result = preparer.run(video, out, split, overwrite)
        if result.status == "skipped":
            bar.write(f"skipped {video.name}: {result.reason}", file=sys.stderr)
        summary.clips.append(result)
    bar.close()
    return summary


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-prepare", description="Crop raw videos of faces into an MRAA training set.")
    p.add_argument("raw_dir", metavar="RAW_DIR", help="folder of raw videos (searched recursively)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (receives train/ and test/)")
    p.add_argument("--size", type=int, default=256, help="side of the square frames (default 256)")
    p.add_argument("--format", choices=("png", "mp4"), default="png",
                   help="png: a folder of PNG frames per clip (default); mp4: one H.264 file per clip")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="fraction of identities held out for test/ (default 0.1)")
    p.add_argument("--test-ids", metavar="ID[,ID...]", help="identities for test/ (instead of --test-fraction)")
    p.add_argument("--detect-every", type=int, default=2, metavar="N", help="detect faces every N frames (default 2)")
    p.add_argument("--min-face-fraction", type=float, default=0.5,
                   help="skip a video with a face in fewer of its checked frames than this (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="re-create clips that already exist in OUT_DIR")
    return p


def cli(argv: "Sequence[str] | None" = None) -> int:
    """The command (errors propagate; :func:`main` turns them into one-line messages)."""
    args = build_parser().parse_args(argv)
    test_ids = [s.strip() for s in args.test_ids.split(",") if s.strip()] if args.test_ids else None
    summary = prepare(args.raw_dir, args.out_dir, size=args.size, fmt=args.format, test_fraction=args.test_fraction,
                      test_ids=test_ids, detect_every=args.detect_every, min_face_fraction=args.min_face_fraction,
                      overwrite=args.overwrite)
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
