"""Per-frame cost of the live path, per stage and backend, batch 1 (``python benchmarks/fps.py --help``).

For each config (a preset with random weights, ``default`` = the model shipped with the package,
or ``--checkpoint``) and each backend (naive official-demo path, PyTorch eager, torch.compile,
CUDA graphs in fp32/fp16/bf16, ONNX Runtime CPU/CUDA/TensorRT), it times the stages of a live
frame (pre-processing, region part, motion transfer, animation part, post-processing) and the
whole frame (``per_frame``), with warm-up, median and p95, and reports the speed-up over the
naive row measured in the same run, peak memory, FLOPs and parameters per graph, and on a GPU
the ratio of measured time to the compute/bandwidth floor. Backends that cannot run are listed
with the reason. Output: a table on stdout and ``--json PATH`` (a list of rows).

Examples::

    python benchmarks/fps.py --config tiny,lite256 --threads 2
    python benchmarks/fps.py --config vox256 --frames 20 --no-compile --json fps.json
    python benchmarks/fps.py --quick --device cuda --config all --json out.json   # a GPU in < 3 min
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a script from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nets  # noqa: E402
from nets.errors import ArgumentParser, UserError, run_cli  # noqa: E402

from benchmarks import cost as costs  # noqa: E402
from benchmarks import runners as rn  # noqa: E402
from benchmarks.timing import (Contention, PeakMemory, Stats, cpu_threads_available, time_fn,  # noqa: E402
                               time_round_robin, timed_once)  # noqa: E402

# (backend, device): every row the table can have, in display order.
BACKENDS = [
    ("naive", "cpu"), ("torch-eager", "cpu"), ("torch-compile", "cpu"), ("ort-cpu", "cpu"), ("ort-cpu-int8", "cpu"),
    ("naive", "cuda"), ("torch-eager", "cuda"), ("torch-compile", "cuda"), ("torch-cuda-fp32", "cuda"),
    ("torch-cuda-fp16", "cuda"), ("torch-cuda-bf16", "cuda"), ("ort-cuda", "cuda"), ("ort-trt-fp16", "cuda"),
]
LOW_PRECISION = {"torch-cuda-fp16", "torch-cuda-bf16", "ort-trt-fp16"}
QUICK_COMPILE_CONFIGS = ("vox256", "lite256")


@dataclass
class Options:
    frames: int
    warmup: int
    max_seconds: float
    min_frames: int
    compile_mode: "dict[str, str | None]"  # device -> mode (None: compile skipped)
    compile_configs: "set[str] | None"
    threads: int
    onnx_dir: "str | None" = None


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def load_target(spec: str, checkpoint: "str | None", seed: int) -> tuple[nets.MRAA, "Path | None", "str | None"]:
    """(model fp32 cpu eval, checkpoint file or None, config argument for file loaders)."""
    if checkpoint:
        model = nets.load_model(checkpoint, config=spec)
        return model, Path(checkpoint), spec
    if spec == "default":
        from live.default_model import default_checkpoint
        from nets.errors import UserError
        try:
            path = Path(default_checkpoint())
        except UserError as e:
            raise rn.Unavailable(f"default model unavailable: {e}") from None
        return nets.load_model(path), path, None
    torch.manual_seed(seed)
    model = nets.build_model(spec).eval()
    return model, None, None


def graph_costs(model: nets.MRAA, setup: rn.Setup) -> dict[str, costs.Cost]:
    """Cost of each graph at batch 1, fp32: source part, region part, transfer, animation part, naive generator."""
    size = model.frame_size
    pre = lambda f: rn.to_input(torch.from_numpy(f), size)  # noqa: E731
    with torch.inference_mode():
        src = pre(setup.source)
        src_r = model.regions(src)
        cache = model.prepare_source(src, src_r)
        init = model.regions(pre(setup.frames[0]))
        x = pre(setup.frames[1 % len(setup.frames)])
        drv = model.regions(x)
        new = model.transfer(src_r, drv, init, "relative")
    out = {
        "source": costs.measure(model.prepare_source, src),
        "region": costs.measure(model.regions, x),
        "transfer": costs.measure(lambda s, d, i: model.transfer(s, d, i, "relative"), src_r.without_heatmap(),
                                  drv.without_heatmap(), init.without_heatmap()),
        "animate": costs.measure(lambda c, n: model.animate_cached(c, n, with_deformed=False).prediction, cache, new),
        "naive_animate": costs.measure(lambda s, sr, n: model.animate(s, sr, n).prediction, src,
                                       src_r.without_heatmap(), new),
    }
    return out


def stage_cost(c: dict[str, costs.Cost], backend: str, stage: str) -> "costs.Cost | None":
    naive = backend == "naive"
    if stage == "source":
        return c["region"] if naive else c["source"]
    if stage in ("region", "transfer"):
        return c[stage]
    if stage == "animate":
        return c["naive_animate" if naive else "animate"]
    if stage == "per_frame":
        return c["region"] + c["transfer"] + c["naive_animate" if naive else "animate"]
    return None


# ---------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------

def make_runner(backend: str, device: str, setup: rn.Setup, opts: Options) -> rn.Runner:
    if backend == "naive":
        return rn.NaiveRunner(setup, device)
    if backend == "torch-eager":
        return rn.TorchRunner(setup, device)
    if backend == "torch-compile":
        mode = opts.compile_mode.get(device)
        if mode is None:
            raise rn.Unavailable("skipped (--no-compile)")
        if opts.compile_configs is not None and setup.model.config.name not in opts.compile_configs:
            raise rn.Unavailable("skipped: compiles only for " + ", ".join(sorted(opts.compile_configs))
                                 + " here (--quick / --compile-configs)")
        return rn.TorchRunner(setup, device, compile_mode=mode)
    if backend.startswith("torch-cuda-"):
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[backend.rsplit("-", 1)[1]]
        return rn.CudaGraphRunner(setup, device, dtype)
    if backend == "ort-cpu":
        return rn.OrtRunner(setup, "cpu", backend, onnx_dir=opts.onnx_dir)
    if backend == "ort-cpu-int8":
        return rn.OrtRunner(setup, "cpu", backend, precision="int8", onnx_dir=opts.onnx_dir)
    if backend == "ort-cuda":
        return rn.OrtRunner(setup, "cuda", backend, onnx_dir=opts.onnx_dir)
    if backend == "ort-trt-fp16":
        return rn.OrtRunner(setup, "tensorrt", backend, onnx_dir=opts.onnx_dir)
    raise ValueError(backend)


def measure_backend(backend: str, device: str, setup: rn.Setup, reference: np.ndarray, opts: Options,
                    progress: Callable[[str], None],
                    keep: "dict[tuple[str, str], Callable[[], Any]] | None" = None) -> tuple[dict[str, Stats], dict[str, Any]]:
    """Build the backend, check one frame against the reference, time every stage.

    ``keep``: when given, the backend's per-frame callable is stored there (for round-robin timing).
    """
    with PeakMemory(device) as mem, torch.inference_mode():
        runner = make_runner(backend, device, setup, opts)
        stages, build_s = timed_once(runner.build, device if torch.cuda.is_available() else "cpu")
        info = dict(stages.info)
        info["build_s"] = round(build_s, 2)
        out = stages.run(setup.frames[1 % len(setup.frames)])
        diff = np.abs(out.astype(np.int16) - reference.astype(np.int16))
        info["max_diff"] = float(diff.max()) / 255
        info["mean_diff"] = float(diff.mean()) / 255
        stats = {}
        for name, fn in stages.items():
            progress(f"{setup.model.config.name} {backend} {device} {name}")
            with Contention() as busy:
                stats[name] = time_fn(fn, opts.frames, opts.warmup, device, opts.max_seconds, opts.min_frames)
            stats[name].others_cpu, stats[name].others_niced_cpu = busy.cores, busy.niced
        info["peak_mem_mb"] = round(mem.peak_mb(), 1)
        info["peak_mem_kind"] = mem.kind
        if keep is not None:
            keep[(backend, device)] = stages.per_frame
        del stages, runner
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return stats, info


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    m = {"cpu": cpu, "cpu_count": cpu_threads_available(), "torch": torch.__version__,
         "python": platform.python_version(), "date": datetime.date.today().isoformat(),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}
    try:
        m["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name()
    try:
        import onnxruntime as ort
        m["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    return m


def rows_for(config: str, backend: str, device: str, stats: "dict[str, Stats] | None", info: dict[str, Any],
             graph: "dict[str, costs.Cost] | None", threads: int, reason: "str | None" = None) -> list[dict]:
    base = {"config": config, "backend": backend, "device": device,
            "dtype": {"torch-cuda-fp16": "float16", "torch-cuda-bf16": "bfloat16", "ort-trt-fp16": "float16",
                      "ort-cpu-int8": "int8"}.get(backend, "float32"),
            "threads": threads}
    if stats is None:
        return [{**base, "stage": "per_frame", "available": False, "reason": reason, "median_ms": None,
                 "p95_ms": None, "speedup_vs_naive": None, "peak_mem_mb": None}]
    rows = []
    gpu_name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else ""
    for stage, st in stats.items():
        row = {**base, "stage": stage, "available": True, "median_ms": round(st.median_ms, 3),
               "p95_ms": round(st.p95_ms, 3), "mean_ms": round(st.mean_ms, 3), "min_ms": round(st.min_ms, 3),
               "frames": st.frames, "speedup_vs_naive": None, "peak_mem_mb": info.get("peak_mem_mb")}
        if st.gpu_median_ms is not None:
            row["gpu_median_ms"] = round(st.gpu_median_ms, 3)
        if st.others_cpu is not None:
            row["others_cpu"] = round(st.others_cpu, 2)
            row["others_niced_cpu"] = round(st.others_niced_cpu, 2)
        if stage == "per_frame":
            row["fps"] = round(1000 / st.median_ms, 1)
            for k, v in info.items():
                if k != "peak_mem_mb":
                    row[k] = v
        c = stage_cost(graph, backend, stage) if graph else None
        if c is not None:
            if row["dtype"] in ("float16", "bfloat16"):
                c = c.scaled(2)
            row["gflops"] = round(c.flops / 1e9, 3)
            row["params_m"] = round(c.params / 1e6, 3)
            row["min_mb"] = round(c.min_bytes / 2**20, 2)
            if gpu_name:
                fl = costs.floor(c, gpu_name, backend in LOW_PRECISION)
                if fl is not None:
                    row["floor_ms"] = round(fl.floor_ms, 4)
                    row["time_over_floor"] = round(st.median_ms / fl.floor_ms, 1) if fl.floor_ms > 0 else None
                    row["traffic_floor_ms"] = round(fl.traffic_ms, 4)
        rows.append(row)
    return rows


def add_speedups(rows: list[dict]) -> None:
    naive = {(r["config"], r["device"], r["stage"]): r["median_ms"] for r in rows
             if r["backend"] == "naive" and r["available"]}
    for r in rows:
        ref = naive.get((r["config"], r["device"], r["stage"]))
        if r["available"] and ref and r["median_ms"] and r["stage"] not in ("source",):
            r["speedup_vs_naive"] = round(ref / r["median_ms"], 2)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width) if width else 1)
    return format(v, spec)


def table(rows: list[dict], graphs: dict[str, dict[str, costs.Cost]]) -> str:
    lines = []
    for config in dict.fromkeys(r["config"] for r in rows):
        g = graphs.get(config)
        lines.append("")
        head = f"== {config}"
        if g:
            per = (g["region"] + g["transfer"] + g["animate"]).flops / 1e9
            nv = (g["region"] + g["transfer"] + g["naive_animate"]).flops / 1e9
            head += (f": per-frame {per:.2f} GFLOPs cached, {nv:.2f} naive; params (M) source part "
                     f"{g['source'].params / 1e6:.2f}, region part {g['region'].params / 1e6:.2f}, "
                     f"animation part {g['animate'].params / 1e6:.2f}")
        lines.append(head)
        lines.append(f"{'backend':<16} {'device':<6} {'stage':<10} {'median ms':>10} {'p95 ms':>9} {'x naive':>8} "
                     f"{'fps':>7} {'GFLOPs':>7} {'peak MB':>8} {'/floor':>7} {'others':>6}  notes")
        for r in rows:
            if r["config"] != config:
                continue
            if not r["available"]:
                lines.append(f"{r['backend']:<16} {r['device']:<6} {'-':<10} {'unavailable: ' + str(r['reason'])}")
                continue
            notes = []
            if r["stage"] == "per_frame":
                if "compile_s" in r:
                    notes.append(f"compile {r['compile_s']} s")
                if "providers" in r:
                    notes.append("providers " + ", ".join(f"{k}:{v}" for k, v in r["providers"].items()))
                if r.get("max_diff") is not None:
                    notes.append(f"max diff {r['max_diff']:.4f}")
                if r.get("gpu_median_ms") is not None:
                    notes.append(f"gpu {r['gpu_median_ms']:.3f} ms")
                notes.extend(r.get("notes", []))
            lines.append(f"{r['backend']:<16} {r['device']:<6} {r['stage']:<10} {_fmt(r['median_ms'], '10.3f')} "
                         f"{_fmt(r['p95_ms'], '9.3f')} {_fmt(r['speedup_vs_naive'], '8.2f')} "
                         f"{_fmt(r.get('fps'), '7.1f')} {_fmt(r.get('gflops'), '7.2f')} "
                         f"{_fmt(r['peak_mem_mb'] if r['stage'] == 'per_frame' else None, '8.0f')} "
                         f"{_fmt(r.get('time_over_floor'), '7.1f')} {_fmt(r.get('others_cpu'), '6.2f')}  "
                         f"{'; '.join(notes)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv: "Sequence[str] | None"):
    p = ArgumentParser(prog="fps.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None,
                   help="comma-separated presets (" + ", ".join(nets.PRESETS) + "), 'default' (the model shipped "
                        "with the package) or 'all'; with --checkpoint: the config of an official checkpoint. "
                        "Default: vox256,lite256")
    p.add_argument("--checkpoint", help="time this checkpoint (own format; official ones need --config)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "all"),
                   help="auto: cuda when PyTorch sees a GPU, else cpu; all: both")
    p.add_argument("--backends", help="comma-separated subset of: " + ", ".join(dict.fromkeys(b for b, _ in BACKENDS)))
    p.add_argument("--frames", type=int, default=100, help="timed frames per stage (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="stop timing a stage after this many seconds (at least --min-frames frames; default 10)")
    p.add_argument("--min-frames", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ORT (default: all cores)")
    p.add_argument("--input-size", type=int, default=None,
                   help="side of the uint8 crop given to pre-processing (default: the model's size, no resize)")
    p.add_argument("--onnx-dir", help="ORT rows open this mra-export directory instead of exporting the model "
                                      "(int8 graphs need one, calibrated on real frames; its model must be the one timed)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it can take minutes on a CPU)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: 'default' on cpu, 'max-autotune-no-cudagraphs' on cuda; "
                        "--quick: 'default')")
    p.add_argument("--compile-configs", default=None, help="compile only these configs (--quick: vox256,lite256)")
    p.add_argument("--quick", action="store_true",
                   help="the whole GPU table in under 3 minutes: 20 frames, 3 s per stage, no max-autotune, "
                        "compile only vox256 and lite256")
    p.add_argument("--interleave", action="store_true",
                   help="time the per_frame stage of all backends of a config round-robin (one frame each in turn), "
                        "so a machine busy with other work slows them alike; keeps every backend in memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-expression", action="store_true",
                   help="do not time the expression path (face mesh + warp, added to every CPU engine's frame)")
    p.add_argument("--json", help="write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: "Sequence[str] | None" = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    devices = {"auto": ["cuda"] if cuda else ["cpu"], "cpu": ["cpu"], "cuda": ["cuda"],
               "all": ["cpu", "cuda"] if cuda else ["cpu"]}[args.device]
    threads = args.threads or cpu_threads_available()
    torch.set_num_threads(threads)
    if args.quick:
        args.frames = min(args.frames, 20)
        args.warmup = min(args.warmup, 2)
        args.max_seconds = min(args.max_seconds, 3.0)
        args.min_frames = min(args.min_frames, 3)
    if args.frames < 1 or args.min_frames < 1:
        raise UserError("--frames and --min-frames must be at least 1")
    mode = args.compile_mode
    compile_mode = {"cpu": None, "cuda": None} if args.no_compile else {
        "cpu": mode or "default",
        "cuda": mode or ("default" if args.quick else "max-autotune-no-cudagraphs")}
    compile_configs = None
    if args.compile_configs:
        compile_configs = set(args.compile_configs.split(","))
    elif args.quick:
        compile_configs = set(QUICK_COMPILE_CONFIGS)
    opts = Options(frames=args.frames, warmup=args.warmup, max_seconds=args.max_seconds, min_frames=args.min_frames,
                   compile_mode=compile_mode, compile_configs=compile_configs, threads=threads,
                   onnx_dir=args.onnx_dir)

    if args.checkpoint:
        configs = [args.config]
    elif args.config in (None, ""):
        configs = ["vox256", "lite256"]
    elif args.config == "all":
        configs = list(nets.PRESETS) + ["default"]
    else:
        configs = args.config.split(",")
        unknown = [c for c in configs if c not in nets.PRESETS and c != "default"]
        if unknown:
            raise UserError(f"unknown config {', '.join(unknown)}: choose from {', '.join(nets.PRESETS)}, default, all")
    selected = set(args.backends.split(",")) if args.backends else None
    if selected:
        bad = selected - {b for b, _ in BACKENDS}
        if bad:
            raise UserError(f"unknown backend {', '.join(sorted(bad))}; see --help")

    all_rows: list[dict] = []
    graphs: dict[str, dict[str, costs.Cost]] = {}
    info_machine = machine()
    progress = lambda msg: print(f"  timing {msg}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="mra-fps-") as scratch:
        for spec in configs:
            label = Path(args.checkpoint).name if args.checkpoint else spec
            try:
                model, ckpt, config_arg = load_target(spec, args.checkpoint, args.seed)
            except rn.Unavailable as e:
                all_rows += [r for b, d in BACKENDS for r in rows_for(label, b, d, None, {}, None, threads, str(e))]
                print(f"\n== {label}: unavailable: {e}", flush=True)
                if args.json:
                    write_json(all_rows, args.json)
                continue
            if not args.checkpoint:
                label = f"default:{model.config.name}" if spec == "default" else model.config.name
            size = model.frame_size
            frames = rn.synthetic_frames(9, args.input_size or size, seed=args.seed)
            source = rn.synthetic_frames(1, args.input_size or size, seed=args.seed + 1)[0]
            setup = rn.Setup(model=model, checkpoint=ckpt, config_arg=config_arg, source=source, frames=frames,
                             threads=threads, scratch=Path(scratch))
            print(f"[{label}] counting FLOPs and the reference frame", file=sys.stderr, flush=True)
            graphs[label] = graph_costs(model, setup)
            reference = rn.reference_output(setup, frames[1])
            kept: "dict[tuple[str, str], Callable[[], Any]] | None" = {} if args.interleave else None
            for backend, device in BACKENDS:
                if selected is not None and backend not in selected:
                    reason = "not selected (--backends)"
                elif device not in devices:
                    reason = ("no CUDA GPU visible to PyTorch" if device == "cuda" and not cuda
                              else f"not requested (--device {args.device})")
                else:
                    reason = None
                if reason is None:
                    try:
                        stats, info = measure_backend(backend, device, setup, reference, opts, progress, kept)
                    except rn.Unavailable as e:
                        reason = str(e)
                    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
                        reason = f"out of GPU memory: {str(e).splitlines()[0][:160]}"
                    except Exception as e:  # noqa: BLE001 - one broken backend must not lose the table
                        traceback.print_exc()
                        first = (str(e).strip().splitlines() or [""])[0][:200]
                        reason = f"error: {type(e).__name__}: {first} (traceback on stderr)"
                if reason is not None:
                    all_rows += rows_for(label, backend, device, None, {}, None, threads, reason)
                else:
                    all_rows += rows_for(label, backend, device, stats, info, graphs[label], threads)
            if kept:
                interleave(all_rows, label, kept, opts, progress)
            del setup, model, kept
            gc.collect()
            add_speedups(all_rows)
            for r in all_rows:
                r["machine"] = info_machine
            print(table([r for r in all_rows if r["config"] == label], graphs), flush=True)
            if args.json:  # after every config, so a run cut short keeps what it measured
                write_json(all_rows, args.json)
    if not args.no_expression:
        expr = measure_expression(256, opts, threads, progress)
        for r in expr:
            r["machine"] = info_machine
        all_rows += expr
        if args.json:
            write_json(all_rows, args.json)
    print("\nper frame, end to end:")
    print(summary(all_rows))
    print(with_expression(all_rows))
    print(f"\nmachine: {info_machine}")
    if args.json:
        print(f"wrote {len(all_rows)} rows to {args.json}")
    return 0


def expression_stages(size: int) -> dict[str, Callable[[], Any]]:
    """The expression path's per-frame work (``live.expression``, the same on every engine): the
    driving crop's face mesh (tracking), and the warp of the animated crop (its own tracking mesh for
    the head pose, the field, the remap, the painted mouth and lids). Timed on the drawn example
    portrait, driven by its own landmarks with the mouth open and one eye shut, so nothing is skipped."""
    from live import expression as ex
    from live.live import EXAMPLE_PORTRAIT
    from live.portrait import prepare_portrait
    from nets import media
    from nets.media import facemesh as fm

    crop, _ = prepare_portrait(media.read_image(EXAMPLE_PORTRAIT), size, "auto")
    face = ex.portrait_face(crop)
    if face is None:
        raise rn.Unavailable("no face mesh found on the example portrait")
    ref = face.landmarks
    driver = ref.copy()
    driver[list(fm.LIPS_INNER_LOWER) + list(fm.JAW[3:-3]), 1] += 0.2 * float(fm.inter_ocular(ref))
    driver[list(fm.LEFT_EYE_UPPER)] = driver[list(fm.LEFT_EYE_LOWER)]
    mesh, transfer = fm.FaceMesh(tracking=True), ex.ExpressionTransfer(face)
    stages = {"mesh": lambda: mesh(crop), "warp": lambda: transfer.apply(crop, driver, ref)}
    stages["per_frame"] = lambda: (stages["mesh"](), stages["warp"]())
    return stages


def measure_expression(size: int, opts: Options, threads: int, progress: Callable[[str], None]) -> list[dict]:
    """Rows ``config=expression``: the expression path's stages and their sum (add it to an engine's per_frame)."""
    try:
        stages = expression_stages(size)
    except rn.Unavailable as e:
        return rows_for("expression", "numpy+mediapipe", "cpu", None, {}, None, threads, str(e))
    stats = {}
    for name, fn in stages.items():
        progress(f"expression path {name}")
        with Contention() as busy:
            stats[name] = time_fn(fn, opts.frames, opts.warmup, "cpu", opts.max_seconds, opts.min_frames)
        stats[name].others_cpu, stats[name].others_niced_cpu = busy.cores, busy.niced
    return rows_for("expression", "numpy+mediapipe", "cpu", stats, {}, None, threads)


def interleave(rows: list[dict], label: str, kept: "dict[tuple[str, str], Callable[[], Any]]", opts: Options,
               progress: Callable[[str], None]) -> None:
    """Re-time the per_frame stage of the kept backends round-robin, per device; replace their per_frame rows."""
    with torch.inference_mode():
        for device in dict.fromkeys(d for _, d in kept):
            fns = {b: fn for (b, d), fn in kept.items() if d == device}
            if len(fns) < 2:
                continue
            progress(f"{label} per_frame round-robin on {device}: {', '.join(fns)}")
            stats = time_round_robin(fns, opts.frames, opts.warmup, device, opts.max_seconds * len(fns),
                                     opts.min_frames)
            for r in rows:
                if r["config"] == label and r["device"] == device and r["stage"] == "per_frame" and r["available"] \
                        and r["backend"] in stats:
                    st = stats[r["backend"]]
                    r.update(median_ms=round(st.median_ms, 3), p95_ms=round(st.p95_ms, 3), mean_ms=round(st.mean_ms, 3),
                             min_ms=round(st.min_ms, 3), frames=st.frames, fps=round(1000 / st.median_ms, 1),
                             others_cpu=None if st.others_cpu is None else round(st.others_cpu, 2),
                             others_niced_cpu=None if st.others_niced_cpu is None else round(st.others_niced_cpu, 2),
                             interleaved=True)
                    r.pop("gpu_median_ms", None)


def write_json(rows: list[dict], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, path)


def with_expression(rows: list[dict]) -> str:
    """Each CPU engine's per_frame plus the expression path's (what mra-live spends per frame on the CPU)."""
    expr = next((r for r in rows if r["config"] == "expression" and r["stage"] == "per_frame" and r["available"]), None)
    if expr is None:
        return "expression path: not measured"
    lines = [f"expression path (driving mesh + warp): median {expr['median_ms']:.2f} ms, p95 {expr['p95_ms']:.2f} ms; "
             "engine + expression, medians added:"]
    for r in rows:
        if r["stage"] == "per_frame" and r["available"] and r["device"] == "cpu" and r["config"] != "expression":
            lines.append(f"  {r['config']:<10} {r['backend']:<16} {r['median_ms'] + expr['median_ms']:>8.2f} ms")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line per (config, backend, device): the per_frame row."""
    lines = [f"{'config':<10} {'backend':<16} {'device':<6} {'median ms':>10} {'p95 ms':>9} {'fps':>7} {'x naive':>8}"]
    for r in rows:
        if r["stage"] != "per_frame":
            continue
        if not r["available"]:
            continue
        lines.append(f"{r['config']:<10} {r['backend']:<16} {r['device']:<6} {r['median_ms']:>10.3f} {r['p95_ms']:>9.3f} "
                     f"{r.get('fps', 0):>7.1f} {_fmt(r['speedup_vs_naive'], '8.2f')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
