"""Timing and peak-memory helpers of the benchmarks.

A timed callable runs ``warmup`` times, then ``frames`` times; each run is timed on the host
clock between two synchronisations of the device (so CPU launch overhead and host copies count,
as they do in a live loop) and, on CUDA, also by CUDA events around it (the GPU-side time).
"""
from __future__ import annotations

import gc
import os
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class Stats:
    """Per-call times in milliseconds over ``frames`` timed calls (after warm-up)."""

    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    frames: int
    gpu_median_ms: "float | None" = None  # CUDA-event time, when on a GPU

    @classmethod
    def of(cls, times_ms: "list[float]", gpu_ms: "list[float] | None" = None) -> "Stats":
        t = np.asarray(times_ms, dtype=np.float64)
        return cls(median_ms=float(np.median(t)), p95_ms=float(np.percentile(t, 95)), mean_ms=float(t.mean()),
                   min_ms=float(t.min()), frames=len(t),
                   gpu_median_ms=float(np.median(gpu_ms)) if gpu_ms else None)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], frames: int, warmup: int, device: str = "cpu", max_seconds: float = float("inf"),
            min_frames: int = 1) -> Stats:
    """Median / p95 of ``fn()`` over ``frames`` calls after ``warmup`` untimed ones.

    Timing stops early once ``max_seconds`` have been spent (after at least ``min_frames`` calls).
    """
    if frames < 1:
        raise ValueError("frames must be >= 1")
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times, gpu = [], []
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin = time.perf_counter()
    for i in range(frames):
        if i >= min_frames and time.perf_counter() - begin > max_seconds:
            break
        t0 = time.perf_counter()
        if cuda:
            start.record()
        fn()
        if cuda:
            end.record()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            gpu.append(start.elapsed_time(end))
    return Stats.of(times, gpu or None)


def timed_once(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, float]:
    """(result, seconds) of one synchronised call (compile times, set-up times)."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------

def _status_kb(field: str) -> "int | None":
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one measured section.

    CPU: the process's resident-set high-water mark. On Linux it is reset at the start of the
    section (``/proc/self/clear_refs``), so the peak belongs to this section (it still includes
    what the process held before, e.g. the Python interpreter and torch); elsewhere it is the
    process-wide ``resource`` high-water (``reset`` False: cumulative). CUDA:
    ``torch.cuda.max_memory_allocated`` (tensors allocated by PyTorch only).
    """

    def __init__(self, device: str):
        self.device = device
        self.reset_ok = False

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.reset_ok = _status_kb("VmHWM") is not None
            except OSError:
                self.reset_ok = False
        return self

    def __exit__(self, *exc) -> None:
        pass

    def peak_mb(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
        if self.reset_ok:
            return _status_kb("VmHWM") / 1024
        # ru_maxrss is in kilobytes on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @property
    def kind(self) -> str:
        if self.device.startswith("cuda"):
            return "cuda max_memory_allocated"
        return "rss high-water (section)" if self.reset_ok else "rss high-water (process)"


def cpu_threads_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
