"""The remote engine: the :class:`~export.engine.Engine` API answered by an ``mra-serve`` worker.

    engine = RemoteEngine(WorkerSpec("gpu-box:8765", token="..."))   # connects (or raises WorkerError: a UserError)
    avatar = engine.prepare_source(source)                          # the portrait is sent once, prepared there
    frame = engine.animate(avatar, engine.transfer(avatar, engine.regions(driving), init, "relative"))

The live pipeline runs it like any engine: ``regions`` sends the driving crop and gets region
parameters back; ``transfer`` runs here (relative / standard are a few 2x2 products; avd asks the
worker, which has the AVD network); ``animate`` sends the parameters and gets the animated frame.
Frames travel compressed (JPEG by default, quality configurable), portraits as PNG.

The requests go through a :class:`~live.remote.connection.Connection` (the websocket, request ids,
timeouts, reconnection with back-off). Never a queue: at most ``max_in_flight`` requests are out at
once (the pipeline's two stages make one each), replies that arrive after their call gave up are
dropped, and the worker keeps only the newest request per kind. When the connection drops, calls
raise :class:`~export.engine.EngineUnavailable` at once (the pipeline keeps the last frame on the
virtual camera) while the connection comes back by itself; this adapter sends the portraits again
as they are used. Errors that retrying cannot fix (wrong token, another protocol version, another
model) raise :class:`~live.remote.connection.WorkerError`, a :class:`~nets.errors.UserError`.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export import transfer as tr
from export.engine import Avatar, Engine, EngineHealth, EngineUnavailable, RegionParams
from nets.errors import UserError
from nets.media import to_input, to_uint8

from . import protocol as wp
from .connection import (REQUEST_TIMEOUT_S, Backoff, Connection, UnknownAvatar, WorkerError, WorkerFull, WorkerSpec,
                         worker_url)

__all__ = ["RemoteEngine", "RemoteAvatar", "WorkerSpec", "WorkerError", "WorkerFull", "Backoff", "worker_url",
           "add_worker_arguments", "worker_spec"]


@dataclass
class RemoteAvatar:
    """The client's number of an avatar (the worker keeps its prepared source under it)."""

    number: int


class RemoteEngine(Engine):
    """An :class:`~export.engine.Engine` whose networks run on the ``mra-serve`` worker ``spec`` names."""

    backend = "remote"

    def __init__(self, spec: WorkerSpec, log: "Callable[[str], None] | None" = None):
        self.spec = spec
        self.conn = Connection(spec, log)
        self.url = self.conn.url
        self.codec = self.conn.codec
        self.timeout_s = spec.timeout_s
        self._avatar_numbers = itertools.count(1)
        self._portraits: dict[int, bytes] = {}  # avatar number -> PNG (sent again after a reconnect)
        self._prepared: dict[int, int] = {}  # avatar number -> connection generation it was prepared on
        m = self.model = self.conn.model
        self.config_name = m.config_name
        self.frame_size = m.frame_size
        self.num_regions = m.num_regions
        self.has_avd = m.has_avd
        self.device = f"worker {self.url}"

    @property
    def limits(self) -> wp.Limits:
        return self.conn.limits

    @property
    def connected(self) -> bool:
        return self.conn.connected

    @property
    def reconnects(self) -> int:
        return self.conn.reconnects

    def health(self, late_s: float = 1.0) -> EngineHealth:
        return self.conn.health(late_s)

    def close(self) -> None:
        """Close the connection and stop its thread."""
        self.conn.close()

    # -- Engine API --------------------------------------------------------------------------------
    def _retrying(self, call: Callable[[], Any]):
        """``call()``; with ``wait_s`` > 0 (offline jobs, where a skipped frame would be a lost frame), an
        unavailable worker is waited for up to ``wait_s`` seconds and the call repeated."""
        deadline = time.monotonic() + self.spec.wait_s
        while True:
            try:
                return call()
            except EngineUnavailable:
                left = deadline - time.monotonic()
                if self.conn.fatal is not None:
                    raise self.conn.fatal from None
                if left <= 0:
                    raise
                self.conn.wait_connected(min(left, 1.0))

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
        reply, generation = self.conn.request(wp.PrepareSource(self.conn.next_id(), number, self._portraits[number]))
        self._prepared[number] = generation
        return reply.regions

    def _on_worker(self, avatar: Avatar, request: Callable[[], Any]):
        """Run ``request`` for ``avatar``, preparing it there first when this connection has not seen it."""
        number = avatar.cache.number
        for attempt in range(2):
            if self._prepared.get(number) != self.conn.generation:
                self._prepare(number)
            try:
                return request()
            except UnknownAvatar:
                self._prepared.pop(number, None)
                if attempt:
                    raise EngineUnavailable(f"worker {self.url} forgot the portrait twice in a row") from None

    def regions(self, frames: np.ndarray) -> RegionParams:
        images = self._images(frames, "frames")
        return self._retrying(lambda: self.conn.request(wp.DetectRegions(self.conn.next_id(), images))[0].params)

    def transfer(self, avatar: Avatar, driving: RegionParams, initial: "RegionParams | None",
                 mode: str = "relative") -> RegionParams:
        self.check_mode(mode)
        if mode == "standard":
            return tr.standard(driving)
        if mode == "relative":
            if initial is None:
                raise UserError("relative mode needs the initial driving regions")
            return tr.relative(avatar.regions, driving, initial)
        return self._retrying(lambda: self._on_worker(avatar, lambda: self.conn.request(
            wp.Transfer(self.conn.next_id(), avatar.cache.number, mode, driving, initial))[0].params))

    def animate(self, avatar: Avatar, params: RegionParams) -> np.ndarray:
        reply = self._retrying(lambda: self._on_worker(avatar, lambda: self.conn.request(
            wp.Animate(self.conn.next_id(), avatar.cache.number, params))[0]))
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
    return WorkerSpec(args.worker, token, image_format=args.worker_format, quality=args.worker_quality,
                      ca_file=args.worker_ca, max_in_flight=args.in_flight, wait_s=wait_s, client=client,
                      timeout_s=args.worker_timeout)
