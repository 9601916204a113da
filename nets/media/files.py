"""Input files: the extensions and hints shown to the user, the checks every reader makes first, and
the two helpers every media module shares (PyAV imported on first use, short error reasons)."""

from __future__ import annotations

import os
from pathlib import Path

from nets.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".webm", ".gif", ".mkv", ".m4v")
IMAGE_HINT = "PNG, JPEG, WebP or BMP"
VIDEO_HINT = "mp4, mov, avi, webm or gif"


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



def short_error(e: BaseException, n: int = 120) -> str:
    """A one-line reason for ``e`` (FFmpeg errors without the file name), at most ``n`` characters."""
    s = getattr(e, "strerror", None) if type(e).__module__.startswith("av") else None  # FFmpeg: no file name
    s = " ".join(str(s or e).split()) or type(e).__name__
    return s if len(s) <= n else s[: n - 3] + "..."



def pyav():
    """The PyAV module, imported on first use."""
    import av  # PyAV
    return av
