"""A scripted stand-in for mra-serve: the client's side of the protocol tested without an engine.

    fake = FakeWorker(lambda session, msg: wp.encode(wp.RegionsFound(msg.id, params)))
    engine = RemoteEngine(WorkerSpec(fake.address), log=lambda s: None)
    ...
    fake.close()

Every connection that says Hello gets a :class:`Welcome` (or ``welcome(session)``'s bytes), then each
request is answered with what ``answer(session, msg)`` returns: bytes sent as they are (garbage
included), ``None`` for no answer (a worker that hangs). ``session`` counts connections from 1.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Callable

from live.remote import protocol as wp

MODEL = wp.ModelInfo(config_name="fake", frame_size=64, num_regions=10, has_avd=False, sha256="0" * 64,
                     engine="fake engine")
LIMITS = wp.Limits(max_message_bytes=2 << 20, max_batch=8, max_avatars=4, idle_timeout_s=60.0)


class FakeWorker:
    def __init__(self, answer: "Callable[[int, object], bytes | None]",
                 welcome: "Callable[[int], bytes] | None" = None):
        self.answer = answer
        self.welcome = welcome or (lambda n: wp.encode(wp.Welcome(wp.PROTOCOL_VERSION, f"s{n}", MODEL, LIMITS)))
        self.sessions = 0
        self.received: list = []
        self._open: set = set()
        self.port: "int | None" = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: "asyncio.Event | None" = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake worker did not start")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        async with serve(self._session, "127.0.0.1", 0, max_size=None, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _session(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.sessions += 1
        n = self.sessions
        self._open.add(ws)
        try:
            wp.decode(await ws.recv())  # the Hello
            await ws.send(self.welcome(n))
            async for raw in ws:
                msg = wp.decode(raw)
                self.received.append((n, msg))
                reply = self.answer(n, msg)
                if reply is not None:
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self._open.discard(ws)

    def drop(self) -> None:
        """Close every open connection (a worker restarting, a proxy timing out)."""
        async def close_all():
            for ws in list(self._open):
                await ws.close()
        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
