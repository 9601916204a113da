"""Training data: videos in the official MRAA layouts, sampled as (source, driving) frame pairs.

Layout: ``ROOT/train/`` and ``ROOT/test/``; each video is one of

* a folder of frames (``.png`` / ``.jpg`` or another ``nets.media.IMAGE_EXTS`` image; sorted by
  name) -- the fastest to read,
* an ``.mp4`` / ``.mov`` / ``.avi`` / ``.mkv`` / ``.webm`` / ``.m4v`` file (decoded by
  ``nets.media.VideoReader``, as the tools read videos),
* a ``.gif`` (Pillow),
* a ``.png`` / ``.jpg`` strip of square frames stacked horizontally (width = frames x height).

With ``id_sampling`` the names are ``ID#clip`` and one training item is an identity: a clip of it
is drawn at random for each sample (so identities with many clips do not dominate). Frames of
another size are resized to ``frame_size`` (aspect ratio not kept, as in the official code).

Randomness: the :class:`PairSampler` hands every sample a seed ``(seed, epoch, position)``; the
dataset draws the clip, the two frames and the augmentation from a generator made from that
seed alone. Data order and content are therefore a pure function of (seed, epoch, position):
they replay exactly after ``--resume`` and do not depend on the number of dataloader workers.
The draws, in order: the clip, two frames, then (only with ``expression_pairs``) a number, a
first frame and 16 candidate frames, then (only with ``identity_pairs``) a number, then the
augmentation's fixed set; a setting at 0 draws nothing, so the official sampling is unchanged.

Face landmarks (``landmarks=True``): every clip's ``<clip>.landmarks.npy`` sidecar
(:mod:`.landmarks`, written by ``mra-prepare``) is read when the dataset is made, and each sample
also carries, for its source and driving frame, the face points of ``nets.config.FACE_TARGETS`` in
the networks' coordinates (``<frame>_points`` ``(P, 2)``), the mouth and eye widths in the same
units (``<frame>_widths`` ``(2,)``) and whether the frame has a face (``<frame>_valid``, 1 or 0;
points and widths are 0 where it has none), flipped with the frames. ``expression_pairs`` makes
that share of pairs a first frame and, of 16 random frames of the clip, the one whose mouth + eye
openness differs most from it (:func:`.landmarks.expression_partner`).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .. import media
from ..config import AugmentationConfig
from ..errors import UserError
from . import landmarks as lm
from .augment import Flips, augment_sample
from .layout import identity

GIF = ".gif"  # a video read frame by frame with Pillow; the other media.VIDEO_EXTS are decoded by PyAV
SPLITS = ("train", "test")


class DataError(UserError):
    """A dataset that cannot be used (missing, empty, unreadable video)."""


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoEntry:
    """One video of a split: ``kind`` is ``frames`` (folder), ``video`` (mp4...), ``gif`` or ``strip``."""

    path: Path
    kind: str

    @property
    def name(self) -> str:
        return self.path.stem if self.kind != "frames" else self.path.name

    @property
    def identity(self) -> str:
        """The person the clip shows (:func:`nets.train.layout.identity`)."""
        return identity(self.name)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in media.IMAGE_EXTS and p.is_file())


def list_videos(split_dir: "str | os.PathLike") -> list[VideoEntry]:
    """Every video of ``split_dir`` (sorted by name); hidden files and other files are ignored."""
    split_dir = Path(split_dir)
    entries = []
    for p in sorted(split_dir.iterdir()):
        if p.name.startswith("."):
            continue
        suffix = p.suffix.lower()
        if p.is_dir():
            if _frame_files(p):
                entries.append(VideoEntry(p, "frames"))
        elif suffix == GIF:
            entries.append(VideoEntry(p, "gif"))
        elif suffix in media.VIDEO_EXTS:
            entries.append(VideoEntry(p, "video"))
        elif suffix in media.IMAGE_EXTS:
            entries.append(VideoEntry(p, "strip"))
    return entries


def split_dir(root: "str | os.PathLike", split: str = "train") -> Path:
    """``root/split``, with a clear error when the dataset or the split is missing or empty."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"--data must be a directory with train/ and test/ folders, got a file: {root}")
    d = root / split
    if not d.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:5]) or "nothing"
        raise DataError(f"no {split}/ split in {root} (found: {found}); expected {root}/{split}/ with one video "
                        "per .mp4/.gif, frame folder or .png strip (mra-prepare writes this layout)")
    return d


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _to_rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _open_image(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def iter_frames(entry: VideoEntry) -> Iterator[np.ndarray]:
    """Every frame of ``entry`` at its own size, ``(H, W, 3)`` uint8 RGB, one at a time (videos are
    streamed, never held whole)."""
    if entry.kind == "frames":
        for f in _frame_files(entry.path):
            yield _to_rgb(_open_image(f))
    elif entry.kind == "strip":
        strip = _to_rgb(_open_image(entry.path))
        h, w = strip.shape[:2]
        if w % h:
            raise DataError(f"{entry.path}: a frame strip must be N square frames side by side "
                            f"(width a multiple of height), got {w}x{h}")
        for i in range(w // h):
            yield strip[:, i * h:(i + 1) * h]
    elif entry.kind == "gif":
        img = _open_image(entry.path)
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            yield _to_rgb(img)
    else:
        try:
            for f in media.VideoReader(entry.path, what="video"):
                yield f.rgb
        except UserError as e:
            raise DataError(str(e)) from None


def read_video(entry: VideoEntry, size: int, indices: "Sequence[int] | None" = None) -> np.ndarray:
    """Frames of ``entry`` (all, or those at ``indices``) as ``(N, size, size, 3)`` uint8 RGB."""
    if entry.kind == "frames" and indices is not None:  # read only the frames asked for
        files = _frame_files(entry.path)
        frames = [_to_rgb(_open_image(files[i])) for i in indices]
    elif indices is None:
        frames = [_resize(f, size) for f in iter_frames(entry)]
    else:
        wanted = set(int(i) for i in indices)
        kept = {i: f for i, f in enumerate(iter_frames(entry)) if i in wanted}
        frames = [kept[int(i)] for i in indices]
    if not frames:
        raise DataError(f"{entry.path} has no frames")
    return np.stack([_resize(f, size) for f in frames])


def frame_shape(entry: VideoEntry) -> tuple[int, int]:
    """(width, height) of the clip's own frames, from the file headers (nothing decoded but a video's first frame)."""
    if entry.kind == "video":
        try:
            info = media.probe_video(entry.path, "video")
        except UserError as e:
            raise DataError(str(e)) from None
        return info.width, info.height
    path = _frame_files(entry.path)[0] if entry.kind == "frames" else entry.path
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return (h, h) if entry.kind == "strip" else (w, h)


def count_frames(entry: VideoEntry) -> int:
    """Number of frames (cheap for folders and strips; decodes videos and gifs)."""
    if entry.kind == "frames":
        return len(_frame_files(entry.path))
    if entry.kind == "strip":
        with Image.open(entry.path) as img:
            w, h = img.size
        return w // h
    if entry.kind == "gif":
        with Image.open(entry.path) as img:
            return getattr(img, "n_frames", 1)
    return sum(1 for _ in iter_frames(entry))


# ---------------------------------------------------------------------------------------------
# Dataset and sampler
# ---------------------------------------------------------------------------------------------

def face_key(frame: str, what: str) -> str:
    """The sample key of a face target: ``frame`` source | driving, ``what`` points | widths | valid."""
    return f"{frame}_{what}"


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float in [0, 1] -> ``(3, H, W)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32))


