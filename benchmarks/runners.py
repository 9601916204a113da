"""The per-frame live path of each backend, split into stages that fps.py times.

A live frame goes through: ``pre`` (uint8 HWC crop on the host -> float ``(1, 3, S, S)`` at the
model's size on the device), ``region`` (driving frame -> region parameters), ``transfer``
(relative motion transfer onto the avatar), ``animate`` (cached source + new parameters -> the
frame ``(1, 3, S, S)``), ``post`` (-> uint8 ``(S, S, 3)`` on the host). ``source`` is the once-per-avatar
work (not part of a frame). A runner's :meth:`Runner.build` returns :class:`Stages`: zero-argument
callables on prepared inputs, plus ``run(frame)`` for one full frame (used to check its output).

Backends:

* ``naive``: what the official demo does per frame (PyTorch eager fp32, SVD PCA on the CPU):
  driving regions, transfer, then the whole generator from the source image (encoder, source
  heatmaps, flow, decoder, the deformed source). Source regions are computed once, as the demo does.
* ``torch-eager`` / ``torch-compile``: the cached path (``prepare_source`` once, ``animate_cached``
  per frame), eager or with ``torch.compile`` on the region, transfer and animation parts.
* ``torch-cuda-fp32`` / ``-fp16`` / ``-bf16``: the cached path in that dtype, each stage and the
  whole frame captured as CUDA graphs (closed-form PCA: no host sync inside).
* ``ort-*``: the ONNX Runtime engine of ``export.runtime`` through the Engine API (numpy I/O).
"""
from __future__ import annotations

import copy
import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

import nets
from export.cudagraph import capture as cuda_capture
from export.runtime import SHORT
from live.engines import EngineSpec, build_engine
from nets.regions import Regions


