"""MRAA (Motion Representations for Articulated Animation) networks in PyTorch.

Public API::

    import nets
    model = nets.load_model(path, config="vox256")          # eval mode, CPU; .to(device) works
    r = model.regions(frame)                                 # Regions: shift (B,K,2), covar, affine, heatmap
    bg = model.background(source, driving)                   # (B,3,3)
    new = model.transfer(source_r, driving_r, initial_r, mode="relative")
    out = model.animate(source, source_r, new, bg=None)      # AnimationOutput
"""
import importlib
from typing import TYPE_CHECKING

# Names are imported on first use (PEP 562), so that ``nets.errors`` (imported first by every
# command) does not pull in PyTorch: the commands then catch a Ctrl-C during that long import.
_HOME = {
    "CheckpointError": "checkpoint", "load_model": "checkpoint", "read_checkpoint": "checkpoint",
    "save_model": "checkpoint", "save_official": "checkpoint", "sha256_file": "checkpoint",
    "to_official": "checkpoint", "from_official": "checkpoint",
    "Config": "config", "ConfigError": "config", "ModelConfig": "config", "load_config": "config",
    "preset": "config", "PRESETS": "config", "OFFICIAL_PRESETS": "config",
    "FlowOutput": "flow", "FlowSource": "flow",
    "MRAA": "model", "AnimationOutput": "model", "SourceCache": "model", "build_model": "model",
    "Regions": "regions", "MODES": "transfer",
}
__all__ = sorted(_HOME)

if TYPE_CHECKING:  # what static tools see
    from .checkpoint import (CheckpointError, load_model, read_checkpoint, save_model, save_official, sha256_file,
                             to_official, from_official)
    from .config import Config, ConfigError, ModelConfig, load_config, preset, PRESETS, OFFICIAL_PRESETS
    from .flow import FlowOutput, FlowSource
    from .model import MRAA, AnimationOutput, SourceCache, build_model
    from .regions import Regions
    from .transfer import MODES


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'nets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
