"""One small engine API for the tools (animate, live, web, benchmarks), with backends behind it.

Everything crossing this API is numpy (float32), so callers never care which backend runs:

* frames: ``(B, 3, S, S)`` float32 in [0, 1], S = ``engine.frame_size``;
* region parameters: :class:`RegionParams` (shift ``(B, K, 2)``, covar and affine ``(B, K, 2, 2)``);
* an :class:`Avatar` holds everything that depends only on the source image (computed once).

Backends: :class:`TorchEngine` (PyTorch, cpu or cuda) here; the ONNX Runtime engine lives in
``export.runtime`` (added by the export issue) and implements the same methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import nets
from nets.regions import Regions

MODES = ("relative", "avd", "standard")


@dataclass
class RegionParams:
    """Region parameters as numpy float32: shift ``(B, K, 2)``, covar / affine ``(B, K, 2, 2)`` (or None)."""

    shift: np.ndarray
    covar: "np.ndarray | None" = None
    affine: "np.ndarray | None" = None

    @classmethod
    def from_regions(cls, r: Regions) -> "RegionParams":
        f = lambda t: None if t is None else t.detach().float().cpu().numpy()  # noqa: E731
        return cls(shift=f(r.shift), covar=f(r.covar), affine=f(r.affine))

    def to_regions(self, device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32) -> Regions:
        f = lambda a: None if a is None else torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return Regions(shift=f(self.shift), covar=f(self.covar), affine=f(self.affine))

    def copy(self) -> "RegionParams":
        return RegionParams(*(None if a is None else a.copy() for a in (self.shift, self.covar, self.affine)))

    @property
    def batch_size(self) -> int:
        return self.shift.shape[0]


@dataclass
class Avatar:
    """A prepared source: its image ``(1, 3, S, S)``, region parameters and backend-specific cache."""

    image: np.ndarray
    regions: RegionParams
    cache: Any = field(repr=False, default=None)


class EngineError(RuntimeError):
    """The engine cannot do what was asked (e.g. avd mode without an AVD network)."""


class Engine(ABC):
    """Per-avatar caching animation engine. Subclasses set the attributes below."""

    backend: str = "?"
    device: str = "cpu"
    frame_size: int = 256
    num_regions: int = 10
    has_avd: bool = False
    config_name: str = "?"

    @abstractmethod
    def prepare_source(self, image: np.ndarray) -> Avatar:
        """image ``(1, 3, S, S)`` float32 in [0, 1] -> :class:`Avatar` (source-only work done once)."""

    @abstractmethod
    def regions(self, frames: np.ndarray) -> RegionParams:
        """frames ``(B, 3, S, S)`` float32 in [0, 1] -> region parameters."""

    @abstractmethod
    def transfer(self, avatar: Avatar, driving: RegionParams, initial: "RegionParams | None",
                 mode: str = "relative") -> RegionParams:
        """Motion transfer (``relative`` | ``avd`` | ``standard``) onto the avatar."""

    @abstractmethod
    def animate(self, avatar: Avatar, params: RegionParams) -> np.ndarray:
        """params (batch B) -> frames ``(B, 3, S, S)`` float32 in [0, 1]."""

    def providers(self) -> dict[str, str]:
        """Which provider/device actually runs each part (never a silent fallback)."""
        return {}

    def describe(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.providers().items())
        return f"{self.backend} engine ({self.config_name}, {self.frame_size}px){' - ' + parts if parts else ''}"

    def check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise EngineError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "avd" and not self.has_avd:
            raise EngineError("this model has no trained AVD network: use --mode relative or standard")


class TorchEngine(Engine):
    """The PyTorch backend (cpu or cuda; ``dtype`` float32, float16 or bfloat16 on cuda)."""

    backend = "torch"

    def __init__(self, model: nets.MRAA, device: str = "cpu", dtype: torch.dtype = torch.float32):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("--device cuda asked for, but PyTorch sees no CUDA GPU on this machine")
        self.model = model.eval().to(device=device)
        if dtype != torch.float32:
            self.model = self.model.to(dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.frame_size = model.frame_size
        self.num_regions = model.num_regions
        self.has_avd = bool(model.has_avd)
        self.config_name = model.config.name

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), device=self.device).to(self.dtype)

    def _regions(self, p: RegionParams) -> Regions:
        return p.to_regions(self.device, self.dtype)

    @torch.inference_mode()
    def prepare_source(self, image: np.ndarray) -> Avatar:
        src = self._tensor(image)
        r = self.model.regions(src)
        cache = self.model.prepare_source(src, r)
        return Avatar(image=np.asarray(image, dtype=np.float32), regions=RegionParams.from_regions(r), cache=cache)

    @torch.inference_mode()
    def regions(self, frames: np.ndarray) -> RegionParams:
        return RegionParams.from_regions(self.model.regions(self._tensor(frames)))

    @torch.inference_mode()
    def transfer(self, avatar: Avatar, driving: RegionParams, initial: "RegionParams | None",
                 mode: str = "relative") -> RegionParams:
        self.check_mode(mode)
        src = avatar.cache.regions
        b = driving.batch_size
        if b != src.shift.shape[0]:
            src = src.map(lambda t: t.expand(b, *t.shape[1:]))
        init = None if initial is None else self._regions(initial)
        if init is not None and init.shift.shape[0] != b:
            init = init.map(lambda t: t.expand(b, *t.shape[1:]))
        new = self.model.transfer(src, self._regions(driving), init, mode=mode)
        return RegionParams.from_regions(new)

    @torch.inference_mode()
    def animate(self, avatar: Avatar, params: RegionParams) -> np.ndarray:
        out = self.model.animate_cached(avatar.cache, self._regions(params), with_deformed=False)
        return out.prediction.float().cpu().numpy()

    def providers(self) -> dict[str, str]:
        dev = self.device
        if dev.startswith("cuda"):
            dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        return {"all": f"torch {dev} {str(self.dtype).replace('torch.', '')}"}


BACKENDS = ("torch", "onnx")


def open_engine(checkpoint, config=None, backend: str = "torch", device: str = "cpu", pca: str = "closed_form",
                **options: Any) -> Engine:
    """The engine the tools use: a checkpoint (official or own; ``config`` as for ``nets.load_model``)
    run by ``backend`` (``torch`` | ``onnx``) on ``device`` (``cpu`` | ``cuda``).

    ``onnx`` is provided by ``export.runtime`` (``OrtEngine.from_checkpoint(checkpoint, config=...,
    device=..., **options)``): ``checkpoint`` may also be a directory written by mra-export; a
    checkpoint file is exported once into the user cache. ``device``: ``cpu`` | ``cuda`` |
    ``tensorrt`` | ``auto`` (onnx); options: ``precision`` (fp32 | fp16 | int8), ``threads``,
    ``fallback`` (error | warn).
    """
    if backend == "torch":
        from pathlib import Path

        if (Path(checkpoint) / "manifest.json").is_file():
            raise EngineError(f"{checkpoint} is an ONNX export directory (made by mra-export): use --backend onnx, "
                              "or give the checkpoint it was exported from")
        model = nets.load_model(checkpoint, config=config, pca=pca)
        dtype = options.pop("dtype", torch.float32)
        return TorchEngine(model, device=device, dtype=dtype)
    if backend == "onnx":
        try:
            from .runtime import OrtEngine
        except ImportError as e:
            raise EngineError(f"the ONNX Runtime backend is not available ({e}); use --backend torch") from None
        return OrtEngine.from_checkpoint(checkpoint, config=config, device=device, **options)
    raise EngineError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
