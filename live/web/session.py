"""mra-web's webcam tab: browser frames -> the mra-live pipeline -> browser."""
from __future__ import annotations

import collections
import struct
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nets.errors import UserError

from ..engines import check_mode_and_crop
from ..loop.capture import CaptureSource, Frame, LatestFrame
from ..loop.stats import LiveStats

# What one webcam frame may be: a webcam's picture (either way round) in one message of at most
# MAX_LIVE_FRAME_BYTES. The page sends JPEGs of at most 640 pixels a side (some 50 kB); anything
# larger did not come from it and is refused from its header before a byte of it is decompressed
# (a 300-byte JPEG can claim 20000x20000 pixels: 1.2 GB once decoded).
MAX_LIVE_FRAME = (1920, 1080)
MAX_LIVE_FRAME_BYTES = 4 * 1024 * 1024


class FrameRefused(UserError):
    """A webcam frame over :data:`MAX_LIVE_FRAME` or :data:`MAX_LIVE_FRAME_BYTES`: the session ends with this message."""


class BrowserSource(CaptureSource):
    """The browser's webcam as a :class:`~live.loop.capture.CaptureSource`.

    ``push(jpeg, client_id)`` (from the web socket) checks the frame's size from its header
    (:class:`FrameRefused` when it is over :data:`MAX_LIVE_FRAME`; a frame that is not a JPEG,
    WebP or PNG is counted in ``bad_frames`` and dropped) and keeps only the newest undecoded
    frame, so one socket has at most one frame waiting and one being decoded; the capture thread
    decodes it and hands it to the pipeline with the time it arrived, like a
    camera. ``client_id`` (the page's frame number) is remembered by arrival time, so the frame
    sent back can carry it (:meth:`client_id`)."""

    name = "browser"

    def __init__(self):
        super().__init__()
        self._raw = LatestFrame()
        self._ids: "collections.OrderedDict[float, int]" = collections.OrderedDict()
        self._ids_lock = threading.Lock()
        self.bad_frames = 0

    def push(self, data: bytes, client_id: int) -> None:
        from nets import media

        if len(data) > MAX_LIVE_FRAME_BYTES:
            raise FrameRefused(f"a webcam frame of {len(data) / 2**20:.1f} MB was refused: frames may be at most "
                               f"{MAX_LIVE_FRAME_BYTES / 2**20:g} MB; the page sends JPEGs of some 50 kB")
        try:
            media.check_image_bytes(data, MAX_LIVE_FRAME)  # from the header alone
        except media.ImageSizeError as e:
            raise FrameRefused(f"a webcam frame was refused: {e} (a webcam's size; the page sends frames of at "
                               "most 640 pixels a side)") from None
        except media.ImageBytesError:
            self.bad_frames += 1
            return
        self._raw.put(Frame(image=data, timestamp=time.monotonic(), index=client_id))

    def end(self) -> None:
        """No more frames (the page stopped or left): the pipeline finishes like at the end of a file."""
        self._raw.close()

    def stop(self) -> None:
        self._raw.close()
        super().stop()

    @property
    def received(self) -> int:
        return self._raw.received

    @property
    def dropped_before_decode(self) -> int:
        return self._raw.dropped

    def client_id(self, timestamp: float) -> int:
        with self._ids_lock:
            return self._ids.pop(timestamp, 0)

    def _run(self) -> None:
        from nets import media

        self.status = "running"
        try:
            while not self._stop.is_set():
                raw = self._raw.get(timeout=0.5)
                if raw is None:
                    if self._raw.closed:
                        break
                    continue
                try:
                    rgb = media.decode_image_bytes(raw.image, MAX_LIVE_FRAME)  # (checked again: one rule)
                except media.ImageBytesError:
                    self.bad_frames += 1
                    continue
                self.size = (rgb.shape[1], rgb.shape[0])
                with self._ids_lock:
                    self._ids[raw.timestamp] = raw.index
                    while len(self._ids) > 256:
                        self._ids.popitem(last=False)
                self.slot.put(Frame(image=rgb, timestamp=raw.timestamp, index=raw.index))
        finally:
            self.status = "ended"
            self.slot.close()


class BrowserSink:
    """Sends animated frames back to the page: ``<uint32 client frame id, little-endian> + JPEG``.

    The pipeline's sink loop calls ``write(image)`` and right after it ``stats.output(capture
    time)`` (see :class:`_SinkStats`), which calls :meth:`flush` with the id of the browser frame
    the image was made from."""

    name = "browser"

    def __init__(self, send: Callable[[bytes], None], quality: int = 85):
        self.send = send
        self.quality = quality
        self._pending: "np.ndarray | None" = None
        self.sent = 0

    def write(self, frame: np.ndarray) -> None:
        self._pending = frame

    def flush(self, client_id: int) -> None:
        import cv2
        frame, self._pending = self._pending, None
        if frame is None:
            return
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if ok:
            self.send(struct.pack("<I", client_id & 0xFFFFFFFF) + jpeg.tobytes())
            self.sent += 1

    def close(self) -> None:
        self._pending = None


class _SinkStats(LiveStats):
    """LiveStats that tells the browser sink which captured frame the output it just got came from."""

    def __init__(self, on_output: Callable[[float], None]):
        super().__init__()
        self._on_output = on_output

    def output(self, capture_ts: float, now: "float | None" = None) -> None:
        super().output(capture_ts, now)
        self._on_output(capture_ts)


