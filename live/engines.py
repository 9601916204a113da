"""The one way the tools and benchmarks build an engine: an :class:`EngineSpec` -> :func:`build_engine`.

The factory decides, for every caller alike:

* the model: ``checkpoint=None`` is the model shipped with the package (checksum-checked), whose
  verified ONNX export ships with it too;
* the backend: ``auto`` is ONNX Runtime on the CPU when onnxruntime is installed, PyTorch on CUDA
  (see :func:`auto_backend` for other checkpoints);
* export on demand: the onnx backend given a checkpoint file exports it once into the user cache
  (``~/.cache/mra-live/onnx/...``) and reuses that export afterwards;
* precision (torch: fp32 | fp16 | bf16 on cuda, under autocast; onnx: fp32 | fp16 | int8 graphs)
  and threads (torch: ``torch.set_num_threads``; onnx: intra-op threads per graph);
* fallback: when ``auto`` chose ONNX Runtime and it cannot start, PyTorch runs instead;
* a remote worker: with ``worker`` set, the networks run on an ``mra-serve`` worker
  (:class:`live.remote.client.RemoteEngine`); ``checkpoint`` / ``config`` then name the model the
  worker must run (checked), backend, device, precision and threads are the worker's.

Problems the user can fix (missing checkpoint, no CUDA, no onnxruntime) raise :class:`UserError`;
checkpoint and config problems raise its kinds ``nets.CheckpointError`` / ``nets.ConfigError``.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from export.engine import BACKENDS, MODES, Engine, EngineError
from nets.errors import UserError

if TYPE_CHECKING:
    from .remote.client import WorkerSpec

DEVICES = ("cpu", "cuda")
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


def add_engine_arguments(parser, precision: bool = True, export_checkpoints: bool = True) -> None:
    """The model and engine options every tool shares (mra-live, mra-serve, mra-animate, mra-web):
    --checkpoint, --config, --backend, --device and, with ``precision``, --precision (an
    ``argparse.ArgumentParser``). ``export_checkpoints``: what ``auto`` means for the tool (see
    :func:`auto_backend`); the help says it."""
    parser.add_argument("--checkpoint", help="model checkpoint (default: the model shipped with mra-live)")
    parser.add_argument("--config", help="preset or YAML for official checkpoints (vox256, ...)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="auto: ONNX Runtime on the CPU, PyTorch (CUDA graphs) on cuda" if export_checkpoints else
                        "auto: ONNX Runtime on the CPU for the shipped model (its ONNX export ships with it), "
                        "PyTorch for other checkpoints (they would first need an export) and on cuda")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    if precision:
        parser.add_argument("--precision", choices=TORCH_PRECISIONS, default="fp32", help="cuda only")


@dataclass(frozen=True)
class EngineSpec:
    """What engine to build.

    ``checkpoint``: a checkpoint file (official or own), an export directory written by mra-export
    (onnx backend), or None for the shipped model; ``config``: preset name or YAML (official
    checkpoints need it); ``backend``: ``auto`` | ``torch`` | ``onnx``; ``device``: ``cpu`` |
    ``cuda`` (onnx also ``tensorrt`` | ``auto``); ``precision``: see the module doc; ``threads``:
    CPU threads (None: the library's default); ``export_checkpoints``: let ``auto`` choose ONNX
    Runtime for a checkpoint other than the shipped one (paying its export once: long-running
    tools); ``fallback``: the onnx provider policy (``error`` | ``warn``; None: the runtime's
    default); ``cuda_graphs``: torch on cuda (None: on when the model allows it); ``worker``: run on
    an mra-serve worker instead (:class:`live.remote.client.WorkerSpec`).
    """

    checkpoint: "str | os.PathLike | None" = None
    config: "str | None" = None
    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    threads: "int | None" = None
    export_checkpoints: bool = False
    fallback: "str | None" = None
    cuda_graphs: "bool | None" = None
    worker: "WorkerSpec | None" = None


def auto_backend(backend: str, checkpoint: "str | os.PathLike | None", device: str,
                 export_checkpoints: bool = False) -> str:
    """``auto`` -> ``onnx`` or ``torch`` (any other value is returned as it is).

    ONNX Runtime on the CPU when onnxruntime is installed, PyTorch on CUDA. A checkpoint other than
    the shipped one (whose verified export ships with it) must first be exported: tools that run for
    long (mra-live, mra-web) pass ``export_checkpoints=True`` and pay that once; a one-off mra-animate
    job keeps PyTorch for it (ONNX Runtime: 26 vs 16 frames/s here on the shipped model).
    """
    if backend != "auto":
        return backend
    if device != "cpu" or not importlib.util.find_spec("onnxruntime"):
        return "torch"
    return "onnx" if checkpoint is None or export_checkpoints else "torch"


def check_config_use(checkpoint: "str | os.PathLike | None", config: "str | None") -> None:
    """``--config`` describes a ``--checkpoint``: alone it would be silently ignored, so it is refused."""
    if checkpoint is None and config is not None:
        raise UserError(f"--config {config} describes the checkpoint given with --checkpoint; without one the shipped "
                        "model is used, which carries its own config: drop --config, or add --checkpoint")


def build_engine(spec: EngineSpec) -> Engine:
    """The engine ``spec`` describes (see the module doc for what is decided here)."""
    if spec.worker is not None:
        return _remote_engine(spec)
    check_config_use(spec.checkpoint, spec.config)
    backend = auto_backend(spec.backend, spec.checkpoint, spec.device, spec.export_checkpoints)
    try:
        return _build(replace(spec, backend=backend))
    except UserError as e:
        import nets
        if isinstance(e, (nets.CheckpointError, nets.ConfigError)):  # PyTorch would refuse the model too
            raise
        if spec.backend == "auto" and backend == "onnx":  # ONNX Runtime unusable: PyTorch still works
            return _build(replace(spec, backend="torch", threads=None))
        raise


def check_mode(engine: Engine, mode: str) -> None:
    """:meth:`Engine.check_mode` for the tools: a mode the engine cannot run is a :class:`UserError`."""
    try:
        engine.check_mode(mode)
    except EngineError as e:
        raise UserError(str(e)) from None


def check_mode_and_crop(mode: str, crop: str, engine: "Engine | None" = None) -> None:
    """The one check of a ``--mode`` and a ``--crop`` given as text (mra-animate's options, mra-web's
    forms and webcam ``start`` messages): each must be one of its choices, and with an ``engine``, the
    engine must be able to run the mode (:func:`check_mode`); a :class:`UserError` in the command line's
    words otherwise."""
    from .portrait import CROPS

    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if crop not in CROPS:
        raise UserError(f"--crop must be {' or '.join(CROPS)}, got {crop!r}")
    if engine is not None:
        check_mode(engine, mode)


def load_engine(checkpoint: "str | os.PathLike | None" = None, config: "str | None" = None, backend: str = "torch",
                device: str = "cpu", threads: "int | None" = None) -> Engine:
    """``build_engine(EngineSpec(checkpoint, config, backend, device, threads=threads))``, for scripts."""
    return build_engine(EngineSpec(checkpoint=checkpoint, config=config, backend=backend, device=device,
                                   threads=threads))


def _build(spec: EngineSpec) -> Engine:
    from .default_model import default_checkpoint, default_export_dir

    if spec.backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {spec.backend!r}")
    if spec.backend == "torch" and spec.device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {spec.device!r}")
    if spec.checkpoint is None:
        # the onnx backend opens the shipped, verified export: no export at start-up
        checkpoint = default_export_dir() if spec.backend == "onnx" else default_checkpoint()
    else:
        checkpoint = Path(spec.checkpoint).expanduser()
        if not checkpoint.exists():
            raise UserError(f"checkpoint not found: {checkpoint}; check the path (or leave --checkpoint out to use "
                            "the default model)")
    try:
        if spec.backend == "torch":
            return _torch_engine(checkpoint, spec)
        return _onnx_engine(checkpoint, spec)
    except EngineError as e:
        raise UserError(str(e)) from None


def _torch_engine(checkpoint: Path, spec: EngineSpec) -> Engine:
    import torch

    import nets
    from export.manifest import MANIFEST
    from export.torch_engine import TorchEngine

    if spec.precision not in TORCH_PRECISIONS:
        raise EngineError(f"precision must be one of {', '.join(TORCH_PRECISIONS)} for the torch backend, "
                          f"got {spec.precision!r}")
    if spec.precision != "fp32" and spec.device != "cuda":
        raise EngineError("--precision fp16/bf16 needs --device cuda")
    if (checkpoint / MANIFEST).is_file():
        raise EngineError(f"{checkpoint} is an ONNX export directory (made by mra-export): use --backend onnx, "
                          "or give the checkpoint it was exported from")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    model = nets.load_model(checkpoint, config=spec.config, pca="closed_form")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.precision]
    return TorchEngine(model, device=spec.device, dtype=dtype, cuda_graphs=spec.cuda_graphs)


def _remote_engine(spec: EngineSpec) -> Engine:
    from .remote import protocol as wp
    from .remote.client import RemoteEngine

    local = EngineSpec()
    for name in ("backend", "device", "precision", "threads"):
        if getattr(spec, name) != getattr(local, name):
            raise UserError(f"--{name} is chosen on the worker with --worker (mra-serve --{name} ...)")
    expect_sha256 = None
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        if not path.exists():
            raise UserError(f"checkpoint not found: {path} (with --worker it names the model the worker must run)")
        expect_sha256 = wp.model_digest(path)
    # the model given here is the one the worker must run (checked at every connection)
    return RemoteEngine(replace(spec.worker, expect_config=spec.config, expect_sha256=expect_sha256))


def _onnx_engine(checkpoint: Path, spec: EngineSpec) -> Engine:
    try:
        from export.runtime import OrtEngine
    except ImportError as e:
        raise EngineError(f"the ONNX Runtime backend is not available ({e}); use --backend torch") from None
    if not checkpoint.is_dir():
        if spec.precision == "int8":
            raise EngineError("int8 graphs need calibration frames: run mra-export CHECKPOINT --int8 --calibration "
                              "DIR --out EXPORT_DIR and open EXPORT_DIR")
        from export.pipeline import cached_export

        checkpoint = cached_export(checkpoint, config=spec.config, fp16=spec.precision == "fp16")
    return OrtEngine(checkpoint, device=spec.device, precision=spec.precision, threads=spec.threads,
                     fallback=spec.fallback)


def engine_from_args(args):
    """The engine of mra-live's options (also mra-serve's): a worker, or threads per stage and export on demand."""
    from .remote.client import worker_spec

    if getattr(args, "worker", None):  # the networks on an mra-serve worker
        return build_engine(EngineSpec(args.checkpoint, args.config, args.backend, args.device, args.precision,
                                       args.threads, worker=worker_spec(args)))

    if args.precision != "fp32" and args.device != "cuda":
        raise UserError("--precision fp16/bf16 needs --device cuda")
    if args.threads:  # also the threads of the PyTorch pre- and post-processing
        import torch
        torch.set_num_threads(args.threads)
    # the region and animation stages run at the same time: by default each gets half the cores
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    return build_engine(EngineSpec(args.checkpoint, args.config, args.backend, args.device, args.precision, threads,
                                   export_checkpoints=True))
