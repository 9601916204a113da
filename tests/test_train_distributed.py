"""Two CPU processes under torchrun (gloo): DDP training steps, rank 0 writes the run."""
import os
import subprocess
import sys

import pytest
import torch

import nets
from nets.train.logs import read_losses

from synthetic import make_dataset
from train_support import ROOT, train_env  # noqa: F401


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    data = make_dataset(tmp_path / "data", "frames", num_ids=4, clips_per_id=1, frames=6, size=64)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "nets.train.cli", "--config", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "3",
           "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--vis-every", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["train"]["world_size"] == 2 and ck["train"]["step"] == 3
    # 2 processes x batch 2 per step
    assert ck["train"]["epoch_samples"] == 12
    rows = read_losses(out / "losses.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert proc.stderr.count("stopped (max_steps) at step 3") == 1  # only rank 0 reports
    model = nets.load_model(out / "checkpoint.pth")
    assert model.config.name == "tiny"
    assert (out / "vis" / "reconstruction_0000002.png").exists()
