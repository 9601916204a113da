"""The remote engine: the :class:`~export.engine.Engine` API answered by an ``mra-serve`` worker.

    engine = RemoteEngine("gpu-box:8765", token="...")    # connects (or raises WorkerError: a UserError)
    avatar = engine.prepare_source(source)                # the portrait is sent once, prepared there
    frame = engine.animate(avatar, engine.transfer(avatar, engine.regions(driving), init, "relative"))

The live pipeline runs it like any engine: ``regions`` sends the driving crop and gets region
parameters back; ``transfer`` runs here (relative / standard are a few 2x2 products; avd asks the
worker, which has the AVD network); ``animate`` sends the parameters and gets the animated frame.
Frames travel compressed (JPEG by default, quality configurable), portraits as PNG.

Never a queue: at most ``max_in_flight`` requests are out at once (the pipeline's two stages make
one each), replies that arrive after their call gave up are dropped, and the worker keeps only the
newest request per kind. When the connection drops, calls raise
:class:`~export.engine.EngineUnavailable` at once (the pipeline keeps the last frame on the
virtual camera) while a background task reconnects with exponential back-off; the portraits are
sent again as they are used. Errors that retrying cannot fix (wrong token, another protocol
version, another model) raise :class:`WorkerError`, a :class:`~nets.errors.UserError`.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from export import transfer as tr
from export.engine import Avatar, Engine, EngineHealth, EngineUnavailable, RegionParams
from nets.errors import UserError
from nets.media import to_input, to_uint8

from . import protocol as wp

DEFAULT_PORT = wp.DEFAULT_PORT
REQUEST_TIMEOUT_S = 10.0  # how long a request waits for its answer (--worker-timeout)
FATAL_CODES = (wp.BAD_TOKEN, wp.VERSION, wp.MODEL, wp.BAD_MESSAGE)


class WorkerError(UserError):
    """The worker refused us for a reason retrying cannot fix (one ``error:`` line on the command line)."""


class WorkerFull(ConnectionError):
    """The worker was reached but has no free session now (``mra-serve --max-sessions``): worth a retry later."""


@dataclass(frozen=True)
class WorkerSpec:
    """An ``mra-serve`` worker that runs the networks: ``address`` (``HOST:PORT``, ``ws://`` or
    ``wss://`` URL), ``token``, how frames cross the network both ways (``image_format`` jpeg | webp
    | png, ``quality`` 1-100), ``ca_file`` (a wss:// worker's certificate), requests out at once
    (``max_in_flight``), how long a call waits for a lost worker (``wait_s``; 0: it raises
    ``EngineUnavailable`` at once, as a live loop wants), the ``client`` name it reports and how
    long a request waits for its answer (``timeout_s``; then ``EngineUnavailable``)."""

    address: str
    token: str = ""
    image_format: str = "jpeg"
    quality: int = 90
    ca_file: "str | os.PathLike | None" = None
    max_in_flight: int = 2
    wait_s: float = 0.0
    client: str = "mra-live"
    timeout_s: float = REQUEST_TIMEOUT_S

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise UserError(f"--worker-timeout must be more than 0 seconds, got {self.timeout_s:g}")


@dataclass
class RemoteAvatar:
    """The client's number of an avatar (the worker keeps its prepared source under it)."""

    number: int


@dataclass
class Backoff:
    """Reconnection delays: ``first`` seconds, doubled each failure up to ``most``, +-``jitter`` share."""

    first: float = 0.25
    most: float = 5.0
    jitter: float = 0.2

    def delays(self):
        d = self.first
        while True:
            yield d * (1 + random.uniform(-self.jitter, self.jitter))
            d = min(d * 2, self.most)


def worker_url(address: str) -> str:
    """``HOST:PORT`` / ``HOST`` / ``ws://...`` / ``wss://...`` -> a websocket URL."""
    given = address
    if "://" not in address:
        address = f"ws://{address}"
    form = "--worker must be HOST:PORT, ws://HOST:PORT or wss://HOST:PORT (an IPv6 address in brackets: [::1]:PORT)"
    try:
        parts = urlsplit(address)
        hostname = parts.hostname
    except ValueError as e:  # "[::1": Invalid IPv6 URL
        raise UserError(f"{form}, got {given!r} ({e})") from None
    if parts.scheme not in ("ws", "wss") or not hostname:
        raise UserError(f"{form}, got {given!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UserError(f"--worker has a bad port: {given!r}") from None
    host = f"[{hostname}]" if ":" in hostname else hostname
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


class RemoteEngine(Engine):
    """An :class:`~export.engine.Engine` whose networks run on an ``mra-serve`` worker."""

    backend = "remote"

    def __init__(self, address: str, token: str = "", *, codec: "wp.ImageCodec | None" = None,
                 max_in_flight: int = 2, timeout_s: float = REQUEST_TIMEOUT_S, connect_timeout_s: float = 10.0,
                 expect_config: "str | None" = None, expect_sha256: "str | None" = None,
                 ca_file: "str | Path | None" = None, backoff: "Backoff | None" = None,
                 log: "Callable[[str], None] | None" = None, client: str = "mra-live", wait_s: float = 0.0):
        if max_in_flight < 1:
            raise UserError("--in-flight must be at least 1")
        self.url = worker_url(address)
        # a random id per engine in the URL: load balancers hash it to keep a client on one worker
        self.client_id = secrets.token_hex(8)
        self._connect_url = f"{self.url}{'&' if '?' in self.url else '?'}client={self.client_id}"
        self.token = token
        self.codec = codec or wp.ImageCodec()
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self.expect_config = expect_config
        self.expect_sha256 = expect_sha256
        self.backoff = backoff or Backoff()
        self.log = log or (lambda s: print(f"{client}: {s}", file=sys.stderr, flush=True))
        self.client = client
        self._ssl = self._ssl_context(ca_file)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._ids = itertools.count(1)
        self._avatar_numbers = itertools.count(1)
        self._portraits: dict[int, bytes] = {}  # avatar number -> PNG (sent again after a reconnect)
        self._prepared: dict[int, int] = {}  # avatar number -> connection it was prepared on
        # request id -> its future, the reply expected, when it was sent
        self._pending: dict[int, tuple[asyncio.Future, type, float]] = {}
        self._owed_since: "float | None" = None  # the oldest request unanswered since the last reply
        self._ws: Any = None
        self._generation = 0
        self._connected = threading.Event()
        self._fatal: "WorkerError | None" = None
        self._closing = False
        self._connect_timeout = connect_timeout_s
        self.reconnects = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="worker-client", daemon=True)
        self._thread.start()
        try:
            welcome = self._wait(self._first_connect(), connect_timeout_s + 5 + wait_s)
        except BaseException:
            self.close()
            raise
        m = welcome.model
        self.model = m
        self.config_name = m.config_name
        self.frame_size = m.frame_size
        self.num_regions = m.num_regions
        self.has_avd = m.has_avd
        self.device = f"worker {self.url}"

    # -- connection --------------------------------------------------------------------------------
    def _ssl_context(self, ca_file) -> "ssl.SSLContext | None":
        if not self.url.startswith("wss://"):
            if ca_file:
                raise UserError("--worker-ca is for wss:// workers")
            return None
        ctx = ssl.create_default_context()
        if ca_file:
            try:
                ctx.load_verify_locations(str(Path(ca_file).expanduser()))
            except (OSError, ssl.SSLError) as e:
                raise UserError(f"cannot load --worker-ca {ca_file}: {e}") from None
        return ctx

    def _wait(self, coro, timeout: float):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise WorkerError(f"no answer from the worker {self.url} within {timeout:g} s") from None

    async def _open(self):
        """Connect and shake hands -> (connection, Welcome). WorkerError for refusals, OSError & co. otherwise."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

        try:
            ws = await connect(self._connect_url, ssl=self._ssl, open_timeout=self._connect_timeout,
                               max_size=64 << 20, compression=None, ping_interval=5, ping_timeout=20,
                               max_queue=4, close_timeout=2)
        except InvalidURI as e:
            raise WorkerError(f"bad worker address {self.url}: {e}") from None
        except InvalidStatus as e:
            if e.response.status_code >= 500:  # a proxy with no worker up right now: retry
                raise ConnectionError(f"HTTP {e.response.status_code} from {self.url}") from None
            raise WorkerError(f"{self.url} is not an mra-serve worker (HTTP {e.response.status_code})") from None
        except InvalidHandshake as e:
            raise WorkerError(f"{self.url} is not an mra-serve worker (websocket handshake failed: {e})") from None
        except ssl.SSLCertVerificationError as e:
            raise WorkerError(f"the worker's TLS certificate is not trusted ({e.verify_message}); pass its "
                              "certificate with --worker-ca cert.pem") from None
        try:
            await ws.send(wp.encode(wp.Hello(wp.PROTOCOL_VERSION, self.token, self.client, self.codec.fmt,
                                             self.codec.quality, self.expect_config, self.expect_sha256)))
            raw = await asyncio.wait_for(ws.recv(), 15)
        except ConnectionClosed as e:
            raise ConnectionError(f"connection closed during the handshake ({e})") from None
        try:
            msg = wp.decode(raw)
        except wp.ProtocolError as e:
            await ws.close()
            raise WorkerError(f"{self.url} is not an mra-serve worker ({e})") from None
        if isinstance(msg, wp.Failure):
            await ws.close()
            if msg.code == wp.FULL:
                raise WorkerFull(f"worker {self.url}: {wp.printable(msg.message)}")
            raise WorkerError(f"worker {self.url}: {wp.printable(msg.message)}")
        if not isinstance(msg, wp.Welcome) or msg.version != wp.PROTOCOL_VERSION:
            await ws.close()
            raise WorkerError(f"{self.url} is not an mra-serve worker speaking protocol {wp.PROTOCOL_VERSION}")
        return ws, msg

    async def _first_connect(self) -> wp.Welcome:
        """The first connection; a full worker is waited for up to ``wait_s`` (as a lost one is later)."""
        deadline = time.monotonic() + self.wait_s
        delays = self.backoff.delays()
        waiting = False
        while True:
            try:
                ws, welcome = await self._open()
                break
            except WorkerError:
                raise
            except WorkerFull as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerError(f"{e}" + (f" (waited {self.wait_s:g} s)" if waiting else "")) from None
                if not waiting:
                    self.log(f"the worker {self.url} is full: waiting up to {left:.0f} s for a free session")
                    waiting = True
                await asyncio.sleep(min(next(delays), left))
            except (OSError, asyncio.TimeoutError, ConnectionError) as e:
                raise WorkerError(f"cannot reach the worker {self.url} ({_why(e)}); is mra-serve running there, and "
                                  "the address and port right?") from None
        self._welcome = welcome
        self.limits = welcome.limits
        self._attach(ws)
        return welcome

    def _attach(self, ws) -> None:
        self._ws = ws
        self._owed_since = None
        self._generation += 1
        self._connected.set()
        self._loop.create_task(self._receive(ws, self._generation))

    async def _receive(self, ws, generation: int) -> None:
        from websockets.exceptions import ConnectionClosed

        reason = "connection lost"
        try:
            async for raw in ws:
                try:
                    msg = wp.decode(raw)
                except wp.ProtocolError as e:  # a worker that garbles one message may not be trusted with
                    reason = f"it sent a malformed message ({e})"  # the next: a fresh connection
                    break
                rid = getattr(msg, "id", 0)
                if isinstance(msg, wp.Failure) and (rid == 0 or msg.fatal):
                    if msg.fatal:
                        reason = wp.printable(msg.message)
                        if msg.code in FATAL_CODES:
                            self._fatal = WorkerError(f"worker {self.url}: {reason}")
                        break
                    self.log(f"worker: {wp.printable(msg.message)}")
                    continue
                waiting = self._pending.pop(rid, None)
                if waiting is None or waiting[0].done():  # a reply nobody waits for any more: dropped
                    continue
                fut, expected, _ = waiting
                if not isinstance(msg, (expected, wp.Superseded, wp.Failure)):
                    reason = f"it answered a request with {type(msg).__name__}, not {expected.__name__}"
                    break
                # it answers: what it owes now is the oldest request still waiting (a request that
                # timed out keeps counting until a reply comes)
                self._owed_since = min((sent for _, _, sent in self._pending.values()), default=None)
                fut.set_result(msg)
        except ConnectionClosed as e:
            reason = f"connection lost ({_why(e)})"
        except Exception as e:  # whatever went wrong here, the client reconnects rather than going deaf
            reason = f"{type(e).__name__}: {e}"
        finally:
            self._connected.clear()
            self._ws = None
            failure = self._fatal or EngineUnavailable(f"worker {self.url}: {reason}")
            self._owed_since = None
            for fut, _, _ in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(failure)
            self._pending.clear()
            try:
                await ws.close()
            except Exception:
                pass
        if not self._closing and self._fatal is None:
            self.log(f"worker {self.url}: {reason}; reconnecting")
            await self._reconnect()

    async def _reconnect(self) -> None:
        for delay in self.backoff.delays():
            if self._closing:
                return
            await asyncio.sleep(delay)
            try:
                ws, welcome = await self._open()
            except WorkerError as e:
                self._fatal = e
                return
            except (OSError, asyncio.TimeoutError, ConnectionError):
                continue
            old, new = self._welcome.model, welcome.model
            if (old.sha256, old.frame_size, old.num_regions) != (new.sha256, new.frame_size, new.num_regions):
                await ws.close()
                self._fatal = WorkerError(f"the worker {self.url} now runs another model ({new.config_name}, sha256 "
                                          f"{new.sha256[:12]}; it ran {old.config_name}, {old.sha256[:12]}): "
                                          "restart mra-live")
                return
            self._welcome = welcome
            self.limits = welcome.limits
            self.reconnects += 1
            self._attach(ws)
            self.log(f"worker {self.url}: reconnected")
            return

    async def _exchange(self, msg) -> "tuple[Any, int]":
        from websockets.exceptions import ConnectionClosed

        ws, generation = self._ws, self._generation
        if ws is None:
            raise self._fatal or EngineUnavailable(f"worker {self.url} unreachable: reconnecting")
        data = wp.encode(msg)
        if len(data) > self.limits.max_message_bytes:  # the worker would close the connection
            raise WorkerError(f"a {type(msg).__name__} message of {len(data) / 2**20:.1f} MiB is over the worker's limit "
                              f"({self.limits.max_message_bytes / 2**20:.1f} MiB, mra-serve --max-message-mb)")
        fut = self._loop.create_future()
        sent = time.monotonic()
        self._pending[msg.id] = (fut, wp.REPLIES[type(msg)], sent)
        if self._owed_since is None:
            self._owed_since = sent
        try:
            await ws.send(data)
            return await asyncio.wait_for(fut, self.timeout_s), generation
        except ConnectionClosed:
            raise EngineUnavailable(f"worker {self.url}: connection lost") from None
        except asyncio.TimeoutError:
            raise EngineUnavailable(f"worker {self.url}: no reply within {self.timeout_s:g} s") from None
        finally:
            self._pending.pop(msg.id, None)

    def _request(self, msg) -> "tuple[Any, int]":
        """Send ``msg`` and wait for its reply (at most ``max_in_flight`` at once) -> (reply, connection)."""
        if self._fatal is not None:
            raise self._fatal
        if not self._connected.is_set():
            raise EngineUnavailable(f"worker {self.url} unreachable: reconnecting")
        if not self._slots.acquire(timeout=self.timeout_s):
            raise EngineUnavailable(f"worker {self.url}: {self.timeout_s:g} s without a free request slot")
        try:
            fut = asyncio.run_coroutine_threadsafe(self._exchange(msg), self._loop)
            try:
                reply, generation = fut.result(self.timeout_s + 2)
            except FutureTimeout:
                fut.cancel()
                raise EngineUnavailable(f"worker {self.url}: no reply within {self.timeout_s:g} s") from None
        finally:
            self._slots.release()
        if isinstance(reply, wp.Superseded):
            raise EngineUnavailable("a newer frame replaced this one on the worker")
        if isinstance(reply, wp.Failure):
            if reply.code == wp.UNKNOWN_AVATAR:
                raise _UnknownAvatar(reply.message)
            raise WorkerError(f"worker {self.url}: {reply.message}")
        return reply, generation

    def close(self) -> None:
        """Close the connection and stop the client thread."""
        self._closing = True

        async def shut():
            if self._ws is not None:
                await self._ws.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:  # the receive task, a reconnection under way: ended, not left pending
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def health(self, late_s: float = 1.0) -> EngineHealth:
        """Not answering while the connection is down, or when a request has waited more than ``late_s``
        seconds without the worker answering anything since (a stopped or overloaded worker: the
        request timeout, ``timeout_s``, ends each such call later)."""
        if self._fatal is not None:
            return EngineHealth(False, "worker refused the session")
        if not self.connected:
            return EngineHealth(False, "worker unreachable: reconnecting")
        since = self._owed_since
        waited = 0.0 if since is None else time.monotonic() - since
        if waited > late_s:
            return EngineHealth(False, f"worker not answering ({waited:.0f} s)", waited)
        return EngineHealth()

    # -- Engine API --------------------------------------------------------------------------------
    def _retrying(self, call: Callable[[], Any]):
        """``call()``; with ``wait_s`` > 0 (offline jobs, where a skipped frame would be a lost frame), an
        unavailable worker is waited for up to ``wait_s`` seconds and the call repeated."""
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return call()
            except EngineUnavailable:
                left = deadline - time.monotonic()
                if self._fatal is not None:
                    raise self._fatal from None
                if left <= 0:
                    raise
                self._connected.wait(min(left, 1.0))

    def _images(self, frames: np.ndarray, what: str) -> list[bytes]:
        s = self.frame_size
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (3, s, s):
            raise UserError(f"{what} must be (B, 3, {s}, {s}) in [0, 1], got {tuple(frames.shape)}")
        if frames.shape[0] > self.limits.max_batch:
            raise UserError(f"the worker takes at most {self.limits.max_batch} frames per request")
        return [self.codec.encode(to_uint8(f)) for f in frames]

    def prepare_source(self, image: np.ndarray) -> Avatar:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != 1:
            raise UserError(f"prepare one source image (1, 3, S, S) at a time, got {tuple(image.shape)}")
        number = next(self._avatar_numbers)
        self._images(image, "source image")  # shape check
        self._portraits[number] = wp.encode_image(to_uint8(image[0]), "png")
        regions = self._retrying(lambda: self._prepare(number))
        return Avatar(image=image, regions=regions, cache=RemoteAvatar(number))

    def _prepare(self, number: int) -> RegionParams:
        reply, generation = self._request(wp.PrepareSource(next(self._ids), number, self._portraits[number]))
        self._prepared[number] = generation
        return reply.regions

    def _on_worker(self, avatar: Avatar, request: Callable[[], Any]):
        """Run ``request`` for ``avatar``, preparing it there first when this connection has not seen it."""
        number = avatar.cache.number
        for attempt in range(2):
            if self._prepared.get(number) != self._generation:
                self._prepare(number)
            try:
                return request()
            except _UnknownAvatar:
                self._prepared.pop(number, None)
                if attempt:
                    raise EngineUnavailable(f"worker {self.url} forgot the portrait twice in a row") from None

    def regions(self, frames: np.ndarray) -> RegionParams:
        images = self._images(frames, "frames")
        return self._retrying(lambda: self._request(wp.DetectRegions(next(self._ids), images))[0].params)

    def transfer(self, avatar: Avatar, driving: RegionParams, initial: "RegionParams | None",
                 mode: str = "relative") -> RegionParams:
        self.check_mode(mode)
        if mode == "standard":
            return tr.standard(driving)
        if mode == "relative":
            if initial is None:
                raise UserError("relative mode needs the initial driving regions")
            return tr.relative(avatar.regions, driving, initial)
        return self._retrying(lambda: self._on_worker(avatar, lambda: self._request(
            wp.Transfer(next(self._ids), avatar.cache.number, mode, driving, initial))[0].params))

    def animate(self, avatar: Avatar, params: RegionParams) -> np.ndarray:
        reply = self._retrying(lambda: self._on_worker(avatar, lambda: self._request(
            wp.Animate(next(self._ids), avatar.cache.number, params))[0]))
        s = self.frame_size
        try:
            rgb = np.stack([wp.decode_image(b, s) for b in reply.images])
        except wp.FrameError as e:
            raise WorkerError(f"the worker {self.url} sent a bad frame ({e})") from None
        return to_input(rgb)

    def providers(self) -> dict[str, str]:
        return {"worker": f"{self.url}: {self.model.engine}"}

    def describe(self) -> str:
        return (f"remote engine ({self.config_name}, {self.frame_size}px) on {self.url}: {self.model.engine}; frames "
                f"{self.codec.fmt}" + (f" q{self.codec.quality}" if self.codec.fmt != "png" else ""))


class _UnknownAvatar(Exception):
    pass


def _why(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return "unknown host"
    text = str(e) or type(e).__name__
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


# ---------------------------------------------------------------------------------------------
# Command-line options shared by the tools that take --worker
# ---------------------------------------------------------------------------------------------

def add_worker_arguments(p) -> None:
    g = p.add_argument_group("remote worker (mra-serve)")
    g.add_argument("--worker", metavar="HOST:PORT", help="run the networks on an mra-serve worker (ws:// or "
                   "wss:// URL, or HOST:PORT); camera, face tracking and output stay here")
    g.add_argument("--token-file", type=Path, help="file with the worker's token (one line)")
    g.add_argument("--worker-ca", type=Path, help="CA or self-signed certificate of a wss:// worker (PEM)")
    g.add_argument("--worker-format", choices=wp.IMAGE_FORMATS, default="jpeg",
                   help="how frames cross the network, both ways (png: lossless, large)")
    g.add_argument("--worker-quality", type=int, default=90, help="JPEG/WebP quality 1-100 (default 90)")
    g.add_argument("--in-flight", type=int, default=2, help="requests out at once (default 2)")
    g.add_argument("--worker-timeout", type=float, default=REQUEST_TIMEOUT_S, metavar="S",
                   help=f"how long a request waits for the worker's answer before its frame is given up "
                   f"(default {REQUEST_TIMEOUT_S:g} s)")


def worker_spec(args, wait_s: float = 0.0, client: str = "mra-live") -> "WorkerSpec | None":
    """The :class:`WorkerSpec` that ``--worker`` and its options ask for (None without
    ``--worker``); ``wait_s``: how long a call waits for a lost worker (0: EngineUnavailable at once)."""
    if not getattr(args, "worker", None):
        return None
    worker_url(args.worker)  # a malformed address is refused now, before anything is loaded
    token = wp.read_token(args.token_file) if args.token_file else ""
    return WorkerSpec(args.worker, token, args.worker_format, args.worker_quality, args.worker_ca, args.in_flight,
                      wait_s, client, args.worker_timeout)