class LiveSession:
    """One webcam tab: a :class:`BrowserSource` -> :class:`~live.loop.pipeline.LivePipeline` -> :class:`BrowserSink`.

    The constructor prepares the avatar (so a portrait without a face fails here, with
    mra-animate's message); :meth:`start` runs the pipeline in a thread; :meth:`close` ends it.
    ``output_size``: the long side of the frames sent back: the whole portrait with the animated
    face pasted back (``paste_back`` and crop auto), else the square crop.
    """

    def __init__(self, engine, portrait: Path, crop: str, mode: str, output_size: int,
                 send: Callable[[bytes], None], on_end: "Callable[[BaseException | None], None]" = lambda e: None,
                 paste_back: bool = True, expression: float = 1.0):
        import queue

        from nets import media
        from ..portrait import prepare_portrait
        from nets.media.face import FaceDetector, FaceTracker, TrackerSettings
        from ..pasteback import capped_size
        from ..loop.pipeline import AvatarImage, Avatars, CenterCropper, FaceCropper, LiveOptions, LivePipeline

        check_mode_and_crop(mode, crop, engine)
        self.detector = FaceDetector() if crop == "auto" else None
        try:
            def load(path: Path) -> AvatarImage:
                rgb = media.read_image(path)
                full = capped_size(rgb.shape[1], rgb.shape[0], output_size) if paste_back else False
                src, paste = prepare_portrait(rgb, engine.frame_size, crop, self.detector, full)  # mra-animate's wording
                return AvatarImage(media.to_input(src[None]), paste)

            self.avatars = Avatars(engine, [portrait], load)
            self.avatars.current()  # the portrait is checked (and prepared) now
            self.source = BrowserSource()
            self.sink = BrowserSink(send)
            self.stats = _SinkStats(lambda ts: self.sink.flush(self.source.client_id(ts)))
            self.commands: "queue.Queue[str]" = queue.Queue()
            cropper = (FaceCropper(FaceTracker(self.detector, settings=TrackerSettings(detect_every=2)))
                       if self.detector is not None else CenterCropper())
            self.pipeline = LivePipeline(engine, self.source, cropper, self.avatars, [self.sink],
                                         LiveOptions(mode=mode, output_size=output_size, expression=expression),
                                         commands=self.commands,
                                         stats=self.stats)
        except BaseException:
            self._close_detector()
            raise
        self.on_end = on_end
        self.error: "BaseException | None" = None
        self._thread = threading.Thread(target=self._run, name="mra-web-live", daemon=True)

    def start(self) -> "LiveSession":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as e:  # noqa: BLE001 - reported to the page
            self.error = e
        finally:
            self._close_detector()
            self.on_end(self.error)

    def push(self, data: bytes) -> None:
        if len(data) > 4:
            (client_id,) = struct.unpack_from("<I", data)
            self.source.push(data[4:], client_id)

    def command(self, key: str) -> None:
        if key in ("r", "m", "+", "-"):
            self.commands.put(key)

    def set_expression(self, gain: float) -> None:
        """The expression strength from the page's slider (takes effect on the next frame)."""
        self.pipeline.set_expression(gain)

    def close(self, timeout: float = 10.0) -> None:
        self.source.end()
        self.commands.put("q")
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        elif not self._thread.ident:
            self._close_detector()

    def _close_detector(self) -> None:
        if getattr(self, "detector", None) is not None:
            self.detector.close()
            self.detector = None

    def status(self) -> dict:
        snap = self.stats.snapshot()
        return {"type": "stats", "frames_in": self.source.received,
                "frames_out": snap.frames_out, "fps_out": snap.fps_out,
                "dropped": snap.frames_dropped + self.source.dropped_before_decode,
                "face_lost_frames": snap.face_lost_frames, "mode": self.pipeline.mode,
                "server_latency_ms": asdict(snap.latency_ms),
                "stages_ms": {k: v.median_ms for k, v in snap.stages.items()}}


@dataclass(eq=False)
class LivePlace:
    """One of the webcam tab's ``--max-live`` places: taken when a socket says ``start`` (before its
    portrait is read), holding that socket's :class:`LiveSession` once the portrait is prepared."""

    session: "LiveSession | None" = None


class LivePlaces:
    """The webcam tab's places, at most ``limit`` taken at once; shared by the sockets (on the event
    loop) and the server's shutdown (another thread). ``len()`` is the number taken."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._taken: list[LivePlace] = []

    def take(self) -> LivePlace:
        """A free place; a :class:`UserError` ("busy") when all are taken."""
        with self._lock:
            if len(self._taken) >= self.limit:
                raise UserError(f"the webcam tab is busy ({self.limit} session(s) at a time, --max-live); stop the "
                                "other one first")
            place = LivePlace()
            self._taken.append(place)
            return place

    def release(self, place: LivePlace) -> None:
        """The place is free again (a place released twice is released once)."""
        with self._lock:
            self._taken = [p for p in self._taken if p is not place]

    def sessions(self) -> "list[LiveSession]":
        """The sessions of the places taken now (a place whose portrait is being prepared has none yet)."""
        with self._lock:
            return [p.session for p in self._taken if p.session is not None]

    def __len__(self) -> int:
        with self._lock:
            return len(self._taken)
