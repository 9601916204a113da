"""The live loop: capture -> face crop -> regions + face mesh -> transfer (+ smoothing) -> animate
-> expression -> sinks.

Stages run in their own threads and hand over through one-slot mailboxes that keep only the
newest item, so the slowest stage sets the frame rate and nothing queues up:

    capture thread --LatestFrame--> track thread (crop, driving regions, driving face mesh)
                   --Mailbox-->     animate thread (smoothing, transfer, animation, expression,
                                    paste-back, overlay)
                   --Mailbox-->     sink loop (delay line, virtual camera / window / file, stats)

With ``delay_ms`` the sink loop is a delay line: it takes every rendered frame at once and sends
each at its capture time + the delay (a constant latency to match a delayed microphone), so the
delay costs no frames.

Everything that depends only on the source is computed once per avatar (``Engine.prepare_source``,
the portrait's face mesh). The reference of relative motion is the driver's face most like the portrait's (mouth and eye
openness; without a portrait face mesh: the most neutral face, mouth closed,
eyes open) of the first second after the start or an avatar switch; ``r`` takes the current face
at once. Commands (hot keys, :mod:`.keys`) arrive through one queue, from the window, stdin or tests.

The parts apart from the threads: :class:`~.motion.MotionState` (smoothing, neutral face, lost
face, for the regions and the landmarks alike), :class:`~.pacing.OutputPacer` (the fps cap, and
the last frame again while the engine is late or the camera lost), :class:`~.pacing.EngineWatch`
("not answering" in the status line) and :mod:`.overlay`.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from export.engine import Avatar, Engine, EngineUnavailable, RegionParams
from nets.errors import DiskFault, disk_fault
from nets.media import to_input, to_uint8
from nets.media.face import CropBox, FaceTracker, crop_resize

from nets.media.facemesh import FaceMesh

from .. import expression as ex
from ..pasteback import FrameSize, PasteBack, fit_square
from .capture import CaptureSource, Frame, LatestFrame
from .keys import next_mode, pending
from .motion import Motion, MotionSettings, MotionState
from .overlay import draw_overlay, draw_regions
from .pacing import NOT_ANSWERING_S, EngineWatch, OutputPacer
from .smoothing import LostFacePolicy, OneEuroConfig
from .stats import LiveStats


class Cropper(Protocol):
    """Finds the driving crop in a camera frame: a square :class:`~nets.media.face.CropBox`, or None (no face)."""

    def __call__(self, image: np.ndarray) -> "CropBox | None": ...


class CenterCropper:
    """``--crop none``: the largest centred square."""

    def __call__(self, image: np.ndarray) -> CropBox:
        h, w = image.shape[:2]
        return CropBox(w / 2, h / 2, float(min(h, w)))


class FaceCropper:
    """``--crop auto``: the smoothed face track of :class:`~nets.media.face.FaceTracker`; None while the face
    is lost (brief detector misses keep the last crop). Re-detection runs every few frames, and
    every frame while lost, so tracking recovers by itself."""

    def __init__(self, tracker: "FaceTracker"):
        self.tracker = tracker

    def __call__(self, image: np.ndarray) -> "CropBox | None":
        crop = self.tracker.update(image)
        return None if crop is None or self.tracker.lost else crop


class Mailbox:
    """One-slot hand-over between stage threads (newest item wins; ``None`` from ``get`` on timeout)."""

    def __init__(self):
        self._slot = LatestFrame()

    def put(self, item) -> None:
        self._slot.put(item)

    def get(self, timeout: float = 0.5):
        return self._slot.get(timeout)

    def close(self) -> None:
        self._slot.close()

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    @property
    def closed(self) -> bool:
        return self._slot.closed


@dataclass
class Tracked:
    frame: Frame
    crop: "np.ndarray | None"  # (S, S, 3) uint8 driving crop, None when no face
    box: "CropBox | None"
    params: "RegionParams | None"
    t_done: float
    marks: "np.ndarray | None" = None  # (468, 2) the driving crop's face mesh, None when not found


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8, output size
    capture_ts: float
    index: int


MAX_DELAY_MS = 2000.0  # --delay: a lip-sync latency; the line holds delay x fps frames


class DelayLine:
    """Rendered frames held in order until their capture time + ``delay_s`` (none dropped); with
    ``delay_s = 0`` every frame is due at once."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self._frames: "collections.deque[Rendered]" = collections.deque()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, item: "Rendered") -> None:
        self._frames.append(item)

    def wait_s(self, now: float) -> float:
        """Seconds until the oldest held frame is due (inf when none is held)."""
        if not self._frames:
            return float("inf")
        return max(0.0, self._frames[0].capture_ts + self.delay_s - now)

    def due(self, now: float) -> "list[Rendered]":
        """The frames due at ``now``, oldest first (removed from the line)."""
        out = []
        while self._frames and self._frames[0].capture_ts + self.delay_s <= now:
            out.append(self._frames.popleft())
        return out


