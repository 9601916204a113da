"""mra-animate: a portrait + a driving video -> the portrait animated by the video.

    mra-animate --source face.jpg --driving talk.mp4 --output out.mp4

The pipeline is :func:`animate_file` (a library function: mra-web calls it with its own engine
and a progress callback); :func:`main` is the command line around it.

Streaming: driving frames are decoded one at a time in a background thread (PyAV), cropped
(face tracker or plain resize), grouped in batches of ``batch_size``, run through the engine
(regions -> motion transfer -> animation of the cached source) and handed to the writer, which
encodes them (and the matching stretch of the driving video's audio) right away. Memory is
bounded by a few batches whatever the video's length. The output appears only when everything
succeeded (temporary file in the target folder, renamed at the end).
"""
from __future__ import annotations

import itertools
import os
import queue
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from export.engine import MODES
from nets import media
from nets.errors import ArgumentParser, UserError, one_line_warnings, run_cli
from nets.media.facemesh import FaceMesh
from nets.media.face import CropBox, CropSettings, FaceDetector, FaceTracker, TrackerSettings, crop_resize, face_crop

from . import expression as ex
from .engines import EngineSpec, add_engine_arguments, build_engine, check_mode, check_mode_and_crop
from .pasteback import FrameSize, capped_size, check_sides, parse_frame_size
from .portrait import CROPS, prepare_portrait, source_box

WORKING_SIDE = 1280  # driving frames are decoded at most this large for face tracking
OUTPUT_LONG_SIDE = 1280  # full-frame output: the portrait's resolution, its long side capped at this
FACE_SCAN_SECONDS = 10.0  # how far into the driving video to look for the first face

ProgressFn = Callable[[int, "int | None"], None]
T = TypeVar("T")


@dataclass
class AnimateOptions:
    """What :func:`animate_file` does besides its inputs (the CLI options of the same names).

    ``paste_back`` (with ``crop="auto"``): the animated face is pasted back into the whole
    portrait (:mod:`live.pasteback`); ``output_size``: its frame, the portrait's own resolution with
    the long side capped at an ``int`` (default :data:`OUTPUT_LONG_SIDE`), or a :class:`FrameSize`
    the portrait is fitted into. Otherwise the frames are the square crop: ``size`` is their side
    (default: the model's own resolution; the networks always run at that resolution and larger
    outputs are upscaled). ``fps``: output frame rate (default: the driving video's; frames are
    picked by timestamp, so the duration and the audio are kept). ``expression``: the strength of the
    mouth, eye and brow motion (:mod:`live.expression`; 0 = head pose only, 1 = as the driver, up to 2).
    Relative motion is measured from the driving frame of the first second whose mouth and eyes are
    most like the portrait's (for a neutral portrait: the most neutral one).
    """

    mode: str = "relative"
    crop: str = "auto"
    size: "int | None" = None
    paste_back: bool = True
    output_size: "FrameSize | int | None" = None
    fps: "float | None" = None
    batch_size: int = 4
    expression: float = 1.0
    crop_settings: CropSettings = CropSettings()
    tracker: TrackerSettings = TrackerSettings(detect_every=2)  # the crop glides between detections

    def validate(self) -> "AnimateOptions":
        check_mode_and_crop(self.mode, self.crop)
        if self.size is not None and not 16 <= self.size <= 4096:
            raise UserError(f"--size must be between 16 and 4096 pixels, got {self.size}")
        if isinstance(self.output_size, int):
            check_sides("--output-size", self.output_size)
        if self.full_frame and self.size is not None:
            raise UserError("--size sets the side of the square crop output; the full-frame output takes "
                            "--output-size (or add --no-paste-back for the crop)")
        if self.fps is not None and not 0 < self.fps <= media.MAX_FPS:
            raise UserError(f"--fps must be above 0 and at most {media.MAX_FPS}, got {self.fps:g}")
        if not 1 <= self.batch_size <= 1024:
            raise UserError(f"--batch-size must be between 1 and 1024, got {self.batch_size}")
        try:
            ex.ExpressionSettings(gain=self.expression).validate()
        except ValueError as e:
            raise UserError(f"--expression: {e}") from None
        return self

    @property
    def full_frame(self) -> bool:
        """Whether the output is the whole portrait (paste-back), not the square crop."""
        return self.paste_back and self.crop == "auto"

    def frame_size(self, portrait_width: int, portrait_height: int) -> FrameSize:
        """The full-frame output size for a portrait of that size."""
        if isinstance(self.output_size, FrameSize):
            return self.output_size
        return capped_size(portrait_width, portrait_height, self.output_size or OUTPUT_LONG_SIDE)


