"""One small engine API for the tools (animate, live, web, benchmarks), with backends behind it.

Everything crossing this API is numpy (float32), so callers never care which backend runs:

* frames: ``(B, 3, S, S)`` float32 in [0, 1], S = ``engine.frame_size``;
* region parameters: :class:`RegionParams` (shift ``(B, K, 2)``, covar and affine ``(B, K, 2, 2)``);
* an :class:`Avatar` holds everything that depends only on the source image (computed once).

Backends implement :class:`Engine`: ``export.torch_engine.TorchEngine`` (PyTorch, cpu or cuda)
and ``export.runtime.OrtEngine`` (ONNX Runtime). This module imports neither, so engines,
export, verification and the tools all depend on it without a circle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nets.transfer import MODES

BACKENDS = ("torch", "onnx")


@dataclass
class RegionParams:
    """Region parameters as numpy float32: shift ``(B, K, 2)``, covar / affine ``(B, K, 2, 2)`` (or None)."""

    shift: np.ndarray
    covar: "np.ndarray | None" = None
    affine: "np.ndarray | None" = None

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


class EngineUnavailable(EngineError):
    """The engine cannot serve this call now but may soon (a remote worker that is reconnecting):
    live callers skip the frame and keep showing the last one."""


@dataclass(frozen=True)
class EngineHealth:
    """Whether an engine answers now (:meth:`Engine.health`): ``answering``; when not, ``reason`` in
    a few words for a status line ("worker not answering (3 s)", "worker unreachable: reconnecting")
    and ``waiting_s``, how long the engine has owed an answer (0 when it is simply down)."""

    answering: bool = True
    reason: str = ""
    waiting_s: float = 0.0


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

    def health(self, late_s: float = 1.0) -> EngineHealth:
        """Whether calls are answered now, for a live loop's output and status line: never blocks and
        may be asked from any thread, also while another thread waits in a call. An engine that has
        owed an answer for more than ``late_s`` seconds is not answering. A local engine always answers;
        a remote one (``live.remote.client.RemoteEngine``) says when its worker is late or unreachable."""
        return EngineHealth()

    def describe(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.providers().items())
        return f"{self.backend} engine ({self.config_name}, {self.frame_size}px){' - ' + parts if parts else ''}"

    def check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise EngineError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "avd" and not self.has_avd:
            raise EngineError("this model has no trained AVD network: use --mode relative or standard")
