"""When frames go out of the live loop, apart from what they show.

:class:`OutputPacer`: new frames at most ``fps`` a second, and the last frame sent again, every
frame period, once no new one has come for two frame periods while the camera is lost or the
engine down, or for as long as an engine call is late (at least :data:`MIN_REPEAT_S`), so a
virtual camera never freezes for the length of a request timeout (a stopped mra-serve worker:
10 s before, issue 21 item 6).

:class:`EngineWatch`: how long the engine call in progress has run (one call at a time per stage
thread), so the status line can say that the engine (or the worker) is not answering.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

MIN_PERIOD_S = 1 / 120
MAX_PERIOD_S = 0.25  # the period assumed before the first frames, and the longest one
REPEAT_PERIODS = 2.0  # the last frame goes out again after this many frame periods without a new one...
MIN_REPEAT_S = 0.4  # ...and not sooner than this: a loaded CPU stretches single calls by a few 100 ms, which
#                     is no reason to send a frame twice (recordings would get it twice)
NOT_ANSWERING_S = 2.0  # an engine call running this long: "not answering" in the status line


class OutputPacer:
    """The sink loop's clock: ``fps`` caps new frames (None: no cap); the frame period is ``1/fps``,
    or else the running mean interval between new frames (between :data:`MIN_PERIOD_S` and
    :data:`MAX_PERIOD_S`)."""

    def __init__(self, fps: "float | None" = None, repeat_periods: float = REPEAT_PERIODS):
        self.fps = fps
        self.repeat_periods = repeat_periods
        self._next_new: "float | None" = None
        self._last_new: "float | None" = None
        self._last_sent: "float | None" = None
        self._repeating = False
        self._interval = MAX_PERIOD_S
        self.repeated = 0

    @property
    def period_s(self) -> float:
        if self.fps:
            return 1.0 / self.fps
        return min(MAX_PERIOD_S, max(MIN_PERIOD_S, self._interval))

    def admit(self, now: float) -> bool:
        """A new frame is ready at ``now``: True when it goes out (False: over the ``fps`` cap, skipped)."""
        if self.fps:
            period = 1.0 / self.fps
            if self._next_new is not None and now < self._next_new - period * 0.5:
                return False
            self._next_new = max((self._next_new if self._next_new is not None else now) + period, now)
        if self._last_new is not None:
            self._interval += 0.2 * (min(now - self._last_new, 1.0) - self._interval)
        self._last_new = self._last_sent = now
        self._repeating = False
        return True

    @property
    def repeat_after_s(self) -> float:
        """How long a slow engine call may run before the last frame goes out again."""
        return max(self.repeat_periods * self.period_s, MIN_REPEAT_S)

    def repeat_due(self, now: float, sure: bool = False) -> bool:
        """Time to send the last frame again (never before the first one): no frame has gone out for
        :attr:`repeat_after_s`, or with ``sure`` (the loop knows the frames stopped: camera lost,
        engine down) for ``repeat_periods`` frame periods; once repeating, every frame period."""
        if self._last_sent is None:
            return False
        if self._repeating:
            wait = self.period_s
        else:
            wait = self.repeat_periods * self.period_s if sure else self.repeat_after_s
        return now - self._last_sent >= wait

    def repeated_at(self, now: float) -> None:
        """The last frame went out again at ``now``."""
        self._last_sent = now
        self._repeating = True
        self.repeated += 1


class EngineWatch:
    """Engine calls in progress, one per stage thread: ``with watch.call("regions"): engine.regions(x)``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._started: "dict[str, float]" = {}

    @contextmanager
    def call(self, stage: str) -> Iterator[None]:
        with self._lock:
            self._started[stage] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._started.pop(stage, None)

    def busy_s(self, now: "float | None" = None) -> float:
        """How long the oldest call in progress has run (0: none)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return max((now - t for t in self._started.values()), default=0.0)
