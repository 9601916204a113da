"""``mra-train``: self-supervised training of MRAA on a folder of videos (see docs/training.md).

Examples::

    mra-train --config vox256 --data data/vox --out runs/vox            # new run
    mra-train --out runs/vox --resume                                     # continue it
    mra-train --stage avd --resume runs/vox                               # then the AVD stage
    mra-train --config vox256 --init vox256.pth --data data/cats --size 512 --out runs/cats512
    torchrun --nproc_per_node 8 -m nets.train.cli --config vox256 --data data/vox --out runs/vox
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ..errors import ArgumentParser, EXIT_INTERRUPTED, UserError, entry_point


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-train", description="Train MRAA (reconstruction stage, then AVD stage) on videos.")
    p.add_argument("--config", help="preset name (vox256, taichi256, ted384, mgif256, tiny, ...) or a YAML file; "
                                    "required for a new run")
    p.add_argument("--data", type=Path, help="dataset root with train/ (and test/) splits; a resumed run "
                                             "defaults to the one it was trained on")
    p.add_argument("--out", type=Path, help="run directory (checkpoint.pth, losses.csv, vis/, tb/)")
    p.add_argument("--stage", choices=("reconstruction", "avd"), default="reconstruction")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (default: --out) from its checkpoint.pth")
    p.add_argument("--auto-resume", action="store_true",
                   help="resume when --out holds a checkpoint, else start a new run (for repeated short slots)")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT",
                   help="start a new run from these weights (own checkpoint, or official with --config)")
    p.add_argument("--max-steps", type=int, help="stop at this global step (the LR schedule is not rescaled)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this session; stops cleanly with a "
                                                     "checkpoint before it runs out")
    p.add_argument("--batch-size", type=int, help="batch per process (default: the config's)")
    p.add_argument("--workers", type=int, help="dataloader worker processes per training process")
    p.add_argument("--size", type=int, help="frame size to train at (default: the config's frame_size)")
    p.add_argument("--lr", type=float, help="learning rate of a new run (default: the config's)")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints "
                                                                                  "(0: only at exit)")
    p.add_argument("--vis-every", type=int, default=500, metavar="N", help="steps between visualisation PNGs (0: none)")
    p.add_argument("--vgg-weights", type=Path, metavar="PATH", help="torchvision VGG19 state dict "
                                                                    "(default: torchvision's cache)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype (bf16 on GPUs)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPUs)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    p.add_argument("--preload", action="store_true", help="decode the whole dataset into memory once (uint8)")
    p.add_argument("--log-every", type=int, metavar="N", help="steps per losses.csv row (their mean) and per host "
                                                              "sync (default: 1 on the CPU, 10 on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--export-official", type=Path, metavar="PATH",
                   help="write the run's model (--out or --resume RUN_DIR) in the official MRAA layout and exit")
    return p


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def run(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("max_steps", "batch_size", "size", "lr", "max_minutes", "log_every"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    for name in ("workers", "checkpoint_every", "vis_every"):
        _positive("--" + name.replace("_", "-"), getattr(args, name), allow_zero=True)

    if args.export_official is not None:
        return _export(args)

    from .loop import TrainOptions, train

    opts = TrainOptions(
        out=args.out, data=args.data, config=args.config, stage=args.stage,
        resume=args.resume is not None, resume_dir=Path(args.resume) if args.resume else None,
        auto_resume=args.auto_resume, init=args.init, max_steps=args.max_steps, max_minutes=args.max_minutes,
        batch_size=args.batch_size, workers=args.workers, size=args.size, lr=args.lr,
        checkpoint_every=args.checkpoint_every, vis_every=args.vis_every, vgg_weights=args.vgg_weights,
        amp=args.amp, channels_last=args.channels_last, device=args.device, seed=args.seed, sync_bn=args.sync_bn,
        preload=args.preload, progress=not args.no_progress, log_every=args.log_every)
    result = train(opts)
    if result.stopped == "interrupted":
        print(f"interrupted at step {result.step}; checkpoint saved to {result.checkpoint}; continue with "
              f"--resume {result.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _export(args) -> int:
    import nets
    from .state import checkpoint_path

    run_dir = Path(args.resume) if args.resume else args.out
    if run_dir is None:
        raise UserError("--export-official needs the run: --out RUN_DIR (or --resume RUN_DIR)")
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise UserError(f"no checkpoint.pth in {run_dir}")
    import warnings

    model = nets.load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no trained AVD network": said below
        nets.save_official(model, args.export_official)
    print(f"wrote {args.export_official} (official MRAA layout{'' if model.has_avd else ', without avd_network'})",
          file=sys.stderr)
    return 0


main = entry_point(run)

if __name__ == "__main__":
    main()