@dataclass
class LiveOptions:
    mode: str = "relative"
    smoothing: bool = True
    one_euro: OneEuroConfig = field(default_factory=OneEuroConfig)
    lost: LostFacePolicy = field(default_factory=LostFacePolicy)
    output_size: "FrameSize | int" = 512  # a side: square frames
    fps: float | None = None  # cap on the output rate
    delay_ms: float | None = None
    max_frames: int | None = None
    overlay: bool = False
    status_every_s: float = 1.0
    expression: float = 1.0  # live.expression gain: 0 = head pose only, 1 = as the driver, up to 2

    def __post_init__(self):
        if isinstance(self.output_size, int):  # a side: square frames
            self.output_size = FrameSize(self.output_size, self.output_size)

    @property
    def frame_size(self) -> FrameSize:
        return self.output_size  # type: ignore[return-value]  (normalised in __post_init__)

    @property
    def motion(self) -> MotionSettings:
        return MotionSettings(self.smoothing, self.one_euro, self.lost)


@dataclass
class AvatarImage:
    """What an avatar is made from: the model's input ``(1, 3, S, S)`` float32 and, for full-frame
    output, the portrait prepared for paste-back (None: frames are the animated crop)."""

    input: np.ndarray
    paste: "PasteBack | None" = None


@dataclass
class PreparedAvatar:
    """An avatar ready to animate: the engine's :class:`Avatar`, its paste-back (None: crop output),
    the crop the model animates ``(S, S, 3)`` uint8 and its face mesh for the expression path (found
    at the first use: None, no face, expressions off; ``unset`` until then)."""

    avatar: Avatar
    paste: "PasteBack | None"
    crop: np.ndarray
    face: "ex.PortraitFace | None | str" = "unset"


