"""User-facing tools: mra-animate, mra-live, mra-web, mra-serve (and the console script of mra-prepare).

OpenMP threads spin while they wait by default; on a small CPU shared with capture, face
tracking and encoding threads that makes PyTorch many times slower (measured here: 2.8 s instead
of 88 ms per lite256 frame with 2 threads under load). The tools therefore ask for passive
waiting before torch is imported (an explicit OMP_WAIT_POLICY in the environment wins).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Each command and the module whose ``main()`` it runs (its command line is there too).
COMMANDS = {
    "mra-animate": "live.animate",         # a portrait + a driving video -> a video file
    "mra-live": "live.live",               # webcam -> virtual camera / window (the loop: live.loop)
    "mra-web": "live.web.app",             # the browser UI (upload tab and webcam tab)
    "mra-serve": "live.serve",             # the networks as a worker for --worker (client: live.remote.client)
    "mra-prepare": "nets.train.prepare",   # raw videos -> the training data layout (nets.train.layout)
}


def _launch(command: str):
    target = COMMANDS[command]

    def run() -> None:
        from nets.errors import launch
        launch(target)
    run.__doc__ = f"The console script {command}: {target}.main() (Ctrl-C while it imports: exit 130)."
    return run


mra_animate, mra_live, mra_web, mra_serve, mra_prepare = (
    _launch(command) for command in ("mra-animate", "mra-live", "mra-web", "mra-serve", "mra-prepare"))
