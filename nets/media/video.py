"""Video input: probing, streaming decoded frames one at a time, constant-rate resampling."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from nets.errors import UserError
from .files import VIDEO_EXTS, VIDEO_HINT, check_input_file, pyav, short_error

MAX_FPS = 240
FALLBACK_FPS = Fraction(25)
VIDEO_DEMUXERS = {"mov", "mp4", "avi", "matroska", "webm", "gif"}  # FFmpeg's names for the VIDEO_EXTS containers


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
    av = pyav()
    try:
        return av.open(str(p), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise UserError(f"cannot read {what} {p.name}: not a valid video ({short_error(e, 80)}; the file is corrupted, "
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
    av = pyav()
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
                            f"({short_error(e, 80)}); re-encode or re-download it") from None
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
        av = pyav()
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
                                    f"(decoding failed after {index} frames: {short_error(e, 60)}); re-encode or "
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
