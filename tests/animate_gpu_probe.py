"""Throughput of mra-animate on a GPU: the engine alone (batch 1/8/32, fp32 and bf16) and the whole
command (decode + crop + engine + H.264/AAC encode) at several --batch-size values.

    python tests/animate_gpu_probe.py WORK_DIR [--device cuda] [--config vox256] [--frames 300]

Random weights (the networks' cost does not depend on them). Prints and writes WORK_DIR/gpu_probe.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def engine_ms(eng, x, batch, seconds=2.0):
    avatar = eng.prepare_source(x[:1])
    init = eng.regions(x[:1])
    xb = x[:batch]
    for _ in range(3):
        eng.animate(avatar, eng.transfer(avatar, eng.regions(xb), init))
    if eng.device.startswith("cuda"):
        torch.cuda.synchronize()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        eng.animate(avatar, eng.transfer(avatar, eng.regions(xb), init))  # numpy out: synchronised
        n += batch
    return 1000 * (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("work")
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", default="vox256")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--batches", default="1,8,32")
    args = p.parse_args()
    import nets
    from export.torch_engine import TorchEngine
    from mediagen import count_frames, make_video, pattern, save_image, tone

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    r: dict = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
               "torch": torch.__version__, "config": args.config}
    torch.manual_seed(0)
    ckpt = work / f"{args.config}.pth"
    nets.save_model(nets.build_model(args.config), ckpt)
    size = nets.load_config(args.config).frame_size
    src = save_image(work / "src.png", pattern(512, 512, 0.3))
    drv = make_video(work / "drv.mp4", n=args.frames, size=(512, 512), fps=25,
                     audio=tone(48000, args.frames / 25 + 0.5, [(1.0, 0.1)]))

    x = np.random.default_rng(0).random((max(batches), 3, size, size), dtype=np.float32)
    outs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and args.device != "cuda":
            continue
        eng = TorchEngine(nets.load_model(ckpt), device=args.device, dtype=dtype)
        for b in batches:
            r[f"engine_{name}_b{b}_ms_per_frame"] = round(engine_ms(eng, x, b), 3)
            print(json.dumps({k: v for k, v in r.items() if k.startswith(f"engine_{name}_b{b}")}), flush=True)
        avatar = eng.prepare_source(x[:1])
        outs[name] = eng.animate(avatar, eng.transfer(avatar, eng.regions(x[:8]), eng.regions(x[:1])))
        del eng
    if "bf16" in outs:
        r["bf16_vs_fp32_mean_abs_diff"] = float(np.abs(outs["bf16"] - outs["fp32"]).mean())

    for b in batches:
        out = work / f"out_b{b}.mp4"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "live.animate", "--source", str(src), "--driving", str(drv),
                               "--output", str(out), "--checkpoint", str(ckpt), "--crop", "none", "--device",
                               args.device, "--batch-size", str(b)], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        r[f"cli_b{b}"] = {"rc": proc.returncode, "wall_s": round(wall, 2), "stdout": proc.stdout.strip()[-300:],
                          "stderr": proc.stderr.strip()[-500:],
                          "frames": count_frames(out) if out.exists() else 0}
        print(json.dumps(r[f"cli_b{b}"]), flush=True)
    (work / "gpu_probe.json").write_text(json.dumps(r, indent=1))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
