"""Helpers shared by the training tests (fixtures are imported into each test module)."""
from pathlib import Path

import pytest
import torch

from nets.errors import run_cli
from nets.train.cli import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def train_env(tmp_path, monkeypatch):
    """An empty torch hub dir (so the fallback loss is used unless a test passes --vgg-weights), and
    one intra-op thread: these tiny models gain nothing from more, and on a shared 2-core machine
    OpenMP threads that wait for each other make a step 10x slower."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*argv) -> int:
    """Run mra-train in-process (no progress bar); returns the exit status."""
    try:
        return run_cli(run, [str(a) for a in argv] + ["--no-progress"])
    except SystemExit as e:  # argparse errors
        return int(e.code)
