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
    """A recording: ``.mp4`` (H.264), ``.gif`` or a directory of numbered PNG frames, written to a
    temporary name and renamed when closed (``nets.media`` writers)."""

    name = "file"

    def __init__(self, path: "str | Path", fps: float, width: int, height: int):
        from fractions import Fraction

        from nets import media
        self.spec = media.check_output(path)
        self.path = self.spec.path
        # a live recording must keep up with the camera on the cores the model uses too: x264's veryfast
        # preset costs 8 ms of CPU per 1280x720 frame here, medium (mra-animate's) 18 ms
        self.writer = media.open_writer(self.spec, Fraction(fps).limit_denominator(1001), (width, height),
                                        preset="veryfast")
        self.size = self.writer.size  # (w, h) the file holds: an mp4's odd side loses its last row or column
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame[None])
        self.frames += 1

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()
