"""Capture: a webcam or a video file played as a camera, always delivering the newest frame.

A capture thread reads frames as they come and keeps only the newest one in a
:class:`LatestFrame` slot; frames the pipeline had no time for are dropped (and counted), never
queued up, so latency cannot build up. A camera that fails mid-run is re-opened every second
while the pipeline keeps showing the last good frame.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nets.errors import UserError


def quiet_opencv() -> None:
    """Keep OpenCV's native log lines (``[ERROR:0@0.013] global obsensor_uvc_stream_channel.cpp:158
    ... Camera index out of range`` when there is no camera) out of the terminal: the tools say what
    went wrong in their own words. OpenCV reads the level when it first logs, so this runs before
    any capture opens; an ``OPENCV_LOG_LEVEL`` the user set, or ``MRA_DEBUG=1``, keeps them."""
    if not os.environ.get("MRA_DEBUG"):
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")


quiet_opencv()


def _cv2():
    import cv2
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:  # pragma: no cover - older OpenCV
        pass
    return cv2


@dataclass
class Frame:
    """An RGB frame ``(H, W, 3)`` uint8, its capture time (``time.monotonic``) and index."""

    image: np.ndarray
    timestamp: float
    index: int


class LatestFrame:
    """A one-slot mailbox: ``put`` replaces the held frame; ``get`` waits for a newer one."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = True
        self.dropped = 0
        self.received = 0
        self.closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            if not self._taken:
                self.dropped += 1
            self._frame, self._taken = frame, False
            self.received += 1
            self._cond.notify_all()

    def get(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not yet taken, or None after ``timeout`` seconds (or when closed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._taken and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            if self._taken:
                return None
            self._taken = True
            return self._frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class CaptureSource:
    """Base of the frame sources: a thread that feeds a :class:`LatestFrame`."""

    name = "capture"

    def __init__(self):
        self.slot = LatestFrame()
        self.fps = 30.0
        self.size: tuple[int, int] = (0, 0)
        self.status = "starting"  # running | lost | ended
        self.lost_events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "CaptureSource":
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def ended(self) -> bool:
        return self.status == "ended"

    def _run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class IteratorSource(CaptureSource):
    """Frames from an iterator of RGB arrays, paced at ``fps`` (tests, and the base of file playback).

    When the iterator ends or raises, the source is ``lost`` (``on_end='lost'``, like an unplugged
    camera: reopened through ``reopen`` every ``retry_s`` seconds if given) or ``ended``.
    """

    def __init__(self, frames: "Callable[[], Iterator[np.ndarray]]", fps: float = 30.0, name: str = "frames",
                 on_end: str = "ended", retry_s: float = 1.0, reopen: "Callable[[], Iterator[np.ndarray]] | None" = None):
        super().__init__()
        self.name = name
        self.fps = fps
        self._open = frames
        self._reopen = reopen
        self.on_end = on_end
        self.retry_s = retry_s
        self.error: "UserError | None" = None  # why the frames ended early (a damaged file)

    def _run(self) -> None:
        index = 0
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        opener = self._open
        while not self._stop.is_set():
            try:
                it = opener()
                self.status = "running"
                next_t = time.monotonic()
                for image in it:
                    if self._stop.is_set():
                        return
                    now = time.monotonic()
                    if period and next_t > now:
                        time.sleep(next_t - now)
                    next_t = max(next_t + period, time.monotonic() - period)
                    self.size = (image.shape[1], image.shape[0])
                    self.slot.put(Frame(image=image, timestamp=time.monotonic(), index=index))
                    index += 1
            except UserError as e:  # a damaged video file: the frames end here, and the tool says why
                self.error = e
            except Exception:  # a camera unplugged, a decode error: treated like the end of frames
                pass
            if self.on_end != "lost" or self._reopen is None:
                self.status = "ended"
                self.slot.close()
                return
            self.status = "lost"
            self.lost_events += 1
            opener = self._reopen
            self._stop.wait(self.retry_s)


class VideoFileSource(IteratorSource):
    """A video file played as a camera at its own frame rate (optionally looping), read by
    :mod:`nets.media`: damage part-way ends the frames with :attr:`error` set (a one-line UserError)."""

    def __init__(self, path: "str | Path", loop: bool = False):
        from nets import media

        info = media.probe_video(path, what="camera file")

        def frames() -> Iterator[np.ndarray]:
            while True:
                count = 0
                for f in media.VideoReader(info.path, what="camera file", info=info).frames():
                    count += 1
                    yield f.rgb
                if not loop or not count:
                    return

        super().__init__(frames, fps=float(info.fps), name=info.path.name)
        self.size = (info.width, info.height)


class CameraSource(IteratorSource):
    """A webcam by index (OpenCV). If it stops delivering (unplugged), it is re-opened every second."""

    def __init__(self, index: int, width: int | None = None, height: int | None = None, fps: float | None = None):
        cv2 = _cv2()
        self.index = index
        self._want = (width, height, fps)
        cap = self._open_capture()
        if cap is None:
            raise UserError(f"no camera at index {index} (or it is busy in another program): close other apps "
                            "using it, try another --camera index (see mra-live --list-cameras), or pass a video "
                            "file with --camera PATH")
        self._cap = cap
        cam_fps = cap.get(cv2.CAP_PROP_FPS)
        super().__init__(self._frames, fps=0.0, name=f"camera{index}", on_end="lost", reopen=self._reopen_frames)
        self.fps = cam_fps if 1 <= cam_fps <= 240 else 30.0
        self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def _open_capture(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            return None
        w, h, fps = self._want
        if w:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        if h:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        ok, _ = cap.read()
        if not ok:
            cap.release()
            return None
        return cap

    def _frames(self) -> Iterator[np.ndarray]:
        cv2 = _cv2()
        cap = self._cap
        try:
            while True:
                ok, bgr = cap.read()  # blocks at the camera's rate
                if not ok:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    def _reopen_frames(self) -> Iterator[np.ndarray]:
        cap = self._open_capture()
        if cap is None:
            raise RuntimeError("camera still unavailable")
        self._cap = cap
        return self._frames()


def list_cameras(max_index: int = 10) -> list[tuple[int, int, int, float]]:
    """``(index, width, height, fps)`` of each camera OpenCV can open among the first ``max_index``."""
    cv2 = _cv2()
    found = []
    for i in range(max_index):
        cap = cv2.VideoCapture(i)
        if cap.isOpened():
            ok, _ = cap.read()
            if ok:
                found.append((i, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              float(cap.get(cv2.CAP_PROP_FPS))))
        cap.release()
    return found


def open_capture(spec: str, loop: bool = False, width: int | None = None, height: int | None = None) -> CaptureSource:
    """``--camera`` value: a webcam index (``0``) or a video file path."""
    if spec.isdigit():
        return CameraSource(int(spec), width=width, height=height)
    return VideoFileSource(spec, loop=loop)