class Avatars:
    """The sources (one file or a folder), each prepared once and cached.

    ``load(path)`` returns the model input ``(1, 3, S, S)`` float32, or an :class:`AvatarImage`
    (which may carry the portrait prepared for paste-back).

    :meth:`check` loads every source up front: with several, the ones that cannot be used (not an
    image, no face) are skipped with a warning, and only none usable is an error. A switch that
    fails later (a file removed meanwhile) keeps the current avatar: it never ends a session."""

    def __init__(self, engine: Engine, paths: list[Path], load: "Callable[[Path], np.ndarray | AvatarImage]"):
        self.engine = engine
        self.paths = list(paths)
        self.load = load
        self.index = 0
        self._cache: "dict[Path, PreparedAvatar]" = {}
        self._loaded: "dict[Path, np.ndarray | AvatarImage]" = {}

    def check(self, warn: Callable[[str], None] = lambda s: None) -> "Avatars":
        """Load every source now; drop the unusable ones (``warn`` says which and why) when there are others."""
        from nets.errors import UserError

        if len(self.paths) == 1:
            self._loaded[self.paths[0]] = self.load(self.paths[0])  # its own error, as it is
            return self
        good, first_error = [], None
        for path in self.paths:
            try:
                self._loaded[path] = self.load(path)
                good.append(path)
            except UserError as e:
                first_error = first_error or e
                warn(f"skipping {path.name}: {' '.join(str(e).split())}")
        if not good:
            raise UserError(f"none of the {len(self.paths)} images can be used as a portrait; the first: "
                            f"{first_error}")
        self.paths = good
        return self

    def _entry(self) -> PreparedAvatar:
        path = self.paths[self.index]
        if path not in self._cache:
            image = self._loaded.pop(path, None)
            if image is None:
                image = self.load(path)
            if not isinstance(image, AvatarImage):
                image = AvatarImage(image)
            avatar = self.engine.prepare_source(image.input)
            self._cache[path] = PreparedAvatar(avatar, image.paste, to_uint8(image.input)[0])
        return self._cache[path]

    def current(self) -> Avatar:
        return self._entry().avatar

    @property
    def paste(self) -> "PasteBack | None":
        """The current avatar's paste-back (None: crop output)."""
        return self._entry().paste

    @property
    def face(self) -> "ex.PortraitFace | None":
        """The current avatar's face mesh (None: expressions off for it), found once, when first asked
        for (a session at --expression 0 never pays for it)."""
        entry = self._entry()
        if isinstance(entry.face, str):
            entry.face = ex.portrait_face(entry.crop)
        return entry.face

    def step(self, delta: int) -> None:
        """Move to the next (``delta`` = 1) or previous (-1) avatar, prepared now; one that fails to
        load is dropped and the current one stays (UserError says why)."""
        from nets.errors import UserError

        if len(self.paths) < 2:
            return
        old = self.index
        self.index = (self.index + delta) % len(self.paths)
        try:
            self._entry()
        except EngineUnavailable:  # a remote worker reconnecting: prepared when it is back
            return
        except (UserError, OSError) as e:
            failed = self.paths.pop(self.index)
            self.index = old if old < self.index else old - 1
            reason = " ".join(str(e).split())
            raise UserError(f"cannot switch to {failed.name} ({reason}); it is skipped, {self.name} stays") from None

    @property
    def name(self) -> str:
        return self.paths[self.index].name


