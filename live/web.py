"""mra-web: a local web page to animate a portrait (upload, preview, download) and to puppet it
from the browser's webcam.

    mra-web                                        # then open http://127.0.0.1:7860/
    mra-web --checkpoint model.pth --config vox256 --port 8000

The page (``live/web_static``: plain HTML, CSS and JavaScript, no build step) has one portrait
chooser (upload, or a bundled example) and two tabs:

* **Video**: a driving video (upload, or a recording from the webcam with MediaRecorder), mode,
  crop, Generate with a progress bar and the place in the queue, the result beside the driving
  video, and a download of the mp4 (with the driving video's audio). The work is
  :func:`live.animate.animate_file` (the mra-animate pipeline, same defaults); bad inputs give the
  same one-line ``error: ...`` messages as mra-animate.
* **Webcam**: the browser's webcam drives the portrait live. JPEG frames go over a web socket into
  a :class:`BrowserSource` (a :class:`~live.capture.CaptureSource`), through the mra-live
  :class:`~live.pipeline.LivePipeline` (same face tracking, smoothing and engine calls) into a
  :class:`BrowserSink` that sends the animated frames back; the page shows fps and latency.

Server side: Starlette on uvicorn (see ``docs/notes/web.md`` for why not Gradio). One engine (one
model in memory) serves everything; Generate jobs run one at a time in a :class:`JobQueue`
thread. Uploads are streamed to a private temporary folder with a size limit and removed when a
job fails, when its result expires, and when the server stops. Binds 127.0.0.1 by default: the
page has no authentication.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nets.errors import ArgumentParser, UserError, run_cli

from .animate import BACKENDS, CROPS, DEVICES, MODES, AnimateOptions, AnimateResult, animate_file, check_inputs, load_engine
from .capture import CaptureSource, Frame, LatestFrame
from .stats import LiveStats

STATIC = Path(__file__).resolve().parent / "web_static"
EXAMPLES = STATIC / "examples"
MB = 1024 * 1024
FIELD_LIMIT = 4096  # bytes of a plain form field (mode, crop, example)


@dataclass
class WebConfig:
    """What ``mra-web`` serves and how (the command-line options of the same names)."""

    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_mb: float = 200.0  # per uploaded file
    max_queue: int = 16  # jobs waiting (not counting the running one)
    keep_minutes: float = 60.0  # results are removed this long after they finished
    live_size: int = 256  # side of the frames the webcam tab sends back
    max_live: int = 1  # webcam sessions at once
    batch_size: "int | None" = None  # None: mra-animate's default (4 on cpu, 16 on cuda)
    workdir: "Path | None" = None  # parent of the temporary folder (default: the system's)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_text(e: BaseException, hide: Sequence[Path] = ()) -> str:
    """The page's one-line message for a user-fixable error: ``error: ...`` as mra-animate prints it.

    Upload folders are private to the server: a path inside one is shown as the bare file name
    (what mra-animate prints when run next to the files)."""
    msg = one_line(e)
    for folder in hide:
        msg = msg.replace(str(folder) + os.sep, "")
    return f"error: {msg}"


def safe_name(name: str, default: str = "upload") -> str:
    """An uploaded file's name reduced to a harmless base name (extension kept, at most 100 chars)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ]+", "_", base, flags=re.ASCII).strip(" .") or default
    if len(base) > 100:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 100 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else base[:100]
    return base


def examples() -> list[str]:
    """Names of the bundled example portraits (``live/web_static/examples/*.png``)."""
    return sorted(p.stem for p in EXAMPLES.glob("*.png"))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Uploads: a streamed multipart/form-data body, size-limited, written into the job's folder
# ---------------------------------------------------------------------------------------------

class UploadTooLarge(UserError):
    """An uploaded file is over ``--max-upload-mb`` (HTTP 413)."""


def _limit_text(limit: int) -> str:
    return f"{limit / MB:g} MB"


