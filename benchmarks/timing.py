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
    others_cpu: "float | None" = None  # cores busy with other processes meanwhile (see Contention)
    others_niced_cpu: "float | None" = None  # of which niced processes

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

def status_kb(field: str, pid: "int | str" = "self") -> "int | None":
    """A kB field of ``/proc/PID/status`` (e.g. ``VmRSS``); None off Linux or once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
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
                self.reset_ok = status_kb("VmHWM") is not None
            except OSError:
                self.reset_ok = False
        return self

    def __exit__(self, *exc) -> None:
        pass

    def peak_mb(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
        if self.reset_ok:
            return status_kb("VmHWM") / 1024
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


# ---------------------------------------------------------------------------------------------
# Contention: how much CPU other processes used while we measured
# ---------------------------------------------------------------------------------------------

def _busy_seconds() -> "tuple[float, float] | None":
    """(CPU seconds all processes have been busy since boot, of which niced user time), or None (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, fields[1] / hz


def _own_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class Contention:
    """CPU cores busy with *other* processes during a section, on average (Linux; else None).

    ``cores``: all other processes; ``niced``: the part of it spent by niced processes (e.g. a
    background training run at nice 10, which yields most of the CPU to us). 0 means the
    benchmark had the machine to itself; on a 2-core machine with 2 threads, 1.0 means another
    process took about half of it and the times are not to be trusted. Sections under 0.5 s
    get None (the kernel counts in 10 ms ticks).
    """

    def __enter__(self) -> "Contention":
        self.busy0, self.own0, self.t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        self.cores: "float | None" = None
        self.niced: "float | None" = None
        return self

    def __exit__(self, *exc) -> None:
        busy1, own1, wall = _busy_seconds(), _own_seconds(), time.perf_counter() - self.t0
        if self.busy0 is None or busy1 is None or wall < 0.5:
            return
        self.cores = max(0.0, ((busy1[0] - self.busy0[0]) - (own1 - self.own0)) / wall)
        self.niced = max(0.0, (busy1[1] - self.busy0[1]) / wall)


def time_round_robin(fns: "dict[str, Callable[[], Any]]", frames: int, warmup: int, device: str = "cpu",
                     max_seconds: float = float("inf"), min_frames: int = 1) -> "dict[str, Stats]":
    """Time several callables in turn, one call of each per round (like :func:`time_fn` otherwise).

    On a machine shared with other work, every callable then sees the same contention, so their
    ratios hold even when the absolute times do not. ``max_seconds`` caps the whole loop.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    begin = time.perf_counter()
    with Contention() as busy:
        for i in range(frames):
            if i >= min_frames and time.perf_counter() - begin > max_seconds:
                break
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {k: Stats.of(v) for k, v in times.items()}
    for st in out.values():
        st.others_cpu, st.others_niced_cpu = busy.cores, busy.niced
    return out
