"""mra-serve: one machine (typically with a GPU) animates for webcams elsewhere (``mra-live --worker``).

    mra-serve                                          # the shipped model, ws://127.0.0.1:8765
    mra-serve --device cuda --host 0.0.0.0 --token-file token.txt --tls-cert c.pem --tls-key k.pem
    mra-serve --checkpoint vox.pth --config vox256 --device cuda --precision fp16

The client keeps the camera, face tracking, smoothing, paste-back and the sinks; the worker keeps
one session per websocket connection: the client's portraits, prepared once
(``Engine.prepare_source``), and answers the per-frame requests (regions of a driving crop,
animation of region parameters) with compressed frames (:mod:`live.remote.protocol`).

Many webcams on one engine: a :class:`Batcher` holds one slot per session and kind of request
(the newest request wins, an older one that has not run yet is answered ``Superseded``) and runs
what the slots hold as one engine call per kind, after a short window that ends early once every
recently active session has sent its frame. A session reaches only its own avatars; message size,
frames per request, avatars, sessions and idle time are bounded; bad input is answered with a
``Failure`` and never stops the worker.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import signal
import ssl
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from export.engine import Avatar, Engine, EngineError, RegionParams
from export.stack import AvatarStacks, cat_params
from nets.errors import ArgumentParser, UserError
from nets.media import to_input, to_uint8

from .remote import protocol as wp
from .engines import add_engine_arguments

TLS_HINT = ("put TLS in front: --tls-cert cert.pem --tls-key key.pem (clients then use wss://HOST:PORT and "
            "--worker-ca cert.pem for a self-signed certificate), or a reverse proxy that terminates TLS "
            "(nginx, HAProxy, Caddy; see the README)")


@dataclass
class ServeOptions:
    """What the worker accepts. ``token``: required from every client when set (the CLI requires it for
    any address but loopback)."""

    host: str = "127.0.0.1"
    port: int = wp.DEFAULT_PORT
    token: "str | None" = None
    max_sessions: int = 8
    max_avatars: int = 4  # per session (least recently used is forgotten; the client re-sends it)
    max_message_bytes: int = 2 << 20
    max_batch: int = 8  # frames per request
    engine_batch: int = 16  # frames per engine call
    idle_timeout_s: float = 60.0
    handshake_timeout_s: float = 10.0
    batch_window_ms: float = 3.0
    strikes: int = 3  # garbage messages tolerated per session before it is closed
    ssl: "ssl.SSLContext | None" = None

    def limits(self) -> wp.Limits:
        return wp.Limits(max_message_bytes=self.max_message_bytes, max_batch=self.max_batch,
                         max_avatars=self.max_avatars, idle_timeout_s=self.idle_timeout_s)


class Superseded(Exception):
    """A request replaced by a newer one of the same kind before it ran."""


class RequestFailed(Exception):
    """A request the worker refuses: a protocol failure code and a message for the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------

@dataclass
class Job:
    session: str
    payload: Any  # regions: frames (B, 3, S, S); animate: (avatar, params)
    future: asyncio.Future
    size: int


@dataclass
class BatchStats:
    """Engine calls and frames per kind (mean batch = frames / calls)."""

    calls: dict = field(default_factory=lambda: {"regions": 0, "animate": 0})
    frames: dict = field(default_factory=lambda: {"regions": 0, "animate": 0})

    def mean_batch(self, kind: str) -> float:
        return self.frames[kind] / self.calls[kind] if self.calls[kind] else 0.0