async def receive_form(request, folder: Path, limit: int, files: "dict[str, str]") -> "tuple[dict[str, str], dict[str, Path]]":
    """Stream a multipart form into ``folder``: ``(fields, {name: saved path})``.

    ``files`` maps the accepted file fields to how messages name them (``{"source": "source
    image"}``); each file goes to ``folder/<field>/<safe name>`` and may be at most ``limit`` bytes.
    A file over the limit raises :class:`UploadTooLarge` after the rest of the body was read and
    discarded (so the browser sees the answer rather than a reset connection); bodies over the
    hard bound of every file at the limit plus 1 MB are refused from their Content-Length.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UserError("the request is not a form upload (multipart/form-data)")
    bound = len(files) * limit + MB
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > bound:
        raise UploadTooLarge(f"the upload is {int(length) / MB:.1f} MB, over the limit of {_limit_text(limit)} per file; "
                             "use smaller files (or start mra-web with a higher --max-upload-mb)")
    fields: dict[str, str] = {}
    saved: dict[str, Path] = {}
    st = {"headers": {}, "hname": b"", "hvalue": b"", "name": None, "file": None, "path": None, "size": 0,
          "value": bytearray(), "error": None}

    def on_part_begin():
        st.update(headers={}, hname=b"", hvalue=b"", name=None, file=None, path=None, size=0, value=bytearray())

    def on_header_field(data, start, end):
        st["hname"] += data[start:end]

    def on_header_value(data, start, end):
        st["hvalue"] += data[start:end]

    def on_header_end():
        st["headers"][st["hname"].decode("latin-1").lower()] = st["hvalue"]
        st["hname"], st["hvalue"] = b"", b""

    def on_headers_finished():
        _, opts = parse_options_header(st["headers"].get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        st["name"] = name
        filename = opts.get(b"filename")
        if filename is not None and name in files and name not in saved:
            sub = folder / name
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / safe_name(filename.decode("utf-8", "replace"))
            st["path"] = path
            st["file"] = open(path, "wb")

    def on_part_data(data, start, end):
        n = end - start
        st["size"] += n
        if st["file"] is not None:
            if st["size"] > limit:
                if st["error"] is None:
                    st["error"] = UploadTooLarge(
                        f"the {files[st['name']]} {st['path'].name} is larger than the upload limit of "
                        f"{_limit_text(limit)}; use a smaller file (or start mra-web with a higher --max-upload-mb)")
                st["file"].close()
                st["file"] = None
                st["path"].unlink(missing_ok=True)
                return
            st["file"].write(data[start:end])
        elif st["path"] is None and st["name"] not in files and len(st["value"]) < FIELD_LIMIT:
            st["value"] += data[start:end]

    def on_part_end():
        if st["file"] is not None:
            st["file"].close()
            saved[st["name"]] = st["path"]
        elif st["path"] is None and st["name"] and st["name"] not in files:
            fields[st["name"]] = bytes(st["value"][:FIELD_LIMIT]).decode("utf-8", "replace")
        st["file"] = None

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > bound:
                raise UploadTooLarge(f"the upload is over the limit of {_limit_text(limit)} per file; use smaller files "
                                     "(or start mra-web with a higher --max-upload-mb)")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadTooLarge:
        raise
    except Exception as e:  # a malformed body: python-multipart's own errors
        if st["error"] is None:
            raise UserError(f"the upload could not be read ({one_line(e)[:120]}); try again") from None
    finally:
        if st["file"] is not None:
            st["file"].close()
    if st["error"] is not None:
        raise st["error"]
    return fields, saved


# ---------------------------------------------------------------------------------------------
# Jobs: one worker thread, one engine, a queue whose positions users can see
# ---------------------------------------------------------------------------------------------

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
        from nets.checkpoint import CheckpointError
        from nets.config import ConfigError

        def progress(done: int, total: "int | None") -> None:
            if job.cancel.is_set():
                raise JobCancelled
            job.done, job.total = done, total

        try:
            job.result = self.run(job, progress)
            job.done = job.result.frames
            job.state, job.message = "done", job.result.describe().replace(str(job.output), job.download_name)
        except JobCancelled:
            job.state, job.message = "cancelled", "cancelled"
        except (UserError, CheckpointError, ConfigError) as e:
            job.state, job.message = "error", error_text(e, job.uploads)
        except MemoryError:
            job.state, job.message = "error", "error: out of memory; try a shorter or smaller driving video"
        except Exception as e:  # a bug: the page gets one line, the log the details
            self.log(f"mra-web: job {job.id} failed:\n{traceback.format_exc()}")
            job.state = "error"
            job.message = f"error: internal error while animating ({type(e).__name__}); the server log has the details"
        finally:
            job.finished = time.monotonic()
            if job.state != "done":
                shutil.rmtree(job.folder, ignore_errors=True)


class SerializedEngine:
    """An engine whose calls take turns (for CUDA graphs, whose static buffers one caller at a time may use)."""

    def __init__(self, engine):
        self._engine = engine
        self._lock = threading.RLock()

    def __getattr__(self, name):
        value = getattr(self._engine, name)
        if name in ("prepare_source", "regions", "transfer", "animate") and callable(value):
            def call(*args, **kwargs):
                with self._lock:
                    return value(*args, **kwargs)
            return call
        return value


# ---------------------------------------------------------------------------------------------
# Webcam tab: browser frames -> the mra-live pipeline -> browser
# ---------------------------------------------------------------------------------------------

class BrowserSource(CaptureSource):
    """The browser's webcam as a :class:`~live.capture.CaptureSource`.

    ``push(jpeg, client_id)`` (from the web socket) keeps only the newest undecoded frame; the
    capture thread decodes it and hands it to the pipeline with the time it arrived, like a
    camera. ``client_id`` (the page's frame number) is remembered by arrival time, so the frame
    sent back can carry it (:meth:`client_id`)."""

    name = "browser"

    def __init__(self):
        super().__init__()
        self._raw = LatestFrame()
        self._ids: "collections.OrderedDict[float, int]" = collections.OrderedDict()
        self._ids_lock = threading.Lock()
        self.bad_frames = 0

    def push(self, data: bytes, client_id: int) -> None:
        self._raw.put(Frame(image=data, timestamp=time.monotonic(), index=client_id))

    def end(self) -> None:
        """No more frames (the page stopped or left): the pipeline finishes like at the end of a file."""
        self._raw.close()

    def stop(self) -> None:
        self._raw.close()
        super().stop()

    @property
    def received(self) -> int:
        return self._raw.received

    @property
    def dropped_before_decode(self) -> int:
        return self._raw.dropped

    def client_id(self, timestamp: float) -> int:
        with self._ids_lock:
            return self._ids.pop(timestamp, 0)

    def _run(self) -> None:
        import cv2
        self.status = "running"
        try:
            while not self._stop.is_set():
                raw = self._raw.get(timeout=0.5)
                if raw is None:
                    if self._raw.closed:
                        break
                    continue
                bgr = cv2.imdecode(np.frombuffer(raw.image, np.uint8), cv2.IMREAD_COLOR)
                if bgr is None or bgr.ndim != 3:
                    self.bad_frames += 1
                    continue
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                self.size = (rgb.shape[1], rgb.shape[0])
                with self._ids_lock:
                    self._ids[raw.timestamp] = raw.index
                    while len(self._ids) > 256:
                        self._ids.popitem(last=False)
                self.slot.put(Frame(image=rgb, timestamp=raw.timestamp, index=raw.index))
        finally:
            self.status = "ended"
            self.slot.close()


class BrowserSink:
    """Sends animated frames back to the page: ``<uint32 client frame id, little-endian> + JPEG``.

    The pipeline's sink loop calls ``write(image)`` and right after it ``stats.output(capture
    time)`` (see :class:`_SinkStats`), which calls :meth:`flush` with the id of the browser frame
    the image was made from."""

    name = "browser"

    def __init__(self, send: Callable[[bytes], None], quality: int = 85):
        self.send = send
        self.quality = quality
        self._pending: "np.ndarray | None" = None
        self.sent = 0

    def write(self, frame: np.ndarray) -> None:
        self._pending = frame

    def flush(self, client_id: int) -> None:
        import cv2
        frame, self._pending = self._pending, None
        if frame is None:
            return
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if ok:
            self.send(struct.pack("<I", client_id & 0xFFFFFFFF) + jpeg.tobytes())
            self.sent += 1

    def close(self) -> None:
        self._pending = None


class _SinkStats(LiveStats):
    """LiveStats that tells the browser sink which captured frame the output it just got came from."""

    def __init__(self, on_output: Callable[[float], None]):
        super().__init__()
        self._on_output = on_output

    def output(self, capture_ts: float, now: "float | None" = None) -> None:
        super().output(capture_ts, now)
        self._on_output(capture_ts)


class LiveSession:
    """One webcam tab: a :class:`BrowserSource` -> :class:`~live.pipeline.LivePipeline` -> :class:`BrowserSink`.

    The constructor prepares the avatar (so a portrait without a face fails here, with
    mra-animate's message); :meth:`start` runs the pipeline in a thread; :meth:`close` ends it.
    """

    def __init__(self, engine, portrait: Path, crop: str, mode: str, output_size: int,
                 send: Callable[[bytes], None], on_end: "Callable[[BaseException | None], None]" = lambda e: None):
        import queue

        from . import media
        from .animate import source_crop
        from .face import FaceDetector, FaceTracker, TrackerSettings
        from .pipeline import Avatars, CenterCropper, FaceCropper, LiveOptions, LivePipeline, to_input

        if crop not in CROPS:
            raise UserError(f"--crop must be auto or none, got {crop!r}")
        if mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "avd" and not engine.has_avd:
            raise UserError("this model has no trained AVD network: use --mode relative or standard")
        self.detector = FaceDetector() if crop == "auto" else None
        try:
            def load(path: Path) -> np.ndarray:
                rgb = media.read_image(path)
                return to_input(source_crop(rgb, engine.frame_size, crop, self.detector))  # mra-animate's wording

            self.avatars = Avatars(engine, [portrait], load)
            self.avatars.current()  # the portrait is checked (and prepared) now
            self.source = BrowserSource()
            self.sink = BrowserSink(send)
            self.stats = _SinkStats(lambda ts: self.sink.flush(self.source.client_id(ts)))
            self.commands: "queue.Queue[str]" = queue.Queue()
            cropper = (FaceCropper(FaceTracker(self.detector, settings=TrackerSettings(detect_every=2)))
                       if self.detector is not None else CenterCropper())
            self.pipeline = LivePipeline(engine, self.source, cropper, self.avatars, [self.sink],
                                         LiveOptions(mode=mode, output_size=output_size), commands=self.commands,
                                         stats=self.stats)
        except BaseException:
            self._close_detector()
            raise
        self.on_end = on_end
        self.error: "BaseException | None" = None
        self._thread = threading.Thread(target=self._run, name="mra-web-live", daemon=True)

    def start(self) -> "LiveSession":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as e:  # noqa: BLE001 - reported to the page
            self.error = e
        finally:
            self._close_detector()
            self.on_end(self.error)

    def push(self, data: bytes) -> None:
        if len(data) > 4:
            (client_id,) = struct.unpack_from("<I", data)
            self.source.push(data[4:], client_id)

    def command(self, key: str) -> None:
        if key in ("r", "m"):
            self.commands.put(key)

    def close(self, timeout: float = 10.0) -> None:
        self.source.end()
        self.commands.put("q")
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        elif not self._thread.ident:
            self._close_detector()

    def _close_detector(self) -> None:
        if getattr(self, "detector", None) is not None:
            self.detector.close()
            self.detector = None

    def status(self) -> dict:
        snap = self.stats.snapshot()
        return {"type": "stats", "frames_in": self.source.received,
                "frames_out": snap["frames_out"], "fps_out": snap["fps_out"],
                "dropped": snap["frames_dropped"] + self.source.dropped_before_decode,
                "face_lost_frames": snap["face_lost_frames"], "mode": self.pipeline.mode,
                "server_latency_ms": snap["latency_ms"],
                "stages_ms": {k: v["median_ms"] for k, v in snap["stages"].items()}}


# ---------------------------------------------------------------------------------------------
# The web application
# ---------------------------------------------------------------------------------------------

class WebApp:
    """State behind the routes: the engine, the job queue, the temporary folder, live sessions."""

    def __init__(self, engine, config: WebConfig, device: str = "cpu"):
        self.engine = SerializedEngine(engine) if device == "cuda" else engine
        self.config = config
        self.device = device
        if config.workdir is not None:
            Path(config.workdir).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="mra-web-", dir=config.workdir))
        self.queue = JobQueue(self._run_job, max_pending=config.max_queue, keep_s=config.keep_minutes * 60)
        self.live: set[LiveSession] = set()
        self.live_lock = threading.Lock()
        self.batch_size = config.batch_size or (16 if device == "cuda" else 4)

    def _run_job(self, job: Job, progress) -> AnimateResult:
        return animate_file(self.engine, job.source, job.driving, job.output, job.options, progress=progress)

    def start(self) -> None:
        self.queue.start()

    def close(self) -> None:
        with self.live_lock:
            sessions = list(self.live)
        for s in sessions:
            s.close()
        self.queue.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def info(self) -> dict:
        e = self.engine
        return {"model": e.describe(), "frame_size": e.frame_size, "has_avd": bool(e.has_avd),
                "modes": [m for m in MODES if m != "avd" or e.has_avd], "crops": list(CROPS),
                "defaults": {"mode": AnimateOptions.mode, "crop": AnimateOptions.crop},
                "max_upload_mb": self.config.max_upload_mb, "examples": examples(),
                "live_size": self.config.live_size, "keep_minutes": self.config.keep_minutes}

    def job_status(self, job: Job) -> dict:
        d = {"id": job.id, "state": job.state, "position": self.queue.position(job), "done": job.done,
             "total": job.total, "message": job.message}
        if job.state == "queued":
            d["ahead"] = d["position"] - 1 + (1 if self.queue.running is not None else 0)
        if job.state == "done" and job.result is not None:
            r = job.result
            d.update(result_url=f"api/jobs/{job.id}/result", download_url=f"api/jobs/{job.id}/result?download=1",
                     download_name=job.download_name, frames=r.frames, fps=float(r.fps), size=r.size,
                     has_audio=r.has_audio, seconds=round(r.seconds, 2))
        return d

    def new_job_folder(self) -> "tuple[str, Path]":
        job_id = secrets.token_urlsafe(12)
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder


def _json_error(message: str, status: int):
    from starlette.responses import JSONResponse
    return JSONResponse({"error": message}, status_code=status)


def create_app(engine, config: "WebConfig | None" = None, device: str = "cpu"):
    """The Starlette application (``app.state.web`` is the :class:`WebApp`)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    config = config or WebConfig()
    web = WebApp(engine, config, device)

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request):
        return JSONResponse(web.info())

    async def favicon(request):
        return Response(status_code=204)

    async def submit(request):
        job_id, folder = web.new_job_folder()
        uploads = (folder / "source", folder / "driving")
        try:
            fields, files = await receive_form(request, folder, config.max_upload_bytes,
                                               {"source": "source image", "driving": "driving video"})
            mode = fields.get("mode", AnimateOptions.mode)
            crop = fields.get("crop", AnimateOptions.crop)
            options = AnimateOptions(mode=mode, crop=crop, batch_size=web.batch_size).validate()
            source = files.get("source")
            if source is None:
                name = fields.get("example", "")
                if not name:
                    raise UserError("no portrait: upload an image or pick one of the examples")
                if name not in examples():
                    raise UserError(f"no example portrait named {name!r}; pick one of {', '.join(examples())}")
                source = EXAMPLES / f"{name}.png"
            driving = files.get("driving")
            if driving is None:
                raise UserError("no driving video: upload one or record one with the webcam")
            job = Job(id=job_id, folder=folder, source=source, driving=driving, options=options,
                      download_name=safe_name(f"{source.stem}-{driving.stem}.mp4"), uploads=uploads)
            job.output.parent.mkdir()
            await run_in_threadpool(check_inputs, source, driving, job.output)
            if mode == "avd" and not web.engine.has_avd:
                raise UserError("this model has no trained AVD network: use --mode relative or standard")
            position = web.queue.submit(job)
        except UploadTooLarge as e:
            shutil.rmtree(folder, ignore_errors=True)
            return _json_error(error_text(e), 413)
        except QueueFull as e:
            shutil.rmtree(folder, ignore_errors=True)
            return _json_error(error_text(e), 503)
        except UserError as e:
            shutil.rmtree(folder, ignore_errors=True)
            return _json_error(error_text(e, uploads), 400)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse({"id": job_id, "state": job.state, "position": position})

    def _job(request) -> Job:
        job = web.queue.get(request.path_params["job_id"])
        if job is None:
            raise HTTPException(404, f"no such job (results are kept {config.keep_minutes:g} minutes)")
        return job

    async def job_status(request):
        return JSONResponse(web.job_status(_job(request)))

    async def job_cancel(request):
        job = _job(request)
        web.queue.cancel(job.id)
        return JSONResponse(web.job_status(job))

    async def job_result(request):
        job = _job(request)
        if job.state != "done" or not job.output.exists():
            raise HTTPException(409, f"the job is {job.state}; there is no result to download")
        download = request.query_params.get("download") == "1"
        return FileResponse(job.output, media_type="video/mp4", filename=job.download_name,
                            content_disposition_type="attachment" if download else "inline")

    async def live(websocket: WebSocket):
        await websocket.accept()
        loop = asyncio.get_running_loop()
        session: "LiveSession | None" = None
        folder: "Path | None" = None
        ended = asyncio.Event()

        def send_bytes(data: bytes) -> None:  # from the pipeline's sink thread
            asyncio.run_coroutine_threadsafe(websocket.send_bytes(data), loop).result(timeout=10)

        def on_end(error: "BaseException | None") -> None:
            loop.call_soon_threadsafe(ended.set)

        async def send_stats():
            while not ended.is_set():
                try:
                    await asyncio.wait_for(ended.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass
                if session is not None:
                    await websocket.send_text(json.dumps(session.status(), default=float))

        stats_task = None
        try:
            start = await websocket.receive_json()
            if not isinstance(start, dict) or start.get("type") != "start":
                raise UserError("the webcam tab must start with a 'start' message")
            if "upload" in start:
                data = await websocket.receive_bytes()
                if len(data) > config.max_upload_bytes:
                    raise UploadTooLarge(f"the source image is larger than the upload limit of "
                                         f"{_limit_text(config.max_upload_bytes)}; use a smaller file")
                _, folder = web.new_job_folder()
                portrait = folder / safe_name(str(start.get("upload")))
                portrait.write_bytes(data)
            else:
                name = str(start.get("example", ""))
                if name not in examples():
                    raise UserError("no portrait: upload an image or pick one of the examples")
                portrait = EXAMPLES / f"{name}.png"
            with web.live_lock:
                if len(web.live) >= config.max_live:
                    raise UserError(f"the webcam tab is busy ({config.max_live} session(s) at a time, --max-live); "
                                    "stop the other one first")
                web.live.add(placeholder := object())  # type: ignore[arg-type]
            try:
                session = await run_in_threadpool(
                    LiveSession, web.engine, portrait, str(start.get("crop", "auto")), str(start.get("mode", "relative")),
                    config.live_size, send_bytes, on_end)
            finally:
                with web.live_lock:
                    web.live.discard(placeholder)  # type: ignore[arg-type]
                    if session is not None:
                        web.live.add(session)
            session.start()
            await websocket.send_text(json.dumps({"type": "ready", "model": web.engine.describe(),
                                                  "size": config.live_size}))
            stats_task = asyncio.create_task(send_stats())
            receiver = asyncio.create_task(websocket.receive())
            waiter = asyncio.create_task(ended.wait())
            by_itself = False
            while True:
                done, _ = await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if receiver not in done:  # the pipeline ended by itself (an error)
                    receiver.cancel()
                    by_itself = True
                    break
                msg = receiver.result()
                if msg["type"] == "websocket.disconnect":
                    waiter.cancel()
                    break
                if msg.get("bytes") is not None:
                    session.push(msg["bytes"])
                elif msg.get("text"):
                    try:
                        cmd = json.loads(msg["text"])
                    except ValueError:
                        cmd = {}
                    if cmd.get("type") == "stop":
                        waiter.cancel()
                        break
                    if cmd.get("type") == "command":
                        session.command(str(cmd.get("key", "")))
                receiver = asyncio.create_task(websocket.receive())
            if by_itself and session.error is not None:
                raise session.error
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - one line to the page, never a traceback
            from nets.checkpoint import CheckpointError
            if isinstance(e, (UserError, CheckpointError)):
                text = error_text(e, [folder] if folder else [])
            else:
                print(f"mra-web: webcam session failed:\n{traceback.format_exc()}", file=sys.stderr)
                text = f"error: internal error in the webcam session ({type(e).__name__}); the server log has the details"
            with contextlib.suppress(Exception):
                await websocket.send_text(json.dumps({"type": "error", "message": text}))
        finally:
            if session is not None:
                await run_in_threadpool(session.close)
                with web.live_lock:
                    web.live.discard(session)
            ended.set()
            if stats_task is not None:
                with contextlib.suppress(BaseException):
                    await stats_task
            if session is not None:
                with contextlib.suppress(Exception):
                    final = session.status()
                    final["type"] = "stopped"
                    await websocket.send_text(json.dumps(final, default=float))
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(Exception):
                await websocket.close()

    async def http_error(request, exc):
        return _json_error(f"error: {exc.detail}", exc.status_code)

    async def server_error(request, exc):
        print(f"mra-web: request {request.url.path} failed:\n"
              + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), file=sys.stderr)
        return _json_error(f"error: internal server error ({type(exc).__name__}); the server log has the details", 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        web.start()
        try:
            yield
        finally:
            await run_in_threadpool(web.close)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/info", info),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", job_status, methods=["GET"]),
        Route("/api/jobs/{job_id}", job_cancel, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/result", job_result),
        WebSocketRoute("/api/live", live),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.web = web
    return app


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one); a busy port or unknown address is a UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}: {e.strerror}; use an address of this machine, e.g. "
                        "--host 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno in (98, 48, 10048):  # EADDRINUSE (Linux, macOS, Windows)
            raise UserError(f"port {port} on {host} is already in use (another mra-web?); stop that program or "
                            "choose another --port") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port") from None
    sock.setblocking(False)
    return sock


