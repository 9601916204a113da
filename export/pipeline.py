"""Export a model or checkpoint into a verified export directory (graphs + ``manifest.json``).

Steps: trace the fp32 graphs (:mod:`export.onnx`), verify them in ONNX Runtime against the
PyTorch model (:mod:`export.verify`, fails loudly above 1e-4), optionally convert to fp16 and
verify with the fp16 tolerance, optionally quantize to int8 with calibration frames and measure
speed and quality against fp32 on held-out frames (:mod:`export.quantize`), write the manifest.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import nets
from nets.checkpoint import checkpoint_kind, read_checkpoint, sha256_file

from . import onnx as ox
from .cache import user_cache_dir
from .quantize import quantize_export
from .runtime import OrtEngine
from .manifest import MANIFEST, Manifest, Variant, read_manifest, ManifestError
from .verify import FP16_TOLERANCE, FP32_CHAIN_TOLERANCE, FP32_TOLERANCE, Report, VerificationError, verify_engine

FAILED_REPORT = "verification_failed.json"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    try:
        from importlib.metadata import version
        own = version("mra-live")
    except Exception:
        own = "source tree"
    return {"mra-live": own, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def model_at_size(model: nets.MRAA, size: "int | None") -> nets.MRAA:
    """``model`` rebuilt for another square frame size (only coordinate grids depend on it)."""
    if size is None or size == model.frame_size:
        return model
    if size < 16 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and >= 16, got {size}")
    cfg = model.config.replace(frame_size=int(size))
    other = nets.MRAA(cfg, pca=model.pca)
    other.load_state_dict(model.state_dict(), strict=False)
    other.has_avd = model.has_avd
    return other.eval()


def _convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, float32 inputs/outputs (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # the geometry (grids, gaussians, 2x2 algebra, sampling positions) stays in float32: fp16's
    # 11-bit mantissa would move sampling positions by up to 1/1024 of the image
    keep = ["GridSample", "Resize", "Softmax", "Exp", "Sqrt", "Div", "Where", "Sign", "ReduceSum", "Einsum",
            "MatMul", "Gemm", "Abs"]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=keep)
    _drop_repeated_nodes(converted.graph)
    onnx.save(converted, str(dst))


def _drop_repeated_nodes(graph) -> int:
    """Removes exact repeats of a node (same op, inputs, outputs and attributes).

    onnxruntime 1.31's fp16 converter inserts one ``Cast`` per *consumer* of a float16 tensor that
    feeds a blocked op, all with the same name and output, which ONNX Runtime then refuses to load
    ("two nodes with same node name"); 1.32 shares one Cast. Keeping the first of each repeat gives
    the 1.32 graph with either version. Returns how many nodes were dropped.
    """
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        keep.append(node)
    dropped = len(graph.node) - len(keep)
    if dropped:
        del graph.node[:]
        graph.node.extend(keep)
    return dropped


def export_model(model: nets.MRAA, out_dir: "str | os.PathLike", opset: int = ox.DEFAULT_OPSET, fp16: bool = False,
                 calibration: "Any | None" = None, checkpoint: "dict[str, Any] | None" = None,
                 threads: "int | None" = None, progress: "Callable[[str], None] | None" = None,
                 verify: bool = True) -> Manifest:
    """Export ``model`` into ``out_dir``; returns the written :class:`Manifest`.

    ``calibration``: an :class:`export.quantize.CalibrationSet` to also make the int8 variant.
    ``checkpoint``: provenance for the manifest (path, sha256, kind).
    Raises :class:`VerificationError` (after writing ``verification_failed.json``) when a graph
    differs from PyTorch by more than the tolerance.
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _export_into(model, out_dir, opset, fp16, calibration, checkpoint, threads, say, verify, t0)
    except VerificationError:
        raise  # the directory keeps verification_failed.json
    except BaseException:
        if created:  # nothing half-written is left (a full disk, Ctrl-C...)
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            (out_dir / MANIFEST).unlink(missing_ok=True)
        raise


