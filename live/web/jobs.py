"""mra-web jobs: one worker thread runs the Generate jobs in order, with places users can see."""
from __future__ import annotations

import collections
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nets.errors import DiskFault, UserError

from ..animate import AnimateOptions, AnimateResult
from .upload import error_text, server_disk_text


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    """One Generate request: its inputs (in its own folder), options and progress."""

    id: str
    folder: Path
    source: Path
    driving: Path
    options: AnimateOptions
    download_name: str
    state: str = "queued"  # queued | running | done | error | cancelled
    done: int = 0
    total: "int | None" = None
    message: str = ""
    result: "AnimateResult | None" = None
    created: float = field(default_factory=time.monotonic)
    started: "float | None" = None
    finished: "float | None" = None
    cancel: threading.Event = field(default_factory=threading.Event)
    uploads: tuple = ()  # folders whose paths are shown as bare file names in messages

    @property
    def output(self) -> Path:
        return self.folder / "result" / "result.mp4"


class QueueFull(UserError):
    pass


class JobQueue:
    """Jobs run one at a time, in order, by one worker thread (the engine is never shared between jobs).

    ``run(job, progress)`` does the work (``progress(done, total)`` may raise to cancel); a
    :class:`UserError` (or checkpoint/config error) becomes the job's one-line message, anything
    else an internal-error message with the traceback in the server log; either way the job's
    folder is removed and the next job starts normally. Finished results are removed
    ``keep_s`` seconds after they finished.
    """

    def __init__(self, run: Callable[[Job, Callable[[int, "int | None"], None]], AnimateResult], max_pending: int = 16,
                 keep_s: float = 3600.0, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)):
        self.run = run
        self.max_pending = max_pending
        self.keep_s = keep_s
        self.log = log
        self.jobs: dict[str, Job] = {}
        self.pending: collections.deque[Job] = collections.deque()
        self.running: "Job | None" = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="mra-web-jobs", daemon=True)

    def start(self) -> "JobQueue":
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._stop = True
            for job in self.pending:
                job.state, job.message = "cancelled", "error: the server is shutting down"
            self.pending.clear()
            if self.running is not None:
                self.running.cancel.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> int:
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self.pending) >= self.max_pending:
                raise QueueFull(f"the queue is full ({self.max_pending} jobs waiting); try again in a few minutes")
            self.jobs[job.id] = job
            self.pending.append(job)
            self._cond.notify_all()
            return len(self.pending)

    def get(self, job_id: str) -> "Job | None":
        with self._cond:
            return self.jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next job to run, 2 for the one after, ...; 0 when it is not waiting."""
        with self._cond:
            for i, j in enumerate(self.pending):
                if j is job:
                    return i + 1
            return 0

    def cancel(self, job_id: str) -> bool:
        with self._cond:
            job = self.jobs.get(job_id)
            if job is None:
                return False
            if job.state == "queued":
                self.pending.remove(job)
                job.state, job.message, job.finished = "cancelled", "cancelled", time.monotonic()
                shutil.rmtree(job.folder, ignore_errors=True)
            elif job.state == "running":
                job.cancel.set()
            return True

    def _expire(self) -> None:
        now = time.monotonic()
        with self._cond:
            old = [j for j in self.jobs.values() if j.finished is not None and now - j.finished > self.keep_s]
            for j in old:
                del self.jobs[j.id]
        for j in old:
            shutil.rmtree(j.folder, ignore_errors=True)

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self.pending and not self._stop:
                    self._cond.wait(timeout=30)  # wakes up now and then to expire old results
                if self._stop:
                    return
                job = self.pending.popleft() if self.pending else None
                if job is not None:
                    self.running = job
                    job.state, job.started = "running", time.monotonic()
            if job is not None:
                self._run_one(job)
                with self._cond:
                    self.running = None
            self._expire()

    def _run_one(self, job: Job) -> None:
        def progress(done: int, total: "int | None") -> None:
            if job.cancel.is_set():
                raise JobCancelled
            job.done, job.total = done, total

        state, message = "error", "error: the job stopped unexpectedly"
        try:
            job.result = self.run(job, progress)
            job.done = job.result.frames
            state, message = "done", job.result.describe().replace(str(job.output), job.download_name)
        except JobCancelled:
            state, message = "cancelled", "cancelled"
        except DiskFault as e:  # the server's disk, not the user's: say so without its paths
            self.log(f"mra-web: job {job.id}: {e}")
            message = server_disk_text(e)
        except UserError as e:  # (checkpoint and config errors too)
            message = error_text(e, job.uploads)
        except MemoryError:
            message = "error: out of memory; try a shorter or smaller driving video"
        except Exception as e:  # a bug: the page gets one line, the log the details
            self.log(f"mra-web: job {job.id} failed:\n{traceback.format_exc()}")
            message = f"error: internal error while animating ({type(e).__name__}); the server log has the details"
        finally:
            if state != "done":  # uploads of a failed job go at once
                shutil.rmtree(job.folder, ignore_errors=True)
            job.finished = time.monotonic()
            job.message, job.state = message, state  # the state last: a finished job is fully settled