def make_server(app, sock: socket.socket, config: WebConfig):
    import uvicorn
    ucfg = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                          ws_max_size=max(16 * MB, config.max_upload_bytes + 65536))
    return uvicorn.Server(ucfg)


class BackgroundServer:
    """The app served from a thread (tests, benchmarks): ``url``, ``web`` (the :class:`WebApp`), ``stop()``."""

    def __init__(self, engine, config: "WebConfig | None" = None, device: str = "cpu"):
        self.config = config or WebConfig(port=0)
        self.app = create_app(engine, self.config, device)
        self.web: WebApp = self.app.state.web
        self.sock = bind(self.config.host, self.config.port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{self.config.host}:{self.port}/"
        self.server = make_server(self.app, self.sock, self.config)
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the mra-web test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-web", description="A local web page to animate a portrait with a driving video or "
                       "with your webcam (MRAA).")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page has no authentication)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--checkpoint", metavar="PATH", help="model checkpoint (default: the model shipped with the package)")
    p.add_argument("--config", metavar="PRESET|YAML", help="config of the checkpoint (needed for official checkpoints)")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="inference backend (default: torch)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="device (default: cpu)")
    p.add_argument("--batch-size", type=int, metavar="N", help="frames animated together (default: 4 on cpu, 16 on cuda)")
    p.add_argument("--max-upload-mb", type=float, default=WebConfig.max_upload_mb, metavar="MB",
                   help=f"largest accepted upload, per file (default {WebConfig.max_upload_mb:g})")
    p.add_argument("--max-queue", type=int, default=WebConfig.max_queue, metavar="N",
                   help=f"jobs that may wait in the queue (default {WebConfig.max_queue})")
    p.add_argument("--keep-minutes", type=float, default=WebConfig.keep_minutes, metavar="MIN",
                   help=f"results are deleted this long after they finished (default {WebConfig.keep_minutes:g})")
    p.add_argument("--live-size", type=int, default=WebConfig.live_size, metavar="N",
                   help=f"side of the webcam tab's animated frames (default {WebConfig.live_size})")
    p.add_argument("--max-live", type=int, default=WebConfig.max_live, metavar="N",
                   help=f"webcam sessions at once (default {WebConfig.max_live})")
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="where the temporary upload folder is made (default: the system's temporary folder)")
    return p


