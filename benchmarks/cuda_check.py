"""The PyTorch CUDA per-frame path checked against float32 on the CPU, and timed (needs a GPU).

    python -m benchmarks.cuda_check [--config vox256] [--frames 30] [--json OUT]

For fp32 (with and without TF32 convolutions), fp16 and bf16 on the GPU: the largest and mean
pixel differences of the per-frame path (regions -> relative transfer -> animate on the cached
source) against fp32 on the CPU over a synthetic face clip, and the median milliseconds per
frame (batch 1, synchronised). Also a CUDA graph capture of the whole per-frame path (it has no
host syncs), replayed and compared with eager, and the official-style path that recomputes the
source every frame. Random weights (speed and precision effects do not need trained ones).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

import nets

from export.cudagraph import capture


def _per_frame(model, cache, initial):
    def step(frame):
        new = model.transfer(cache.regions, model.regions(frame), initial, mode="relative")
        return model.animate_cached(cache, new, with_deformed=False).prediction
    return step


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, frames, warmup=3):
    ts = []
    for i, f in enumerate(frames):
        _sync()
        t = time.perf_counter()
        fn(f)
        _sync()
        if i >= warmup:
            ts.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(ts), 2)


def run(args) -> dict:
    from .export_bench import random_weights
    from export.verify import synthetic_clip, synthetic_face

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to PyTorch")
    base = random_weights(nets.build_model(args.config), 0)
    s = base.frame_size
    source = torch.from_numpy(synthetic_face(s, seed=1))
    clip = torch.from_numpy(synthetic_clip(s, args.frames, seed=2))
    n_ref = min(args.ref_frames, args.frames)
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "none (dry run)"
    result = {"gpu": gpu, "torch": torch.__version__, "config": args.config,
              "frames": args.frames, "paths": {}}
    with torch.inference_mode():
        cache = base.prepare_source(source)
        init = base.regions(clip[:1])
        step = _per_frame(base, cache, init)
        ref = torch.cat([step(clip[i:i + 1]) for i in range(n_ref)]).numpy()

    def check(name, dtype, tf32=True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        model = nets.MRAA(base.config).eval()
        model.load_state_dict(base.state_dict())
        model = model.to(dev, dtype)
        frames = [clip[i:i + 1].to(dev, dtype) for i in range(args.frames)]
        with torch.inference_mode():
            cache = model.prepare_source(source.to(dev, dtype))
            step = _per_frame(model, cache, model.regions(frames[0]))
            out = torch.cat([step(frames[i]) for i in range(n_ref)]).float().cpu().numpy()
            d = np.abs(out - ref)
            entry = {"max_diff_255": round(float(d.max()) * 255, 3), "mean_diff_255": round(float(d.mean()) * 255, 4),
                     "ms_per_frame_eager": _time(step, frames)}
            if args.graphs:
                static_in = frames[0].clone()
                g, static_out = capture(lambda: step(static_in), warmup=2)

                def replay(frame):
                    static_in.copy_(frame)
                    g.replay()
                    return static_out

                graph_out = []
                for i in range(n_ref):
                    graph_out.append(replay(frames[i]).float().cpu().numpy().copy())
                dg = np.abs(np.concatenate(graph_out) - out)
                entry["cuda_graph_vs_eager_max_abs"] = float(f"{dg.max():.3g}")
                entry["ms_per_frame_cuda_graph"] = _time(replay, frames)
            if name == "fp32_tf32":
                src = source.to(dev, dtype)

                def official(frame):
                    rs = model.regions(src)
                    new = model.transfer(rs, model.regions(frame), model.regions(frames[0]), mode="relative")
                    return model.animate(src, rs, new).prediction
                entry["ms_per_frame_official_style"] = _time(official, frames)
        result["paths"][name] = entry
        print(name, entry, file=sys.stderr, flush=True)

    check("fp32_tf32", torch.float32, tf32=True)
    check("fp32_strict", torch.float32, tf32=False)
    if dev.type == "cuda":
        check("fp16", torch.float16)
    check("bf16", torch.bfloat16)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cuda_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vox256")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--ref-frames", type=int, default=6, help="frames compared with the CPU fp32 reference")
    p.add_argument("--no-graphs", dest="graphs", action="store_false", help="skip the CUDA graph capture")
    p.add_argument("--device", default="cuda", help="cuda (cpu: a dry run of the script itself, with --no-graphs)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
