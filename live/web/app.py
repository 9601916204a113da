"""mra-web: a local web page to animate a portrait (upload, preview, download) and to puppet it
from the browser's webcam.

    mra-web                                        # then open the address it prints, http://127.0.0.1:7860/?token=...
    mra-web --checkpoint model.pth --config vox256 --port 8000

The page (``live/web/static``: plain HTML, CSS and JavaScript, no build step) has one portrait
chooser (upload, or a bundled example) and two tabs:

* **Video**: a driving video (upload, or a recording from the webcam with MediaRecorder), mode,
  crop, Generate with a progress bar and the place in the queue, the result beside the driving
  video, and a download of the mp4 (with the driving video's audio). The work is
  :func:`live.animate.animate_file` (the mra-animate pipeline, same defaults); bad inputs give the
  same one-line ``error: ...`` messages as mra-animate.
* **Webcam**: the browser's webcam drives the portrait live. JPEG frames go over a web socket into
  a :class:`~live.web.session.BrowserSource` (a :class:`~live.loop.capture.CaptureSource`), through the mra-live
  :class:`~live.loop.pipeline.LivePipeline` (same face tracking, smoothing and engine calls) into a
  :class:`~live.web.session.BrowserSink` that sends the animated frames back; the page shows fps and latency.

Server side: Starlette on uvicorn (see ``docs/web.md`` for why not Gradio). One engine (one
model in memory) serves everything; Generate jobs run one at a time in a
:class:`~live.web.jobs.JobQueue` thread. Uploads are streamed to a private temporary folder with a size limit and removed when a
job fails, when its result expires, and when the server stops. Binds 127.0.0.1 by default; every
request must pass :mod:`live.web.guard` (the Host, the Origin, the per-launch token in the page's
address).

Modules: this one (configuration, routes, serving, command line), :mod:`live.web.upload`
(streamed, size-limited form uploads), :mod:`live.web.jobs` (the job queue), :mod:`live.web.session`
(the webcam tab's source, sink and session) and :mod:`live.web.guard` (which requests are answered).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from export.engine import MODES
from nets.errors import ArgumentParser, DiskFault, UserError, disk_fault, run_cli

from .. import expression as ex
from ..portrait import CROPS
from ..animate import AnimateOptions, AnimateResult, animate_file, check_inputs
from ..engines import EngineSpec, add_engine_arguments, build_engine, check_mode
from .guard import TOKEN_PARAM, Door, Guard, new_token
from .jobs import Job, JobQueue, QueueFull
from ..loop.stats import to_json
from ..remote.protocol import is_loopback
from .session import LivePlace, LivePlaces, LiveSession
from .upload import MB, UploadTooLarge, limit_text, error_text, receive_form, safe_name, server_disk_text

__all__ = ["WebConfig", "WebApp", "create_app", "BackgroundServer", "main", "Job", "JobQueue", "LiveSession",
           "safe_name", "is_loopback", "examples"]

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLES = STATIC / "examples"


@dataclass
class WebConfig:
    """What ``mra-web`` serves and how (the command-line options of the same names)."""

    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_mb: float = 200.0  # per uploaded file
    max_queue: int = 16  # jobs waiting (not counting the running one)
    keep_minutes: float = 60.0  # results are removed this long after they finished
    live_size: int = 512  # long side of the frames the webcam tab sends back
    max_live: int = 1  # webcam sessions at once
    live_idle_s: float = 60.0  # a started webcam session that receives nothing this long ends (its place is freed)
    batch_size: "int | None" = None  # None: mra-animate's default (4 on cpu, 16 on cuda)
    workdir: "Path | None" = None  # parent of the temporary folder (default: the system's)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


def examples() -> list[str]:
    """Names of the bundled example portraits (``live/web/static/examples/*.png``)."""
    return sorted(p.stem for p in EXAMPLES.glob("*.png"))


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
# The web application
# ---------------------------------------------------------------------------------------------

class WebApp:
    """State behind the routes: the engine, the job queue, the temporary folder, live sessions."""

    def __init__(self, engine, config: WebConfig, device: str = "cpu"):
        self.engine = SerializedEngine(engine) if device == "cuda" else engine
        self.config = config
        self.device = device
        self.root = make_workdir(config.workdir)
        self.token = new_token()  # the page's address carries it (live.web.guard)
        self.queue = JobQueue(self._run_job, max_pending=config.max_queue, keep_s=config.keep_minutes * 60)
        self.live = LivePlaces(config.max_live)
        self.batch_size = config.batch_size or (16 if device == "cuda" else 4)

    def _run_job(self, job: Job, progress) -> AnimateResult:
        return animate_file(self.engine, job.source, job.driving, job.output, job.options, progress=progress)

    def start(self) -> None:
        self.queue.start()

    def close(self) -> None:
        for session in self.live.sessions():
            session.close()
        self.queue.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def info(self) -> dict:
        e = self.engine
        return {"model": e.describe(), "frame_size": e.frame_size, "has_avd": bool(e.has_avd),
                "all_modes": list(MODES), "modes": [m for m in MODES if m != "avd" or e.has_avd],
                "crops": list(CROPS),
                "defaults": {"mode": AnimateOptions.mode, "crop": AnimateOptions.crop,
                             "paste_back": AnimateOptions.paste_back, "expression": AnimateOptions.expression},
                "expression_range": list(ex.GAIN_RANGE),
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
                     download_name=job.download_name, frames=r.frames, fps=float(r.fps), width=r.size.width,
                     height=r.size.height,
                     has_audio=r.has_audio, seconds=round(r.seconds, 2))
        return d

    def new_job_folder(self) -> "tuple[str, Path]":
        job_id = secrets.token_urlsafe(12)
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder


def _gain(value, default: float) -> float:
    """A form field or JSON value as an expression strength (absent: ``default``); out of range: UserError."""
    if value is None or value == "":
        return default
    import argparse
    try:
        return ex.gain_argument(str(value))
    except argparse.ArgumentTypeError as e:
        raise UserError(f"expression strength {e}") from None


def _flag(value, default: bool) -> bool:
    """A form field or JSON value as a boolean (``"1"``, ``"true"``, ``"on"``, True...; absent: ``default``)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "on", "yes")


WORKDIR_PATTERN = r"mra-web-(?P<pid>\d+)-[\w]{8}"  # tempfile's random part: 8 characters


def make_workdir(parent: "Path | None") -> Path:
    """The server's private temporary folder ``mra-web-PID-XXXXXXXX`` in ``parent`` (default: the
    system's), after sweeping the ones that servers killed earlier left there; a folder that cannot
    be made is a UserError."""
    from nets import media

    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    try:
        where.mkdir(parents=True, exist_ok=True)
        media.sweep_stale(where, WORKDIR_PATTERN)
        return Path(tempfile.mkdtemp(prefix=f"mra-web-{os.getpid()}-", dir=where))
    except OSError as e:
        raise UserError(f"cannot make mra-web's temporary folder in {where} ({e.strerror or e}); choose a writable "
                        "--workdir") from None


START_TIMEOUT_S = 30.0  # a webcam-tab socket must say what it wants (and send its portrait) this soon


async def _receive_within(websocket, seconds: float) -> dict:
    """The next web-socket message; a UserError when none comes within ``seconds`` (idle sockets are closed)."""
    try:
        return await asyncio.wait_for(websocket.receive(), timeout=seconds)
    except asyncio.TimeoutError:
        raise UserError(f"nothing received for {seconds:g} s: the webcam tab must start with a 'start' message "
                        "(and its portrait)") from None


def _json_object(text: "str | None") -> "dict | None":
    """A web-socket text message as a JSON object; None for anything else (binary, not JSON, a list...)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json_error(message: str, status: int):
    from starlette.responses import JSONResponse
    return JSONResponse({"error": message}, status_code=status)


class Routes:
    """mra-web's HTTP routes over one :class:`WebApp`: the page, ``/api/info`` and the job API."""

    def __init__(self, web: WebApp):
        self.web = web
        self.config = web.config
        self.checks = asyncio.Semaphore(1)  # uploads are decoded and checked one at a time: memory stays bounded

    async def index(self, request):
        from starlette.responses import FileResponse
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(self, request):
        from starlette.responses import JSONResponse
        return JSONResponse(self.web.info())

    async def favicon(self, request):
        from starlette.responses import Response
        return Response(status_code=204)

    async def submit(self, request):
        """POST /api/jobs: the uploads (or an example portrait) and options -> a queued job."""
        from starlette.responses import JSONResponse

        try:
            job_id, folder = self.web.new_job_folder()
        except OSError as e:
            return _json_error(server_disk_text(e), 507)
        uploads = (folder / "source", folder / "driving")
        try:
            job = await self._job_from_form(request, job_id, folder, uploads)
            position = self.web.queue.submit(job)
        except UploadTooLarge as e:
            shutil.rmtree(folder, ignore_errors=True)
            return _json_error(error_text(e), 413)
        except QueueFull as e:
            shutil.rmtree(folder, ignore_errors=True)
            return _json_error(error_text(e), 503)
        except (DiskFault, OSError) as e:
            shutil.rmtree(folder, ignore_errors=True)
            if not isinstance(e, DiskFault) and disk_fault(e) is None:
                raise
            print(f"mra-web: an upload could not be stored: {e}", file=sys.stderr)
            return _json_error(server_disk_text(e), 507)
        except UserError as e:
            shutil.rmtree(folder, ignore_errors=True)
            return _json_error(error_text(e, uploads), 400)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse({"id": job_id, "state": job.state, "position": position})

    async def _job_from_form(self, request, job_id: str, folder: Path, uploads: "tuple[Path, Path]") -> Job:
        """The form's files stored in ``folder`` and checked (inputs, options, mode) -> the job to queue."""
        from starlette.concurrency import run_in_threadpool

        web = self.web
        fields, files = await receive_form(request, folder, self.config.max_upload_bytes,
                                           {"source": "source image", "driving": "driving video"})
        mode = fields.get("mode", AnimateOptions.mode)
        crop = fields.get("crop", AnimateOptions.crop)
        options = AnimateOptions(mode=mode, crop=crop, batch_size=web.batch_size,
                                 expression=_gain(fields.get("expression"), AnimateOptions.expression),
                                 paste_back=_flag(fields.get("paste_back"), AnimateOptions.paste_back)).validate()
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
        async with self.checks:
            await run_in_threadpool(check_inputs, source, driving, job.output)
        check_mode(web.engine, mode)
        return job

    def _job(self, request) -> Job:
        from starlette.exceptions import HTTPException

        job = self.web.queue.get(request.path_params["job_id"])
        if job is None:
            raise HTTPException(404, f"no such job (results are kept {self.config.keep_minutes:g} minutes)")
        return job

    async def job_status(self, request):
        from starlette.responses import JSONResponse
        return JSONResponse(self.web.job_status(self._job(request)))

    async def job_cancel(self, request):
        from starlette.responses import JSONResponse
        job = self._job(request)
        self.web.queue.cancel(job.id)
        return JSONResponse(self.web.job_status(job))

    async def job_result(self, request):
        from starlette.exceptions import HTTPException
        from starlette.responses import FileResponse

        job = self._job(request)
        if job.state != "done" or not job.output.exists():
            raise HTTPException(409, f"the job is {job.state}; there is no result to download")
        download = request.query_params.get("download") == "1"
        return FileResponse(job.output, media_type="video/mp4", filename=job.download_name,
                            content_disposition_type="attachment" if download else "inline")

    async def live(self, websocket) -> None:
        """The webcam tab's web socket (see :class:`LiveSocket`)."""
        await LiveSocket(self.web, websocket).run()

    async def http_error(self, request, exc):
        return _json_error(f"error: {exc.detail}", exc.status_code)

    async def server_error(self, request, exc):
        print(f"mra-web: request {request.url.path} failed:\n"
              + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), file=sys.stderr)
        return _json_error(f"error: internal server error ({type(exc).__name__}); the server log has the details", 500)


class LiveSocket:
    """One webcam-tab connection: a ``start`` message (and the portrait's bytes), then camera frames
    and commands in, animated frames and statistics out, until either side stops. Every failure is
    one ``error`` message to the page; the place, the session and the portrait are released."""

    def __init__(self, web: WebApp, websocket):
        self.web = web
        self.config = web.config
        self.websocket = websocket
        self.place: "LivePlace | None" = None  # taken at 'start', before the portrait is read
        self.session: "LiveSession | None" = None
        self.folder: "Path | None" = None
        self.ended = asyncio.Event()
        self.stats_task: "asyncio.Task | None" = None

    async def run(self) -> None:
        from starlette.websockets import WebSocketDisconnect

        await self.websocket.accept()
        self.loop = asyncio.get_running_loop()
        try:
            start = await self._start_message()
            await self._open(start, await self._portrait(start))
            await self._relay()
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - one line to the page, never a traceback
            await self._report(e)
        finally:
            await self._close()

    async def _receive(self) -> dict:
        from starlette.websockets import WebSocketDisconnect

        msg = await _receive_within(self.websocket, START_TIMEOUT_S)
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect()
        return msg

    async def _start_message(self) -> dict:
        """The ``start`` message; a place among the ``--max-live`` sessions is taken before anything is read."""
        start = _json_object((await self._receive()).get("text"))
        if start is None or start.get("type") != "start":
            raise UserError("the webcam tab must start with a 'start' message (a JSON object)")
        self.place = self.web.live.take()  # before any portrait is read
        return start

    async def _portrait(self, start: dict) -> Path:
        """The uploaded portrait (its bytes follow ``start``; kept in a job folder) or an example's file."""
        if "upload" not in start:
            name = str(start.get("example", ""))
            if name not in examples():
                raise UserError("no portrait: upload an image or pick one of the examples")
            return EXAMPLES / f"{name}.png"
        limit = self.config.max_upload_bytes
        declared = start.get("size")
        too_large = UploadTooLarge(f"the source image is larger than the upload limit of {limit_text(limit)}; "
                                   "use a smaller file")
        if isinstance(declared, (int, float)) and declared > limit:
            raise too_large
        data = (await self._receive()).get("bytes")
        if data is None:
            raise UserError("the portrait's bytes must follow the 'start' message")
        if len(data) > limit:
            raise too_large
        _, self.folder = self.web.new_job_folder()
        portrait = self.folder / safe_name(str(start.get("upload")))
        portrait.write_bytes(data)
        return portrait

    async def _open(self, start: dict, portrait: Path) -> None:
        """The :class:`LiveSession` for the portrait, started; ``ready`` to the page; statistics every 0.5 s."""
        from starlette.concurrency import run_in_threadpool

        web = self.web
        try:
            session = await run_in_threadpool(
                LiveSession, web.engine, portrait, str(start.get("crop", "auto")), str(start.get("mode", "relative")),
                self.config.live_size, self._send_bytes, self._on_end,
                _flag(start.get("paste_back"), AnimateOptions.paste_back),
                _gain(start.get("expression"), AnimateOptions.expression))
        except BaseException:
            self._release_place()  # now, so the page may start again as soon as it has the error
            raise
        self.session = session
        if self.place is not None:
            self.place.session = session
        session.start()
        await self.websocket.send_text(json.dumps({"type": "ready", "model": web.engine.describe(),
                                                   "size": self.config.live_size}))
        self.stats_task = asyncio.create_task(self._send_stats())

    def _release_place(self) -> None:
        if self.place is not None:
            self.web.live.release(self.place)
            self.place = None

    def _send_bytes(self, data: bytes) -> None:  # from the pipeline's sink thread
        asyncio.run_coroutine_threadsafe(self.websocket.send_bytes(data), self.loop).result(timeout=10)

    def _on_end(self, error: "BaseException | None") -> None:
        self.loop.call_soon_threadsafe(self.ended.set)

    async def _send_stats(self) -> None:
        while not self.ended.is_set():
            try:
                await asyncio.wait_for(self.ended.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
            if self.session is not None:
                await self.websocket.send_text(to_json(self.session.status()))

    async def _relay(self) -> None:
        """Camera frames and commands to the session until the page stops or the session ends by itself."""
        session = self.session
        receiver = asyncio.create_task(self.websocket.receive())
        waiter = asyncio.create_task(self.ended.wait())
        by_itself = False
        idle = self.config.live_idle_s
        while True:
            done, _ = await asyncio.wait({receiver, waiter}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # a page that started and then went silent would hold the place (--max-live) forever
                receiver.cancel()
                waiter.cancel()
                raise UserError(f"nothing received from the webcam for {idle:g} s, so the session was stopped (a tab "
                                "in the background stops sending frames); press Start again")
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
                cmd = _json_object(msg["text"]) or {}  # anything but a JSON object is ignored
                if cmd.get("type") == "stop":
                    waiter.cancel()
                    break
                if cmd.get("type") == "command":
                    session.command(str(cmd.get("key", "")))
                elif cmd.get("type") == "expression":
                    with contextlib.suppress(UserError):  # a slider cannot send a bad value; a forged one is ignored
                        session.set_expression(_gain(cmd.get("gain"), AnimateOptions.expression))
            receiver = asyncio.create_task(self.websocket.receive())
        if by_itself and session.error is not None:
            raise session.error

    async def _report(self, e: Exception) -> None:
        if isinstance(e, DiskFault) or disk_fault(e) is not None:
            print(f"mra-web: webcam session: {e}", file=sys.stderr)
            text = server_disk_text(e)
        elif isinstance(e, UserError):  # (checkpoint and config errors too)
            text = error_text(e, [self.folder] if self.folder else [])
        else:
            print(f"mra-web: webcam session failed:\n{traceback.format_exc()}", file=sys.stderr)
            text = f"error: internal error in the webcam session ({type(e).__name__}); the server log has the details"
        with contextlib.suppress(Exception):
            await self.websocket.send_text(json.dumps({"type": "error", "message": text}))

    async def _close(self) -> None:
        from starlette.concurrency import run_in_threadpool

        session = self.session
        if session is not None:
            await run_in_threadpool(session.close)
        self._release_place()
        self.ended.set()
        if self.stats_task is not None:
            with contextlib.suppress(BaseException):
                await self.stats_task
        if session is not None:
            with contextlib.suppress(Exception):
                final = session.status()
                final["type"] = "stopped"
                await self.websocket.send_text(to_json(final))
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(Exception):
            await self.websocket.close()


def create_app(engine, config: "WebConfig | None" = None, device: str = "cpu"):
    """The Starlette application (``app.state.web`` is the :class:`WebApp`)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles

    web = WebApp(engine, config or WebConfig(), device)
    r = Routes(web)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        web.start()
        try:
            yield
        finally:
            await run_in_threadpool(web.close)

    routes = [
        Route("/", r.index),
        Route("/favicon.ico", r.favicon),
        Route("/api/info", r.info),
        Route("/api/jobs", r.submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", r.job_status, methods=["GET"]),
        Route("/api/jobs/{job_id}", r.job_cancel, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/result", r.job_result),
        WebSocketRoute("/api/live", r.live),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guard, door=Door.serving(web.config.host, web.token))],
                    exception_handlers={HTTPException: r.http_error, Exception: r.server_error})
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


def page_url(host: str, port: int, token: str) -> str:
    """The address to open: ``http://HOST:PORT/?token=...`` (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?{TOKEN_PARAM}={token}"


class BackgroundServer:
    """The app served from a thread (tests, benchmarks): ``url`` (the server's root), ``token`` and
    ``page_url`` (the root with the token: what a browser opens), ``web`` (the :class:`WebApp`), ``stop()``.
    Requests other than the page's own carry the token as the ``token`` query parameter."""

    def __init__(self, engine, config: "WebConfig | None" = None, device: str = "cpu"):
        self.config = config or WebConfig(port=0)
        self.app = create_app(engine, self.config, device)
        self.web: WebApp = self.app.state.web
        self.sock = bind(self.config.host, self.config.port)
        self.port = self.sock.getsockname()[1]
        self.token = self.web.token
        self.page_url = page_url(self.config.host, self.port, self.token)
        self.url = self.page_url.split("?")[0]
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
                   help="address to listen on (default 127.0.0.1: this machine only; see docs/web.md, Security)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    add_engine_arguments(p, precision=False)
    p.add_argument("--batch-size", type=int, metavar="N", help="frames animated together (default: 4 on cpu, 16 on cuda)")
    p.add_argument("--max-upload-mb", type=float, default=WebConfig.max_upload_mb, metavar="MB",
                   help=f"largest accepted upload, per file (default {WebConfig.max_upload_mb:g})")
    p.add_argument("--max-queue", type=int, default=WebConfig.max_queue, metavar="N",
                   help=f"jobs that may wait in the queue (default {WebConfig.max_queue})")
    p.add_argument("--keep-minutes", type=float, default=WebConfig.keep_minutes, metavar="MIN",
                   help=f"results are deleted this long after they finished (default {WebConfig.keep_minutes:g})")
    p.add_argument("--live-size", type=int, default=WebConfig.live_size, metavar="N",
                   help=f"long side of the webcam tab's animated frames (default {WebConfig.live_size})")
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
    from nets.errors import one_line_warnings
    one_line_warnings()  # e.g. "warning: the driving video recording.webm does not say its frame rate; ..."
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
    web = None
    try:
        engine = build_engine(EngineSpec(args.checkpoint, args.config, args.backend, args.device,
                                         export_checkpoints=True))
        app = create_app(engine, config, args.device)
        web = app.state.web
        server = make_server(app, sock, config)
        host, port = sock.getsockname()[:2]
        if threading.current_thread() is threading.main_thread():
            def terminate(signum, frame):
                raise KeyboardInterrupt
            # SIGTERM stops the server like Ctrl-C (uvicorn shuts down gracefully, then re-raises the signal)
            signal.signal(signal.SIGTERM, terminate)
        try:
            if not is_loopback(config.host):
                print(f"warning: mra-web listens on {config.host}, so other machines can reach it; its only "
                      "protection is the token in its address, which travels unencrypted (no TLS): anyone who sees "
                      "it can upload files and use this computer's CPU/GPU. Use the default --host 127.0.0.1 unless "
                      "you trust the network.", file=sys.stderr)
            print(f"mra-web: {engine.describe()}", file=sys.stderr)
            print(f"mra-web: serving on {page_url(host, port, web.token)} (Ctrl-C to stop)", file=sys.stderr,
                  flush=True)
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
    finally:
        if web is not None:
            web.close()  # nothing left to do after a graceful shutdown; covers a stop before the server started
        sock.close()
    print("mra-web: stopped; temporary files removed", file=sys.stderr)
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    """Console entry point: 0 when stopped (Ctrl-C, SIGTERM), 2 with one ``error:`` line for a problem to fix."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