class Unavailable(Exception):
    """This backend cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def synthetic_frames(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 ``(size, size, 3)`` frames: a smooth random image drifting a few pixels per frame."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 12, 12, generator=g)
    big = F.interpolate(base, size=(2 * size, 2 * size), mode="bicubic", align_corners=False).clamp(0, 1)
    frames = []
    for i in range(count):
        dx, dy = int(round(6 * np.sin(i / 3))), int(round(4 * np.cos(i / 4)))
        crop = big[0, :, size // 2 + dy: size // 2 + dy + size, size // 2 + dx: size // 2 + dx + size]
        frames.append((crop.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy().copy())
    return frames


@dataclass
class Setup:
    """What every runner starts from.

    model: fp32, CPU, eval (never modified: runners copy it); checkpoint: a file of it for the
    backends that load files (own format unless ``config_arg`` is needed); source / frames: uint8
    HWC host arrays (``frames[0]`` is the initial driving frame of relative transfer).
    """

    model: nets.MRAA
    checkpoint: "Path | None"
    config_arg: "str | None"
    source: np.ndarray
    frames: list[np.ndarray]
    threads: int
    scratch: "Path | None" = None  # where a random-weight model is saved when a backend needs a file

    @property
    def size(self) -> int:
        return self.model.frame_size

    def checkpoint_file(self) -> Path:
        """The model as a file (saved once, in own format, for random-weight models)."""
        if self.checkpoint is None:
            if self.scratch is None:
                raise Unavailable("no checkpoint file and no scratch directory to save the model in")
            path = Path(self.scratch) / f"{self.model.config.name}-random.pt"
            if not path.exists():
                nets.save_model(self.model, path)
            self.checkpoint = path
        return self.checkpoint


@dataclass
class Stages:
    """Zero-argument callables timing one stage each on prepared inputs; ``run(frame)`` does a whole frame."""

    source: Callable[[], Any]
    pre: Callable[[], Any]
    region: Callable[[], Any]
    transfer: Callable[[], Any]
    animate: Callable[[], Any]
    post: Callable[[], Any]
    per_frame: Callable[[], Any]
    run: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def items(self) -> list[tuple[str, Callable[[], Any]]]:
        return [(n, getattr(self, n)) for n in STAGES]


STAGES = ("source", "pre", "region", "transfer", "animate", "post", "per_frame")


# ---------------------------------------------------------------------------------------------
# Pre- and post-processing (torch, any device)
# ---------------------------------------------------------------------------------------------

def to_input(frame: torch.Tensor, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(1, 3, size, size)`` in [0, 1] (antialiased bilinear resize if needed)."""
    x = frame.permute(2, 0, 1).unsqueeze(0).to(dtype) * (1.0 / 255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def to_frame(prediction: torch.Tensor) -> torch.Tensor:
    """float ``(1, 3, S, S)`` in [0, 1] -> uint8 ``(S, S, 3)`` (rounded), on the same device."""
    return (prediction[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous()


def reference_output(setup: Setup, frame: np.ndarray) -> np.ndarray:
    """The cached path in PyTorch eager fp32 on the CPU: the reference every backend is checked against."""
    model = setup.model
    with torch.inference_mode():
        src = to_input(torch.from_numpy(setup.source), setup.size)
        src_r = model.regions(src)
        cache = model.prepare_source(src, src_r)
        init = model.regions(to_input(torch.from_numpy(setup.frames[0]), setup.size))
        drv = model.regions(to_input(torch.from_numpy(frame), setup.size))
        new = model.transfer(src_r, drv, init, "relative")
        return to_frame(model.animate_cached(cache, new, with_deformed=False).prediction).numpy()


def _cycle(frames: list[np.ndarray]):
    it = itertools.cycle(frames[1:] if len(frames) > 1 else frames)
    return lambda: next(it)


def _check_cuda(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Unavailable("PyTorch sees no CUDA GPU on this machine")


# ---------------------------------------------------------------------------------------------
# PyTorch: naive, eager, compile
# ---------------------------------------------------------------------------------------------

class Runner:
    backend = "?"
    dtype = torch.float32

    def __init__(self, setup: Setup, device: str):
        self.setup = setup
        self.device = device

    def build(self) -> Stages:  # pragma: no cover - abstract
        raise NotImplementedError


class NaiveRunner(Runner):
    """The official demo's per-frame work: everything from the source image, every frame."""

    backend = "naive"

    def build(self) -> Stages:
        _check_cuda(self.device)
        s, dev = self.setup, self.device
        model = copy.deepcopy(s.model).to(dev).eval()
        model.pca = "svd"  # the official code's PCA (torch SVD on the CPU)
        size = model.frame_size
        nxt = _cycle(s.frames)

        def pre(frame: np.ndarray) -> torch.Tensor:
            return to_input(torch.from_numpy(frame).to(dev), size)

        src = pre(s.source)
        src_r = model.regions(src)
        init = model.regions(pre(s.frames[0]))
        x = pre(s.frames[1 % len(s.frames)])
        drv = model.regions(x)
        new = model.transfer(src_r, drv, init, "relative")
        y = model.animate(src, src_r, new).prediction

        def run(frame: np.ndarray) -> np.ndarray:
            d = model.regions(pre(frame))
            out = model.animate(src, src_r, model.transfer(src_r, d, init, "relative")).prediction
            return to_frame(out).cpu().numpy()

        return Stages(source=lambda: model.regions(src), pre=lambda: pre(nxt()), region=lambda: model.regions(x),
                      transfer=lambda: model.transfer(src_r, drv, init, "relative"),
                      animate=lambda: model.animate(src, src_r, new).prediction,
                      post=lambda: to_frame(y).cpu().numpy(), per_frame=lambda: run(nxt()), run=run,
                      info={"pca": "svd"})


class TorchRunner(Runner):
    """The cached per-frame path in PyTorch, eager or under ``torch.compile`` (``compile_mode``)."""

    def __init__(self, setup: Setup, device: str, compile_mode: "str | None" = None):
        super().__init__(setup, device)
        self.compile_mode = compile_mode
        self.backend = "torch-compile" if compile_mode else "torch-eager"

    def _compile(self, fn: Callable) -> Callable:
        if self.device == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            raise Unavailable("torch.compile on the CPU needs a C++ compiler (g++), none found")
        return torch.compile(fn, mode=None if self.compile_mode == "default" else self.compile_mode, dynamic=False)

    def build(self) -> Stages:
        _check_cuda(self.device)
        s, dev = self.setup, self.device
        model = copy.deepcopy(s.model).to(dev).eval()
        size = model.frame_size
        nxt = _cycle(s.frames)

        def pre(frame: np.ndarray) -> torch.Tensor:
            return to_input(torch.from_numpy(frame).to(dev), size)

        def post(y: torch.Tensor) -> np.ndarray:
            return to_frame(y).cpu().numpy()

        src = pre(s.source)
        src_r = model.regions(src)
        cache = model.prepare_source(src, src_r)
        init = model.regions(pre(s.frames[0]))

        region = model.regions

        def transfer(d: Regions) -> Regions:
            return model.transfer(src_r, d, init, "relative")

        def animate(new: Regions) -> torch.Tensor:
            return model.animate_cached(cache, new, with_deformed=False).prediction

        info: dict[str, Any] = {}
        x = pre(s.frames[1 % len(s.frames)])
        if self.compile_mode:
            region, transfer, animate = (self._compile(f) for f in (region, transfer, animate))
            compile_s = 0.0
            try:
                for fn_name in ("region", "transfer", "animate"):
                    t0 = time.perf_counter()
                    if fn_name == "region":
                        drv = region(x)
                    elif fn_name == "transfer":
                        new = transfer(drv)
                    else:
                        y = animate(new)
                    if dev.startswith("cuda"):
                        torch.cuda.synchronize()
                    compile_s += time.perf_counter() - t0
            except Unavailable:
                raise
            except Exception as e:  # noqa: BLE001 - any compiler failure makes the row unavailable, with its reason
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise Unavailable(f"torch.compile failed: {type(e).__name__}: {msg}") from None
            info["compile_s"] = round(compile_s, 2)
            info["compile_mode"] = self.compile_mode
        drv = region(x)
        new = transfer(drv)
        y = animate(new)

        def run(frame: np.ndarray) -> np.ndarray:
            return post(animate(transfer(region(pre(frame)))))

        return Stages(source=lambda: model.prepare_source(src), pre=lambda: pre(nxt()), region=lambda: region(x),
                      transfer=lambda: transfer(drv), animate=lambda: animate(new), post=lambda: post(y),
                      per_frame=lambda: run(nxt()), run=run, info=info)


# ---------------------------------------------------------------------------------------------
# PyTorch CUDA graphs (fp32 / fp16 / bf16)
# ---------------------------------------------------------------------------------------------

def _tensor_leaves(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Regions):
        return [t for t in (x.shift, x.covar, x.affine, x.heatmap) if t is not None]
    raise TypeError(f"unexpected graph output {type(x).__name__}")


class EagerReplay:
    """Stand-in for a captured CUDA graph where there is none (CPU tests of the same dataflow).

    Like a graph, its outputs are fixed tensors that every :meth:`replay` overwrites in place, and
    it reads whatever its static inputs hold at replay time.
    """

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.out = fn()

    def replay(self) -> None:
        for dst, src in zip(_tensor_leaves(self.out), _tensor_leaves(self.fn())):
            dst.copy_(src)


def capture(fn: Callable[[], Any], warmup: int = 2, graphs: bool = True) -> tuple[Any, Any]:
    """Capture ``fn`` (reading static tensors only) as a CUDA graph; returns (graph, its static outputs).

    ``graphs=False`` returns an :class:`EagerReplay` instead (same interface, any device).
    """
    if not graphs:
        g = EagerReplay(fn)
        return g, g.out
    return cuda_capture(fn, warmup=warmup)


class CudaGraphRunner(Runner):
    """The cached path in ``dtype`` on CUDA, each stage and the whole frame replayed as CUDA graphs.

    Host copies (pinned buffers) are outside the graphs and inside the timed ``pre`` / ``post`` /
    ``per_frame`` stages. ``graphs=False`` (tests, any device) replays eagerly with the same
    static-buffer dataflow.
    """

    def __init__(self, setup: Setup, device: str, dtype: torch.dtype, graphs: bool = True):
        super().__init__(setup, device)
        self.dtype = dtype
        self.graphs = graphs
        self.backend = "torch-cuda-" + {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]

    def build(self) -> Stages:
        _check_cuda(self.device)
        cuda = self.device.startswith("cuda")
        if self.graphs and not cuda:
            raise Unavailable("CUDA graphs need --device cuda")
        s, dev, dt, graphs = self.setup, self.device, self.dtype, self.graphs
        model = copy.deepcopy(s.model).to(device=dev, dtype=dt).eval()
        if model.pca != "closed_form":
            raise Unavailable("CUDA graphs need the closed-form PCA (SVD syncs with the host)")
        size = model.frame_size
        nxt = _cycle(s.frames)
        h, w, _ = s.frames[0].shape
        host_in = torch.empty((h, w, 3), dtype=torch.uint8)
        host_out = torch.empty((size, size, 3), dtype=torch.uint8)
        if cuda:
            host_in, host_out = host_in.pin_memory(), host_out.pin_memory()
        dev_in = torch.empty((h, w, 3), dtype=torch.uint8, device=dev)

        def upload(frame: np.ndarray) -> None:
            host_in.numpy()[...] = frame
            dev_in.copy_(host_in, non_blocking=True)

        def download(frame: torch.Tensor) -> np.ndarray:
            host_out.copy_(frame, non_blocking=True)
            if cuda:
                torch.cuda.current_stream().synchronize()
            return host_out.numpy()

        src = to_input(torch.from_numpy(s.source).to(dev), size, dt)
        src_r = model.regions(src)
        cache = model.prepare_source(src, src_r)
        init = model.regions(to_input(torch.from_numpy(s.frames[0]).to(dev), size, dt))

        def region(x: torch.Tensor) -> Regions:
            return model.regions(x).without_heatmap()

        def transfer(d: Regions) -> Regions:
            return model.transfer(src_r, d, init, "relative")

        def animate(new: Regions) -> torch.Tensor:
            return model.animate_cached(cache, new, with_deformed=False).prediction

        upload(s.frames[1 % len(s.frames)])
        g_frame, out_frame = capture(lambda: to_frame(animate(transfer(region(to_input(dev_in, size, dt))))),
                                     graphs=graphs)
        g_pre, x = capture(lambda: to_input(dev_in, size, dt), graphs=graphs)
        g_region, drv = capture(lambda: region(x), graphs=graphs)
        g_transfer, new = capture(lambda: transfer(drv), graphs=graphs)
        g_animate, y = capture(lambda: animate(new), graphs=graphs)
        g_post, out_post = capture(lambda: to_frame(y), graphs=graphs)

        def run(frame: np.ndarray) -> np.ndarray:
            upload(frame)
            g_frame.replay()
            return download(out_frame).copy()

        def pre() -> None:
            upload(nxt())
            g_pre.replay()

        def post() -> np.ndarray:
            g_post.replay()
            return download(out_post)

        def per_frame() -> np.ndarray:
            upload(nxt())
            g_frame.replay()
            return download(out_frame)

        def staged(frame: np.ndarray) -> np.ndarray:
            """One frame through the stage graphs in turn (checks their dataflow)."""
            upload(frame)
            for g in (g_pre, g_region, g_transfer, g_animate, g_post):
                g.replay()
            return download(out_post).copy()

        stages = Stages(source=lambda: model.prepare_source(src), pre=pre, region=g_region.replay,
                        transfer=g_transfer.replay, animate=g_animate.replay, post=post, per_frame=per_frame,
                        run=run, info={"cuda_graphs": graphs})
        stages.staged = staged  # type: ignore[attr-defined]
        return stages


# ---------------------------------------------------------------------------------------------
# ONNX Runtime through the Engine API
# ---------------------------------------------------------------------------------------------

ORT_PROVIDERS = {short: provider for provider, short in SHORT.items()}


class OrtRunner(Runner):
    """An ``export.runtime.OrtEngine`` on one execution provider, through the Engine API.

    ``onnx_dir``: an export directory (``mra-export --out``) to open instead of exporting the
    checkpoint (int8 graphs need one: they are calibrated on real frames at export time).
    """

    def __init__(self, setup: Setup, provider: str, backend: str, precision: str = "fp32",
                 onnx_dir: "str | None" = None):
        super().__init__(setup, "cpu" if provider == "cpu" else "cuda")
        self.provider, self.backend, self.precision, self.onnx_dir = provider, backend, precision, onnx_dir

    def build(self) -> Stages:
        s = self.setup
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise Unavailable(f"onnxruntime is not installed ({e})") from None
        wanted = ORT_PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise Unavailable(f"this onnxruntime ({ort.__version__}) has no {wanted} "
                              f"(available: {', '.join(ort.get_available_providers())})")
        if self.provider != "cpu" and not torch.cuda.is_available():
            raise Unavailable("no CUDA GPU on this machine")
        target = self.onnx_dir or s.checkpoint_file()
        spec = EngineSpec(str(target), s.config_arg, backend="onnx", device=self.provider, precision=self.precision,
                          threads=s.threads, fallback="error")
        notes: list[str] = []
        t0 = time.perf_counter()
        try:
            engine = build_engine(spec)
        except Exception as e:  # noqa: BLE001 - report why, as an unavailable row
            msg = " ".join(str(e).split())[:240] or type(e).__name__
            raise Unavailable(f"OrtEngine: {msg}") from None
        setup_s = time.perf_counter() - t0
        providers = engine.providers()
        gpu_words = ("cuda", "tensorrt")
        if self.provider == "cpu":
            off = {k: v for k, v in providers.items() if any(w in str(v).lower() for w in gpu_words)}
        else:
            off = {k: v for k, v in providers.items() if self.provider not in str(v).lower()}
        if not providers or off:
            raise Unavailable(f"ONNX Runtime does not run every graph on {wanted}: {providers or 'unknown'}")
        if engine.frame_size != s.size:
            raise Unavailable(f"the ONNX graphs are {engine.frame_size} px, the model {s.size} px")
        size = engine.frame_size

        def pre(frame: np.ndarray) -> np.ndarray:
            return to_input(torch.from_numpy(frame), size).numpy()

        def post(y: np.ndarray) -> np.ndarray:
            return to_frame(torch.from_numpy(y)).numpy()

        nxt = _cycle(s.frames)
        avatar = engine.prepare_source(pre(s.source))
        init = engine.regions(pre(s.frames[0]))
        x = pre(s.frames[1 % len(s.frames)])
        drv = engine.regions(x)
        new = engine.transfer(avatar, drv, init, "relative")
        y = engine.animate(avatar, new)

        def run(frame: np.ndarray) -> np.ndarray:
            return post(engine.animate(avatar, engine.transfer(avatar, engine.regions(pre(frame)), init, "relative")))

        info = {"providers": providers, "setup_s": round(setup_s, 2),
                "ort_options": {"device": spec.device, "threads": spec.threads,
                                **({"precision": spec.precision} if spec.precision != "fp32" else {}),
                                "fallback": spec.fallback}}
        if self.provider == "tensorrt":
            notes.append("TensorRT builds fp16 engines (engine cache in the user cache dir; first build in setup_s)")
        if notes:
            info["notes"] = notes
        return Stages(source=lambda: engine.prepare_source(pre(s.source)), pre=lambda: pre(nxt()),
                      region=lambda: engine.regions(x), transfer=lambda: engine.transfer(avatar, drv, init, "relative"),
                      animate=lambda: engine.animate(avatar, new), post=lambda: post(y), per_frame=lambda: run(nxt()),
                      run=run, info=info)
