"""MRAA (Motion Representations for Articulated Animation) networks in PyTorch.

Public API::

    import nets
    model = nets.load_model(path, config="vox256")          # eval mode, CPU; .to(device) works
    r = model.regions(frame)                                 # Regions: shift (B,K,2), covar, affine, heatmap
    bg = model.background(source, driving)                   # (B,3,3)
    new = model.transfer(source_r, driving_r, initial_r, mode="relative")
    out = model.animate(source, source_r, new, bg=None)      # AnimationOutput
"""
from .checkpoint import (CheckpointError, load_model, read_checkpoint, save_model, save_official, sha256_file,
                         to_official, from_official)
from .config import Config, ConfigError, ModelConfig, load_config, preset, PRESETS, OFFICIAL_PRESETS
from .flow import FlowOutput, FlowSource
from .model import MRAA, AnimationOutput, SourceCache, build_model
from .regions import Regions
from .transfer import MODES

__all__ = [
    "AnimationOutput", "CheckpointError", "Config", "ConfigError", "FlowOutput", "FlowSource", "MODES", "MRAA",
    "ModelConfig", "OFFICIAL_PRESETS", "PRESETS", "Regions", "SourceCache", "build_model", "from_official",
    "load_config", "load_model", "preset", "read_checkpoint", "save_model", "save_official", "sha256_file",
    "to_official",
]
