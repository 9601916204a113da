"""mra-live: your webcam drives a portrait, streamed to a virtual camera (Zoom, Meet, OBS).

    mra-live                                        # the bundled example portrait, webcam 0 -> virtual camera
    mra-live --source face.png                      # webcam 0 -> virtual camera "mra-live"
    mra-live --source portraits/ --output window     # a folder of avatars, preview window
    mra-live --source face.png --camera talk.mp4 --output out.mp4 --max-frames 300

Keys (preview window, or typed + Enter on stdin when there is no window): r recalibrate (the face
you make now counts as neutral), n / p next / previous avatar, m cycle modes, o overlay, q quit.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from export.engine import MODES
from nets.errors import ArgumentParser, UserError, entry_point

from .engines import add_engine_arguments, check_mode, engine_from_args
from .expression import add_expression_argument
from .pasteback import FrameSize, parse_frame_size
from .loop.keys import COMMANDS
from .loop.pipeline import MAX_DELAY_MS, AvatarImage, Avatars, CenterCropper, FaceCropper, LiveOptions, LivePipeline
from .loop.smoothing import OneEuroConfig

FULL_FRAME = FrameSize(1280, 720)  # the portrait pasted back: a standard video frame
CROP_SIDE = 512  # the face crop alone: a square
EXAMPLE_PORTRAIT = Path(__file__).resolve().parent / "assets" / "example-portrait.png"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-live", description="Animate a portrait with your webcam, in real time, into a "
                       "virtual camera.")
    p.add_argument("--source", help="portrait image, or a folder of them (n / p switch avatars); default: a "
                   "bundled example portrait")
    p.add_argument("--camera", default="0", help="webcam index (default 0) or a video file played as a camera")
    p.add_argument("--loop", action="store_true", help="loop a video file camera")
    p.add_argument("--output", action="append", default=None,
                   help="virtualcam (default), window, or a file (.mp4/.gif/directory); repeat for several")
    add_engine_arguments(p)
    p.add_argument("--mode", choices=MODES, default=MODES[0])
    p.add_argument("--crop", choices=("auto", "none"), default="auto",
                   help="auto: track the face in the camera (and crop the source's face); none: centre square")
    p.add_argument("--output-size", metavar="WxH",
                   help=f"output frame size: WxH, or N for a square (default {FULL_FRAME} with the portrait fitted in "
                        f"whole; {CROP_SIDE} with --no-paste-back)")
    p.add_argument("--no-paste-back", action="store_true",
                   help="send the animated face crop instead of pasting it back into the whole portrait")
    p.add_argument("--fps", type=float, help="cap the output frame rate")
    p.add_argument("--delay", type=float, metavar="MS",
                   help=f"hold the end-to-end latency constant at MS (at most {MAX_DELAY_MS:g}): every frame comes "
                        "out MS after its capture, none is dropped for it")
    p.add_argument("--max-frames", type=int, help="stop after N output frames (scripted runs)")
    p.add_argument("--stats", type=Path, metavar="PATH.json", help="write run statistics there at the end")
    add_expression_argument(p)
    p.add_argument("--no-smoothing", action="store_true", help="turn off the temporal smoothing of regions")
    p.add_argument("--min-cutoff", type=float, default=OneEuroConfig.min_cutoff,
                   help="One-Euro smoothing at rest, Hz (lower = smoother)")
    p.add_argument("--beta", type=float, default=OneEuroConfig.beta,
                   help="One-Euro speed coefficient (higher = less lag on fast moves)")
    p.add_argument("--overlay", action="store_true", help="start with the overlay on (o toggles)")
    p.add_argument("--threads", type=int, help="CPU threads per network stage (default: half the cores)")
    p.add_argument("--camera-size", help="ask the webcam for WxH, e.g. 640x480")
    p.add_argument("--list-cameras", action="store_true", help="list the cameras with index and resolution, exit")
    p.add_argument("--quiet", action="store_true", help="no status line")
    from .remote.client import add_worker_arguments
    add_worker_arguments(p)
    return p


def _sources(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if not p.exists():
        raise UserError(f"source not found: {p}; give a portrait image or a folder of them")
    if p.is_dir():
        from nets.media import IMAGE_EXTS

        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in the folder {p}")
        return files
    return [p]


def _stdin_keys(commands: "queue.Queue[str]") -> None:
    def run():
        for line in sys.stdin:
            for c in line.strip():
                commands.put(c)
    if sys.stdin is not None and sys.stdin.isatty():
        threading.Thread(target=run, name="stdin-keys", daemon=True).start()


@dataclass(frozen=True)
class Plan:
    """mra-live's options checked before anything opens: the portraits, the outputs, the frame
    size (``paste_back``: the whole portrait, else the face crop) and the webcam size asked for."""

    sources: "list[Path]"
    outputs: "list[str]"
    out_size: FrameSize
    paste_back: bool
    camera_size: "tuple[int, int] | tuple[None, None]"


def _list_cameras() -> int:
    from .loop.capture import list_cameras

    cams = list_cameras()
    if not cams:
        print("no cameras found (is one plugged in, and not used by another program?)")
    for i, w, h, fps in cams:
        print(f"{i}: {w}x{h} @ {fps:g} fps")
    return 0


def _plan(args) -> Plan:
    """Check the options (one ``error:`` line each) and fill in the defaults."""
    paste_back = args.crop == "auto" and not args.no_paste_back
    if args.output_size is not None:
        out_size = parse_frame_size(args.output_size)
    else:
        out_size = FULL_FRAME if paste_back else FrameSize(CROP_SIDE, CROP_SIDE)
    if not args.source:
        args.source = str(EXAMPLE_PORTRAIT)
        print(f"mra-live: no --source given: animating the bundled example portrait ({EXAMPLE_PORTRAIT.name}); "
              "give yours with --source face.png", file=sys.stderr)
    for name in ("fps", "max_frames", "delay"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.delay is not None and args.delay > MAX_DELAY_MS:
        raise UserError(f"--delay must be at most {MAX_DELAY_MS:g} ms (it matches a delayed microphone; the frames "
                        f"of the delay are held in memory), got {args.delay:g}")
    sources = _sources(args.source)
    if args.stats:  # known now, not after the session
        from nets.media import check_writable
        stats_path = Path(os.path.abspath(args.stats.expanduser()))
        check_writable(stats_path.parent, stats_path)
    camera_size: "tuple[int, int] | tuple[None, None]" = (None, None)
    if args.camera_size:
        try:
            w, h = (int(v) for v in args.camera_size.lower().split("x"))
        except ValueError:
            raise UserError("--camera-size must look like 640x480") from None
        camera_size = (w, h)
    return Plan(sources, args.output or ["virtualcam"], out_size, paste_back, camera_size)


def _portrait_loader(engine, args, plan: Plan, detector) -> "Callable[[Path], AvatarImage]":
    """Each portrait as the model sees it (and prepared for paste-back)."""
    from nets import media
    from .portrait import prepare_portrait

    def load(path: Path) -> AvatarImage:
        rgb = media.read_image(path)
        crop, paste = prepare_portrait(rgb, engine.frame_size, args.crop, detector,
                                       plan.out_size if plan.paste_back else False, name=path.name)
        return AvatarImage(media.to_input(crop[None]), paste)
    return load


def _open_sinks(sinks: list, plan: Plan, fps: float, commands: "queue.Queue[str]") -> None:
    """The outputs, appended to ``sinks`` one by one (so that those already open are closed when one fails)."""
    from .loop.sinks import FileSink, VirtualCamSink, WindowSink

    size = plan.out_size
    for out in plan.outputs:
        if out == "virtualcam":
            sinks.append(VirtualCamSink(size.width, size.height, fps))
        elif out == "window":
            sinks.append(WindowSink(commands))
        else:
            sinks.append(FileSink(out, fps, size.width, size.height))


def _announce(engine, args, capture, plan: Plan, sinks: list) -> None:
    """What runs, and how to drive it (stderr)."""
    from .loop.sinks import FileSink

    evened = [f"{s.path.name} at {s.size[0]}x{s.size[1]}" for s in sinks
              if isinstance(s, FileSink) and s.size != plan.out_size.wh]
    print(f"mra-live: {engine.describe()}; camera {args.camera} ({capture.size[0]}x{capture.size[1]} @ "
          f"{capture.fps:g} fps) -> {', '.join(plan.outputs)} at {plan.out_size}"
          f"{' (portrait pasted back)' if plan.paste_back else ' (face crop)'}"
          f"{'; ' + ', '.join(evened) + ' (H.264 needs even sides)' if evened else ''}", file=sys.stderr)
    if "window" not in plan.outputs:
        print("keys: " + ", ".join(f"{k} {v.split(' (')[0]}" for k, v in COMMANDS.items()) +
              " (type + Enter)", file=sys.stderr)
    from nets.config import OFFICIAL_PRESETS

    if engine.frame_size > 256 or engine.config_name in OFFICIAL_PRESETS:
        if args.device == "cpu" and not args.worker:
            print(f"note: {engine.config_name} is a full-size network; on a CPU it runs at a few frames per "
                  "second at best. Use the default model or --device cuda for real time.", file=sys.stderr)


def _report(stats, pipe: LivePipeline, engine, args, plan: Plan) -> None:
    """--stats and the closing line."""
    if not args.quiet:
        print(file=sys.stderr)
    if args.stats:
        stats.write_json(args.stats, extra={"engine": engine.describe(), "camera": args.camera,
                                            "outputs": plan.outputs, "mode": pipe.mode}, fps_in=pipe.fps_in())
    snap = stats.snapshot(pipe.fps_in())
    print(f"mra-live: {snap.frames_out} frames out at {snap.fps_out:.1f} fps, latency p50 "
          f"{snap.latency_ms_all.p50:.0f} ms p95 {snap.latency_ms_all.p95:.0f} ms, "
          f"{snap.frames_dropped} dropped", file=sys.stderr)


def cli(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_cameras:
        return _list_cameras()
    plan = _plan(args)

    engine = engine_from_args(args)
    import cv2
    cv2.setNumThreads(1)  # the stages already run side by side; OpenCV's own pool would only contend with them
    from nets.media.face import FaceDetector, FaceTracker, TrackerSettings

    from .loop.capture import open_capture

    detector = FaceDetector() if args.crop == "auto" else None
    capture = open_capture(args.camera, loop=args.loop, width=plan.camera_size[0], height=plan.camera_size[1])
    commands: queue.Queue[str] = queue.Queue()
    sinks: list = []
    try:
        _open_sinks(sinks, plan, args.fps or capture.fps, commands)
        cropper = FaceCropper(FaceTracker(detector, settings=TrackerSettings(detect_every=2))) if detector else \
            CenterCropper()
        load = _portrait_loader(engine, args, plan, detector)
        avatars = Avatars(engine, plan.sources, load).check(lambda s: print(f"warning: {s}", file=sys.stderr))
        options = LiveOptions(mode=args.mode, smoothing=not args.no_smoothing,
                              one_euro=OneEuroConfig(min_cutoff=args.min_cutoff, beta=args.beta),
                              output_size=plan.out_size, fps=args.fps, delay_ms=args.delay,
                              max_frames=args.max_frames, overlay=args.overlay, expression=args.expression)
        check_mode(engine, args.mode)
        log = (lambda s: None) if args.quiet else (lambda s: print(f"\r{s}", end="", file=sys.stderr, flush=True))
        _announce(engine, args, capture, plan, sinks)
        _stdin_keys(commands)
        pipe = LivePipeline(engine, capture, cropper, avatars, sinks, options, commands=commands, log=log)
        stats = pipe.run()
        _report(stats, pipe, engine, args, plan)
        closing, sinks = sinks, []
        for s in closing:
            s.close()
        damage = getattr(capture, "error", None)
        if damage is not None:  # the camera file ended early: the recording holds the frames before it
            kept = [str(s.path) for s in closing if getattr(s, "frames", 0)]
            raise UserError(f"{damage}" + (f"; the recording {', '.join(kept)} keeps the frames before the damage"
                                           if kept else ""))
    except BaseException:
        _finish_recordings(sinks)  # what was recorded is kept, finalised
        sinks = []
        raise
    finally:
        for s in sinks:
            s.close()
        if detector is not None:
            detector.close()
    return 0


def _finish_recordings(sinks: list) -> None:
    """After an error: finalise each recording that has frames (what was recorded is the user's), remove
    the others' temporaries, close the cameras and windows. Never raises."""
    for s in sinks:
        try:
            if getattr(s, "frames", 1):
                s.close()
                continue
        except BaseException:  # noqa: BLE001 - the original error is the one to report
            pass
        try:
            getattr(s, "abort", s.close)()
        except BaseException:  # noqa: BLE001
            pass


def main(argv: "Sequence[str] | None" = None) -> int:
    """mra-live entry point."""
    from nets.errors import run_cli

    from .loop.capture import quiet_opencv
    quiet_opencv()
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
