"""Live statistics: rates, drops, per-stage times and end-to-end latency percentiles."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


def to_json(data, **kwargs) -> str:
    """Strict JSON of a snapshot: numpy numbers as numbers, no value yet (NaN, inf) as ``null``
    (``JSON.parse`` in a browser rejects a bare ``NaN``)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if np.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        return v
    return json.dumps(clean(data), allow_nan=False, **kwargs)


@dataclass(frozen=True)
class Latency:
    """End-to-end latency percentiles, ms (NaN before the first output frame)."""

    p50: float
    p95: float


@dataclass(frozen=True)
class WholeRunLatency(Latency):
    max: float


@dataclass(frozen=True)
class StageTimes:
    median_ms: float
    p95_ms: float


@dataclass(frozen=True)
class LiveSnapshot:
    """The live loop's statistics at one moment (``latency_ms`` and ``stages`` over the rolling
    window, ``latency_ms_all`` over the whole run)."""

    elapsed_s: float
    frames_in: int
    frames_out: int
    frames_dropped: int
    face_lost_frames: int
    fps_in: float
    fps_out: float
    latency_ms: Latency
    latency_ms_all: WholeRunLatency
    stages: "dict[str, StageTimes]"
    max_output_gap_ms: float  # between new frames
    stalls_over_1s: int
    events: "list[str]"
    frames_repeated: int = 0  # the last frame sent again while the engine was late or the camera lost
    max_sink_gap_ms: float = 0.0  # the longest time the sinks got no frame, new or repeated

    def to_dict(self) -> dict:
        """The snapshot as the JSON of ``mra-live --stats`` shows it."""
        return asdict(self)


class LiveStats:
    """Thread-safe counters and rolling windows (the last ``window`` samples) of the live loop."""

    def __init__(self, window: int = 300):
        self._lock = threading.Lock()
        self.window = window
        self.start = time.monotonic()
        self.stage_ms: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.latency_ms: deque = deque(maxlen=window)
        self.all_latency_ms: list[float] = []
        self.out_times: deque = deque(maxlen=window)
        self.frames_out = 0
        self.frames_in = 0
        self.dropped = 0
        self.face_lost_frames = 0
        self.stalls_over_1s = 0
        self.max_gap_ms = 0.0
        self.frames_repeated = 0
        self.max_sink_gap_ms = 0.0
        self._last_sent: "float | None" = None
        self.events: list[str] = []

    def stage(self, name: str, ms: float) -> None:
        with self._lock:
            self.stage_ms[name].append(ms)

    def output(self, capture_ts: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.out_times:
                gap = (now - self.out_times[-1]) * 1000
                self.max_gap_ms = max(self.max_gap_ms, gap)
                if gap > 1000:
                    self.stalls_over_1s += 1
            self.out_times.append(now)
            self._sent(now)
            lat = (now - capture_ts) * 1000
            self.latency_ms.append(lat)
            self.all_latency_ms.append(lat)
            self.frames_out += 1

    def repeated(self, now: "float | None" = None) -> None:
        """The last frame went to the sinks again (no new one was ready)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_repeated += 1
            self._sent(now)

    def _sent(self, now: float) -> None:
        if self._last_sent is not None:
            self.max_sink_gap_ms = max(self.max_sink_gap_ms, (now - self._last_sent) * 1000)
        self._last_sent = now

    def event(self, text: str) -> None:
        with self._lock:
            self.events.append(f"{time.monotonic() - self.start:8.2f}s {text}")

    def fps_out(self) -> float:
        with self._lock:
            t = list(self.out_times)
        if len(t) < 2:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)

    @staticmethod
    def _pct(values, q) -> float:
        return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")

    def snapshot(self, fps_in: float = 0.0) -> LiveSnapshot:
        with self._lock:
            stages = {k: StageTimes(self._pct(v, 50), self._pct(v, 95)) for k, v in self.stage_ms.items()}
            lat = list(self.latency_ms)
            all_lat = list(self.all_latency_ms)
            return LiveSnapshot(
                elapsed_s=time.monotonic() - self.start, frames_in=self.frames_in, frames_out=self.frames_out,
                frames_dropped=self.dropped, face_lost_frames=self.face_lost_frames, fps_in=fps_in,
                fps_out=self._fps_unlocked(), latency_ms=Latency(self._pct(lat, 50), self._pct(lat, 95)),
                latency_ms_all=WholeRunLatency(self._pct(all_lat, 50), self._pct(all_lat, 95),
                                               max(all_lat) if all_lat else float("nan")),
                stages=stages, max_output_gap_ms=self.max_gap_ms, stalls_over_1s=self.stalls_over_1s,
                events=list(self.events), frames_repeated=self.frames_repeated,
                max_sink_gap_ms=self.max_sink_gap_ms)

    def _fps_unlocked(self) -> float:
        t = self.out_times
        if len(t) < 2:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)

    def status_line(self, fps_in: float = 0.0, note: str = "") -> str:
        """One line of figures (``note``, e.g. ``worker not answering (3 s)``, at its end)."""
        s = self.snapshot(fps_in)
        st = " ".join(f"{k} {v.median_ms:.0f}" for k, v in s.stages.items())
        return (f"in {fps_in:4.1f} fps  out {s.fps_out:4.1f} fps  dropped {s.frames_dropped}  "
                f"latency p50 {s.latency_ms.p50:.0f} p95 {s.latency_ms.p95:.0f} ms  [{st} ms]"
                + (f"  {note}" if note else ""))

    def write_json(self, path: "str | Path", extra: dict | None = None, fps_in: float = 0.0) -> None:
        data = self.snapshot(fps_in).to_dict()
        if extra:
            data.update(extra)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:  # written whole or not at all
            tmp.write_text(to_json(data, indent=2))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
