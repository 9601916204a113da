"""GPU checks of the PyTorch CUDA path: no host syncs, CUDA graphs, fp16/bf16 against fp32.

    python benchmarks/gpu_checks.py --json out.json [--configs lite256 vox256]

For each config (random weights, fixed seed): the per-frame path (regions -> relative transfer
-> cached animation) runs under ``torch.cuda.set_sync_debug_mode("error")`` (any host sync
raises); TorchEngine with CUDA graphs equals eager fp32; fp16 and bf16 (autocast) are compared
with fp32 (max / mean absolute difference of the output frame in [0, 1]); per-frame times with
and without graphs. Runs from the source tree on a GPU machine (PyTorch >= 2.4).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nets  # noqa: E402
from export.torch_engine import TorchEngine  # noqa: E402


def frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames (a moving blob on a gradient), ``(n, 1, 3, S, S)`` float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        cx, cy = 0.5 + 0.1 * np.sin(i / 3), 0.5 + 0.1 * np.cos(i / 4)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
        img = np.stack([0.3 + 0.5 * blob, 0.2 + 0.3 * xx, 0.4 * yy + 0.3 * blob], 0)
        out.append((img + rng.normal(0, 0.01, img.shape)).clip(0, 1).astype(np.float32)[None])
    return np.stack(out)


def time_engine(engine, avatar, init, seq, reps=3):
    ts = []
    for _ in range(reps):
        for f in seq:
            torch.cuda.synchronize()
            t = time.perf_counter()
            engine.animate(avatar, engine.transfer(avatar, engine.regions(f), init, "relative"))
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1000)
    return float(np.median(ts[len(seq):]))


def check(config: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = nets.build_model(config).eval()
    # realistic-scale random weights: BN statistics are left at their initial values
    s = model.frame_size
    seq = frames(12, s, seed)
    src = seq[0]
    res: dict = {"config": config}

    # 1. no host syncs in the per-frame path (device tensors in, device tensors out)
    dev = torch.device("cuda")
    m = model.to(dev)
    with torch.inference_mode():
        src_t = torch.as_tensor(src, device=dev)
        rs = m.regions(src_t)
        cache = m.prepare_source(src_t, rs)
        ri = m.regions(torch.as_tensor(seq[1], device=dev))
        drv = torch.as_tensor(seq[2], device=dev)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            rd = m.regions(drv)
            new = m.transfer(rs, rd, ri, mode="relative")
            m.animate_cached(cache, new, with_deformed=False)
            res["host_syncs_in_per_frame_path"] = "none (set_sync_debug_mode('error') passed)"
        except RuntimeError as e:
            res["host_syncs_in_per_frame_path"] = f"FOUND: {str(e)[:200]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)

    # 2. engines: eager fp32 reference, graphs fp32, fp16 and bf16
    outs = {}
    times = {}
    for name, dtype, graphs in (("fp32-eager", torch.float32, False), ("fp32-graphs", torch.float32, True),
                                ("fp16-graphs", torch.float16, True), ("bf16-graphs", torch.bfloat16, True),
                                ("bf16-eager", torch.bfloat16, False)):
        eng = TorchEngine(model, device="cuda", dtype=dtype, cuda_graphs=graphs)
        av = eng.prepare_source(src)
        init = eng.regions(seq[1])
        outs[name] = np.concatenate([eng.animate(av, eng.transfer(av, eng.regions(f), init, "relative"))
                                     for f in seq[2:]])
        times[name] = time_engine(eng, av, init, seq[2:])
    ref = outs["fp32-eager"]
    res["max_abs_diff_vs_fp32_eager"] = {k: float(np.abs(v - ref).max()) for k, v in outs.items() if k != "fp32-eager"}
    res["mean_abs_diff_vs_fp32_eager"] = {k: float(np.abs(v - ref).mean()) for k, v in outs.items()
                                          if k != "fp32-eager"}
    res["per_frame_ms_engine_numpy_io"] = times
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["lite256", "vox256"])
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "checks": []}
    for c in a.configs:
        r = check(c)
        print(json.dumps(r, indent=1), flush=True)
        results["checks"].append(r)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
