"""Export a model or checkpoint into a verified export directory (graphs + ``manifest.json``).

Steps: trace the fp32 graphs (:mod:`export.onnx`), verify them in ONNX Runtime against the
PyTorch model (:mod:`export.verify`, fails loudly above 1e-4), optionally convert to fp16 and
verify with the fp16 tolerance, optionally quantize to int8 with calibration frames and measure
speed and quality against fp32 on held-out frames (:mod:`export.quantize`), write the manifest.
All of it happens in a temporary folder beside the target, which takes the target's place only
when everything passed (see :func:`export_model`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import nets
from nets.checkpoint import checkpoint_kind, read_checkpoint, sha256_file
from nets.errors import UserError
from nets.media import sweep_partials, temp_name

from . import onnx as ox
from .cache import user_cache_dir
from .quantize import quantize_export
from .runtime import OrtEngine
from .manifest import MANIFEST, Manifest, Variant, read_manifest, ManifestError
from .verify import FP16_TOLERANCE, FP32_CHAIN_TOLERANCE, FP32_TOLERANCE, Report, verify_engine


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


def check_export_dir(out_dir: "str | os.PathLike") -> Path:
    """The export directory ``out_dir`` as an absolute path (symbolic links resolved), checked before
    any work: it is new, or an existing folder that holds an export (or nothing), which a finished
    export replaces as a whole; anything else is a :class:`UserError`."""
    if not str(out_dir).strip():  # (Path("") would be the current folder)
        raise UserError("--out is empty; give the export folder, e.g. --out exports/vox256")
    target = Path(os.path.realpath(Path(out_dir).expanduser()))
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise UserError(f"--out {target} exists and is not a folder; choose a new folder or an existing export")
        if os.path.ismount(target):
            raise UserError(f"--out {target} is a mount point, which a finished export cannot replace; give a "
                            f"new folder inside it, e.g. --out {target / 'export'}")
        foreign = sorted(e.name for e in target.iterdir() if not _export_file(e))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UserError(f"--out {target} holds files that are not part of an export ({shown}); a new export "
                            "replaces the whole folder: choose a new folder or an existing export")
    return target


def _export_file(entry: Path) -> bool:
    """What an export directory holds (graphs, manifest; the failure report of older versions)."""
    return entry.is_file() and not entry.is_symlink() and (
        entry.suffix == ".onnx" or entry.name in (MANIFEST, MANIFEST + ".tmp", "verification_failed.json"))


def export_model(model: nets.MRAA, out_dir: "str | os.PathLike", opset: int = ox.DEFAULT_OPSET, fp16: bool = False,
                 calibration: "Any | None" = None, checkpoint: "dict[str, Any] | None" = None,
                 threads: "int | None" = None, progress: "Callable[[str], None] | None" = None,
                 verify: bool = True) -> Manifest:
    """Export ``model`` into ``out_dir``; returns the written :class:`Manifest`.

    ``calibration``: an :class:`export.quantize.CalibrationSet` to also make the int8 variant.
    ``checkpoint``: provenance for the manifest (path, sha256, kind).

    The export is made in a temporary folder beside ``out_dir`` (``.NAME.partial-PID-...``) and
    takes its place only once every graph is written and verified, so ``out_dir`` is either the
    new export or, after any failure (verification, a full disk, Ctrl-C), exactly what it was
    before: an earlier export stays whole, a new folder is not created. Raises
    :class:`export.verify.VerificationError` when a graph differs from PyTorch by more than the tolerance (the
    full report is written to a file in the system's temporary folder; the message says where).
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    target = check_export_dir(out_dir)
    made = _missing_parent(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(target)  # what a killed export left beside it
    work = temp_name(target)
    try:
        work.mkdir()
        manifest = _export_into(model, work, opset, fp16, calibration, checkpoint, threads, say, verify, t0)
        _swap_in(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if made is not None:  # folders created for the export go too
            shutil.rmtree(made, ignore_errors=True)
        raise
    return manifest


def _missing_parent(target: Path) -> "Path | None":
    """The outermost folder above ``target`` that does not exist yet (None: its parent exists)."""
    missing = None
    for parent in target.parents:
        if parent.exists():
            break
        missing = parent
    return missing


def _swap_in(work: Path, target: Path) -> None:
    """Put the finished export ``work`` at ``target``, replacing an earlier export there (renames in
    one folder: the earlier export is put back if the second rename fails)."""
    if not target.exists():
        os.replace(work, target)
        return
    old = temp_name(target, ".old")
    os.replace(target, old)
    try:
        os.replace(work, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _failure_report(precision: str, report: Report) -> Path:
    """The full report of a failed verification, in a new file in the system's temporary folder."""
    fd, name = tempfile.mkstemp(prefix="mra-export-verification-failed-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({precision: report.to_dict()}, indent=2) + "\n")
    return Path(name)


def _export_into(model, out_dir: Path, opset, fp16, calibration, checkpoint, threads, say, verify, t0) -> Manifest:
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
            details = _failure_report(precision, report)
            report.check(f"{precision} export verification failed, nothing was written (details in {details})")
        return report

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