@dataclass
class AnimateResult:
    output: Path
    kind: str  # mp4 | gif | png
    frames: int
    fps: Fraction
    size: FrameSize
    has_audio: bool
    seconds: float  # wall time
    reference: int = 0  # the driving frame relative motion is measured from
    notes: tuple[str, ...] = ()  # what the user should know about the result (e.g. expressions off)

    def describe(self) -> str:
        what = "PNG frames in" if self.kind == "png" else "frames to"
        audio = ", with the driving video's audio" if self.has_audio else ""
        ref = (f"; motion measured from driving frame {self.reference} (of the first second, the one most like the "
               "portrait: mouth and eyes)")
        return (f"wrote {self.frames} {what} {self.output} ({self.size}, {float(self.fps):.3g} fps{audio}) "
                f"in {self.seconds:.1f} s ({self.frames / max(self.seconds, 1e-9):.1f} frames/s){ref}")


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------

def first_face_crop(info: media.VideoInfo, detector: FaceDetector, settings: CropSettings,
                    seconds: float = FACE_SCAN_SECONDS) -> "tuple[CropBox, int]":
    """Scan the start of the driving video for a face: (its crop at the working size, frame index)."""
    reader = media.VideoReader(info.path, max_side=WORKING_SIDE, info=info)
    try:
        for f in reader.frames():
            if f.time > seconds:
                break
            faces = [x for x in detector.detect(f.rgb) if x.score >= settings.min_score]
            if faces:
                h, w = f.rgb.shape[:2]
                return face_crop(faces[0], w, h, settings), f.index
    finally:
        reader.close()
    raise UserError(f"no face found in the first {seconds:g} s of the driving video {info.path.name}; use a video "
                    "where the face is visible from the start, or --crop none (the whole frame is resized)")


