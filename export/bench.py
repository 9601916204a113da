"""Per-frame speed of the exported graphs against PyTorch (a small timing script; the full
benchmark is benchmarks/fps.py).

    python -m export.bench [--config vox256] [--threads 2] [--frames 20] [--calibration PATH]
                           [--export-dir DIR] [--video CLIP] [--json OUT]

Paths timed per driving frame, relative mode, batch 1, round-robin (each frame runs every path
in turn, so a busy machine slows all of them alike):

* ``official``: PyTorch eager recomputing everything from the source each frame (source regions,
  encoder, flow source part, deformed output), the way the official demo does;
* ``torch_cached``: PyTorch eager on the cached source (regions + transfer + animate_cached);
* ``ort_fp32`` / ``ort_int8``: ONNX Runtime (CPU) regions graph + numpy transfer + animate graph.

Weights are random (seeded, fan-in scaled, random BatchNorm statistics): speed does not depend on
them. Medians exclude ``--warmup`` frames.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import nets


def random_weights(model: nets.MRAA, seed: int = 0) -> nets.MRAA:
    """Seeded random weights with activations of a sane scale (for timing and parity checks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype != torch.float32 or name.endswith("down.weight"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model.eval()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> dict:
    from .quantize import CalibrationSet, _cpu_name, read_video
    from .runtime import OrtEngine
    from .verify import synthetic_clip, synthetic_face

    torch.set_num_threads(args.threads)
    model = random_weights(nets.build_model(args.config), args.seed)
    s = model.frame_size
    export_dir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="mra-bench-"))
    if not (export_dir / "manifest.json").is_file():
        from .pipeline import export_model

        calibration = CalibrationSet.from_path(args.calibration, s) if args.calibration else None
        print(f"exporting {args.config} to {export_dir} ...", file=sys.stderr)
        export_model(model, export_dir, calibration=calibration, threads=args.threads,
                     progress=lambda m: print("  " + m, file=sys.stderr))
    manifest = json.loads((export_dir / "manifest.json").read_text())
    n = args.frames + args.warmup
    if args.video:
        clip = read_video(Path(args.video), s, n + 1, stride=2)
        source, driving = clip[:1], clip[1:]
    else:
        source, driving = synthetic_face(s, seed=1), synthetic_clip(s, n, seed=2)
    n = min(n, len(driving))

    src_t = torch.from_numpy(source)
    with torch.inference_mode():
        init_t = model.regions(torch.from_numpy(driving[:1]))
        cache_t = model.prepare_source(src_t)

    def official(frame):
        with torch.inference_mode():
            rs = model.regions(src_t)
            new = model.transfer(rs, model.regions(torch.from_numpy(frame)), init_t, mode="relative")
            return model.animate(src_t, rs, new).prediction

    def torch_cached(frame):
        with torch.inference_mode():
            new = model.transfer(cache_t.regions, model.regions(torch.from_numpy(frame)), init_t, mode="relative")
            return model.animate_cached(cache_t, new, with_deformed=False).prediction

    paths = {}
    if not args.skip_torch:
        paths["official"] = official
        paths["torch_cached"] = torch_cached
    for precision in ("fp32", "int8"):
        if precision in manifest["variants"]:
            engine = OrtEngine(export_dir, device="cpu", precision=precision, threads=args.threads)
            avatar = engine.prepare_source(source)
            initial = engine.regions(driving[:1])

            def ort_path(frame, engine=engine, avatar=avatar, initial=initial):
                new = engine.transfer(avatar, engine.regions(frame), initial, mode="relative")
                return engine.animate(avatar, new)

            paths[f"ort_{precision}"] = ort_path
    times = {k: [] for k in paths}
    outputs = {k: [] for k in paths}
    load_before = _load()
    for i in range(n):
        frame = driving[i:i + 1]
        for name, fn in paths.items():
            t = time.perf_counter()
            out = fn(frame)
            times[name].append(time.perf_counter() - t)
            if name.startswith("ort") or name == "official":
                outputs[name].append(np.asarray(out))
    result = {"config": args.config, "threads": args.threads, "frames": n - args.warmup, "warmup": args.warmup,
              "cpu": _cpu_name(), "load_before": load_before, "load_after": _load(),
              "input": args.video or "synthetic face clip", "export_dir": str(export_dir), "paths": {}}
    for name, ts in times.items():
        ms = [t * 1e3 for t in ts[args.warmup:]]
        result["paths"][name] = {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
                                 "mean_ms": round(statistics.fmean(ms), 1)}
    if "official" in result["paths"]:
        base = result["paths"]["official"]["median_ms"]
        for name, r in result["paths"].items():
            r["speedup_vs_official"] = round(base / r["median_ms"], 2)
    if "ort_fp32" in outputs and "ort_int8" in outputs:
        d = np.abs(np.concatenate(outputs["ort_int8"]) - np.concatenate(outputs["ort_fp32"]))
        result["int8_vs_fp32"] = {"max_diff_255": round(float(d.max()) * 255, 2),
                                  "mean_diff_255": round(float(d.mean()) * 255, 3)}
    if "official" in outputs and "ort_fp32" in outputs:
        d = np.abs(np.concatenate(outputs["ort_fp32"]) - np.concatenate(outputs["official"]))
        result["fp32_vs_official_max_abs"] = float(f"{d.max():.3g}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vox256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=20, help="timed frames (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-dir", help="reuse (or create) this export directory")
    p.add_argument("--calibration", help="also export and time int8 (calibration frames: video or folder)")
    p.add_argument("--video", help="driving clip (default: a synthetic face clip)")
    p.add_argument("--skip-torch", action="store_true", help="time only the ONNX Runtime paths")
    p.add_argument("--json", help="write the result here too")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
