"""Static cost of a computation: FLOPs, parameters read, bytes, and the GPU floor.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 x multiply-adds of
convolutions and matrix products; element-wise work, softmax and grid_sample are not counted).
Parameters are the distinct ``nn.Parameter`` objects the computation reads (seen through a
``TorchFunctionMode``), so a graph's count is exactly what it uses. Bytes: ``min_bytes`` = the
parameters + the inputs + the outputs (each moved once: the memory floor); ``written_bytes`` =
every op's freshly allocated output (an estimate of unfused activation traffic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

# Peak rates used for the floor (NVIDIA datasheet numbers, dense; SXM parts).
GPU_PEAKS = {
    # name: (fp32 non-tensor FLOP/s, bf16/fp16 dense tensor FLOP/s, memory bytes/s)
    "H100": (67e12, 989e12, 3.35e12),
    "H200": (67e12, 989e12, 4.8e12),
}


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def _leaves(x: Any) -> list[torch.Tensor]:
    """Tensors inside x, also inside dataclasses (Regions, SourceCache, FlowSource)."""
    import dataclasses

    out: list[torch.Tensor] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name))
        elif isinstance(v, (list, tuple)):
            for i in v:
                walk(i)
        elif isinstance(v, dict):
            for i in v.values():
                walk(i)

    walk(x)
    return out


def nbytes(x: Any) -> int:
    """Bytes of all distinct tensors in x (dataclasses and containers walked)."""
    seen = {}
    for t in _leaves(x):
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


class _ParamsRead(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: dict[int, nn.Parameter] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in tree_leaves((args, kwargs)):
            if isinstance(a, nn.Parameter):
                self.seen[id(a)] = a
        return func(*args, **kwargs)


class _BytesWritten(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.untyped_storage().data_ptr() not in inputs:  # views and in-place ops write nothing new
                self.bytes += t.numel() * t.element_size()
        return out


@dataclass
class Cost:
    """Cost of one graph at batch 1 in fp32 (bytes scale with the element size of another dtype)."""

    flops: float
    params: int
    param_bytes: int
    io_bytes: int
    written_bytes: int

    @property
    def min_bytes(self) -> int:
        return self.param_bytes + self.io_bytes

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.params + other.params, self.param_bytes + other.param_bytes,
                    self.io_bytes + other.io_bytes, self.written_bytes + other.written_bytes)

    def scaled(self, element_size: int) -> "Cost":
        """The same computation with ``element_size``-byte floats instead of fp32."""
        f = element_size / 4
        return Cost(self.flops, self.params, int(self.param_bytes * f), int(self.io_bytes * f),
                    int(self.written_bytes * f))


@torch.inference_mode()
def measure(fn: Callable[..., Any], *args: Any) -> Cost:
    """Run ``fn(*args)`` once and count its FLOPs, parameters and bytes (inputs: ``args``)."""
    params = _ParamsRead()
    written = _BytesWritten()
    counter = FlopCounterMode(display=False)
    with params, counter, written:
        out = fn(*args)
    pbytes = sum(p.numel() * p.element_size() for p in params.seen.values())
    return Cost(flops=float(counter.get_total_flops()), params=sum(p.numel() for p in params.seen.values()),
                param_bytes=pbytes, io_bytes=nbytes(args) + nbytes(out), written_bytes=written.bytes)


@dataclass
class Floor:
    """The time under which a computation cannot run on a GPU: max(compute, memory)."""

    compute_ms: float
    memory_ms: float
    traffic_ms: float  # with every op's output written and read once (unfused)
    peak_flops: float
    bandwidth: float

    @property
    def floor_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)


def gpu_peaks(device_name: str) -> "tuple[float, float, float] | None":
    for key, peaks in GPU_PEAKS.items():
        if key in device_name:
            return peaks
    return None


def floor(cost: Cost, device_name: str, low_precision: bool) -> "Floor | None":
    """Floor of ``cost`` (already scaled to the row's dtype) on the named GPU; None if its peaks are unknown."""
    peaks = gpu_peaks(device_name)
    if peaks is None:
        return None
    fp32, half, bw = peaks
    rate = half if low_precision else fp32
    return Floor(compute_ms=cost.flops / rate * 1e3, memory_ms=cost.min_bytes / bw * 1e3,
                 traffic_ms=(cost.min_bytes + 2 * cost.written_bytes) / bw * 1e3, peak_flops=rate, bandwidth=bw)
