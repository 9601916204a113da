"""Media input and output for every layer that reads pictures (the tools, training data, int8
calibration, benchmarks): images, streamed video frames, atomic outputs, and the one conversion
between uint8 frames and the networks' float input.

Reading
    :func:`read_image` -> ``(H, W, 3)`` uint8 RGB: PNG / JPEG / WebP / BMP (and TIFF), grayscale,
    RGBA / LA / palette with transparency (composited on white), 16-bit, EXIF orientation applied,
    very large photos downscaled while decoding (JPEG ``draft``) and then to ``max_side``.
    :func:`probe_video` -> :class:`VideoInfo` (and proof that a first frame decodes);
    :class:`VideoReader` streams :class:`Frame` s (time in seconds from the first frame, RGB array),
    one at a time: a video is never read into memory. :func:`resample` turns timestamped frames
    into a constant-rate sequence (nearest frame to each output tick), so audio stays in sync for
    variable-rate inputs and ``--fps`` changes the rate without changing the duration.

Writing
    :func:`check_output` validates an output path early (kind from the name, folder exists and is
    writable); :func:`open_writer` returns a :class:`FrameWriter` for ``.mp4`` (H.264 yuv420p via
    PyAV, the driving video's audio carried over by :class:`AudioCarrier`), ``.gif`` or a directory
    of lossless numbered PNGs. Every writer writes to a temporary name in the target folder and
    renames at :meth:`FrameWriter.close`; :meth:`FrameWriter.abort` (any exception, Ctrl-C)
    removes the temporary, so an existing output is never clobbered by a failed run.

Conversion
    :func:`to_input` ``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [0, 1];
    :func:`to_uint8` back (clipped, rounded).

Every problem the user can fix raises :class:`nets.errors.UserError` with a message that says what
to do.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import struct
import uuid
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from nets.errors import DiskFault, UserError, disk_fault

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".webm", ".gif", ".mkv", ".m4v")
OUTPUT_KINDS = ("mp4", "gif", "png")  # png = a directory of numbered PNG frames
IMAGE_HINT = "PNG, JPEG, WebP or BMP"
VIDEO_HINT = "mp4, mov, avi, webm or gif"
DEFAULT_MAX_IMAGE_SIDE = 2048
MAX_DECODED_PIXELS = 64_000_000  # an image is refused (from its header) when decoding would take more
STALE_AFTER_S = 600.0  # a temporary of a process that is gone, untouched this long, is swept
MAX_FPS = 240
FALLBACK_FPS = Fraction(25)
PNG_PATTERN = "{:06d}.png"
VIDEO_DEMUXERS = {"mov", "mp4", "avi", "matroska", "webm", "gif"}  # FFmpeg's names for the VIDEO_EXTS containers


# ---------------------------------------------------------------------------------------------
# Frames <-> the networks' tensors
# ---------------------------------------------------------------------------------------------

def to_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 frames ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [0, 1] (the networks' input)."""
    return np.ascontiguousarray(np.moveaxis(rgb, -1, -3), dtype=np.float32) / 255.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float ``(..., 3, H, W)`` in [0, 1] (the networks' output) -> uint8 frames ``(..., H, W, 3)``, rounded."""
    return np.moveaxis((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), -3, -1)


# ---------------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------------

def check_input_file(path: "str | os.PathLike", what: str, exts: tuple[str, ...], hint: str) -> Path:
    """``path`` exists, is a readable file and has one of ``exts``; else a UserError naming ``what``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} not found: {p}; check the path")
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; give a file ({hint})")
    ext = p.suffix.lower()
    if ext not in exts:
        other = ("a video" if ext in VIDEO_EXTS and exts is IMAGE_EXTS else
                 "an image" if ext in IMAGE_EXTS and exts is VIDEO_EXTS else None)
        if other:
            raise UserError(f"{what} {p.name} is {other}; give {hint}")
        shown = f"'{ext}'" if ext else "(no file extension)"
        raise UserError(f"unsupported {what} format {shown} for {p.name}; use {hint}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {p} is not readable (permission denied); check its permissions")
    if p.stat().st_size == 0:
        raise UserError(f"{what} {p} is an empty file; re-export or re-download it")
    return p


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """A single-channel integer/float array of any depth -> uint8 (16-bit scaled, not clipped)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        return np.clip(a + 0.5, 0, 255).astype(np.uint8)
    top = int(a.max(initial=0))
    if a.dtype.itemsize >= 2 and top > 255:  # 16-bit (or 16-bit values in a 32-bit "I" image)
        return np.clip((a.astype(np.float64) / 257.0) + 0.5, 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image mode -> ``(H, W, 3)`` uint8 RGB (alpha composited on white, 16-bit scaled)."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.asarray(_composite_on_white(im))
    if mode.startswith("I") or mode == "F":  # 16/32-bit grayscale, float
        g = _to_uint8(np.asarray(im))
        return np.repeat(g[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def read_image(path: "str | os.PathLike", max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "source image") -> np.ndarray:
    """Read a photo as ``(H, W, 3)`` uint8 RGB, upright (EXIF), at most ``max_side`` pixels a side.

    JPEGs are decoded at a reduced scale when they are much larger than ``max_side`` (the decoder's
    DCT scaling), so a 50-megapixel photo never costs its full size in memory.
    """
    p = check_input_file(path, what, IMAGE_EXTS, IMAGE_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                if im.format == "JPEG" and max(im.size) > max_side:
                    # decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while keeping the long side >= max_side
                    s = max_side / max(im.size)
                    im.draft("RGB", (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
                if im.size[0] * im.size[1] > MAX_DECODED_PIXELS:  # checked before the pixels are decoded
                    raise UserError(f"{what} {p.name} is {im.size[0]}x{im.size[1]} pixels, too large to decode "
                                    f"(at most {MAX_DECODED_PIXELS // 1_000_000} megapixels); downscale it")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # (a copy otherwise)
                if max(im.size) > max_side:
                    if im.mode in ("1", "P") and "transparency" not in im.info:  # 1 byte a pixel, not 3
                        im = im.convert("L" if im.mode == "1" else "RGB")
                    if im.mode not in ("RGB", "RGBA", "L", "LA"):
                        im = Image.fromarray(image_to_rgb(im))
                    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
                rgb = image_to_rgb(im)
    except Image.DecompressionBombError:
        raise UserError(f"{what} {p.name} is too large to decode safely; downscale it below "
                        f"{Image.MAX_IMAGE_PIXELS * 2 // 1_000_000} megapixels") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {what} {p.name}: not a valid image (corrupted, or not {IMAGE_HINT}); "
                        "re-export it as PNG or JPEG") from None
    except _DECODE_ERRORS as e:
        raise UserError(f"cannot read {what} {p.name}: the file is corrupted or truncated ({_short(e)}); "
                        "re-export or re-download it") from None
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise UserError(f"{what} {p.name} is only {rgb.shape[1]}x{rgb.shape[0]} pixels; use a larger image")
    return np.ascontiguousarray(rgb)


def _short(e: BaseException, n: int = 120) -> str:
    s = getattr(e, "strerror", None) if type(e).__module__.startswith("av") else None  # FFmpeg: no file name
    s = " ".join(str(s or e).split()) or type(e).__name__
    return s if len(s) <= n else s[: n - 3] + "..."


def resize_rgb(rgb: np.ndarray, size: "int | tuple[int, int]") -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` (``size`` = side or (w, h)), antialiased."""
    w, h = (size, size) if isinstance(size, int) else size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    im = Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(im)


# ---------------------------------------------------------------------------------------------
# Encoded pictures in memory (the worker wire, the web page's webcam frames)
# ---------------------------------------------------------------------------------------------

BYTES_FORMATS = ("JPEG", "WEBP", "PNG")  # PIL's names of the formats accepted from memory


class ImageBytesError(ValueError):
    """Bytes that are not an accepted picture: not a JPEG, WebP or PNG, damaged, or of a refused size."""


class ImageSizeError(ImageBytesError):
    """A picture whose header gives a refused size (found before anything was decompressed)."""


def _read_bytes(data: bytes, max_size: "tuple[int, int]", exact: bool, decode: bool):
    (mw, mh) = max_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(BYTES_FORMATS)) as im:
                w, h = im.size  # from the header: nothing is decompressed before this check
                if exact and (w, h) != (mw, mh):
                    raise ImageSizeError(f"expected a {mw}x{mh} image, got {w}x{h}")
                if max(w, h) > max(mw, mh) or min(w, h) > min(mw, mh):
                    raise ImageSizeError(f"the image is {w}x{h} pixels, larger than {mw}x{mh}")
                return np.asarray(im.convert("RGB")) if decode else (w, h)
    except ImageBytesError:
        raise
    except Image.DecompressionBombError:  # PIL refused the header's size before telling it
        raise ImageSizeError(f"expected a {mw}x{mh} image, got a far larger one" if exact else
                              f"the image is far larger than {mw}x{mh} pixels") from None
    except _DECODE_ERRORS as e:  # (UnidentifiedImageError is an OSError)
        raise ImageBytesError(f"not a JPEG, WebP or PNG image ({type(e).__name__})") from None


def check_image_bytes(data: bytes, max_size: "tuple[int, int]", exact: bool = False) -> "tuple[int, int]":
    """The (width, height) of JPEG / WebP / PNG ``data``, read from its header alone (nothing is
    decompressed); :class:`ImageBytesError` for anything else, and its :class:`ImageSizeError` for
    a picture larger than ``max_size`` (width, height; either way round) or, with ``exact``, not
    exactly ``max_size``."""
    return _read_bytes(data, max_size, exact, decode=False)


def decode_image_bytes(data: bytes, max_size: "tuple[int, int]", exact: bool = False) -> np.ndarray:
    """JPEG / WebP / PNG ``data`` -> ``(H, W, 3)`` uint8 RGB, refused from its header first as by
    :func:`check_image_bytes`, so a small file that claims a huge picture costs nothing."""
    return _read_bytes(data, max_size, exact, decode=True)


# ---------------------------------------------------------------------------------------------
# Video input
# ---------------------------------------------------------------------------------------------

def _av():
    import av  # PyAV
    return av


def _rate(stream) -> "Fraction | None":
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r is not None and 0 < float(r) <= MAX_FPS:
            return Fraction(r).limit_denominator(1001 * 100)
    return None


@dataclass(frozen=True)
class VideoInfo:
    """What a driving video is: display size (after rotation), frame rate, declared length, audio."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: "int | None"  # as declared by the container (may be missing or approximate)
    duration: "float | None"  # seconds
    rotation: int  # degrees the frames are turned counter-clockwise for display
    has_audio: bool
    codec: str
    start_time: float = 0.0  # presentation time (s) of the first frame in the file's timeline
    fps_guessed: bool = False  # the container had no usable rate; FALLBACK_FPS is used

    def estimated_frames(self, fps: "Fraction | None" = None) -> "int | None":
        """Frames at ``fps`` (default: the video's own) for progress bars; None when unknown."""
        if fps is None or fps == self.fps:
            if self.frames:
                return self.frames
        if self.duration:
            return max(1, round(self.duration * float(fps or self.fps)))
        return None


@dataclass
class Frame:
    """A decoded frame: ``index`` in decode order, ``time`` in seconds from the first frame,
    ``duration`` in seconds (None when unknown), ``rgb`` ``(H, W, 3)`` uint8."""

    index: int
    time: float
    duration: "float | None"
    rgb: np.ndarray


def _open_container(p: Path, what: str):
    av = _av()
    try:
        return av.open(str(p), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise UserError(f"cannot read {what} {p.name}: not a valid video ({_short(e, 80)}; the file is corrupted, "
                        f"truncated, or not {VIDEO_HINT}); re-encode or re-download it") from None


def _rotation(frame) -> int:
    try:
        r = int(round(frame.rotation or 0))
    except Exception:  # noqa: BLE001 - missing or malformed display matrix: no rotation
        return 0
    return (r // 90 * 90) % 360 if r % 90 == 0 else 0


def _apply_rotation(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame upright: ``rotation`` is the display matrix's counter-clockwise angle."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb


def _check_index(stream, p: Path, what: str) -> None:
    """Containers with a sample index (mp4, mov, avi) say where every frame is: a frame past the
    end of the file means the download or copy was cut short."""
    try:
        entries = stream.index_entries
        end = max((e.pos + e.size for e in entries), default=0) if entries is not None else 0
    except Exception:  # noqa: BLE001 - no index support: checked while decoding instead
        return
    size = p.stat().st_size
    if end > size:
        raise UserError(f"cannot read {what} {p.name}: the file is truncated (it ends at {size} bytes, its frames "
                        f"reach {end}); re-encode or re-download it")


def probe_video(path: "str | os.PathLike", what: str = "driving video") -> VideoInfo:
    """Validate a video (format, container, a first frame that decodes) and describe it."""
    p = check_input_file(path, what, VIDEO_EXTS, VIDEO_HINT)
    av = _av()
    container = _open_container(p, what)
    try:
        if not container.streams.video:
            demuxers = set(container.format.name.split(","))
            if not container.streams.audio and not demuxers & VIDEO_DEMUXERS:  # (random bytes can pass for
                # a subtitle or data format): the answer to garbage is one message
                raise UserError(f"cannot read {what} {p.name}: not a valid video (it holds no video or audio track; "
                                f"the file is corrupted, truncated, or not {VIDEO_HINT}); re-encode or re-download it")
            raise UserError(f"{what} {p.name} has no video frames (a zero-length or audio-only file); give a video "
                            "with at least one frame")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.FFmpegError as e:
            raise UserError(f"cannot read {what} {p.name}: the video is corrupted or truncated "
                            f"({_short(e, 80)}); re-encode or re-download it") from None
        if first is None:
            raise UserError(f"{what} {p.name} has no video frames (a zero-length video); give a video with at least "
                            "one frame")
        _check_index(stream, p, what)
        rotation = _rotation(first)
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        fps = _rate(stream)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        start = float(first.pts * stream.time_base) if first.pts is not None and stream.time_base else 0.0
        return VideoInfo(path=p, width=w, height=h, fps=fps or FALLBACK_FPS, frames=stream.frames or None,
                         duration=duration if duration and duration > 0 else None, rotation=rotation,
                         has_audio=bool(container.streams.audio), codec=stream.codec_context.name,
                         start_time=start, fps_guessed=fps is None)
    finally:
        container.close()


class VideoReader:
    """Stream a video's frames (upright RGB), never holding more than one decoded frame.

    ``max_side`` bounds the working resolution (frames are scaled down by the decoder's scaler,
    keeping the aspect ratio); ``size=(w, h)`` scales every frame to exactly that size instead.
    """

    def __init__(self, path: "str | os.PathLike", what: str = "driving video", max_side: "int | None" = None,
                 size: "tuple[int, int] | None" = None, info: "VideoInfo | None" = None):
        self.info = info or probe_video(path, what)
        self.what = what
        self.max_side = max_side
        self.size = size
        self._container = None

    def _target(self, w: int, h: int, rotation: int) -> "tuple[int, int] | None":
        """Decoder output size (before rotation) or None for the native size."""
        if self.size is not None:
            tw, th = self.size
            return (th, tw) if rotation in (90, 270) else (tw, th)
        if self.max_side and max(w, h) > self.max_side:
            s = self.max_side / max(w, h)
            return max(2, round(w * s)), max(2, round(h * s))
        return None

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self) -> Iterator[Frame]:
        av = _av()
        p = self.info.path
        self._container = container = _open_container(p, self.what)
        index = 0
        t0 = None
        last_t = None
        rotation = 0
        fallback_dt = 1.0 / float(self.info.fps)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    raise UserError(f"cannot read {self.what} {p.name}: the video is corrupted or truncated "
                                    f"(decoding failed after {index} frames: {_short(e, 60)}); re-encode or "
                                    "re-download it") from None
                if index == 0:
                    rotation = _rotation(frame)
                target = self._target(frame.width, frame.height, rotation)
                if target is None:
                    rgb = frame.to_ndarray(format="rgb24")
                else:
                    rgb = frame.to_ndarray(format="rgb24", width=target[0], height=target[1], interpolation="AREA")
                rgb = _apply_rotation(rgb, rotation)
                # time from the first frame: pts when present, else frame counting; never backwards
                t = float(frame.pts * tb) if frame.pts is not None and tb is not None else None
                if t is not None and t0 is None:
                    t0 = t
                rel = (t - t0) if t is not None and t0 is not None else index * fallback_dt
                if last_t is not None and rel <= last_t:
                    rel = last_t + 1e-6
                dur = float(frame.duration * tb) if frame.duration and tb is not None else None
                yield Frame(index=index, time=rel, duration=dur, rgb=rgb)
                last_t = rel
                index += 1
            declared = self.info.frames
            if declared and index < declared - max(2, declared // 50):
                raise UserError(f"cannot read {self.what} {p.name}: the video is truncated or corrupted (only {index} "
                                f"of its {declared} frames could be decoded); re-encode or re-download it")
            length = None  # formats without a frame count: compare with the declared duration
            if stream.duration and tb is not None:
                length = float(stream.duration * tb)
            elif container.duration and len(container.streams) == 1:  # mkv/webm: only the file's duration
                length = container.duration / 1_000_000
            if length and last_t is not None:
                if last_t + 2 * fallback_dt < length - max(0.25, 0.05 * length):
                    raise UserError(f"cannot read {self.what} {p.name}: the video is truncated or corrupted (it stops "
                                    f"at {last_t:.2f} s of {length:.2f} s); re-encode or re-download it")
        finally:
            self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def resample(frames: Iterable[Frame], fps: Fraction, source_fps: "Fraction | None" = None) -> Iterator[Frame]:
    """Constant-rate frames at ``fps``: output tick ``k`` (time ``k / fps``) gets the input frame
    nearest to it (frames are duplicated or dropped as needed; a constant-rate input at the same
    rate maps one to one). The last input frame lasts its own duration (or ``1 / source_fps``).
    Output frames carry ``index = k`` and ``time = k / fps``.
    """
    step = 1.0 / float(fps)
    eps = 1e-6
    k = 0
    prev: "Frame | None" = None
    for f in frames:
        if prev is not None:
            mid = 0.5 * (prev.time + f.time)
            while k * step <= mid + eps:  # ties go to the earlier frame
                yield Frame(index=k, time=k * step, duration=step, rgb=prev.rgb)
                k += 1
        prev = f
    if prev is None:
        return
    last = prev.duration if prev.duration and prev.duration > 0 else (1.0 / float(source_fps or fps))
    end = prev.time + last
    while k * step < end - eps or k == 0:
        yield Frame(index=k, time=k * step, duration=step, rgb=prev.rgb)
        k += 1


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputSpec:
    """A validated output: ``kind`` mp4 | gif | png (a directory of frames) and its path."""

    path: Path
    kind: str


def output_kind(path: "str | os.PathLike") -> str:
    s = str(path)
    p = Path(s).expanduser()
    ext = p.suffix.lower()
    if ext == ".mp4":
        return "mp4"
    if ext == ".gif":
        return "gif"
    if s.endswith(("/", os.sep)) or p.is_dir() or ext == "":
        return "png"
    raise UserError(f"unsupported output format '{ext}' for {p.name}; use a .mp4 or .gif file, or a directory "
                    "(which receives numbered PNG frames)")


def _is_frame_dir(p: Path) -> bool:
    """An existing directory that is empty or holds only numbered PNG frames (a previous output)."""
    for entry in p.iterdir():
        if not (entry.is_file() and entry.suffix == ".png" and entry.stem.isdigit()):
            return False
    return True


def check_writable(folder: Path, target: Path) -> None:
    """``folder`` exists, is a folder, and a file can be created in it (tried for real); else UserError."""
    if not folder.exists():
        raise UserError(f"output folder {folder} does not exist; create it first or choose another --output")
    if not folder.is_dir():
        raise UserError(f"cannot write {target}: {folder} is not a folder; choose another --output")
    probe = folder / f".{target.name}.probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder} ({e.strerror or _short(e)}); choose a writable "
                        "--output location") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_output(path: "str | os.PathLike") -> OutputSpec:
    """Validate an output path before any work: its kind, and that its folder exists and is writable."""
    if str(path).strip() == "":
        raise UserError("--output is empty; give a .mp4 or .gif file or a directory")
    kind = output_kind(path)
    p = Path(str(path)).expanduser()
    p = Path(os.path.abspath(p))
    if kind == "png":
        if p.exists() and not p.is_dir():
            raise UserError(f"output {p} exists and is not a directory; choose another --output")
        if p.is_dir() and not _is_frame_dir(p):
            raise UserError(f"output directory {p} is not empty (it holds files other than numbered PNG frames); "
                            "choose a new or empty directory")
        if p.is_dir() and os.path.ismount(p):
            raise UserError(f"output directory {p} is a mount point, which cannot be replaced by the finished "
                            f"frames; give a new folder inside it, e.g. --output {p / 'frames'}")
    elif p.is_dir():
        raise UserError(f"output {p} is a directory; give a file name ending in .{kind}")
    check_writable(p.parent, p)
    sweep_partials(p)
    return OutputSpec(path=p, kind=kind)


def _temp_name(target: Path, suffix: str = "") -> Path:
    """``.NAME.partial-PID-XXXXXXXX[SUFFIX]`` next to ``target`` (the writer's process id: see :func:`sweep_stale`)."""
    return target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def sweep_stale(folder: Path, pattern: str, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what a killed run of ours left in ``folder``: entries whose name matches the regular
    expression ``pattern`` (its group ``pid`` the writer's process id), whose process is gone and
    which nobody touched for ``older_than_s`` seconds. Returns what was removed; never raises."""
    import re
    import time

    removed = []
    rx = re.compile(pattern)
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = rx.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.lstat()
            if st.st_uid != os.geteuid() or now - st.st_mtime < older_than_s or _process_alive(int(m["pid"])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except (OSError, ValueError):
            continue
    return removed


def sweep_partials(target: Path) -> list[Path]:
    """Stale temporaries of earlier runs that wrote ``target`` (killed before they could clean up)."""
    import re
    return sweep_stale(target.parent, rf"\.{re.escape(target.name)}\.partial-(?P<pid>\d+)-[0-9a-f]{{8}}(\.\w+)?")


class ResultKept(UserError):
    """The output was written but could not be moved to its name; the message says where it is."""


def _place(tmp: Path, target: Path) -> None:
    """Rename the finished temporary ``tmp`` to ``target``. If that fails (the target is busy, a
    mount point...), the finished work is kept under a visible name next to it: ResultKept says where."""
    try:
        os.replace(tmp, target)
        return
    except OSError as e:
        reason = e.strerror or _short(e)
    kept = tmp
    for n in range(1, 100):
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists():
            try:
                os.rename(tmp, candidate)
                kept = candidate
            except OSError:
                pass
            break
    raise ResultKept(f"cannot put the result at {target} ({reason}); it is kept at {kept}")


class FrameWriter(ABC):
    """Writes ``(B, H, W, 3)`` uint8 batches to a temporary path; ``close`` renames into place."""

    kind = "?"

    def __init__(self, spec: OutputSpec, fps: Fraction, size: tuple[int, int]):
        self.spec = spec
        self.fps = Fraction(fps)
        self.size = size  # (w, h)
        self.frames_written = 0
        self._closed = False
        self.has_audio = False

    @property
    def duration(self) -> float:
        return self.frames_written / float(self.fps)

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        try:
            for f in frames:
                self._write_one(np.ascontiguousarray(f))
                self.frames_written += 1
            self._after_batch()
        except OSError as e:
            self._fail(e)
            raise

    def _fail(self, e: OSError) -> None:
        """A write failed: remove the temporary; a fault the user can fix becomes a UserError."""
        self.abort()
        message = disk_fault(e, str(self.spec.path))
        if message is not None:
            raise DiskFault(message, e.errno) from None

    @abstractmethod
    def _write_one(self, rgb: np.ndarray) -> None: ...

    def _after_batch(self) -> None:
        pass

    @abstractmethod
    def _finish(self) -> None:
        """Flush and rename the temporary into place."""

    @abstractmethod
    def _discard(self) -> None:
        """Remove the temporary."""

    def close(self) -> Path:
        if self._closed:
            return self.spec.path
        if self.frames_written == 0:
            self.abort()
            raise UserError("no frames were produced; check the driving video")
        try:
            self._finish()
        except ResultKept:
            self._closed = True  # the finished work stays where the message says
            raise
        except OSError as e:
            self._fail(e)
            raise
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.spec.path

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._discard()
            except OSError:
                pass

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class PngDirWriter(FrameWriter):
    """Numbered lossless PNG frames (``000000.png`` ...) in a directory, renamed into place at the end."""

    kind = "png"

    def __init__(self, spec: OutputSpec, fps: Fraction, size: tuple[int, int], compress_level: int = 3):
        super().__init__(spec, fps, size)
        self.tmp = _temp_name(spec.path)
        self.tmp.mkdir()
        self.compress_level = compress_level

    def _write_one(self, rgb: np.ndarray) -> None:
        Image.fromarray(rgb).save(self.tmp / PNG_PATTERN.format(self.frames_written), compress_level=self.compress_level)

    def _finish(self) -> None:
        target = self.spec.path
        old = None
        if target.exists():
            if not target.is_dir() or not _is_frame_dir(target):
                raise UserError(f"output directory {target} changed while writing; the result is left in {self.tmp}")
            old = _temp_name(target, ".old")
            try:
                os.replace(target, old)
            except OSError:
                old = None  # (a mount point): _place keeps the frames under another name
        try:
            _place(self.tmp, target)
        except ResultKept:
            if old is not None:  # the previous frames go back
                with contextlib.suppress(OSError):
                    os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class _AvWriter(FrameWriter):
    """A PyAV container written to a temporary file."""

    container_format = "?"

    def __init__(self, spec: OutputSpec, fps: Fraction, size: tuple[int, int]):
        super().__init__(spec, fps, size)
        self.tmp = _temp_name(spec.path, spec.path.suffix)
        self.container = None

    def _discard(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - closing a half-written file while aborting
                pass
            self.container = None
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass

    def _rename(self) -> None:
        _place(self.tmp, self.spec.path)


def video_encoder() -> str:
    """The H.264 encoder PyAV has here (libx264, else another H.264 encoder), else mpeg4."""
    av = _av()
    for name in ("libx264", "libopenh264", "h264"):
        if name in av.codecs_available:
            try:
                if av.Codec(name, "w").type == "video":
                    return name
            except Exception:  # noqa: BLE001 - a decoder-only name
                continue
    return "mpeg4"


class Mp4Writer(_AvWriter):
    """H.264 (yuv420p, even dimensions, faststart) with the driving video's audio (:class:`AudioCarrier`)."""

    kind = "mp4"

    def __init__(self, spec: OutputSpec, fps: Fraction, size: tuple[int, int], audio_from: "Path | None" = None,
                 audio_start: float = 0.0, crf: int = 18, preset: str = "medium"):
        super().__init__(spec, fps, size)
        av = _av()
        w, h = size
        self.even = (w + (w % 2), h + (h % 2))
        self.container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        codec = video_encoder()
        self.codec = codec
        self.stream = self.container.add_stream(codec, rate=self.fps)
        self.stream.width, self.stream.height = self.even
        self.stream.pix_fmt = "yuv420p"
        cc = self.stream.codec_context  # say what the RGB -> YUV conversion used (BT.601, limited range),
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 6, 1, 6, 6  # else HD players guess BT.709
        if codec == "libx264":
            self.stream.options = {"crf": str(crf), "preset": preset}
        else:
            self.stream.bit_rate = 4_000_000
        self.audio: "AudioCarrier | None" = None
        if audio_from is not None:
            self.audio = AudioCarrier.open(audio_from, self.container, audio_start)
            self.has_audio = self.audio is not None

    def _write_one(self, rgb: np.ndarray) -> None:
        av = _av()
        if rgb.shape[1] != self.even[0] or rgb.shape[0] != self.even[1]:
            rgb = np.pad(rgb, ((0, self.even[1] - rgb.shape[0]), (0, self.even[0] - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = Fraction(1) / self.fps
        self.container.mux(self.stream.encode(frame))

    def _after_batch(self) -> None:
        if self.audio is not None:
            self.audio.write_until(self.duration)  # keep audio and video interleaved as we go

    def _finish(self) -> None:
        self.container.mux(self.stream.encode(None))
        if self.audio is not None:
            self.audio.finish(self.duration)
        self.container.close()
        self.container = None
        self._rename()


class GifWriter(_AvWriter):
    """Animated GIF, streamed (one palette per frame, PyAV's gif encoder)."""

    kind = "gif"

    def __init__(self, spec: OutputSpec, fps: Fraction, size: tuple[int, int]):
        super().__init__(spec, fps, size)
        av = _av()
        self.container = av.open(str(self.tmp), mode="w", format="gif")
        self.stream = self.container.add_stream("gif", rate=self.fps)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "pal8"

    def _write_one(self, rgb: np.ndarray) -> None:
        av = _av()
        q = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        pal = np.asarray(q.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
        argb = np.zeros((256, 4), dtype=np.uint8)
        argb[:, 0] = 255
        argb[: len(pal), 1:] = pal
        frame = av.VideoFrame.from_ndarray((np.asarray(q), argb), format="pal8")
        frame.pts = self.frames_written
        frame.time_base = Fraction(1) / self.fps
        self.container.mux(self.stream.encode(frame))

    def _finish(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        self.container = None
        self._rename()


def open_writer(spec: "OutputSpec | str | os.PathLike", fps: Fraction, size: "int | tuple[int, int]",
                audio_from: "Path | None" = None, audio_start: float = 0.0, crf: int = 18,
                preset: str = "medium") -> FrameWriter:
    """A writer for a validated output; ``audio_from`` (mp4 only): a video whose audio is carried
    over, aligned so that its time ``audio_start`` (s) falls on the first output frame; ``crf``:
    H.264 quality (lower is better and larger); ``preset``: x264's speed / size trade-off."""
    if not isinstance(spec, OutputSpec):
        spec = check_output(spec)
    size = (size, size) if isinstance(size, int) else tuple(size)
    fps = Fraction(fps)
    if not 0 < fps <= MAX_FPS:
        raise UserError(f"frame rate {float(fps):g} is out of range; use --fps between 1 and {MAX_FPS}")
    try:
        if spec.kind == "mp4":
            return Mp4Writer(spec, fps, size, audio_from=audio_from, audio_start=audio_start, crf=crf, preset=preset)
        if spec.kind == "gif":
            return GifWriter(spec, fps, size)
        return PngDirWriter(spec, fps, size)
    except OSError as e:
        message = disk_fault(e, str(spec.path))
        if message is None:
            raise
        raise DiskFault(message.replace("location", "--output location"), e.errno) from None


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------

class AudioCarrier:
    """Carries the first audio track of a video into an output container as AAC, in sync.

    The input's audio is decoded, shifted so that input time ``start`` lands on output time 0,
    resampled to float planar (mono or stereo, the input's sample rate), and encoded to AAC while
    the video is written (:meth:`write_until` after each batch keeps the two interleaved and memory
    flat); :meth:`finish` trims it to the video's duration, sample-accurately. Gaps in the input
    become silence; overlaps and audio before ``start`` are dropped.
    """

    def __init__(self, path: Path, out_container, start: float):
        av = _av()
        self.path = path
        self.start = start
        self.input = av.open(str(path), metadata_errors="ignore")
        ist = self.input.streams.audio[0]
        ist.thread_type = "AUTO"
        channels = ist.codec_context.channels or 1
        self.layout = "mono" if channels == 1 else "stereo"
        self.channels = 1 if channels == 1 else 2
        self.rate = int(ist.rate or ist.codec_context.sample_rate)
        self.stream = out_container.add_stream("aac", rate=self.rate, layout=self.layout)
        self.stream.bit_rate = 128_000 if self.channels == 2 else 96_000
        self.container = out_container
        self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._chunks = self._decode(ist)
        self._pending: "np.ndarray | None" = None  # (C, n) float32 starting at output sample _pending_start
        self._pending_start = 0
        self.cursor = 0  # output samples handed to the encoder
        self.failed: "str | None" = None

    @classmethod
    def open(cls, path: Path, out_container, start: float) -> "AudioCarrier | None":
        """The carrier for ``path``'s first audio track, or None when it has none (or it cannot be read)."""
        av = _av()
        try:
            with av.open(str(path), metadata_errors="ignore") as c:
                if not c.streams.audio:
                    return None
                a = c.streams.audio[0]
                if not (a.rate or a.codec_context.sample_rate):
                    return None
            return cls(path, out_container, start)
        except (av.FFmpegError, ValueError) as e:
            warnings.warn(f"the driving video's audio cannot be read ({_short(e)}); the output has no sound")
            return None

    def _arrays(self, frame) -> Iterator[np.ndarray]:
        for rf in self.resampler.resample(frame) or []:
            yield rf.to_ndarray().astype(np.float32, copy=False).reshape(self.channels, -1)

    def _decode(self, ist) -> Iterator[tuple[int, np.ndarray]]:
        """(output sample position, (C, n) float32) chunks, in order."""
        av = _av()
        next_pos = None
        tol = self.rate // 1000 + 1  # timestamps within ~1 ms of contiguous are contiguous
        frames = self.input.decode(ist)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as e:  # damaged audio: keep what we have, the video goes on
                self.failed = _short(e)
                break
            t = frame.time
            first = True
            for arr in self._arrays(frame):
                pos = next_pos if next_pos is not None else 0
                if first and t is not None:
                    pos = int(round((t - self.start) * self.rate))
                    if next_pos is not None and abs(pos - next_pos) <= tol:
                        pos = next_pos
                first = False
                yield pos, arr
                next_pos = pos + arr.shape[1]
        for arr in self._arrays(None):
            pos = next_pos if next_pos is not None else 0
            yield pos, arr
            next_pos = pos + arr.shape[1]

    def _encode(self, samples: np.ndarray) -> None:
        av = _av()
        if samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = self.cursor
        frame.time_base = Fraction(1, self.rate)
        self.cursor += samples.shape[1]
        self.container.mux(self.stream.encode(frame))

    def write_until(self, seconds: float) -> None:
        """Encode audio up to output time ``seconds`` (as far as the input has audio)."""
        end = int(round(seconds * self.rate))
        while self.cursor < end:
            if self._pending is None:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return
                self._pending_start, self._pending = chunk
            arr, pos = self._pending, self._pending_start
            if pos + arr.shape[1] <= self.cursor:  # entirely before the cursor (pre-roll, overlap)
                self._pending = None
                continue
            if pos > self.cursor:  # a gap: silence up to this chunk
                self._encode(np.zeros((self.channels, min(pos, end) - self.cursor), np.float32))
                continue
            skip = self.cursor - pos
            take = min(arr.shape[1] - skip, end - self.cursor)
            self._encode(arr[:, skip:skip + take])
            if skip + take >= arr.shape[1]:
                self._pending = None
            else:
                self._pending = arr[:, skip + take:]
                self._pending_start = self.cursor

    def finish(self, seconds: float) -> None:
        """Write the audio up to the video's end (never beyond) and flush the encoder."""
        self.write_until(seconds)
        self.container.mux(self.stream.encode(None))
        self.input.close()
        if self.failed:
            warnings.warn(f"the driving video's audio is damaged ({self.failed}); the output keeps what could be read")
