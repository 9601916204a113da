"""Training checkpoints that resume bit-identically and load with ``torch.load(weights_only=True)``.

A training checkpoint is the project's own model format (:func:`nets.checkpoint.model_payload`:
config embedded, so ``nets.load_model(run_dir / "checkpoint.pth")`` works without a config) with
one extra entry ``train``::

    {"stage": "reconstruction" | "avd", "step": int, "epoch": int, "epoch_samples": int,
     "optimizer": <state dict>, "scheduler": <state dict, milestones as a plain dict>,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...}, "python": [...],
             "loader": ByteTensor},
     "seed": int, "loss": "vgg19_perceptual" | "l1_ssim_pyramid" | "avd_l1", "batch_size": int,
     "world_size": int, "data": str, ...}

Everything is plain data (tensors, numbers, strings, lists, dicts): numpy's and Python's RNG
states are converted to lists/tensors, and MultiStepLR's ``Counter`` to a dict.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, FORMAT, read_checkpoint, save_model
from ..model import MRAA

CHECKPOINT_NAME = "checkpoint.pth"


@dataclass
class TrainingState:
    """The ``train`` entry of a training checkpoint (see the module doc), typed.

    ``extra`` holds what the stage adds (``Stage.extra_state``, e.g. the discriminator's
    ``adversary``); in the checkpoint its keys sit beside the others, as :meth:`to_dict` writes them.
    """

    stage: str
    step: int
    epoch: int
    epoch_samples: int
    optimizer: "dict[str, Any]"
    scheduler: "dict[str, Any]"
    scaler: "dict[str, Any]"
    rng: "dict[str, Any]"
    seed: int
    loss: "str | None" = None
    batch_size: "int | None" = None
    world_size: "int | None" = None
    data: "str | None" = None
    config_name: "str | None" = None
    extra: "dict[str, Any]" = field(default_factory=dict)

    def to_dict(self) -> "dict[str, Any]":
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: "dict[str, Any]") -> "TrainingState":
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        known.setdefault("scaler", {})
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------

def capture_rng(loader_generator: "torch.Generator | None" = None) -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, Python) and the dataloader generator's, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [int(version), [int(x) for x in internal], gauss],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def restore_rng(state: dict[str, Any], loader_generator: "torch.Generator | None" = None) -> None:
    """Inverse of :func:`capture_rng` (missing entries are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


# ---------------------------------------------------------------------------------------------
# Scheduler state
# ---------------------------------------------------------------------------------------------

def scheduler_state(scheduler) -> dict[str, Any]:
    """``scheduler.state_dict()`` with Counters turned into plain dicts (weights_only-safe)."""
    out = {}
    for k, v in scheduler.state_dict().items():
        out[k] = {"__counter__": {int(a): int(b) for a, b in v.items()}} if isinstance(v, Counter) else v
    return out


def load_scheduler_state(scheduler, state: dict[str, Any]) -> None:
    restored = {}
    for k, v in state.items():
        restored[k] = Counter(v["__counter__"]) if isinstance(v, dict) and "__counter__" in v else v
    scheduler.load_state_dict(restored)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def checkpoint_path(run_dir: "str | Path") -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def save_training_checkpoint(path: "str | Path", model: MRAA, train: dict[str, Any]) -> None:
    """Atomically write the model (own format) with the ``train`` state."""
    save_model(model, path, train=train)


def read_training_checkpoint(path: "str | Path") -> dict[str, Any]:
    """An own-format checkpoint (training state optional); CheckpointError otherwise."""
    data = read_checkpoint(path)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mra-live checkpoint; to start from an official checkpoint use "
                              "--init PATH --config PRESET instead of --resume")
    return data