class LivePipeline:
    """Runs the live loop until quit, ``max_frames`` or the end of a file camera."""

    def __init__(self, engine: Engine, capture: CaptureSource, cropper: Cropper, avatars: Avatars, sinks: list,
                 options: LiveOptions, commands: "queue.Queue[str] | None" = None, stats: LiveStats | None = None,
                 log: Callable[[str], None] | None = None):
        self.engine = engine
        self.capture = capture
        self.cropper = cropper
        self.avatars = avatars
        self.sinks = sinks
        self.opt = options
        self.commands: queue.Queue[str] = commands or queue.Queue()
        self.stats = stats or LiveStats()
        self.log = log or (lambda s: None)
        self.size = engine.frame_size
        self.modes = [m for m in ("relative", "avd", "standard") if m != "avd" or engine.has_avd]
        if options.mode not in self.modes:  # mra-live refuses --mode avd up front; library callers get a note
            self.stats.event(f"mode {options.mode} is not available for this model (no AVD network): relative")
            options.mode = "relative"
        self.mode = options.mode
        self.overlay = options.overlay
        self.motion = MotionState(options.motion)
        self.expression = ex.ExpressionTransfer(None, ex.ExpressionSettings(gain=options.expression))
        self._mesh: FaceMesh | None = None
        self.tracked = Mailbox()  # track thread -> animate thread
        self.rendered = Mailbox()  # animate thread -> sink loop
        self.engine_watch = EngineWatch()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._engine_down = threading.Event()
        self._engine_late = False
        self.last_output: np.ndarray | None = None

    # -- stages ------------------------------------------------------------------------------
    def _track_loop(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.capture.slot.get(timeout=0.5)
                if frame is None:
                    if self.capture.ended:
                        break
                    continue
                t0 = time.perf_counter()
                box = self.cropper(frame.image)
                t1 = time.perf_counter()
                self.stats.stage("track", (t1 - t0) * 1000)
                crop = params = None
                if box is not None:
                    crop = crop_resize(frame.image, box, self.size)
                    try:
                        with self.engine_watch.call("regions"):
                            params = self.engine.regions(to_input(crop[None]))
                    except EngineUnavailable as e:
                        self._engine_lost(e)
                        continue
                    self._engine_back()
                    t2 = time.perf_counter()
                    self.stats.stage("regions", (t2 - t1) * 1000)
                    marks = None
                    if self.expression.settings.gain > 0:  # --expression 0: the networks alone, no mesh to pay
                        marks = self._driver_mesh()(crop)
                        self.stats.stage("mesh", (time.perf_counter() - t2) * 1000)
                else:
                    marks = None
                self.tracked.put(Tracked(frame, crop, box, params, time.perf_counter(), marks))
        except BaseException as e:  # surfaced by run()
            self._errors.append(e)
            self._stop.set()
        finally:
            self.tracked.close()

    def _driver_mesh(self) -> FaceMesh:
        if self._mesh is None:  # made in the track thread, which alone uses it
            self._mesh = FaceMesh(tracking=True)
        return self._mesh

    def _engine_lost(self, e: EngineUnavailable) -> None:
        """A frame the engine could not take (a remote worker reconnecting): skipped; the sinks keep
        the last frame until the engine is back."""
        if not self._engine_down.is_set():
            self._engine_down.set()
            self.stats.event(f"engine unavailable: {e}")
            self.log(f"engine unavailable ({e}): showing the last frame")

    def _engine_back(self) -> None:
        if self._engine_down.is_set():
            self._engine_down.clear()
            self.stats.event("engine back")

    def _handle_commands(self) -> bool:
        """Apply pending commands (:mod:`.keys`); False on quit."""
        for c in pending(self.commands):
            if c == "q":
                return False
            if c == "r":
                self.motion.recalibrate(at_once=True)
                self.stats.event("recalibrate")
            elif c in ("+", "-"):
                self.set_expression(self.expression.settings.gain + (0.1 if c == "+" else -0.1))
            elif c in ("n", "p"):
                from nets.errors import UserError
                try:
                    self.avatars.step(1 if c == "n" else -1)
                except UserError as e:  # the session goes on with the current avatar
                    self.log(f"warning: {e}")
                    self.stats.event(f"warning: {e}")
                    continue
                self.motion.recalibrate(at_once=False)
                self.stats.event(f"avatar {self.avatars.name}")
            elif c == "m":
                self.mode = next_mode(self.modes, self.mode)
                self.stats.event(f"mode {self.mode}")
            elif c == "o":
                self.overlay = not self.overlay
        return True

    def set_expression(self, gain: float) -> None:
        """Expression strength, clamped to :data:`live.expression.GAIN_RANGE` (hot keys + and -)."""
        from dataclasses import replace

        lo, hi = ex.GAIN_RANGE
        gain = round(min(hi, max(lo, gain)), 2)
        self.expression.settings = replace(self.expression.settings, gain=gain)
        self.stats.event(f"expression {gain:g}")

    def _animate_loop(self) -> None:
        try:
            while not self._stop.is_set():
                item: Tracked | None = self.tracked.get(timeout=0.5)
                if item is None:
                    if self.tracked.closed:
                        break
                    continue
                if not self._handle_commands():
                    self._stop.set()
                    break
                try:
                    with self.engine_watch.call("avatar"):
                        avatar = self.avatars.current()
                except EngineUnavailable as e:
                    self._engine_lost(e)
                    continue
                if item.params is None:
                    self.stats.face_lost_frames += 1
                # the reference is the driver's face most like the portrait's (the networks alone: the first face)
                self.motion.like = self.avatars.face if self.expression.settings.gain > 0 else None
                motion = self.motion.update(item.params, item.marks, item.frame.timestamp)
                if motion is None:
                    continue  # nothing seen yet: keep showing what we have
                if motion.found_again:
                    self.stats.event("face found")
                t0 = time.perf_counter()
                try:
                    with self.engine_watch.call("animate"):
                        new = self.engine.transfer(avatar, motion.driving, motion.reference, mode=self.mode)
                        t1 = time.perf_counter()
                        out = self.engine.animate(avatar, new)[0]
                except EngineUnavailable as e:
                    self._engine_lost(e)
                    continue
                t2 = time.perf_counter()
                image = self._post(out, item, new, motion)
                self.stats.stage("transfer", (t1 - t0) * 1000)
                self.stats.stage("animate", (t2 - t1) * 1000)
                self.stats.stage("post", (time.perf_counter() - t2) * 1000)
                self.rendered.put(Rendered(image, item.frame.timestamp, item.frame.index))
        except BaseException as e:  # surfaced by run()
            self._errors.append(e)
            self._stop.set()
        finally:
            self.rendered.close()

    def _post(self, out: np.ndarray, item: Tracked, new: RegionParams, motion: Motion) -> np.ndarray:
        """The animated crop -> the output frame: the driver's expression, pasted back into the
        portrait, or the crop fitted to the output size (+ the overlay)."""
        image = to_uint8(out)
        face = self.avatars.face if self.expression.settings.gain > 0 else None
        if face is not None and motion.marks is not None and motion.reference_marks is not None:
            self.expression.portrait = face
            image = self.expression.apply(image, motion.marks, motion.reference_marks)
        if self.overlay:
            image = draw_regions(image, new)
        paste = self.avatars.paste
        if paste is not None:
            image = paste.apply(image)
        else:
            image = fit_square(image, self.opt.frame_size)
        if self.overlay:
            snap = self.stats.snapshot()
            image = draw_overlay(image, item.crop, f"{self.stats.fps_out():.1f} fps  {snap.latency_ms.p50:.0f} ms  "
                                                   f"{self.mode}  expression {self.expression.settings.gain:g}")
        return image

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> LiveStats:
        self.avatars.current()  # prepare the first avatar before frames flow
        self.capture.start()
        threads = [threading.Thread(target=self._track_loop, name="track", daemon=True),
                   threading.Thread(target=self._animate_loop, name="animate", daemon=True)]
        for t in threads:
            t.start()
        pacer = OutputPacer(self.opt.fps)
        last_status = time.monotonic()
        last_lost = 0
        line = DelayLine((self.opt.delay_ms or 0.0) / 1000.0)
        ended = False
        try:
            while not self._stop.is_set() and not (ended and not line):
                wait = min(0.25, line.wait_s(time.monotonic()), pacer.period_s)
                item: Rendered | None = None if ended else self.rendered.get(timeout=wait)
                if item is not None:
                    line.push(item)
                elif ended:
                    time.sleep(wait)
                if self.capture.status == "lost" and self.capture.lost_events != last_lost:
                    last_lost = self.capture.lost_events
                    self.log("camera lost: showing the last good frame and retrying every second")
                    self.stats.event("camera lost")
                if item is None and not ended and self.rendered.closed:
                    ended = True  # the frames still in the delay line come out at their time
                now = time.monotonic()
                ready = line.due(now)
                if not ready and not line and not ended and self.last_output is not None \
                        and self._repeat_due(now, pacer):
                    self._write(self.last_output)  # keep the virtual camera alive
                    pacer.repeated_at(now)
                    self.stats.repeated(now)
                for out in ready:
                    if not pacer.admit(now):
                        continue  # over the --fps cap: skip this one
                    self._write(out.image)
                    self.last_output = out.image
                    self.stats.output(out.capture_ts)
                    if self.opt.max_frames and self.stats.frames_out >= self.opt.max_frames:
                        ended, line = True, DelayLine()
                        break
                self._watch_engine(now)
                if time.monotonic() - last_status >= self.opt.status_every_s:
                    last_status = time.monotonic()
                    self._update_counts()
                    self.log(self.stats.status_line(self.fps_in(), self.engine_note(now)))
        except KeyboardInterrupt:
            # Ctrl-C is how a terminal user stops a live tool: stop like "q" (recordings kept, stats
            # written); a second Ctrl-C during the clean-up interrupts that as usual
            self.log("interrupted: stopping")
            self.stats.event("interrupted (Ctrl-C)")
        finally:
            self._stop.set()
            self.capture.stop()
            self.tracked.close()
            for t in threads:
                t.join(timeout=5)
            self._update_counts()
            self.expression.close()
            if self._mesh is not None and not threads[0].is_alive():
                self._mesh.close()
        if self._errors:
            raise self._errors[0]
        return self.stats

    def _repeat_due(self, now: float, pacer: OutputPacer) -> bool:
        """The last frame goes out again when the frames stopped for a reason the loop knows: the
        camera is lost, the engine down (a worker reconnecting) or not answering
        (:meth:`~export.engine.Engine.health`); or an engine call has run for as long as the pacer
        lets a slow one run."""
        sure = (self.capture.status == "lost" or self._engine_down.is_set()
                or not self.engine.health(pacer.repeat_after_s).answering)
        late = self.engine_watch.busy_s(now) >= pacer.repeat_after_s
        return (sure or late) and pacer.repeat_due(now, sure)

    def engine_note(self, now: "float | None" = None) -> str:
        """What the status line says while the engine is late, else empty: the engine's own words
        (a remote one: ``worker not answering (N s)``, ``worker unreachable: reconnecting``), or
        ``engine not answering (N s)`` when one of its calls has run for :data:`~.pacing.NOT_ANSWERING_S`."""
        health = self.engine.health(NOT_ANSWERING_S)
        if not health.answering:
            return health.reason
        busy = self.engine_watch.busy_s(now)
        return f"engine not answering ({busy:.0f} s)" if busy >= NOT_ANSWERING_S else ""

    def _watch_engine(self, now: float) -> None:
        """An event (and a log line) when the engine stops answering and when it answers again."""
        note = self.engine_note(now)
        if bool(note) != self._engine_late:
            self._engine_late = bool(note)
            self.stats.event(note.split(" (")[0] if note else "engine answering again")
            if note:
                self.log(f"{note}: repeating the last frame")

    def _write(self, image: np.ndarray) -> None:
        for sink in list(self.sinks):
            try:
                sink.write(image)
            except (OSError, DiskFault) as e:  # (the media writers say a disk fault as a DiskFault)
                self._recording_failed(sink, e)

    def _recording_failed(self, sink, e: "OSError | DiskFault") -> None:
        """A recording that cannot be written (disk full, read-only...) is dropped, once, with one line;
        the other outputs (the virtual camera, a window) go on. Anything else, or the only output, ends
        the session as before."""
        path = getattr(sink, "path", None)
        if isinstance(e, DiskFault):
            text: "str | None" = str(e)
        else:
            text = disk_fault(e, str(path)) if path is not None else None
        if text is None or len(self.sinks) == 1:
            raise e
        self.sinks.remove(sink)
        abort = getattr(sink, "abort", None)
        if abort is not None:
            try:
                abort()  # the partial file is removed; nothing half-written is left behind
            except OSError:
                pass
        rest = ", ".join(getattr(s, "name", "output") for s in self.sinks)
        self.log(f"warning: {text}; the recording stopped, {rest} go on")
        self.stats.event(f"recording stopped: {text}")

    def _update_counts(self) -> None:
        self.stats.frames_in = self.capture.slot.received
        self.stats.dropped = self.capture.slot.dropped + self.tracked.dropped + self.rendered.dropped

    def fps_in(self) -> float:
        """Camera frames received per second since the start."""
        el = time.monotonic() - self.stats.start
        return self.capture.slot.received / el if el > 0 else 0.0
