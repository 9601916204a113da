"""Training throughput: a few steps of ``mra-train`` per variant, steady-state steps/s from losses.csv.

    python -m benchmarks.train_bench --config tiny --data DATA --steps 30 --batch-size 4 [--variants fp32 bf16 ...]

Variants: ``fp32``, ``bf16`` (autocast), ``bf16cl`` (autocast + channels_last), ``fp32cl``. Each runs a
fresh run directory under ``--out`` with the same seed, so their loss curves can be compared step by
step. The first ``--warmup`` steps are excluded from the rate (allocator, cuDNN autotuning).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nets.train.logs import read_losses
from nets.train.loop import TrainOptions, train

VARIANTS = {"fp32": ("none", False), "fp32cl": ("none", True), "bf16": ("bf16", False), "bf16cl": ("bf16", True)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_bench")
    p.add_argument("--config", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--device")
    p.add_argument("--vgg-weights", type=Path)
    p.add_argument("--preload", action="store_true")
    p.add_argument("--log-every", type=int)
    p.add_argument("--variants", nargs="+", default=["fp32"], choices=sorted(VARIANTS))
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="mra-bench-"))
    results = {}
    curves = {}
    for name in args.variants:
        amp, cl = VARIANTS[name]
        run_dir = out / name
        opts = TrainOptions(out=run_dir, data=args.data, config=args.config, max_steps=args.steps,
                            batch_size=args.batch_size, workers=args.workers, device=args.device, amp=amp,
                            channels_last=cl, vgg_weights=args.vgg_weights, preload=args.preload,
                            checkpoint_every=0, vis_every=0, progress=False,
                            log_every=args.log_every)
        import torch
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        res = train(opts)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        rows = read_losses(run_dir / "losses.csv")
        w = next((i for i, r in enumerate(rows) if r["step"] >= args.warmup), 0)
        w = min(w, len(rows) - 2)
        span = rows[-1]["seconds"] - rows[w]["seconds"]
        rate = (rows[-1]["step"] - rows[w]["step"]) / span if span > 0 else float("nan")
        curves[name] = [r["loss"] for r in rows]
        batch = json.loads((run_dir / "train_info.json").read_text())["batch_size_per_process"]
        results[name] = {"steps_per_s": round(rate, 3), "batch": batch, "samples_per_s": round(rate * batch, 2),
                         "loss_first5": round(sum(curves[name][:5]) / 5, 4),
                         "loss_last5": round(sum(curves[name][-5:]) / 5, 4), "loss": res.loss_kind}
        if peak is not None:
            results[name]["peak_gpu_memory_gib"] = round(peak, 2)
    base = args.variants[0]
    for name in args.variants[1:]:
        diffs = [abs(a - b) / max(abs(a), 1e-9) for a, b in zip(curves[base], curves[name])]
        results[name][f"max_rel_loss_diff_vs_{base}"] = round(max(diffs), 4)
        results[name][f"mean_rel_loss_diff_vs_{base}"] = round(sum(diffs) / len(diffs), 4)
    print(json.dumps({"config": args.config, "steps": args.steps, "warmup": args.warmup, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
