"""Where animated frames go: the virtual camera, a preview window, a video file (several at once)."""
from __future__ import annotations

import platform
import queue
from pathlib import Path

import numpy as np

from nets.errors import UserError

VIRTUALCAM_HELP = {
    "Linux": "create one with: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=mra-live "
             "(package v4l2loopback-dkms), then run mra-live again",
    "Windows": "install OBS Studio (28 or newer), start its Virtual Camera once, then run mra-live again",
    "Darwin": "install OBS Studio (28 or newer), start its Virtual Camera once, then run mra-live again",
}


class Sink:
    name = "sink"

    def write(self, frame: np.ndarray) -> None:
        """frame ``(H, W, 3)`` uint8 RGB."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class VirtualCamSink(Sink):
    """pyvirtualcam: v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS."""

    name = "virtualcam"

    def __init__(self, width: int, height: int, fps: float, device: str | None = None):
        try:
            import pyvirtualcam
        except ImportError:
            raise UserError("pyvirtualcam is not installed: pip install pyvirtualcam, or use --output window|PATH") from None
        try:
            self.cam = pyvirtualcam.Camera(width=width, height=height, fps=fps, device=device,
                                           fmt=pyvirtualcam.PixelFormat.RGB)
        except Exception as e:  # RuntimeError when no device exists
            help_text = VIRTUALCAM_HELP.get(platform.system(), VIRTUALCAM_HELP["Linux"])
            raise UserError(f"no virtual camera device ({' '.join(str(e).split())[:160]}); {help_text}; or use "
                            "--output window or --output out.mp4") from None
        self.device = self.cam.device

    def write(self, frame: np.ndarray) -> None:
        self.cam.send(np.ascontiguousarray(frame))

    def close(self) -> None:
        self.cam.close()


class WindowSink(Sink):
    """An OpenCV preview window; its key presses are forwarded to the command queue."""

    name = "window"

    def __init__(self, commands: "queue.Queue[str]", title: str = "mra-live"):
        import cv2
        self.cv2 = cv2
        self.title = title
        self.commands = commands
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except Exception as e:
            raise UserError(f"cannot open a preview window ({' '.join(str(e).split())[:120]}); no display? use "
                            "--output virtualcam or --output out.mp4") from None

    def write(self, frame: np.ndarray) -> None:
        self.cv2.imshow(self.title, frame[:, :, ::-1])
        key = self.cv2.waitKey(1) & 0xFF
        if key != 0xFF:
            self.commands.put(chr(key) if key < 128 else "")

    def close(self) -> None:
        try:
            self.cv2.destroyWindow(self.title)
        except Exception:
            pass


class FileSink(Sink):
    """A video file (H.264 mp4 via PyAV), written to a temporary name and renamed when closed."""

    name = "file"

    def __init__(self, path: "str | Path", fps: float, width: int, height: int):
        import av
        self.path = Path(path)
        if not self.path.parent.exists():
            raise UserError(f"output directory does not exist: {self.path.parent}")
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        try:
            self.container = av.open(str(self.tmp), mode="w")
        except Exception as e:
            raise UserError(f"cannot write {self.path}: {' '.join(str(e).split())[:120]}") from None
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        from fractions import Fraction
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"preset": "veryfast", "crf": "18"}
        self.frames = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        import av
        h, w = self.stream.height, self.stream.width
        if frame.shape[0] != h or frame.shape[1] != w:
            frame = np.pad(frame, ((0, h - frame.shape[0]), (0, w - frame.shape[1]), (0, 0)), mode="edge")
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.tmp.replace(self.path)