class Batcher:
    """Newest-wins slots (one per session and kind) run as one engine call per kind.

    Each kind has its own engine thread, as the stages of the local pipeline do: the regions of
    the next frames run while the current ones are animated. A batch starts when every session
    active in the last second has a job waiting or running, or ``window_s`` after the first job
    arrived (whichever comes first); jobs that arrive while the engine runs wait for the next
    batch, so under load batches fill by themselves. ``executors[kind]``: one thread each (the
    animate thread also prepares portraits and runs avd transfers).
    """

    KINDS = ("regions", "animate")
    ACTIVE_S = 1.0

    def __init__(self, engine: Engine, executors: "dict[str, ThreadPoolExecutor]", window_s: float, max_frames: int):
        self.engine = engine
        self.executors = executors
        self.window_s = window_s
        self.max_frames = max_frames
        self.slots: dict[str, "OrderedDict[str, Job]"] = {k: OrderedDict() for k in self.KINDS}
        self.running: dict[str, set[str]] = {k: set() for k in self.KINDS}
        self.seen: dict[str, float] = {}  # session -> when it last sent a job
        self.stacks = AvatarStacks(engine)
        self.stats = BatchStats()
        self._wake = {k: asyncio.Event() for k in self.KINDS}

    def submit(self, kind: str, session: str, payload: Any, size: int) -> asyncio.Future:
        slot = self.slots[kind]
        old = slot.pop(session, None)
        if old is not None and not old.future.done():
            old.future.set_exception(Superseded())
        fut = asyncio.get_running_loop().create_future()
        slot[session] = Job(session, payload, fut, size)
        self.seen[session] = time.monotonic()
        self._wake[kind].set()
        return fut

    def forget(self, session: str) -> None:
        for kind in self.KINDS:
            job = self.slots[kind].pop(session, None)
            if job is not None and not job.future.done():
                job.future.cancel()
        self.seen.pop(session, None)

    def _all_in(self, kind: str) -> bool:
        """Every session active in the last second has a job of this kind waiting, or one of either kind
        running (a sequential client waiting on its regions cannot send its next animation yet)."""
        now = time.monotonic()
        ready = set(self.slots[kind]).union(*self.running.values())
        return all(s in ready for s, t in self.seen.items() if now - t < self.ACTIVE_S)

    def _take(self, kind: str) -> list[Job]:
        slot, jobs, n = self.slots[kind], [], 0
        for session in list(slot):
            job = slot[session]
            if jobs and n + job.size > self.max_frames:
                break
            jobs.append(slot.pop(session))
            n += job.size
        return jobs

    async def run(self) -> None:
        await asyncio.gather(*(self._serve(kind) for kind in self.KINDS))

    async def _serve(self, kind: str) -> None:
        while True:
            try:
                await self._once(kind)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never leave the slots unserved
                for job in self.slots[kind].values():
                    if not job.future.done():
                        job.future.set_exception(e)
                self.slots[kind].clear()

    async def _once(self, kind: str) -> None:
        """Wait for jobs and the batching window, run one batch, hand out the results."""
        wake = self._wake[kind]
        await wake.wait()
        wake.clear()
        if not self.slots[kind]:
            return
        deadline = time.monotonic() + self.window_s
        while not self._all_in(kind) and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(wake.wait(), left)
            except TimeoutError:
                break
            wake.clear()
        jobs = self._take(kind)
        self.running[kind] = {j.session for j in jobs}
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executors[kind], self._run, kind, jobs)
        finally:
            self.running[kind] = set()
        for job, result in results:
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self.slots[kind]:
            wake.set()

    def _run(self, kind: str, jobs: list[Job]) -> list[tuple[Job, Any]]:
        """On the kind's engine thread: one engine call -> (job, its result or exception)."""
        try:
            if kind == "regions":
                p = self.engine.regions(np.concatenate([j.payload for j in jobs]))
                parts = _split(p, [j.size for j in jobs])
            else:
                avatars = [j.payload[0] for j in jobs for _ in range(j.size)]
                params = cat_params([j.payload[1] for j in jobs])
                frames = self.stacks.animate_many(avatars, params)
                parts = np.split(frames, np.cumsum([j.size for j in jobs])[:-1])
        except Exception as e:  # reported to each client; the worker keeps serving
            return [(j, e) for j in jobs]
        self.stats.calls[kind] += 1
        self.stats.frames[kind] += sum(j.size for j in jobs)
        return list(zip(jobs, parts))


def _split(p: RegionParams, sizes: list[int]) -> list[RegionParams]:
    edges = np.cumsum([0, *sizes])
    part = lambda a, i: None if a is None else a[edges[i]:edges[i + 1]]  # noqa: E731
    return [RegionParams(part(p.shift, i), part(p.covar, i), part(p.affine, i)) for i in range(len(sizes))]


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------

@dataclass
class Session:
    """One client connection: its codec for replies, its avatars (by the client's numbers), its strikes."""

    id: str
    ws: Any
    codec: wp.ImageCodec
    avatars: "OrderedDict[int, Avatar]" = field(default_factory=OrderedDict)
    tasks: set = field(default_factory=set)
    strikes: int = 0
    frames: int = 0