def _check_server_packages() -> None:
    import importlib.util
    missing = [m for m in ("starlette", "uvicorn", "python_multipart", "websockets") if importlib.util.find_spec(m) is None]
    if missing:
        names = " ".join("python-multipart" if m == "python_multipart" else m for m in missing)
        raise UserError(f"mra-web needs {names}, which are not installed: pip install {names}")


def cli(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    _check_server_packages()
    from .animate import _one_line_warnings
    _one_line_warnings()  # e.g. "warning: the driving video recording.webm does not say its frame rate; ..."
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise UserError("--max-upload-mb must be positive")
    for name in ("max_queue", "max_live"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 64 <= args.live_size <= 1024:
        raise UserError("--live-size must be between 64 and 1024")
    if not args.keep_minutes > 0:
        raise UserError("--keep-minutes must be positive")
    if args.batch_size is not None and not 1 <= args.batch_size <= 1024:
        raise UserError(f"--batch-size must be between 1 and 1024, got {args.batch_size}")
    config = WebConfig(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, max_queue=args.max_queue,
                       keep_minutes=args.keep_minutes, live_size=args.live_size, max_live=args.max_live,
                       batch_size=args.batch_size, workdir=args.workdir)
    sock = bind(config.host, config.port)  # fail fast: a busy port is known before the model loads
    try:
        engine = load_engine(args.checkpoint, args.config, args.backend, args.device)
        app = create_app(engine, config, args.device)
        server = make_server(app, sock, config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if not is_loopback(config.host):
            print(f"warning: mra-web listens on {config.host}, so other machines can reach it, and it has no "
                  "authentication: anyone who can connect can upload files and use this computer's CPU/GPU. Use the "
                  "default --host 127.0.0.1 unless you trust the network.", file=sys.stderr)
        print(f"mra-web: {engine.describe()}", file=sys.stderr)
        print(f"mra-web: serving on http://{shown}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if threading.current_thread() is threading.main_thread():
            def terminate(signum, frame):
                raise KeyboardInterrupt
            signal.signal(signal.SIGTERM, terminate)  # uvicorn shuts down gracefully, then re-raises the signal
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        print("mra-web: stopped; temporary files removed", file=sys.stderr)
    finally:
        sock.close()
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    """Console entry point: 0 when stopped (Ctrl-C, SIGTERM), 2 with one ``error:`` line for a problem to fix."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
