"""The ONNX Runtime engine: the graphs of an export directory behind the :class:`~export.engine.Engine` API.

Providers (``device``):

* ``auto``: TensorRT (fp16, engine cache) if the installed onnxruntime offers it, else CUDA, else
  the CPU; a provider that is offered but does not start (no GPU, missing CUDA libraries) is
  reported with a warning and the next one runs;
* ``tensorrt`` / ``cuda`` / ``cpu``: exactly that (TensorRT and CUDA keep the CPU for the few
  nodes they do not take). If it does not start, :class:`~export.engine.EngineError` is raised
  (``fallback="warn"`` turns this into a warning).

ONNX Runtime itself falls back to the CPU without a word (``onnxruntime-gpu`` on a machine
without CUDA lists TensorRT and CUDA as available, logs an error and runs on the CPU), so after
creating each session the engine reads which providers the session really has
(``session.get_providers()``) and, where the installed version can tell, how many nodes each one
got; :meth:`OrtEngine.providers` reports it per graph.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import transfer as tr
from .cache import user_cache_dir
from .engine import Avatar, Engine, EngineError, RegionParams
from .manifest import Manifest, ManifestError, read_manifest

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
FALLBACKS = ("error", "warn")
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SHORT = {TENSORRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}
RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"


# ---------------------------------------------------------------------------------------------
# Provider selection (pure, tested with fakes)
# ---------------------------------------------------------------------------------------------

def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


@dataclass
class ProviderPlan:
    """What to ask ONNX Runtime for: ``providers`` in priority order with their options, the one
    that must run (``wanted``; None for ``auto``) and what to do when it does not (``fallback``)."""

    device: str
    providers: list[tuple[str, dict[str, Any]]]
    wanted: "str | None"
    fallback: str
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p for p, _ in self.providers]

    @property
    def uses_gpu(self) -> bool:
        return any(p in (TENSORRT, CUDA) for p in self.names)


def _trt_options(cache_dir: Path, device_id: int, fp16: bool) -> dict[str, Any]:
    return {"device_id": device_id, "trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir)}


def plan_providers(device: str, available: list[str], trt_cache_dir: "Path | str", device_id: int = 0,
                   fallback: "str | None" = None, trt_fp16: bool = True) -> ProviderPlan:
    """Choose the providers for ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``tensorrt``).

    ``fallback``: ``error`` (default for an explicit device) or ``warn`` (default for ``auto``).
    Raises :class:`EngineError` when an explicit device's provider is not even in ``available``.
    """
    if device not in DEVICES:
        raise EngineError(f"device must be one of {', '.join(DEVICES)} for the onnx backend, got {device!r}")
    if fallback is None:
        fallback = "warn" if device == "auto" else "error"
    if fallback not in FALLBACKS:
        raise EngineError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    trt = (TENSORRT, _trt_options(Path(trt_cache_dir), device_id, trt_fp16))
    cuda = (CUDA, {"device_id": device_id})
    cpu = (CPU, {})
    if device == "auto":
        chain = [p for p in (trt, cuda) if p[0] in available] + [cpu]
        return ProviderPlan(device, chain, None, fallback)
    wanted = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}[device]
    if wanted not in available:
        gpu_build = "pip uninstall onnxruntime && pip install onnxruntime-gpu (Linux x86-64)"
        hint = (gpu_build if wanted == CUDA else
                f"{gpu_build if CUDA not in available else 'onnxruntime-gpu is there'}; pip install 'tensorrt-cu13<11'")
        raise EngineError(f"--device {device} asked for, but this onnxruntime has no {wanted} (it offers "
                          f"{', '.join(available) or 'nothing'}); {hint}, or use --device cpu")
    chain = {"cpu": [cpu], "cuda": [cuda, cpu], "tensorrt": [trt, cuda, cpu] if CUDA in available else [trt, cpu]}
    return ProviderPlan(device, chain[device], wanted, fallback)


@dataclass
class ActiveProviders:
    """What a session really runs on: its providers (``session.get_providers()``) and, when the
    installed onnxruntime records it, the number of nodes each one was given."""

    providers: list[str]
    nodes: "dict[str, int] | None" = None

    @property
    def primary(self) -> str:
        """The provider that does the work: the first asked-for one that holds nodes."""
        if self.nodes:
            for p in self.providers:
                if self.nodes.get(p, 0) > 0:
                    return p
        return self.providers[0] if self.providers else "none"

    def runs(self, provider: str) -> bool:
        if provider not in self.providers:
            return False
        return self.nodes is None or self.nodes.get(provider, 0) > 0

    def describe(self) -> str:
        if self.nodes:
            parts = [f"{SHORT.get(p, p)} {n} nodes" for p, n in self.nodes.items() if n]
            return ", ".join(parts)
        return "+".join(SHORT.get(p, p) for p in self.providers)


def active_providers(session) -> ActiveProviders:
    providers = list(session.get_providers())
    nodes = None
    getter = getattr(session, "get_provider_graph_assignment_info", None)
    if getter is not None:
        try:
            nodes = {}
            for sub in getter():
                nodes[sub.ep_name] = nodes.get(sub.ep_name, 0) + len(sub.get_nodes())
        except Exception:  # recording not enabled or not supported by this build
            nodes = None
    return ActiveProviders(providers, nodes)


def check_active(plan: ProviderPlan, active: ActiveProviders, graph: str) -> "str | None":
    """None when the plan is honoured; else a message (raised or warned by the caller per ``plan.fallback``).

    ``auto``: the first provider asked for must run; explicit devices: the wanted one must run.
    """
    want = plan.wanted or plan.names[0]
    if active.runs(want):
        return None
    name = SHORT.get(want, want)
    what = f"--device {plan.device} asked for" if plan.wanted else f"device {plan.device}: {name} is offered"
    hint = ("check that the TensorRT libraries load (pip install 'tensorrt-cu13<11') and that a GPU is visible"
            if want == TENSORRT else "check that a GPU is visible (nvidia-smi) and that the CUDA 13 and cuDNN 9 "
            "libraries load: torch's cu130 wheels bring them")
    return (f"{what}, but {name} did not start and ONNX Runtime runs the {graph} graph on "
            f"{active.describe() or 'nothing'} (see onnxruntime's log above; {hint})")


def create_session(path: Path, plan: ProviderPlan, threads: "int | None"):
    """An ``onnxruntime.InferenceSession`` for ``path`` (separate function so tests can replace it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if os.environ.get("MRA_ORT_SPIN", "0") != "1":
        # ONNX Runtime's pool threads spin after each run by default: on a small CPU they then take
        # the cores from the next stage (PyTorch pre/post, the other graph's session, the face
        # tracker). Measured with benchmarks/fps.py (lite256, 2 threads, 2 cores): see README.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry(RECORD_ASSIGNMENT, "1")
    so.log_severity_level = 3  # errors only; fallbacks are detected and reported by the engine
    return ort.InferenceSession(str(path), so, providers=plan.providers)


def _preload_gpu_libraries() -> None:
    """Let onnxruntime-gpu find the CUDA / cuDNN pip packages (installed with torch's cu130 wheels)."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload(cuda=True, cudnn=True, msvc=False)
    except Exception as e:  # the check after session creation reports what this means
        warnings.warn(f"onnxruntime.preload_dlls() failed: {e}")


# ---------------------------------------------------------------------------------------------
# One graph
# ---------------------------------------------------------------------------------------------

class Graph:
    """A session with named inputs/outputs; inputs may be numpy arrays or OrtValues already on the device."""

    def __init__(self, name: str, session, active: ActiveProviders):
        self.name = name
        self.session = session
        self.active = active
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        primary = active.primary
        self.device_type = "cuda" if primary in (TENSORRT, CUDA) else "cpu"

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run with ``feeds`` (extra keys ignored) -> numpy outputs by name. OrtValues (e.g. an
        avatar's cache already on the GPU) are bound without a copy."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise EngineError(f"{self.name} graph: missing input(s) {', '.join(missing)}")
        if not any(_is_ortvalue(feeds[n]) for n in self.inputs):
            values = self.session.run(self.outputs, {n: feeds[n] for n in self.inputs})
            return dict(zip(self.outputs, values))
        binding = self.session.io_binding()
        for n in self.inputs:
            v = feeds[n]
            if _is_ortvalue(v):
                binding.bind_ortvalue_input(n, v)
            else:
                binding.bind_cpu_input(n, np.ascontiguousarray(v))
        for n in self.outputs:
            binding.bind_output(n, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu()))


def _is_ortvalue(v: Any) -> bool:
    return type(v).__name__ == "OrtValue"


def _numpy(v: Any) -> np.ndarray:
    return v.numpy() if _is_ortvalue(v) else np.asarray(v)


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

class OrtEngine(Engine):
    """ONNX Runtime backend over an export directory (see :mod:`export.onnx` for the graphs).

    ``precision``: ``fp32`` | ``fp16`` | ``int8`` (a variant the directory holds); ``threads``:
    intra-op threads on the CPU (default: onnxruntime's, one per physical core); ``fallback``:
    ``error`` | ``warn`` when the asked provider does not run; ``device_id``: the GPU.
    """

    backend = "onnx"

    def __init__(self, export_dir: "str | os.PathLike", device: str = "cpu", precision: str = "fp32",
                 threads: "int | None" = None, fallback: "str | None" = None, device_id: int = 0,
                 trt_cache_dir: "str | os.PathLike | None" = None):
        self.export_dir = Path(export_dir)
        try:
            self.manifest: Manifest = read_manifest(self.export_dir)
        except ManifestError as e:
            raise EngineError(str(e)) from None
        m = self.manifest
        if precision not in m.variants:
            how = f"mra-export --{precision}" + (" --calibration DIR" if precision == "int8" else "")
            raise EngineError(f"{self.export_dir} has no {precision} graphs (it has {', '.join(m.variants)}); "
                              f"export them with {how}")
        self.precision = precision
        self.frame_size = m.frame_size
        self.num_regions = m.num_regions
        self.config_name = m.config_name
        self.fields = list(m.region_fields)
        variant = m.variants[precision]
        files = dict(m.variants["fp32"].files)
        files.update(variant.files)  # a variant may replace only some graphs (int8: regions, animate)
        self.graph_precision = {g: precision if g in variant.files else "fp32" for g in files}
        cache = Path(trt_cache_dir) if trt_cache_dir else user_cache_dir() / "trt" / self.export_id()
        self.plan = plan_providers(device, available_providers(), cache, device_id, fallback)
        self.device = device
        if self.plan.uses_gpu:
            _preload_gpu_libraries()
            if TENSORRT in self.plan.names:
                cache.mkdir(parents=True, exist_ok=True)
        self.graphs: dict[str, Graph] = {}
        plan = self.plan
        for name in ("source", "regions", "animate", "avd"):
            if name not in files:
                continue
            session = create_session(self.export_dir / files[name], plan, threads)
            active = active_providers(session)
            problem = check_active(plan, active, name)
            if problem:
                if plan.fallback == "error":
                    raise EngineError(problem)
                warnings.warn(problem, stacklevel=2)
                # warned once: the other graphs ask only for what did start (no retries, no repeats)
                plan = ProviderPlan(plan.device, [p for p in plan.providers if p[0] in active.providers] or
                                    [(CPU, {})], None, plan.fallback)
            self.graphs[name] = Graph(name, session, active)
        self.has_avd = "avd" in self.graphs
        self._device = (self.graphs["animate"].device_type, device_id)

    def export_id(self) -> str:
        """A short id of the exported graphs (their sha256s): names this export's TensorRT engine cache."""
        h = hashlib.sha256()
        for v in sorted(self.manifest.variants):
            for g, s in sorted(self.manifest.variants[v].sha256.items()):
                h.update(f"{v}/{g}/{s}".encode())
        return h.hexdigest()[:16]

    # -- Engine API ----------------------------------------------------------------------------
    def _frames(self, a: np.ndarray, what: str) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.float32)
        s = self.frame_size
        if a.ndim != 4 or a.shape[1] != 3 or a.shape[2:] != (s, s):
            raise EngineError(f"{what} must be (B, 3, {s}, {s}) float32 in [0, 1], got {tuple(a.shape)}")
        return a

    def _params(self, out: dict[str, Any], prefix: str = "") -> RegionParams:
        get = lambda f: _numpy(out[prefix + f]) if prefix + f in out else None  # noqa: E731
        return RegionParams(shift=get("shift"), covar=get("covar"), affine=get("affine"))

    def prepare_source(self, image: np.ndarray) -> Avatar:
        image = self._frames(image, "source image")
        if image.shape[0] != 1:
            raise EngineError(f"prepare one source image at a time, got a batch of {image.shape[0]}")
        out = self.graphs["source"].run({"source": image})
        host = {"source": image, **out}
        return Avatar(image=image, regions=self._params(out, "source_"), cache=SourceTensors(host, self._device))

    def source_tensors(self, avatar: Avatar) -> dict[str, np.ndarray]:
        """The avatar's cached source tensors as numpy (for checks)."""
        return dict(avatar.cache.host)

    def avatar_from_tensors(self, tensors: "dict[str, np.ndarray]") -> Avatar:
        """An avatar made of given source tensors (``source`` and the source graph's outputs, by name)
        instead of this engine's source graph: checks run the other graphs on exactly another
        implementation's inputs (:func:`export.verify.verify_engine`)."""
        host = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        regions = RegionParams(shift=host["source_shift"], covar=host.get("source_covar"),
                               affine=host.get("source_affine"))
        return Avatar(image=host["source"], regions=regions, cache=SourceTensors(host, self._device))

    def regions(self, frames: np.ndarray) -> RegionParams:
        out = self.graphs["regions"].run({"frames": self._frames(frames, "frames")})
        return self._params(out)

    def transfer(self, avatar: Avatar, driving: RegionParams, initial: "RegionParams | None",
                 mode: str = "relative") -> RegionParams:
        self.check_mode(mode)
        if mode == "standard":
            return tr.standard(driving)
        if mode == "relative":
            if initial is None:
                raise EngineError("relative mode needs the initial driving regions")
            return tr.relative(avatar.regions, driving, initial)
        out = self.graphs["avd"].run({"source_shift": avatar.regions.shift, "source_affine": avatar.regions.affine,
                                      "shift": driving.shift, "affine": driving.affine})
        return self._params(out, "new_")

    def animate(self, avatar: Avatar, params: RegionParams, bg: "np.ndarray | None" = None) -> np.ndarray:
        """params (batch B) -> frames ``(B, 3, S, S)``; ``bg`` ``(B, 3, 3)`` background motion (default identity)."""
        b = params.batch_size
        if bg is None:
            bg = np.broadcast_to(np.eye(3, dtype=np.float32), (b, 3, 3))
        feeds = dict(avatar.cache.batch(b))
        for f in self.fields:
            value = getattr(params, f)
            if value is None:
                raise EngineError(f"region parameters lack {f}, which this model needs")
            feeds[f] = np.ascontiguousarray(value, dtype=np.float32)
        feeds["bg"] = np.ascontiguousarray(bg, dtype=np.float32)
        return self.graphs["animate"].run(feeds)["prediction"]

    def providers(self) -> dict[str, str]:
        return {name: f"onnxruntime {g.active.describe()} {self.graph_precision[name]}"
                for name, g in self.graphs.items()}


class SourceTensors:
    """An avatar's cached source tensors: numpy on the host, and (with a GPU provider) OrtValues on
    the GPU so they are not copied there on every frame; repeated per batch size on first use."""

    def __init__(self, host: dict[str, np.ndarray], device: "tuple[str, int]"):
        self.host = host
        self.device = device
        self._batched: dict[int, dict[str, Any]] = {}

    def batch(self, b: int) -> dict[str, Any]:
        if b not in self._batched:
            arrays = self.host if b == 1 else {k: np.ascontiguousarray(np.repeat(v, b, axis=0))
                                               for k, v in self.host.items()}
            if self.device[0] != "cpu":
                import onnxruntime as ort

                arrays = {k: ort.OrtValue.ortvalue_from_numpy(v, self.device[0], self.device[1])
                          for k, v in arrays.items()}
            self._batched = {1: self._batched[1]} if 1 in self._batched else {}  # keep B=1 and the latest B
            self._batched[b] = arrays
        return self._batched[b]

