"""Where mra-live keeps what it makes for itself (ONNX exports of checkpoints, TensorRT engines)."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$MRA_CACHE_DIR``, else ``$XDG_CACHE_HOME/mra-live``, else ``~/.cache/mra-live``."""
    if os.environ.get("MRA_CACHE_DIR"):
        return Path(os.environ["MRA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mra-live"