def _export_into(model, out_dir: Path, opset, fp16, calibration, checkpoint, threads, say, verify, t0) -> Manifest:
    for stale in (MANIFEST, FAILED_REPORT):
        (out_dir / stale).unlink(missing_ok=True)
    model = model.eval()
    say("tracing the graphs")
    infos = ox.export_graphs(model, out_dir, opset=opset, progress=lambda g: say(f"tracing the {g} graph"))
    files = {name: info.file for name, info in infos.items()}
    manifest = Manifest(
        config=model.config.to_dict(), frame_size=model.frame_size, num_regions=model.num_regions,
        region_fields=ox.region_fields(model), has_avd="avd" in infos, opset=opset, graphs=infos,
        variants={"fp32": Variant("fp32", files, {g: sha256_file(out_dir / f) for g, f in files.items()})},
        checkpoint=checkpoint or {}, exported_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=_versions())
    manifest.write(out_dir)  # provisional: lets the runtime open the directory for verification

    def verified(precision: str, tolerance: float, chain_tolerance: float) -> Report:
        say(f"verifying the {precision} graphs against PyTorch")
        engine = OrtEngine(out_dir, device="cpu", precision=precision, threads=threads)
        report = verify_engine(model, engine, tolerance=tolerance, chain_tolerance=chain_tolerance)
        if report.failures():
            (out_dir / MANIFEST).unlink(missing_ok=True)
            (out_dir / FAILED_REPORT).write_text(json.dumps({precision: report.to_dict()}, indent=2) + "\n")
            report.check(f"{precision} export verification failed (details in {out_dir / FAILED_REPORT})")
        return report

    try:
        if verify:
            manifest.variants["fp32"].verification = verified("fp32", FP32_TOLERANCE, FP32_CHAIN_TOLERANCE).to_dict()
        if fp16:
            say("converting to fp16")
            f16 = {}
            for name, f in files.items():
                f16[name] = f.replace(".onnx", ".fp16.onnx")
                _convert_fp16(out_dir / f, out_dir / f16[name])
            manifest.variants["fp16"] = Variant("fp16", f16, {g: sha256_file(out_dir / f) for g, f in f16.items()})
            manifest.write(out_dir)
            if verify:
                manifest.variants["fp16"].verification = verified("fp16", FP16_TOLERANCE, FP16_TOLERANCE).to_dict()
        if calibration is not None:
            manifest.write(out_dir)
            manifest.variants["int8"] = quantize_export(out_dir, manifest, calibration, threads=threads, progress=say)
    except VerificationError:
        raise
    except BaseException:
        (out_dir / MANIFEST).unlink(missing_ok=True)
        raise
    manifest.export_seconds = round(time.perf_counter() - t0, 1)
    manifest.write(out_dir)
    return manifest


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def load_for_export(checkpoint: "str | os.PathLike", config=None, size: "int | None" = None
                    ) -> tuple[nets.MRAA, dict[str, Any]]:
    """The model of a checkpoint (official needs ``config``) at ``size``, and its provenance."""
    path = Path(checkpoint)
    kind = checkpoint_kind(read_checkpoint(path))
    model = nets.load_model(path, config=config, pca="closed_form")
    model = model_at_size(model, size)
    return model, {"path": str(path.resolve()), "sha256": sha256_file(path), "kind": kind}


def export_checkpoint(checkpoint: "str | os.PathLike", out_dir: "str | os.PathLike", config=None,
                      size: "int | None" = None, opset: "int | None" = None, fp16: bool = False,
                      calibration=None, threads: "int | None" = None, progress=None) -> Manifest:
    model, provenance = load_for_export(checkpoint, config, size)
    return export_model(model, out_dir, opset=opset or ox.DEFAULT_OPSET, fp16=fp16, calibration=calibration,
                        checkpoint=provenance, threads=threads, progress=progress)


def cached_export(checkpoint: "str | os.PathLike", config=None, size: "int | None" = None, opset: "int | None" = None,
                  fp16: bool = False, export_dir: "str | os.PathLike | None" = None) -> Path:
    """Export ``checkpoint`` once into ``export_dir`` or the user cache and return the directory;
    an existing export of the same checkpoint (sha256), config, size and opset is reused."""
    model, provenance = load_for_export(checkpoint, config, size)
    opset = opset or ox.DEFAULT_OPSET
    key = f"{provenance['sha256'][:16]}-{model.config.name}-{model.frame_size}-op{opset}"
    out = Path(export_dir) if export_dir else user_cache_dir() / "onnx" / key
    try:
        m = read_manifest(out)
        if (m.checkpoint.get("sha256") == provenance["sha256"] and m.config == model.config.to_dict()
                and m.opset == opset and (not fp16 or "fp16" in m.variants)):
            return out
    except ManifestError:
        pass
    if out.exists() and not (out / MANIFEST).exists() and export_dir is None:
        shutil.rmtree(out, ignore_errors=True)
    export_model(model, out, opset=opset, fp16=fp16, checkpoint=provenance)
    return out