class PairDataset(torch.utils.data.Dataset):
    """(source, driving) frame pairs of the same video, ``num_repeats`` times per item.

    An item is a video, or an identity with ``id_sampling``. Keys are ``(index, seed)`` from
    :class:`PairSampler` (a plain int ``i`` means ``(i, (i,))``). A sample is
    ``{"source": (3, S, S), "driving": (3, S, S)}`` float32 in [0, 1], with ``landmarks`` also
    the face targets of both frames (see the module doc; ``pixel_centres`` picks the coordinate
    convention, as ``ModelConfig.pixel_centres``).
    ``preload`` decodes every video once into memory (uint8); otherwise frame folders read only
    the two frames they need and other formats are decoded per sample (slow for mp4).
    """

    def __init__(self, root: "str | os.PathLike", frame_size: int, split: str = "train",
                 id_sampling: bool = False, augmentation: "AugmentationConfig | None" = None,
                 num_repeats: int = 1, preload: bool = False, progress: bool = False,
                 identity_pairs: float = 0.0, landmarks: bool = False, expression_pairs: float = 0.0,
                 pixel_centres: bool = False):
        self.root = Path(root)
        self.identity_pairs = float(identity_pairs)
        self.expression_pairs = float(expression_pairs)
        self.pixel_centres = bool(pixel_centres)
        if self.expression_pairs > 0 and not landmarks:
            raise ValueError("expression_pairs needs landmarks")
        self.frame_size = int(frame_size)
        self.augmentation = augmentation
        self.num_repeats = max(1, int(num_repeats))
        d = split_dir(self.root, split)
        self.videos = list_videos(d)
        if not self.videos:
            raise DataError(f"{d} holds no videos (.mp4/.gif files, folders of .png/.jpg frames or .png strips)")
        groups: "OrderedDict[str, list[VideoEntry]]" = OrderedDict()
        for v in self.videos:
            groups.setdefault(v.identity if id_sampling else v.name, []).append(v)
        self.groups = list(groups.values())
        self.faces: "dict[Path, lm.ClipFaces] | None" = self._read_faces(d) if landmarks else None
        self.cache: "dict[Path, np.ndarray] | None" = None
        if preload:
            self.preload(progress)

    def _read_faces(self, split_dir: Path) -> "dict[Path, lm.ClipFaces]":
        """The face targets of every clip, from its landmark sidecar (DataError naming the fix when any is missing)."""
        missing = [v for v in self.videos if not lm.sidecar_path(v.path.parent, v.name).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of the {len(self.videos)} clips in {split_dir} have no face landmarks "
                            f"(e.g. {lm.sidecar_path(split_dir, missing[0].name).name} is missing), which this "
                            f"config trains with (dataset.landmarks); add them with: mra-prepare --landmarks-only "
                            f"{self.root}")
        faces = {}
        for v in self.videos:
            try:
                marks = lm.read_sidecar(lm.sidecar_path(v.path.parent, v.name))
            except lm.SidecarError as e:
                raise DataError(str(e)) from None
            faces[v.path] = lm.ClipFaces.from_marks(marks, *frame_shape(v))
        return faces

    def preload(self, progress: bool = False, threads: "int | None" = None) -> None:
        """Decode every video once into memory (uint8 ``(T, S, S, 3)`` per video), on a thread pool
        (OpenCV and Pillow decode without holding the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        threads = threads or min(16, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            arrays = list(tqdm(pool.map(lambda v: read_video(v, self.frame_size), self.videos), total=len(self.videos),
                               desc="preload", unit="video", disable=not progress, leave=False))
        self.cache = {v.path: a for v, a in zip(self.videos, arrays)}

    @property
    def preloaded_bytes(self) -> int:
        return sum(a.nbytes for a in self.cache.values()) if self.cache else 0

    @property
    def num_items(self) -> int:
        return len(self.groups)

    def __len__(self) -> int:
        return self.num_repeats * len(self.groups)

    def _two_frames(self, entry: VideoEntry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(the two frames, their indices)."""
        if self.cache is not None:
            video = self.cache[entry.path]
            n = len(video)
        elif entry.kind == "frames":
            video = None
            n = count_frames(entry)
        else:
            video = read_video(entry, self.frame_size)
            n = len(video)
        if n == 0:
            raise DataError(f"{entry.path} has no frames")
        faces = self.faces[entry.path] if self.faces is not None else None
        if faces is not None and len(faces) != n:
            raise DataError(f"{entry.path} has {n} frames but its landmark sidecar {len(faces)}; re-create it with: "
                            f"mra-prepare --landmarks-only --overwrite {self.root}")
        idx = np.sort(rng.choice(n, size=2, replace=n < 2))
        if self.expression_pairs > 0:
            u = rng.random()
            first = int(rng.integers(n))
            candidates = rng.integers(n, size=lm.EXPRESSION_CANDIDATES)
            partner = lm.expression_partner(faces, first, candidates) if u < self.expression_pairs else None
            if partner is not None:
                idx = np.array([first, partner])
        if self.identity_pairs > 0 and rng.random() < self.identity_pairs:
            idx[1] = idx[0]
        if video is not None:
            return video[idx], idx
        return read_video(entry, self.frame_size, [int(i) for i in idx]), idx

    def _face_targets(self, faces: lm.ClipFaces, idx: np.ndarray, flips: Flips) -> dict[str, torch.Tensor]:
        """The face targets of frames ``idx`` (source, driving before the flips), flipped as the frames were."""
        points = faces.points[idx]
        if flips.horizontal:
            points = lm.mirror(points)
        roles = ("driving", "source") if flips.time else ("source", "driving")
        out = {}
        for i, role in enumerate(roles):
            valid = bool(faces.valid[idx[i]])
            out[face_key(role, "points")] = torch.from_numpy(
                lm.to_model(points[i], self.frame_size, self.pixel_centres) * valid)
            out[face_key(role, "widths")] = torch.from_numpy(
                lm.length_to_model(faces.widths[idx[i]], self.frame_size, self.pixel_centres))
            out[face_key(role, "valid")] = torch.tensor(float(valid))
        return out

    def sample(self, index: int, seed: Sequence[int]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([int(s) for s in seed])
        group = self.groups[index % len(self.groups)]
        entry = group[int(rng.integers(len(group)))]
        frames, idx = self._two_frames(entry, rng)
        frames = [f.astype(np.float32) / 255.0 for f in frames]
        frames, flips = augment_sample(frames, self.augmentation, rng)
        out = {"source": to_tensor(frames[0]), "driving": to_tensor(frames[1])}
        if self.faces is not None:
            out.update(self._face_targets(self.faces[entry.path], idx, flips))
        return out

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        if isinstance(key, tuple):
            index, seed = key
        else:
            index, seed = int(key), (int(key),)
        return self.sample(int(index), seed)


class PairSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, distributed-aware sampler of ``(index, seed)`` keys.

    Epoch ``e``: a permutation of ``range(length)`` drawn from ``(seed, e)``; rank ``r`` of
    ``world_size`` takes positions ``r, r + world_size, ...`` (the tail that does not divide
    evenly is dropped, so every rank sees the same number of samples). Each key carries the
    seed ``(seed, e, position)``. :meth:`set_epoch` picks the epoch and :meth:`set_start` skips
    the first samples of this rank (resuming mid-epoch).
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.length = int(length)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        return self.length // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        usable = self.per_rank * self.world_size
        for local in range(self.start, self.per_rank):
            pos = local * self.world_size + self.rank
            if pos >= usable:
                break
            yield int(order[pos]), (self.seed, self.epoch, pos)
