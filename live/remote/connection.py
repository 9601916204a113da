"""The connection to an ``mra-serve`` worker: typed requests in, typed replies out, reconnecting by itself.

    conn = Connection(WorkerSpec("gpu-box:8765", token="..."))   # connects (or raises WorkerError)
    reply, generation = conn.request(wp.DetectRegions(conn.next_id(), [jpeg]))
    conn.close()

A :class:`Connection` knows the protocol (:mod:`live.remote.protocol`) and nothing of engines:
:class:`live.remote.client.RemoteEngine` builds the Engine API on it. The websocket runs on the
connection's own thread and event loop; :meth:`Connection.request` blocks the calling thread until
the reply, and several threads may call it at once (at most ``max_in_flight`` requests are out;
replies are matched by request id, and one that arrives after its call gave up is dropped).

When the connection drops, calls raise :class:`~export.engine.EngineUnavailable` at once while a
background task reconnects with exponential back-off; ``generation`` counts connections, so a
caller can tell what the worker has seen on the current one (a portrait prepared before a
reconnect is gone). A reply that is malformed, or is not the answer to its request, is treated as
a lost connection. Errors that retrying cannot fix (wrong token, another protocol version, another
model, a worker that comes back with another model) raise :class:`WorkerError`, a
:class:`~nets.errors.UserError`.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from export.engine import EngineHealth, EngineUnavailable
from nets.errors import UserError

from . import protocol as wp

REQUEST_TIMEOUT_S = 10.0  # how long a request waits for its answer (--worker-timeout)
HANDSHAKE_TIMEOUT_S = 15.0  # connected: how long the Welcome may take
FATAL_CODES = (wp.BAD_TOKEN, wp.VERSION, wp.MODEL, wp.BAD_MESSAGE)


class WorkerError(UserError):
    """The worker refused us for a reason retrying cannot fix (one ``error:`` line on the command line)."""


class WorkerFull(ConnectionError):
    """The worker was reached but has no free session now (``mra-serve --max-sessions``): worth a retry later."""


class UnknownAvatar(Exception):
    """The worker has no portrait under that number on this connection (forgotten, or never sent)."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class WorkerSpec:
    """An ``mra-serve`` worker and how to use it.

    ``address``: ``HOST:PORT``, ``ws://`` or ``wss://`` URL; ``token``; how frames cross the network
    both ways (``image_format`` jpeg | webp | png, ``quality`` 1-100); ``ca_file``: a wss:// worker's
    certificate; ``max_in_flight``: requests out at once; ``wait_s``: how long a call waits for a
    lost worker, and the first connection for a full one (0: ``EngineUnavailable`` / an error at
    once, as a live loop wants); ``client``: the name it reports (and prefixes its lines with);
    ``timeout_s``: how long a request waits for its answer; ``connect_timeout_s``; the model the
    worker must run (``expect_config``: preset name, ``expect_sha256``: digest of the weights, see
    :func:`~live.remote.protocol.model_digest`); ``backoff``: reconnection delays.
    """

    address: str
    token: str = ""
    image_format: str = "jpeg"
    quality: int = 90
    ca_file: "str | os.PathLike | None" = None
    max_in_flight: int = 2
    wait_s: float = 0.0
    client: str = "mra-live"
    timeout_s: float = REQUEST_TIMEOUT_S
    connect_timeout_s: float = 10.0
    expect_config: "str | None" = None
    expect_sha256: "str | None" = None
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise UserError(f"--worker-timeout must be more than 0 seconds, got {self.timeout_s:g}")
        if self.max_in_flight < 1:
            raise UserError("--in-flight must be at least 1")
        _ = self.codec  # --worker-format / --worker-quality checked now

    @property
    def codec(self) -> wp.ImageCodec:
        try:
            return wp.ImageCodec(self.image_format, self.quality)
        except ValueError as e:
            raise UserError(f"--worker-format / --worker-quality: {e}") from None


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
        port = parts.port or wp.DEFAULT_PORT
    except ValueError:
        raise UserError(f"--worker has a bad port: {given!r}") from None
    host = f"[{hostname}]" if ":" in hostname else hostname
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


