"""User-facing tools: mra-animate, mra-live, mra-web, mra-prepare.

OpenMP threads spin while they wait by default; on a small CPU shared with capture, face
tracking and encoding threads that makes PyTorch many times slower (measured here: 2.8 s instead
of 88 ms per lite256 frame with 2 threads under load). The tools therefore ask for passive
waiting before torch is imported (an explicit OMP_WAIT_POLICY in the environment wins).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _launch(tool: str):
    def run() -> None:
        from nets.errors import launch
        launch(f"live.{tool}")
    run.__doc__ = f"The console script of live.{tool} (Ctrl-C while it imports: exit 130)."
    return run


mra_animate, mra_prepare, mra_live, mra_web, mra_serve = (
    _launch(tool) for tool in ("animate", "prepare", "live", "web", "serve"))
