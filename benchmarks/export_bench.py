"""Per-frame speed of the exported graphs against PyTorch (a small timing script; the full
benchmark is benchmarks/fps.py).

    python -m benchmarks.export_bench [--config vox256] [--threads 2] [--frames 20] [--calibration PATH]
                           [--export-dir DIR] [--video CLIP] [--json OUT]

Paths timed per driving frame, relative mode, batch 1, round-robin (each round runs every path
on the same frame). Rounds during which other processes used more than ``--max-other-cpu`` of
the machine's CPUs (from /proc/<pid>/stat; niced background work is not counted) are dropped
and repeated, and each round waits for an otherwise idle second, so a shared machine does not
bias the comparison:

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


def _others_cpu_seconds() -> float:
    """CPU seconds used so far by every other process at normal or higher priority (nice <= 0).

    Niced background work yields to us and is not counted; neither is this process."""
    tick = os.sysconf("SC_CLK_TCK")
    own = os.getpid()
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[16]) <= 0:  # nice
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


def _cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds of other normal-priority processes, wall seconds); NaN without /proc."""
    try:
        other = _others_cpu_seconds()
    except OSError:
        other = float("nan")
    return other, time.monotonic()


def _other_cpu_share(a, b) -> float:
    """Share of the machine's CPU capacity used by other normal-priority processes between two snapshots
    (processes that start and end between the snapshots are missed: short rounds keep that rare)."""
    wall = max(b[1] - a[1], 1e-9)
    share = (b[0] - a[0]) / (wall * (os.cpu_count() or 1))
    return 0.0 if share != share else max(share, 0.0)  # NaN (no /proc): keep every round


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> dict:
    from export.manifest import MANIFEST, read_manifest
    from export.quantize import CalibrationSet, cpu_name, read_video
    from export.runtime import OrtEngine
    from export.verify import synthetic_clip, synthetic_face

    torch.set_num_threads(args.threads)
    model = random_weights(nets.build_model(args.config), args.seed)
    s = model.frame_size
    export_dir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="mra-bench-"))
    if not (export_dir / MANIFEST).is_file():
        from export.pipeline import export_model

        calibration = CalibrationSet.from_path(args.calibration, s) if args.calibration else None
        print(f"exporting {args.config} to {export_dir} ...", file=sys.stderr)
        export_model(model, export_dir, calibration=calibration, threads=args.threads,
                     progress=lambda m: print("  " + m, file=sys.stderr))
    manifest = read_manifest(export_dir)
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
        if precision in manifest.variants:
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
    rounds = dropped = 0
    t_end = time.monotonic() + args.max_seconds
    while len(times[next(iter(paths))]) < n and time.monotonic() < t_end:
        i = rounds % len(driving)
        frame = driving[i:i + 1]
        if args.max_other_cpu < 1:  # wait (politely) for a second in which the machine is otherwise idle
            while time.monotonic() < t_end:
                a = _cpu_snapshot()
                time.sleep(1.0)
                if _other_cpu_share(a, _cpu_snapshot()) <= args.max_other_cpu:
                    break
        before = _cpu_snapshot()
        took = {}
        for name, fn in paths.items():
            t = time.perf_counter()
            out = fn(frame)
            took[name] = time.perf_counter() - t
            if rounds < len(driving) and (name.startswith("ort") or name == "official"):
                outputs[name].append(np.asarray(out))
        rounds += 1
        other = _other_cpu_share(before, _cpu_snapshot())
        if args.verbose:
            print(f"round {rounds}: other processes {other:.0%} of the CPUs"
                  + (" (dropped)" if rounds > args.warmup and other > args.max_other_cpu else ""), file=sys.stderr)
        if rounds > args.warmup and other > args.max_other_cpu:
            dropped += 1  # another process took CPU time during this round: it would bias the comparison
            continue
        for name, t in took.items():
            times[name].append(t)
    result = {"config": args.config, "threads": args.threads, "frames": len(times[next(iter(paths))]) - args.warmup,
              "warmup": args.warmup, "rounds": rounds, "rounds_dropped_busy_machine": dropped,
              "max_other_cpu": args.max_other_cpu, "cpu": cpu_name(), "load_before": load_before,
              "load_after": _load(), "input": args.video or "synthetic face clip", "export_dir": str(export_dir),
              "paths": {}}
    if result["frames"] < 1:
        raise SystemExit(f"no round ran on an otherwise idle machine within {args.max_seconds:.0f} s "
                         "(raise --max-other-cpu to 1 to time on a busy machine anyway)")
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
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vox256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=20, help="timed frames (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-dir", help="reuse (or create) this export directory")
    p.add_argument("--calibration", help="also export and time int8 (calibration frames: video or folder)")
    p.add_argument("--video", help="driving clip (default: a synthetic face clip)")
    p.add_argument("--skip-torch", action="store_true", help="time only the ONNX Runtime paths")
    p.add_argument("--max-other-cpu", type=float, default=0.15,
                   help="wait for, and keep only, rounds in which other processes used at most this share of the "
                   "CPUs (default 0.15; 1 = time regardless)")
    p.add_argument("--max-seconds", type=float, default=1800, help="give up collecting rounds after this long")
    p.add_argument("--verbose", action="store_true", help="report every round on stderr")
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