class Connection:
    """A reconnecting request/reply connection to one ``mra-serve`` worker (see the module doc).

    After the constructor returns: ``welcome`` (the latest :class:`~live.remote.protocol.Welcome`),
    ``model`` (the worker's model, the same on every connection or the connection is refused),
    ``limits``, ``generation`` and ``reconnects``."""

    def __init__(self, spec: WorkerSpec, log: "Callable[[str], None] | None" = None):
        self.spec = spec
        self.url = worker_url(spec.address)
        # a random id per client in the URL: load balancers hash it to keep a client on one worker
        self.client_id = secrets.token_hex(8)
        self._connect_url = f"{self.url}{'&' if '?' in self.url else '?'}client={self.client_id}"
        self.codec = spec.codec
        self.log = log or (lambda s: print(f"{spec.client}: {s}", file=sys.stderr, flush=True))
        self._ssl = _ssl_context(self.url, spec.ca_file)
        self._slots = threading.BoundedSemaphore(spec.max_in_flight)
        self._ids = itertools.count(1)
        # request id -> its future, the reply expected, when it was sent
        self._pending: dict[int, tuple[asyncio.Future, type, float]] = {}
        self._owed_since: "float | None" = None  # the oldest request unanswered since the last reply
        self._ws: Any = None
        self.generation = 0
        self.reconnects = 0
        self._connected = threading.Event()
        self.fatal: "WorkerError | None" = None
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="worker-client", daemon=True)
        self._thread.start()
        try:
            self._wait(self._first_connect(), spec.connect_timeout_s + HANDSHAKE_TIMEOUT_S + spec.wait_s)
        except BaseException:
            self.close()
            raise
        self.model: wp.ModelInfo = self.welcome.model

    # -- for callers -------------------------------------------------------------------------------
    def next_id(self) -> int:
        """A fresh request id."""
        return next(self._ids)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection to be up -> whether it is."""
        return self._connected.wait(timeout)

    def request(self, msg) -> "tuple[Any, int]":
        """Send ``msg`` and wait for its reply -> (reply, the generation it was answered on).

        :class:`~export.engine.EngineUnavailable`: the connection is down, the request timed out or a
        newer one replaced it on the worker; :class:`UnknownAvatar`; :class:`WorkerError`: the worker
        refused it (or the session) for good."""
        timeout = self.spec.timeout_s
        if self.fatal is not None:
            raise self.fatal
        if not self._connected.is_set():
            raise EngineUnavailable(f"worker {self.url} unreachable: reconnecting")
        if not self._slots.acquire(timeout=timeout):
            raise EngineUnavailable(f"worker {self.url}: {timeout:g} s without a free request slot")
        try:
            fut = asyncio.run_coroutine_threadsafe(self._exchange(msg), self._loop)
            try:
                reply, generation = fut.result(timeout + 2)
            except FutureTimeout:
                fut.cancel()
                raise EngineUnavailable(f"worker {self.url}: no reply within {timeout:g} s") from None
        finally:
            self._slots.release()
        if isinstance(reply, wp.Superseded):
            raise EngineUnavailable("a newer frame replaced this one on the worker")
        if isinstance(reply, wp.Failure):
            if reply.code == wp.UNKNOWN_AVATAR:
                raise UnknownAvatar(wp.printable(reply.message))
            raise WorkerError(f"worker {self.url}: {wp.printable(reply.message)}")
        return reply, generation

    def health(self, late_s: float = 1.0) -> EngineHealth:
        """Not answering while the connection is down, or when a request has waited more than ``late_s``
        seconds without the worker answering anything since (a stopped or overloaded worker: the
        request timeout ends each such call later)."""
        if self.fatal is not None:
            return EngineHealth(False, "worker refused the session")
        if not self.connected:
            return EngineHealth(False, "worker unreachable: reconnecting")
        since = self._owed_since
        waited = 0.0 if since is None else time.monotonic() - since
        if waited > late_s:
            return EngineHealth(False, f"worker not answering ({waited:.0f} s)", waited)
        return EngineHealth()

    def close(self) -> None:
        """Close the connection and stop its thread."""
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

    # -- on the connection's thread --------------------------------------------------------------------
    def _wait(self, coro, timeout: float):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise WorkerError(f"no answer from the worker {self.url} within {timeout:g} s") from None

    async def _open(self):
        """Connect and shake hands -> (connection, Welcome). WorkerError for refusals, WorkerFull,
        OSError & co. otherwise."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

        spec = self.spec
        try:
            ws = await connect(self._connect_url, ssl=self._ssl, open_timeout=spec.connect_timeout_s,
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
            await ws.send(wp.encode(wp.Hello(wp.PROTOCOL_VERSION, spec.token, spec.client, self.codec.fmt,
                                             self.codec.quality, spec.expect_config, spec.expect_sha256)))
            raw = await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT_S)
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

    async def _first_connect(self) -> None:
        """The first connection; a full worker is waited for up to ``wait_s`` (as a lost one is later)."""
        wait_s = self.spec.wait_s
        deadline = time.monotonic() + wait_s
        delays = self.spec.backoff.delays()
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
                    raise WorkerError(f"{e}" + (f" (waited {wait_s:g} s)" if waiting else "")) from None
                if not waiting:
                    self.log(f"the worker {self.url} is full: waiting up to {left:.0f} s for a free session")
                    waiting = True
                await asyncio.sleep(min(next(delays), left))
            except (OSError, asyncio.TimeoutError, ConnectionError) as e:
                raise WorkerError(f"cannot reach the worker {self.url} ({_why(e)}); is mra-serve running there, and "
                                  "the address and port right?") from None
        self._attach(ws, welcome)

    def _attach(self, ws, welcome: wp.Welcome) -> None:
        self._ws = ws
        self.welcome = welcome
        self.limits = welcome.limits
        self._owed_since = None
        self.generation += 1
        self._connected.set()
        self._loop.create_task(self._receive(ws))

    async def _receive(self, ws) -> None:
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
                            self.fatal = WorkerError(f"worker {self.url}: {reason}")
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
            failure = self.fatal or EngineUnavailable(f"worker {self.url}: {reason}")
            self._owed_since = None
            for fut, _, _ in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(failure)
            self._pending.clear()
            try:
                await ws.close()
            except Exception:
                pass
        if not self._closing and self.fatal is None:
            self.log(f"worker {self.url}: {reason}; reconnecting")
            await self._reconnect()

    async def _reconnect(self) -> None:
        for delay in self.spec.backoff.delays():
            if self._closing:
                return
            await asyncio.sleep(delay)
            try:
                ws, welcome = await self._open()
            except WorkerError as e:
                self.fatal = e
                return
            except (OSError, asyncio.TimeoutError, ConnectionError):
                continue
            old, new = self.model, welcome.model
            if (old.sha256, old.frame_size, old.num_regions) != (new.sha256, new.frame_size, new.num_regions):
                await ws.close()
                self.fatal = WorkerError(f"the worker {self.url} now runs another model ({new.config_name}, sha256 "
                                         f"{new.sha256[:12]}; it ran {old.config_name}, {old.sha256[:12]}): "
                                         f"restart {self.spec.client}")
                return
            self.reconnects += 1
            self._attach(ws, welcome)
            self.log(f"worker {self.url}: reconnected")
            return

    async def _exchange(self, msg) -> "tuple[Any, int]":
        from websockets.exceptions import ConnectionClosed

        ws, generation = self._ws, self.generation
        if ws is None:
            raise self.fatal or EngineUnavailable(f"worker {self.url} unreachable: reconnecting")
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
            return await asyncio.wait_for(fut, self.spec.timeout_s), generation
        except ConnectionClosed:
            raise EngineUnavailable(f"worker {self.url}: connection lost") from None
        except asyncio.TimeoutError:
            raise EngineUnavailable(f"worker {self.url}: no reply within {self.spec.timeout_s:g} s") from None
        finally:
            self._pending.pop(msg.id, None)


def _ssl_context(url: str, ca_file) -> "ssl.SSLContext | None":
    if not url.startswith("wss://"):
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


def _why(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return "unknown host"
    text = str(e) or type(e).__name__
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text