class Worker:
    """The websocket server around one engine. ``serve()`` runs until ``stop()``; :meth:`start_thread`
    runs it on a background thread (tests, benchmarks)."""

    MAX_TASKS = 8  # requests of one session being handled at once

    def __init__(self, engine: Engine, model: wp.ModelInfo, options: ServeOptions,
                 log: "Callable[[str], None] | None" = None):
        self.engine = engine
        self.model = model
        self.opt = options
        self.log = log or (lambda s: None)
        self.sessions: dict[str, Session] = {}
        # one engine thread per kind of work, like the stages of the local pipeline
        self.executors = {k: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{k}") for k in Batcher.KINDS}
        self.port: "int | None" = None
        self.batcher: "Batcher | None" = None
        self._loop: "asyncio.AbstractEventLoop | None" = None
        self._stopped: "asyncio.Event | None" = None
        self._ready = threading.Event()
        self._thread: "threading.Thread | None" = None
        # what answers each request the protocol has (wp.REPLIES); anything else is refused
        self._handlers = {wp.DetectRegions: self._detect_regions, wp.Animate: self._animate,
                          wp.PrepareSource: self._prepare_source, wp.Transfer: self._transfer}

    # -- server ----------------------------------------------------------------------------------
    async def serve(self, on_listening: "Callable[[int], None] | None" = None) -> None:
        """Serve until :meth:`stop`; ``on_listening(port)`` is called once the socket is bound."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.batcher = Batcher(self.engine, self.executors, self.opt.batch_window_ms / 1000.0, self.opt.engine_batch)
        batch_task = asyncio.create_task(self.batcher.run())
        try:
            async with serve(self._session, self.opt.host, self.opt.port, max_size=self.opt.max_message_bytes,
                             process_request=_health,
                             ssl=self.opt.ssl, compression=None, ping_interval=5, ping_timeout=20,
                             max_queue=4, logger=_quiet_logger()) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self._ready.set()
                if on_listening is not None:
                    on_listening(self.port)
                await self._stopped.wait()
        finally:
            batch_task.cancel()
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:  # the loop closed meanwhile: already stopped
                pass

    def close_sessions(self) -> None:
        """Close every session's connection now (from any thread); their clients reconnect."""
        async def close_all():
            await asyncio.gather(*(s.ws.close() for s in list(self.sessions.values())), return_exceptions=True)
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)

    def start_thread(self) -> "Worker":
        """Serve on a background thread; returns once listening (``self.port`` is the bound port)."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve()), name="mra-serve", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self.port is None:
            raise RuntimeError("the worker did not start")
        return self

    def join(self, timeout: float = 10.0) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        for ex in self.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)

    # -- one connection --------------------------------------------------------------------------
    async def _fail(self, ws, request: int, code: str, message: str, fatal: bool) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(wp.encode(wp.Failure(request, code, message, fatal)))
            if fatal:
                await ws.close(1008 if code in (wp.BAD_TOKEN, wp.BAD_MESSAGE) else 1000, code)
        except ConnectionClosed:
            pass

    async def _hello(self, ws) -> "Session | None":
        from websockets.exceptions import ConnectionClosed

        try:
            raw = await asyncio.wait_for(ws.recv(), self.opt.handshake_timeout_s)
        except (TimeoutError, ConnectionClosed):
            return None
        try:
            hello = wp.decode(raw)
        except wp.ProtocolError as e:
            await self._fail(ws, 0, wp.BAD_MESSAGE, f"not an mra-live client ({e})", True)
            return None
        if not isinstance(hello, wp.Hello):
            await self._fail(ws, 0, wp.BAD_MESSAGE, f"expected Hello first, got {type(hello).__name__}", True)
            return None
        problem = self._check_hello(hello)
        if problem is not None:
            if problem[0] == wp.BAD_TOKEN:
                await asyncio.sleep(0.5)  # slows down guessing
            await self._fail(ws, 0, *problem, True)
            return None
        session = Session(secrets.token_hex(16), ws, wp.ImageCodec(hello.reply_format, hello.reply_quality))
        self.sessions[session.id] = session
        await ws.send(wp.encode(wp.Welcome(wp.PROTOCOL_VERSION, session.id, self.model, self.opt.limits())))
        self.log(f"session {session.id[:8]} opened ({wp.printable(hello.client, 60)}; {len(self.sessions)} open)")
        return session

    def _check_hello(self, hello: wp.Hello) -> "tuple[str, str] | None":
        if hello.version != wp.PROTOCOL_VERSION:
            return wp.VERSION, (f"the client speaks protocol version {hello.version}, this worker {wp.PROTOCOL_VERSION}: "
                                "run the same mra-live version on both machines")
        if self.opt.token is not None and not hmac.compare_digest(hello.token.encode(), self.opt.token.encode()):
            return wp.BAD_TOKEN, "the worker refused the token: check --token-file (the same secret on both machines)"
        m = self.model
        if hello.expect_config and hello.expect_config != m.config_name:
            return wp.MODEL, (f"the worker runs {m.config_name}, the client expects {hello.expect_config}: start "
                              "mra-serve with that model or leave --config out")
        if hello.expect_sha256 and hello.expect_sha256.lower() != m.sha256:
            return wp.MODEL, (f"the worker runs another model ({m.config_name}, sha256 {m.sha256[:12]}) than the "
                              f"client's --checkpoint (sha256 {hello.expect_sha256[:12]})")
        try:
            wp.ImageCodec(hello.reply_format, hello.reply_quality)
        except ValueError as e:
            return wp.BAD_MESSAGE, str(e)
        if len(self.sessions) >= self.opt.max_sessions:
            return wp.FULL, (f"the worker is full (it serves {self.opt.max_sessions} at once, mra-serve --max-sessions); "
                             "try again later or another worker")
        return None

    async def _session(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        session = await self._hello(ws)
        if session is None:
            return
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), self.opt.idle_timeout_s)
                except TimeoutError:
                    await self._fail(ws, 0, wp.IDLE, f"no request for {self.opt.idle_timeout_s:g} s: session closed", True)
                    return
                try:
                    msg = wp.decode(raw)
                except wp.ProtocolError as e:
                    session.strikes += 1
                    fatal = session.strikes >= self.opt.strikes
                    await self._fail(ws, 0, wp.BAD_MESSAGE, f"bad message: {e}", fatal)
                    if fatal:
                        return
                    continue
                if len(session.tasks) >= self.MAX_TASKS:
                    await self._fail(ws, getattr(msg, "id", 0), wp.BAD_MESSAGE,
                                     f"more than {self.MAX_TASKS} requests at once", False)
                    continue
                task = asyncio.create_task(self._answer(session, msg))
                session.tasks.add(task)
                task.add_done_callback(session.tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.pop(session.id, None)
            if self.batcher is not None:
                self.batcher.forget(session.id)
            for t in list(session.tasks):
                t.cancel()
            self.log(f"session {session.id[:8]} closed after {session.frames} frames ({len(self.sessions)} open)")

    async def _answer(self, session: Session, msg) -> None:
        from websockets.exceptions import ConnectionClosed

        rid = getattr(msg, "id", 0)
        try:
            reply = await self._reply(session, msg)
        except Superseded:
            reply = wp.Superseded(rid)
        except RequestFailed as e:
            reply = wp.Failure(rid, e.code, str(e))
        except wp.FrameError as e:
            reply = wp.Failure(rid, wp.BAD_FRAME, str(e))
        except asyncio.CancelledError:
            return
        except Exception as e:  # engine errors: this request fails, the worker keeps serving
            reply = wp.Failure(rid, wp.ENGINE, f"{type(e).__name__}: {e}" if not isinstance(e, EngineError) else str(e))
        try:
            await session.ws.send(wp.encode(reply))
        except ConnectionClosed:
            pass

    def _avatar(self, session: Session, number: int) -> Avatar:
        avatar = session.avatars.get(number)
        if avatar is None:
            raise RequestFailed(wp.UNKNOWN_AVATAR, f"no avatar {number} in this session (send PrepareSource)")
        session.avatars.move_to_end(number)
        return avatar

    def _check_params(self, p: RegionParams, what: str) -> None:
        k = self.model.num_regions
        if p.shift.shape[1] != k or p.batch_size > self.opt.max_batch:
            raise RequestFailed(wp.BAD_MESSAGE, f"{what}: expected at most {self.opt.max_batch} x {k} regions, "
                                f"got {p.shift.shape[0]} x {p.shift.shape[1]}")

    def _frames(self, images: list[bytes]) -> np.ndarray:
        s = self.model.frame_size
        if len(images) > self.opt.max_batch:
            raise RequestFailed(wp.BAD_MESSAGE, f"at most {self.opt.max_batch} frames per request")
        rgb = np.stack([wp.decode_image(b, s) for b in images])
        return to_input(rgb)

    async def _engine(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executors["animate"], fn, *args)

    async def _reply(self, session: Session, msg):
        """The reply to one request (or RequestFailed, Superseded, FrameError, an engine error)."""
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise RequestFailed(wp.BAD_MESSAGE, f"a client does not send {type(msg).__name__}")
        return await handler(session, msg)

    async def _detect_regions(self, session: Session, msg: wp.DetectRegions) -> wp.RegionsFound:
        frames = await asyncio.to_thread(self._frames, msg.images)
        params = await self.batcher.submit("regions", session.id, frames, len(frames))
        _check_finite(params, "the regions found")
        return wp.RegionsFound(msg.id, params)

    async def _animate(self, session: Session, msg: wp.Animate) -> wp.Animated:
        self._check_params(msg.params, "Animate")
        if self.model.num_regions and (msg.params.covar is None or msg.params.affine is None):
            raise RequestFailed(wp.BAD_MESSAGE, "Animate: region parameters need covar and affine")
        avatar = self._avatar(session, msg.avatar)
        frames = await self.batcher.submit("animate", session.id, (avatar, msg.params), msg.params.batch_size)
        if not np.isfinite(frames).all():  # degenerate parameters (a singular or huge covar or affine)
            raise RequestFailed(wp.BAD_MESSAGE, "Animate: these region parameters give no picture (NaN or "
                                "infinite values): covar and affine must be invertible 2x2 matrices of "
                                "moderate size")
        session.frames += len(frames)
        images = await asyncio.to_thread(lambda: [session.codec.encode(to_uint8(f)) for f in frames])
        return wp.Animated(msg.id, images)

    async def _prepare_source(self, session: Session, msg: wp.PrepareSource) -> wp.SourceReady:
        frames = await asyncio.to_thread(self._frames, [msg.image])
        avatar = await self._engine(self.engine.prepare_source, frames)
        _check_finite(avatar.regions, "the portrait's regions")
        session.avatars[msg.avatar] = avatar
        session.avatars.move_to_end(msg.avatar)
        while len(session.avatars) > self.opt.max_avatars:
            session.avatars.popitem(last=False)
        return wp.SourceReady(msg.id, msg.avatar, avatar.regions)

    async def _transfer(self, session: Session, msg: wp.Transfer) -> wp.Transferred:
        self._check_params(msg.driving, "Transfer")
        if msg.initial is not None:
            self._check_params(msg.initial, "Transfer")
        avatar = self._avatar(session, msg.avatar)
        try:
            self.engine.check_mode(msg.mode)
        except EngineError as e:
            raise RequestFailed(wp.BAD_MESSAGE, str(e)) from None
        new = await self._engine(self.engine.transfer, avatar, msg.driving, msg.initial, msg.mode)
        _check_finite(new, "Transfer: the transferred regions (degenerate driving regions?)")
        return wp.Transferred(msg.id, new)


def _check_finite(p: RegionParams, what: str) -> None:
    """Region parameters that the client would refuse (it decodes as strictly as the worker): said here."""
    if not all(a is None or np.isfinite(a).all() for a in (p.shift, p.covar, p.affine)):
        raise RequestFailed(wp.ENGINE, f"{what}: NaN or infinite values")


def _health(connection, request):
    """``GET /health`` -> 200 ``ok`` (load balancers' health checks); anything else goes on to the websocket."""
    from http import HTTPStatus

    if request.path.split("?")[0] == "/health":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


def _quiet_logger():
    """websockets' own log, errors only (a port scanner's bad handshake is not worth a traceback)."""
    import logging

    log = logging.getLogger("mra-serve.websockets")
    log.setLevel(logging.ERROR)
    return log


# ---------------------------------------------------------------------------------------------
# Model identity
# ---------------------------------------------------------------------------------------------

def model_info(engine: Engine, checkpoint: "str | os.PathLike | None") -> wp.ModelInfo:
    return wp.ModelInfo(config_name=engine.config_name, frame_size=engine.frame_size, num_regions=engine.num_regions,
                        has_avd=bool(engine.has_avd), sha256=wp.model_digest(checkpoint), engine=engine.describe())


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-serve", description="Serve the animation engine to mra-live clients on other "
                       "machines (mra-live --worker HOST:PORT).")
    add_engine_arguments(p)
    p.add_argument("--threads", type=int, help="CPU threads per engine stage (regions, animation; default: half "
                   "the cores each, as mra-live)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other needs --token-file)")
    p.add_argument("--port", type=int, default=wp.DEFAULT_PORT, help=f"port (default {wp.DEFAULT_PORT})")
    p.add_argument("--token-file", type=Path, help="file holding the secret clients must present (one line)")
    p.add_argument("--tls-cert", type=Path, help="TLS certificate (PEM): serve wss://")
    p.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    p.add_argument("--max-sessions", type=int, default=ServeOptions.max_sessions, help="clients at once")
    p.add_argument("--max-avatars", type=int, default=ServeOptions.max_avatars, help="portraits kept per client")
    p.add_argument("--max-message-mb", type=float, default=ServeOptions.max_message_bytes / 2**20,
                   help="largest message accepted, MiB")
    p.add_argument("--idle-timeout", type=float, default=ServeOptions.idle_timeout_s, metavar="S",
                   help="close a session after S seconds without a request")
    p.add_argument("--batch-window", type=float, default=ServeOptions.batch_window_ms, metavar="MS",
                   help="how long a batch waits for the other clients' frames (default 3 ms)")
    p.add_argument("--quiet", action="store_true", help="no log lines about sessions")
    return p