def driving_frames(info: media.VideoInfo, size: int, fps: Fraction, crop: str,
                   detector: "FaceDetector | None" = None, options: "AnimateOptions | None" = None) -> Iterator[np.ndarray]:
    """The driving video as the model sees it: ``(size, size, 3)`` uint8 frames at ``fps``, streamed."""
    options = options or AnimateOptions()
    if crop == "none":
        reader = media.VideoReader(info.path, size=(size, size), info=info)
        for f in media.resample(reader.frames(), fps, info.fps):
            yield f.rgb
        return
    detector = detector or FaceDetector()
    start, _ = first_face_crop(info, detector, options.crop_settings)
    tracker = FaceTracker(detector, options.crop_settings, options.tracker)
    tracker.start(start)
    reader = media.VideoReader(info.path, max_side=WORKING_SIDE, info=info)

    def cropped() -> Iterator[media.Frame]:
        for f in reader.frames():  # every decoded frame goes through the tracker (smooth motion)
            f.rgb = crop_resize(f.rgb, tracker.update(f.rgb), size)
            yield f

    for f in media.resample(cropped(), fps, info.fps):
        yield f.rgb


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Run ``items`` in a background thread, at most ``depth`` ahead (errors re-raised here)."""
    q: "queue.Queue[tuple[str, object]]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(msg: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put(("item", x)):
                    return
            put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=run, name="mra-decode", daemon=True)
    t.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "item":
                yield x  # type: ignore[misc]
            elif kind == "done":
                return
            else:
                raise x  # type: ignore[misc]
    finally:
        stop.set()
        t.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

def check_inputs(source: "str | os.PathLike", driving: "str | os.PathLike", output: "str | os.PathLike"
                 ) -> "tuple[np.ndarray, media.VideoInfo, media.OutputSpec]":
    """Everything about the inputs that can be checked before a model is loaded (fast, strict)."""
    spec = media.check_output(output)
    info = media.probe_video(driving, "driving video")
    rgb = media.read_image(source, what="source image")
    if spec.path.exists() and spec.path.resolve() == info.path.resolve():
        raise UserError(f"--output {spec.path.name} is the driving video itself; choose another output name")
    return rgb, info, spec


def animate_file(engine, source: "str | os.PathLike", driving: "str | os.PathLike", output: "str | os.PathLike",
                 options: "AnimateOptions | None" = None, progress: "ProgressFn | None" = None,
                 detector: "FaceDetector | None" = None) -> AnimateResult:
    """Animate the portrait ``source`` with the driving video ``driving`` into ``output``.

    ``engine``: an :class:`export.engine.Engine` (see :func:`live.engines.build_engine`); ``output``: ``.mp4``,
    ``.gif`` or a directory (numbered PNGs). ``progress(done, total)`` is called after every batch
    (``total`` is an estimate, None when unknown); raising from it cancels the job cleanly. Bad
    inputs raise :class:`UserError`; nothing is left at ``output`` unless the call succeeds.
    """
    t_start = time.perf_counter()
    options = (options or AnimateOptions()).validate()
    src_rgb, info, spec = check_inputs(source, driving, output)
    check_mode(engine, options.mode)
    own_detector = options.crop == "auto" and detector is None
    if own_detector:
        detector = FaceDetector(min_score=options.crop_settings.min_score)
    try:
        return _animate(engine, src_rgb, info, spec, options, progress, detector, t_start)
    finally:
        if own_detector:
            detector.close()


def _animate(engine, src_rgb, info, spec, options, progress, detector, t_start) -> AnimateResult:
    size = engine.frame_size
    fps = Fraction(options.fps).limit_denominator(1001) if options.fps else info.fps
    if info.fps_guessed and not options.fps:
        warnings.warn(f"the driving video {info.path.name} does not say its frame rate; assuming {float(fps):g} fps "
                      "(set --fps to choose)")
    # the frames are made at the size the output is written at (mp4: even sides, rounded down), which
    # is the size the result says
    full = False
    if options.full_frame:
        full = FrameSize(*media.written_size(spec.kind, options.frame_size(src_rgb.shape[1], src_rgb.shape[0]).wh))
    src, paste = prepare_portrait(src_rgb, size, options.crop, detector, full, options.crop_settings)
    side = options.size or size
    out_size = paste.size if paste is not None else FrameSize(*media.written_size(spec.kind, (side, side)))
    avatar = engine.prepare_source(media.to_input(src[None]))
    del src_rgb
    face = ex.portrait_face(src) if options.expression > 0 else None
    # with --crop none the picture need not be a face: only a face crop without a mesh is worth a word
    notes = (ex.NO_PORTRAIT_MESH,) if options.expression > 0 and face is None and options.crop == "auto" else ()
    for n in notes:
        warnings.warn(n)
    express = ex.ExpressionTransfer(face, ex.ExpressionSettings(gain=options.expression)) if face else None

    mesh = FaceMesh(tracking=True)
    marked = ((f, mesh(f)) for f in driving_frames(info, size, fps, options.crop, detector, options))
    total = info.estimated_frames(fps)
    writer = media.open_writer(spec, fps, out_size.wh,
                               audio_from=info.path if info.has_audio and spec.kind == "mp4" else None,
                               audio_start=info.start_time)
    done = 0
    batches = None
    try:
        start = ex.neutral_start(marked, float(fps), face)
        if start is None:
            raise UserError(f"the driving video {info.path.name} has no frames")
        ref = start.index
        initial = engine.regions(media.to_input(start.frame[None]))
        last = start.marks  # a frame where the mesh lost the face keeps the last expression
        batches = prefetch(batched(start.stream, options.batch_size), depth=2)
        for batch in batches:
            x = media.to_input(np.stack([f for f, _ in batch]))
            new = engine.transfer(avatar, engine.regions(x), initial, mode=options.mode)
            out = media.to_uint8(engine.animate(avatar, new))
            if express is not None and start.marks is not None:
                expressive = []
                for o, (_, m) in zip(out, batch):
                    last = m if m is not None else last
                    expressive.append(express.apply(o, last, start.marks))
                out = np.stack(expressive)
            if paste is not None:
                out = np.stack([paste.apply(f) for f in out])
            elif out_size.width != size:
                out = np.stack([media.resize_rgb(f, out_size.width) for f in out])
            writer.write(out)
            done += len(batch)
            if progress is not None:
                progress(done, max(total, done) if total else None)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if batches is not None:
            batches.close()  # the decoding thread is done with the mesh before it closes
        mesh.close()
        if express is not None:
            express.close()
    return AnimateResult(output=path, kind=spec.kind, frames=done, fps=fps, size=FrameSize(*writer.size),
                         has_audio=writer.has_audio, seconds=time.perf_counter() - t_start, reference=ref, notes=notes)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-animate", description="Animate a portrait with a driving video (MRAA).")
    p.add_argument("--source", required=True, metavar="IMG", help="portrait: PNG, JPEG, WebP or BMP")
    p.add_argument("--driving", required=True, metavar="VIDEO", help="driving video: mp4, mov, avi, webm or gif")
    p.add_argument("--output", required=True, metavar="OUT",
                   help="OUT.mp4 (H.264 with the driving video's audio), OUT.gif, or a directory (numbered PNG frames)")
    add_engine_arguments(p, precision=False, export_checkpoints=False)
    p.add_argument("--mode", choices=MODES, default="relative", help="motion transfer (default: relative)")
    p.add_argument("--crop", choices=CROPS, default="auto",
                   help="auto: face crop on the source and a smoothed face track on the video; none: resize only")
    p.add_argument("--output-size", metavar="N|WxH",
                   help=f"full-frame output: the portrait's resolution with its long side capped at N (default "
                        f"{OUTPUT_LONG_SIDE}), or a WxH frame the portrait is fitted into (no stretching)")
    p.add_argument("--no-paste-back", action="store_true",
                   help="write the square face crop the model animates instead of the whole portrait")
    p.add_argument("--size", type=int, metavar="N",
                   help="with --no-paste-back or --crop none: side of the square output (default: the model's "
                        "resolution)")
    p.add_argument("--fps", type=float, metavar="N", help="output frame rate (default: the driving video's)")
    ex.add_expression_argument(p)
    p.add_argument("--batch-size", type=int, metavar="N", default=None,
                   help="frames animated together (default: 4 on cpu, 16 on cuda, 8 with --worker)")
    from .remote.client import add_worker_arguments
    add_worker_arguments(p)
    return p


def _sigterm_as_interrupt() -> None:
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, handler)


def _output_size(spec: "str | None") -> "FrameSize | int | None":
    """``--output-size``: ``N`` caps the long side, ``WxH`` is a frame."""
    if spec is None:
        return None
    if spec.strip().isdigit():
        return int(spec)
    return parse_frame_size(spec)


def cli(argv: "Sequence[str] | None" = None) -> int:
    """The command (errors propagate; :func:`main` turns them into one-line messages)."""
    args = build_parser().parse_args(argv)
    one_line_warnings()
    _sigterm_as_interrupt()
    batch = args.batch_size if args.batch_size is not None else \
        (8 if args.worker else 16 if args.device == "cuda" else 4)
    options = AnimateOptions(mode=args.mode, crop=args.crop, size=args.size, fps=args.fps, batch_size=batch,
                             expression=args.expression, paste_back=not args.no_paste_back,
                             output_size=_output_size(args.output_size)).validate()
    from .remote.client import worker_spec

    # with --worker, a lost connection is waited for (a minute), so no frame of the output is skipped
    worker = worker_spec(args, wait_s=60.0, client="mra-animate")
    # fail fast, before a model is loaded: files, formats, output folder, faces
    src_rgb, info, _ = check_inputs(args.source, args.driving, args.output)
    detector = None
    if options.crop == "auto":
        detector = FaceDetector(min_score=options.crop_settings.min_score)
        source_box(src_rgb, detector, options.crop_settings)
        first_face_crop(info, detector, options.crop_settings)
    del src_rgb
    engine = build_engine(EngineSpec(args.checkpoint, args.config, args.backend, args.device, worker=worker))
    if args.worker and batch > engine.limits.max_batch:
        raise UserError(f"--batch-size: the worker takes at most {engine.limits.max_batch} frames per request")

    from tqdm import tqdm
    bar = tqdm(unit="frame", desc="animating", leave=False, dynamic_ncols=True, disable=None, file=sys.stderr)

    def progress(done: int, total: "int | None") -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        result = animate_file(engine, args.source, args.driving, args.output, options, progress, detector=detector)
    finally:
        bar.close()
    print(f"{result.describe()}; {engine.describe()}")
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    """Console entry point: exit status 0, 2 with one ``error:`` line for a problem to fix, 130 on Ctrl-C."""
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
