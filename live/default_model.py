"""The model shipped with the package: ``live/assets/lite256.pth`` (config preset ``lite256``).

Its SHA-256 (hex, ``live/assets/lite256.sha256``) is checked the first time it is used in a
process, so a damaged or swapped file is caught with a clear message instead of odd output.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nets.checkpoint import sha256_file
from nets.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"
NAME = "lite256"
DEFAULT_CONFIG = "lite256"


def _paths(assets: Path) -> tuple[Path, Path]:
    return assets / f"{NAME}.pth", assets / f"{NAME}.sha256"


@lru_cache(maxsize=4)
def _verified(path: Path, size: int, mtime_ns: int, expected: str) -> bool:
    return sha256_file(path) == expected


def default_checkpoint(assets: "Path | None" = None) -> Path:
    """The shipped checkpoint, verified against its checksum; UserError when absent or damaged."""
    path, sha = _paths(Path(assets) if assets is not None else ASSETS)
    if not path.exists():
        raise UserError("no default model is shipped with this installation yet; pass --checkpoint PATH "
                        "--config PRESET (e.g. an official MRAA vox256 checkpoint with --config vox256)")
    if not sha.exists():
        raise UserError(f"the default model's checksum file {sha} is missing; reinstall mra-live or pass "
                        "--checkpoint PATH --config PRESET")
    expected = (sha.read_text().split() or [""])[0].strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise UserError(f"the default model's checksum file {sha} is not a SHA-256 hex digest; reinstall mra-live")
    st = path.stat()
    if not _verified(path, st.st_size, st.st_mtime_ns, expected):
        raise UserError(f"the default model {path} is damaged (its SHA-256 does not match {sha.name}); reinstall "
                        "mra-live or pass --checkpoint PATH --config PRESET")
    return path


def default_export_dir(assets: "Path | None" = None) -> Path:
    """The shipped ONNX export of the default model (``live/assets/lite256_onnx``), checked to be the
    export of the verified shipped checkpoint; UserError when absent or inconsistent."""
    import json

    assets = Path(assets) if assets is not None else ASSETS
    ckpt = default_checkpoint(assets)
    folder = assets / f"{NAME}_onnx"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"the default model's ONNX export {folder} is missing or damaged; reinstall mra-live or "
                        "use --backend torch") from None
    expected = (ckpt.with_suffix(".sha256").read_text().split() or [""])[0].strip().lower()
    if manifest.get("checkpoint", {}).get("sha256") != expected:
        raise UserError(f"the default model's ONNX export {folder} was made from another checkpoint; reinstall "
                        "mra-live or use --backend torch")
    return folder
