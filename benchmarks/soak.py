"""Soak run of mra-live: a looping video file as the camera, a file sink, memory sampled meanwhile.

Runs ``python -m live.live`` in a child process for ``--minutes`` (the camera loops, so the loop
never runs dry), samples the child's resident memory (``/proc/PID/status`` VmRSS) every
``--every`` seconds, and reports the least-squares slope of RSS over time after a warm-up, the
output rate, latency and the longest gap between two output frames (from mra-live's ``--stats``).

    python benchmarks/soak.py --camera talk.mp4 --minutes 10 --json soak.json

Linux only (reads /proc). Extra arguments after ``--`` go to mra-live unchanged.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import status_kb  # noqa: E402
from nets.errors import ArgumentParser, UserError, run_cli  # noqa: E402


def rss_mb(pid: int) -> "float | None":
    """Resident memory of a process in MB, None once it has exited."""
    kb = status_kb("VmRSS", pid)
    return None if kb is None else kb / 1024


def slope_mb_per_min(times_s: Sequence[float], rss: Sequence[float]) -> float:
    """Least-squares slope of ``rss`` (MB) against ``times_s`` (seconds), in MB per minute."""
    t = np.asarray(times_s, dtype=np.float64)
    y = np.asarray(rss, dtype=np.float64)
    if len(t) < 2 or np.ptp(t) == 0:
        return float("nan")
    return float(np.polyfit(t / 60.0, y, 1)[0])


def parse_args(argv):
    p = ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--camera", required=True, help="video file played (looping) as the camera")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the slope (model load, caches)")
    p.add_argument("--output", default=None, help="file sink of mra-live (default: a temporary .mp4, deleted)")
    p.add_argument("--json", help="write the samples and the summary there")
    p.add_argument("extra", nargs="*", help="arguments for mra-live (after --)")
    return p.parse_args(argv)


def main(argv: "Sequence[str] | None" = None) -> int:
    args = parse_args(argv)
    if not Path(args.camera).is_file():
        raise UserError(f"camera video not found: {args.camera}")
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        output = args.output or str(Path(tmp) / "soak.mp4")
        cmd = [sys.executable, "-m", "live.live", "--camera", args.camera, "--loop", "--output", output,
               "--stats", str(stats_path), "--quiet", *args.extra]
        print("+", " ".join(cmd), flush=True)
        child = subprocess.Popen(cmd, cwd=ROOT)
        t0 = time.monotonic()
        times, rss = [], []
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                if child.poll() is not None:
                    raise UserError(f"mra-live exited early with status {child.returncode}")
                value = rss_mb(child.pid)
                if value is not None:
                    times.append(time.monotonic() - t0)
                    rss.append(value)
                time.sleep(args.every)
            child.send_signal(signal.SIGINT)  # mra-live stops cleanly and writes --stats
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    after = [i for i, t in enumerate(times) if t >= args.warmup]
    summary = {
        "minutes": args.minutes, "samples": len(rss),
        "rss_mb_first_after_warmup": rss[after[0]] if after else None,
        "rss_mb_last": rss[-1] if rss else None, "rss_mb_max": max(rss) if rss else None,
        "rss_slope_mb_per_min": slope_mb_per_min([times[i] for i in after], [rss[i] for i in after]),
        "frames_out": stats.get("frames_out"), "fps_out": stats.get("fps_out"),
        "latency_ms": stats.get("latency_ms"), "max_output_gap_ms": stats.get("max_output_gap_ms"),
        "stalls_over_1s": stats.get("stalls_over_1s"), "frames_dropped": stats.get("frames_dropped"),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "times_s": times, "rss_mb": rss,
                                               "stats": stats, "command": cmd}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
