"""Audio: the driving video's first audio track carried into an output, in sync."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .files import pyav, short_error


class AudioCarrier:
    """Carries the first audio track of a video into an output container as AAC, in sync.

    The input's audio is decoded, shifted so that input time ``start`` lands on output time 0,
    resampled to float planar (mono or stereo, the input's sample rate), and encoded to AAC while
    the video is written (:meth:`write_until` after each batch keeps the two interleaved and memory
    flat); :meth:`finish` trims it to the video's duration, sample-accurately. Gaps in the input
    become silence; overlaps and audio before ``start`` are dropped.
    """

    def __init__(self, path: Path, out_container, start: float):
        av = pyav()
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
        av = pyav()
        try:
            with av.open(str(path), metadata_errors="ignore") as c:
                if not c.streams.audio:
                    return None
                a = c.streams.audio[0]
                if not (a.rate or a.codec_context.sample_rate):
                    return None
            return cls(path, out_container, start)
        except (av.FFmpegError, ValueError) as e:
            warnings.warn(f"the driving video's audio cannot be read ({short_error(e)}); the output has no sound")
            return None

    def _arrays(self, frame) -> Iterator[np.ndarray]:
        for rf in self.resampler.resample(frame) or []:
            yield rf.to_ndarray().astype(np.float32, copy=False).reshape(self.channels, -1)

    def _decode(self, ist) -> Iterator[tuple[int, np.ndarray]]:
        """(output sample position, (C, n) float32) chunks, in order."""
        av = pyav()
        next_pos = None
        tol = self.rate // 1000 + 1  # timestamps within ~1 ms of contiguous are contiguous
        frames = self.input.decode(ist)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as e:  # damaged audio: keep what we have, the video goes on
                self.failed = short_error(e)
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
        av = pyav()
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
