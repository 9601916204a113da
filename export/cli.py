"""``mra-export``: a checkpoint (official or own) -> a verified ONNX export directory.

    mra-export CHECKPOINT --out DIR [--config PRESET|YAML] [--size 256] [--fp16]
               [--int8 --calibration PATH] [--opset N] [--threads N]
"""
from __future__ import annotations

import sys
from typing import Sequence

from nets.errors import ArgumentParser, UserError, run_cli


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mra-export", description="Export an MRAA checkpoint to ONNX graphs (source, "
                       "regions, animate, avd) with manifest.json, verified against PyTorch.")
    p.add_argument("checkpoint", help="checkpoint file: official MRAA layout (needs --config) or mra-live's own")
    p.add_argument("--out", required=True, help="output directory: a new folder, or an earlier export, which is "
                   "replaced as a whole once the new export is verified (a failed export leaves it as it was)")
    p.add_argument("--config", help="preset (vox256, taichi256, ted384, mgif256, ...) or YAML file; required for "
                   "official checkpoints, optional for own ones (their config is embedded)")
    p.add_argument("--size", type=int, help="frame size of the exported graphs (default: the config's)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs (*.fp16.onnx) for GPUs")
    p.add_argument("--int8", action="store_true", help="also write int8 (QDQ) regions and animate graphs for CPUs "
                   "(needs --calibration)")
    p.add_argument("--calibration", help="video, image folder or folder of videos with real frames for --int8")
    p.add_argument("--calibration-frames", type=int, default=64, help="frames to calibrate with (default 64)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17; at least 16 for GridSample)")
    p.add_argument("--threads", type=int, help="CPU threads for verification and int8 timing (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def cli(argv: "Sequence[str] | None" = None) -> int:
    """mra-export: see ``mra-export --help``. Exit 1 when the export fails its verification."""
    args = build_parser().parse_args(argv)
    from . import onnx as ox

    if args.int8 and not args.calibration:
        raise UserError("--int8 needs --calibration PATH (a video, an image folder or a folder of videos with "
                        "real frames)")
    if args.calibration and not args.int8:
        raise UserError("--calibration is only used with --int8")
    if args.opset is not None and args.opset < ox.MIN_OPSET:
        raise UserError(f"--opset must be at least {ox.MIN_OPSET} (GridSample), got {args.opset}")
    if args.size is not None and (args.size < 16 or args.size % 8):
        raise UserError(f"--size must be a multiple of 8 and at least 16, got {args.size}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")

    from tqdm import tqdm

    from .pipeline import check_export_dir, export_model, load_for_export
    from .verify import VerificationError

    out = check_export_dir(args.out)  # before the checkpoint is read: fail fast

    steps = tqdm(total=None, bar_format="{desc} [{elapsed}]", file=sys.stderr, disable=args.quiet)

    def progress(msg: str) -> None:
        steps.set_description_str(f"mra-export: {msg}")

    try:
        progress("loading the checkpoint")
        model, provenance = load_for_export(args.checkpoint, args.config, args.size)
        calibration = None
        if args.int8:
            from .quantize import CalibrationSet

            progress("reading calibration frames")
            calibration = CalibrationSet.from_path(args.calibration, model.frame_size, args.calibration_frames)
        manifest = export_model(model, out, opset=args.opset or ox.DEFAULT_OPSET, fp16=args.fp16,
                                calibration=calibration, checkpoint=provenance, threads=args.threads,
                                progress=progress)
    except VerificationError as e:
        steps.close()
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except OSError as e:
        steps.close()
        raise UserError(f"cannot write to {args.out}: {e.strerror or e}") from None
    finally:
        steps.close()
    if not args.quiet:
        fp32 = manifest.variants["fp32"].verification
        lines = [f"exported {manifest.config_name} ({manifest.frame_size}px, {', '.join(manifest.graphs)}) to "
                 f"{args.out} in {manifest.export_seconds:.0f} s",
                 f"fp32 max difference to PyTorch: {fp32.get('max_diff', float('nan')):.2g}"]
        if "fp16" in manifest.variants:
            lines.append(f"fp16 max difference to PyTorch: {manifest.variants['fp16'].verification['max_diff']:.2g}")
        if "int8" in manifest.variants:
            q = manifest.variants["int8"].quality
            lines.append(f"int8 on {q['held_out_frames']} held-out frames: {q['ms_per_frame_int8']} ms/frame vs "
                         f"fp32 {q['ms_per_frame_fp32']} ms ({q['speedup']}x), pixel difference max "
                         f"{q['max_diff_255']:.1f} mean {q['mean_diff_255']:.2f} (of 255)")
        print("\n".join(lines))
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    """Console entry point: 0, 1 (verification failed), 2 with one ``error:`` line, 130 on Ctrl-C."""
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