def tls_context(cert: "Path | None", key: "Path | None") -> "ssl.SSLContext | None":
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("--tls-cert and --tls-key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert.expanduser()), str(key.expanduser()))
    except (OSError, ssl.SSLError) as e:
        raise UserError(f"cannot load the TLS certificate/key ({cert}, {key}): {e}") from None
    return ctx


def options_from_args(args) -> ServeOptions:
    token = wp.read_token(args.token_file) if args.token_file else None
    if not wp.is_loopback(args.host) and token is None:
        raise UserError(f"--host {args.host} lets other machines in: give --token-file FILE (a secret of 16+ "
                        "characters; make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\" "
                        "> token.txt)")
    if not 0 <= args.port <= 65535:
        raise UserError("--port must be between 0 and 65535")
    for name in ("max_sessions", "max_avatars", "max_message_mb", "idle_timeout"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.batch_window < 0:
        raise UserError("--batch-window must be 0 or more")
    return ServeOptions(host=args.host, port=args.port, token=token, max_sessions=args.max_sessions,
                        max_avatars=args.max_avatars, max_message_bytes=int(args.max_message_mb * 2**20),
                        idle_timeout_s=args.idle_timeout, batch_window_ms=args.batch_window,
                        ssl=tls_context(args.tls_cert, args.tls_key))


def cli(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    from .engines import engine_from_args

    engine = engine_from_args(args)
    info = model_info(engine, args.checkpoint)
    log = (lambda s: None) if args.quiet else (lambda s: print(f"mra-serve: {s}", file=sys.stderr, flush=True))
    worker = Worker(engine, info, options, log=log)

    def announce(port: int) -> None:
        scheme = "wss" if options.ssl else "ws"
        print(f"mra-serve: {engine.describe()}; model sha256 {info.sha256[:12]}; listening on {scheme}://"
              f"{options.host}:{port} ({'token required' if options.token else 'no token'}, at most "
              f"{options.max_sessions} clients). Clients: mra-live --source face.png --worker "
              f"{options.host if options.host not in ('0.0.0.0', '::') else 'THIS_HOST'}:{port}"
              f"{' --token-file FILE' if options.token else ''}", file=sys.stderr, flush=True)
        if not options.ssl and not wp.is_loopback(options.host):
            print(f"mra-serve: note: frames and the token cross the network unencrypted; {TLS_HINT}",
                  file=sys.stderr, flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM,):
            try:
                loop.add_signal_handler(sig, worker.stop)
            except (NotImplementedError, RuntimeError):
                pass
        await worker.serve(on_listening=announce)

    try:
        asyncio.run(main())
    except OSError as e:
        raise UserError(f"cannot listen on {options.host}:{options.port}: {e.strerror or e}") from None
    finally:
        for ex in worker.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    """mra-serve entry point."""
    from nets.errors import run_cli
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
