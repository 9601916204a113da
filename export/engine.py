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


class EngineUnavailable(EngineError):
    """The engine cannot serve this call now but may soon (a remote worker that is reconnecting):
    live callers skip the frame and keep showing the last one."""


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


class _Graph:
    """A CUDA graph of ``fn`` over static input buffers (captured after a warm-up on a side stream)."""

    def __init__(self, fn, inputs: list[torch.Tensor], autocast_dtype: "torch.dtype | None"):
        self.inputs = [t.clone() for t in inputs]
        self.fn = fn
        self.dtype = autocast_dtype
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._call()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._call()

    def _call(self):
        if self.dtype is None:
            return self.fn(*self.inputs)
        with torch.autocast("cuda", dtype=self.dtype, cache_enabled=False):
            return self.fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        for buf, x in zip(self.inputs, inputs):
            buf.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.outputs


class TorchEngine(Engine):
    """The PyTorch backend: cpu, or cuda with float32 / float16 / bfloat16 (autocast) and CUDA graphs.

    Weights stay in float32; half precision runs under ``torch.autocast`` so region statistics,
    PCA and sampling grids keep float32 where autocast keeps it. With ``cuda_graphs`` (the default
    on cuda) the region part and the per-avatar animation part are captured once and replayed
    (the per-frame path has no host syncs with ``pca="closed_form"``).
    """

    backend = "torch"

    def __init__(self, model: nets.MRAA, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 cuda_graphs: "bool | None" = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("--device cuda asked for, but PyTorch sees no CUDA GPU on this machine")
        if dtype != torch.float32 and not device.startswith("cuda"):
            raise EngineError("float16/bfloat16 need --device cuda")
        self.model = model.eval().to(device=device)
        self.device = device
        self.dtype = dtype
        self.autocast = None if dtype == torch.float32 else dtype
        self.cuda_graphs = device.startswith("cuda") if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.model.pca != "closed_form":
            self.cuda_graphs = False  # svd leaves the device: not capturable
        self.frame_size = model.frame_size
        self.num_regions = model.num_regions
        self.has_avd = bool(model.has_avd)
        self.config_name = model.config.name
        self._region_graphs: dict[tuple, _Graph] = {}

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32)).to(self.device, non_blocking=True)

    def _regions(self, p: RegionParams) -> Regions:
        return p.to_regions(self.device, torch.float32)

    def _run(self, fn, *args):
        if self.autocast is None:
            return fn(*args)
        with torch.autocast("cuda", dtype=self.autocast):
            return fn(*args)

    def _region_fn(self, x: torch.Tensor):
        r = self.model.regions(x)
        return r.shift.float(), r.covar.float() if r.covar is not None else None, \
            r.affine.float() if r.affine is not None else None

    def _animate_fn(self, cache, shift, covar, affine):
        out = self.model.animate_cached(cache, Regions(shift=shift, covar=covar, affine=affine), with_deformed=False)
        return out.prediction.float()

    @torch.inference_mode()
    def prepare_source(self, image: np.ndarray) -> Avatar:
        src = self._tensor(image)
        r = self._run(self.model.regions, src)
        cache = self._run(self.model.prepare_source, src, r)
        return Avatar(image=np.asarray(image, dtype=np.float32), regions=RegionParams.from_regions(r), cache=cache)

    @torch.inference_mode()
    def regions(self, frames: np.ndarray) -> RegionParams:
        x = self._tensor(frames)
        if self.cuda_graphs:
            key = tuple(x.shape)
            if key not in self._region_graphs:
                self._region_graphs[key] = _Graph(self._region_fn, [x], self.autocast)
            shift, covar, affine = self._region_graphs[key](x)
        else:
            shift, covar, affine = self._run(self._region_fn, x)
        f = lambda t: None if t is None else t.cpu().numpy()  # noqa: E731
        return RegionParams(shift=f(shift), covar=f(covar), affine=f(affine))

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
        new = self.model.transfer(src.map(lambda t: t.float()), self._regions(driving), init, mode=mode)
        return RegionParams.from_regions(new)

    @torch.inference_mode()
    def animate(self, avatar: Avatar, params: RegionParams) -> np.ndarray:
        r = self._regions(params)
        if self.cuda_graphs and r.covar is not None and r.affine is not None:
            graphs = avatar.__dict__.setdefault("_graphs", {})
            key = (self, tuple(r.shift.shape))
            if key not in graphs:
                graphs[key] = _Graph(lambda s, c, a: self._animate_fn(avatar.cache, s, c, a),
                                     [r.shift, r.covar, r.affine], self.autocast)
            return graphs[key](r.shift, r.covar, r.affine).cpu().numpy()
        return self._run(self._animate_fn, avatar.cache, r.shift, r.covar, r.affine).cpu().numpy()

    def providers(self) -> dict[str, str]:
        dev = self.device
        if dev.startswith("cuda"):
            dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return {"all": f"torch {dev} {str(self.dtype).replace('torch.', '')}{graphs}"}


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
        return TorchEngine(model, device=device, dtype=dtype, cuda_graphs=options.pop("cuda_graphs", None))
    if backend == "onnx":
        try:
            from .runtime import OrtEngine
        except ImportError as e:
            raise EngineError(f"the ONNX Runtime backend is not available ({e}); use --backend torch") from None
        return OrtEngine.from_checkpoint(checkpoint, config=config, device=device, **options)
    raise EngineError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
