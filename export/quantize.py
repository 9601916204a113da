"""Static int8 quantization (QDQ) of the per-frame graphs, calibrated on real frames.

Only the convolutions of the animation graph are quantized (int8 weights per output channel,
uint8 activations: the u8 x s8 products that AVX512-VNNI and AVX-VNNI run natively); everything
geometric (grids, gaussians, 2x2 algebra, grid sampling, softmax, the flow itself) stays float32.
The source graph runs once per avatar and stays float32. The region graph stays float32 too:
quantized, its heatmaps (softmax at temperature 0.1) move region shifts by up to 0.008 (about a
pixel at 256), which moves image content (measured on a held-out clip with vox256: max 58/255,
mean 1.1/255 against max 2.6/255, mean 0.10/255 with float32 regions) to save about 10 ms.

Calibration: frames from ``--calibration`` (a video, an image folder, or a folder of videos),
centre-cropped to a square and resized. The animation graph is calibrated on what it really
sees: each clip's first frame is the source, and the region parameters of the following frames
are transferred in relative mode. A held-out clip (the last video, or the last quarter of a
single clip) measures the quality cost (pixel differences against fp32 over the per-frame path)
and the speed-up; both go into the manifest.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nets.checkpoint import sha256_file
from nets import media
from nets.errors import UserError

from .manifest import Variant
from .runtime import OrtEngine
from .verify import max_pixel_diffs

QUANTIZED_GRAPHS = ("animate",)  # see the module doc for why not "regions"


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------

def to_frame(rgb: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(3, size, size)`` float32 in [0, 1] (centre square crop, then bicubic resize)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = Image.fromarray(rgb[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
    return media.to_input(np.asarray(image))


def read_video(path: Path, size: int, max_frames: int, stride: int = 1) -> np.ndarray:
    """Up to ``max_frames`` frames (every ``stride``-th) of a video -> ``(N, 3, size, size)``."""
    reader = media.VideoReader(path, what="calibration video")
    frames = []
    try:
        for f in reader.frames():
            if f.index % stride == 0:
                frames.append(to_frame(f.rgb, size))
                if len(frames) >= max_frames:
                    break
    finally:
        reader.close()
    if not frames:
        raise UserError(f"{path} has no video frames")
    return np.stack(frames)


def read_images(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([to_frame(media.read_image(p, what="calibration image"), size) for p in paths])


def read_clips(path: "str | os.PathLike", size: int, max_frames: int = 64, stride: int = 3,
               max_videos: int = 8) -> list[np.ndarray]:
    """Clips of frames ``(N, 3, size, size)`` from a video, an image, or a folder of either.

    A folder of videos gives one clip per video (the first ``max_videos`` by name, about
    ``max_frames`` frames in all, every ``stride``-th frame); a folder of images gives one clip
    (sorted by name).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"calibration path not found: {path}")
    if path.is_file():
        if path.suffix.lower() in media.VIDEO_EXTS:
            return [read_video(path, size, max_frames, stride)]
        if path.suffix.lower() in media.IMAGE_EXTS:
            return [read_images([path], size)]
        raise UserError(f"{path}: not a video ({', '.join(sorted(media.VIDEO_EXTS))}) or image file")
    files = sorted(p for p in path.iterdir() if p.is_file())
    videos = [p for p in files if p.suffix.lower() in media.VIDEO_EXTS][:max_videos]
    images = [p for p in files if p.suffix.lower() in media.IMAGE_EXTS]
    if videos:
        per_video = max(8, -(-max_frames // len(videos)))
        return [read_video(v, size, per_video, stride) for v in videos]
    if images:
        return [read_images(images[:max_frames], size)]
    raise UserError(f"{path} holds no videos or images to calibrate with")


@dataclass
class CalibrationSet:
    """Calibration clips and a held-out clip (each ``(N, 3, S, S)``; first frame = source)."""

    clips: list[np.ndarray]
    held_out: np.ndarray
    origin: str

    @property
    def num_frames(self) -> int:
        return sum(len(c) for c in self.clips)

    @classmethod
    def from_path(cls, path: "str | os.PathLike", size: int, max_frames: int = 64) -> "CalibrationSet":
        """Calibrate on about ``max_frames`` frames of ``path``; hold out its last video (a folder of
        videos) or the last quarter of its frames."""
        clips = read_clips(path, size, max_frames + max_frames // 3)
        return cls.from_clips(clips, str(path))

    @classmethod
    def from_clips(cls, clips: list[np.ndarray], origin: str = "arrays") -> "CalibrationSet":
        if len(clips) >= 2:
            return cls(clips[:-1], clips[-1], origin)
        clip = clips[0]
        if len(clip) < 8:
            raise UserError(f"{origin}: {len(clip)} frame(s) are too few to calibrate int8 (and hold some out); "
                            "give at least 8 frames or a folder of videos")
        cut = len(clip) - max(4, len(clip) // 4)
        return cls([clip[:cut]], clip[cut:], origin)


# ---------------------------------------------------------------------------------------------
# Calibration feeds
# ---------------------------------------------------------------------------------------------

class _Feeds:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it: Iterator = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by the calibrators we run
        raise NotImplementedError


def calibration_feeds(engine, calibration: CalibrationSet, batch: int = 4) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of the regions and animate graphs for every calibration frame (fp32 ``engine``)."""
    regions, animate = [], []
    for clip in calibration.clips:
        for i in range(0, len(clip), batch):
            regions.append({"frames": np.ascontiguousarray(clip[i:i + batch])})
        avatar = engine.prepare_source(clip[:1])
        initial = engine.regions(clip[:1])
        for i in range(1, len(clip), batch):
            frames = clip[i:i + batch]
            new = engine.transfer(avatar, engine.regions(frames), initial, mode="relative")
            feeds = dict(avatar.cache.batch(len(frames)))
            feeds.update({f: getattr(new, f) for f in engine.fields})
            feeds["bg"] = np.ascontiguousarray(np.broadcast_to(np.eye(3, dtype=np.float32), (len(frames), 3, 3)))
            animate.append({n: np.ascontiguousarray(feeds[n]) for n in engine.graphs["animate"].inputs})
    return {"regions": regions, "animate": animate}


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], exclude: "list[str] | None" = None,
                   calibrate_method: str = "minmax") -> None:
    """Static QDQ int8 quantization of the Conv nodes of ``src`` calibrated on ``feeds``."""
    import onnxruntime.quantization as q

    method = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
              "entropy": q.CalibrationMethod.Entropy}[calibrate_method]
    tmp = dst.with_suffix(".pre.onnx")
    try:
        try:
            q.quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
            model_in = tmp
        except Exception:  # the optimisation step is a nicety; quantize the plain graph instead
            model_in = src
        q.quantize_static(
            str(model_in), str(dst), _Feeds(feeds), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["Conv"], calibrate_method=method, nodes_to_exclude=exclude or [])
        # (no CalibMaxIntermediateOutputs: MinMax keeps only per-tensor minima and maxima anyway, and in
        # onnxruntime 1.32 that option drops the collected chunks instead of merging their ranges)
    finally:
        tmp.unlink(missing_ok=True)
        for leftover in dst.parent.glob("augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Quality and speed against fp32
# ---------------------------------------------------------------------------------------------

def per_frame_outputs(engine, clip: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The per-frame path (relative mode, first frame = source and initial) over ``clip``:
    predictions ``(N-1, 3, S, S)`` and the seconds each frame took (regions + transfer + animate)."""
    avatar = engine.prepare_source(clip[:1])
    initial = engine.regions(clip[:1])
    out, seconds = [], []
    for i in range(1, len(clip)):
        t = time.perf_counter()
        new = engine.transfer(avatar, engine.regions(clip[i:i + 1]), initial, mode="relative")
        out.append(engine.animate(avatar, new))
        seconds.append(time.perf_counter() - t)
    return np.concatenate(out), seconds


def compare_int8(export_dir: Path, held_out: np.ndarray, threads: "int | None", repeats: int = 2) -> dict[str, Any]:
    """Quality (pixel differences of int8 vs fp32 on ``held_out``) and speed (median ms per frame)."""
    engines = {p: OrtEngine(export_dir, device="cpu", precision=p, threads=threads) for p in ("fp32", "int8")}
    outputs, times = {}, {"fp32": [], "int8": []}
    for _ in range(repeats):  # alternate so both see the same machine load
        for p, e in engines.items():
            outputs[p], sec = per_frame_outputs(e, held_out)
            times[p] += sec[1:]  # the first frame warms up
    ms = {p: statistics.median(t) * 1e3 for p, t in times.items()}
    diffs = max_pixel_diffs(outputs["int8"], outputs["fp32"])
    return {"held_out_frames": int(len(held_out) - 1), "ms_per_frame_fp32": round(ms["fp32"], 1),
            "ms_per_frame_int8": round(ms["int8"], 1), "speedup": round(ms["fp32"] / ms["int8"], 2),
            "threads": threads, "cpu": cpu_name(), **{k: round(v, 5) for k, v in diffs.items()}}


def cpu_name() -> str:
    """The CPU's model name (with its int8 dot-product extension when it has one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                vnni = " (avx512_vnni)" if "avx512_vnni" in flags else " (avx_vnni)" if "avx_vnni" in flags else ""
                return line.split(":", 1)[1].strip() + vnni
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def quantize_export(export_dir: "str | os.PathLike", manifest, calibration: CalibrationSet,
                    threads: "int | None" = None, progress: "Callable[[str], None] | None" = None):
    """Add the int8 variant (``animate.int8.onnx``) to an export directory
    whose fp32 graphs are written; returns the :class:`~export.manifest.Variant` (with ``quality``)."""
    say = progress or (lambda msg: None)
    export_dir = Path(export_dir)
    engine = OrtEngine(export_dir, device="cpu", precision="fp32", threads=threads)
    say(f"int8: running the fp32 graphs on {calibration.num_frames} calibration frames")
    feeds = calibration_feeds(engine, calibration)
    del engine
    files = {}
    for name in QUANTIZED_GRAPHS:
        say(f"int8: calibrating and quantizing the {name} graph")
        src = export_dir / manifest.variants["fp32"].files[name]
        files[name] = src.name.replace(".onnx", ".int8.onnx")
        quantize_graph(src, export_dir / files[name], feeds[name])
    variant = Variant("int8", files, {g: sha256_file(export_dir / f) for g, f in files.items()})
    manifest.variants["int8"] = variant
    manifest.write(export_dir)
    say(f"int8: measuring quality and speed against fp32 on {len(calibration.held_out)} held-out frames")
    variant.quality = {"calibration": calibration.origin, "calibration_frames": calibration.num_frames,
                       "quantized": "Conv nodes of " + ", ".join(QUANTIZED_GRAPHS) + " (QDQ, u8 activations, "
                                    "s8 per-channel weights, MinMax calibration)",
                       **compare_int8(export_dir, calibration.held_out, threads)}
    return variant
