"""Outputs: validated output paths and writers (mp4, gif, a folder of PNGs) that write to a temporary
name and rename at the end, so a failed run never clobbers an existing output."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from nets.errors import DiskFault, UserError, disk_fault
from .audio import AudioCarrier
from .files import pyav, short_error
from .video import MAX_FPS

OUTPUT_KINDS = ("mp4", "gif", "png")  # png = a directory of numbered PNG frames
STALE_AFTER_S = 600.0  # a temporary of a process that is gone, untouched this long, is swept
PNG_PATTERN = "{:06d}.png"


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
        raise UserError(f"cannot write to output folder {folder} ({e.strerror or short_error(e)}); choose a writable "
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


def temp_name(target: Path, suffix: str = "") -> Path:
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
        reason = e.strerror or short_error(e)
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


def even_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` with each side rounded down to an even number (at least 2), which H.264
    in yuv420p (2x2 colour blocks) needs. Every size that is made even is made even here, always
    downwards: a size the user asked for is never exceeded."""
    return max(2, int(width) - int(width) % 2), max(2, int(height) - int(height) % 2)


def written_size(kind: str, size: "tuple[int, int]") -> tuple[int, int]:
    """The ``(width, height)`` an output of ``kind`` (mp4, gif, png) is written at for frames of
    ``size``: :func:`even_size` for mp4, the frames' own size otherwise. Callers that render for an
    output use it first, so the frames are made at that size and the tools can say it."""
    return even_size(*size) if kind == "mp4" else (int(size[0]), int(size[1]))


class FrameWriter(ABC):
    """Writes ``(B, H, W, 3)`` uint8 batches to a temporary path; ``close`` renames into place."""

    kind = "?"

    def __init__(self, spec: OutputSpec, fps: Fraction, size: tuple[int, int]):
        self.spec = spec
        self.fps = Fraction(fps)
        self.size = written_size(self.kind, size)  # (w, h): what the file holds
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
        self.tmp = temp_name(spec.path)
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
            old = temp_name(target, ".old")
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
        self.tmp = temp_name(spec.path, spec.path.suffix)
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
    av = pyav()
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
        av = pyav()
        self.container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        codec = video_encoder()
        self.codec = codec
        self.stream = self.container.add_stream(codec, rate=self.fps)
        self.stream.width, self.stream.height = self.size
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
        av = pyav()
        w, h = self.size
        if rgb.shape[1] != w or rgb.shape[0] != h:  # an odd side: its last column or row is left out
            rgb = np.ascontiguousarray(rgb[:h, :w])
            if rgb.shape[1] < w or rgb.shape[0] < h:  # (frames smaller than announced)
                rgb = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
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
        av = pyav()
        self.container = av.open(str(self.tmp), mode="w", format="gif")
        self.stream = self.container.add_stream("gif", rate=self.fps)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "pal8"

    def _write_one(self, rgb: np.ndarray) -> None:
        av = pyav()
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
