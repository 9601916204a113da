"""mra-train's user errors: one line starting with 'error:', exit status 2, no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nets
from nets.errors import run_cli
from nets.train.cli import run

from synthetic import make_dataset
from train_support import ROOT, cli, train_env  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), "frames", num_ids=2, clips_per_id=1, frames=4, size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("runs") / "done"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(run, ["--config", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "1",
                             "--batch-size", "2", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def one_error(capsys, argv, *needles):
    code = cli(*argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_data_errors(tmp_path, capsys):
    one_error(capsys, ["--config", "tiny", "--data", tmp_path / "missing", "--out", tmp_path / "o"], "not found")
    (tmp_path / "d" / "test").mkdir(parents=True)
    one_error(capsys, ["--config", "tiny", "--data", tmp_path / "d", "--out", tmp_path / "o"], "no train/ split")
    (tmp_path / "d" / "train").mkdir()
    one_error(capsys, ["--config", "tiny", "--data", tmp_path / "d", "--out", tmp_path / "o"], "holds no videos")
    one_error(capsys, ["--config", "tiny", "--out", tmp_path / "o"], "--data")


def test_config_and_option_errors(tmp_path, capsys, data):
    one_error(capsys, ["--config", "nope", "--data", data, "--out", tmp_path / "o"], "unknown config", "nope")
    one_error(capsys, ["--data", data, "--out", tmp_path / "o"], "--config is required")
    one_error(capsys, ["--config", "tiny", "--data", data], "--out")
    one_error(capsys, ["--config", "tiny", "--data", data, "--out", tmp_path / "o", "--amp", "fp16",
                       "--device", "cpu"], "fp16")
    one_error(capsys, ["--config", "tiny", "--data", data, "--out", tmp_path / "o", "--batch-size", 0], "--batch-size")
    one_error(capsys, ["--config", "tiny", "--data", data, "--out", tmp_path / "o", "--batch-size", 500],
              "lower --batch-size")
    one_error(capsys, ["--config", "tiny", "--data", data, "--out", tmp_path / "o", "--amp", "fp8"], "--amp")
    one_error(capsys, ["--config", "tiny", "--data", data, "--out", tmp_path / "o", "--stage", "avd"],
              "--stage avd --resume")


def test_run_directory_errors(tmp_path, capsys, data, trained):
    one_error(capsys, ["--out", tmp_path / "empty", "--resume"], "no checkpoint.pth")
    one_error(capsys, ["--config", "tiny", "--data", data, "--out", trained], "already holds a checkpoint", "--resume")
    one_error(capsys, ["--out", trained, "--resume", "--size", 128], "--size")
    one_error(capsys, ["--out", trained, "--resume", "--config", "vox256"], "differ")
    one_error(capsys, ["--out", trained, "--resume", "--lr", "0.1"], "--lr")
    one_error(capsys, ["--stage", "avd", "--resume", trained, "--batch-size", 1], "--batch-size >= 2")
    one_error(capsys, ["--out", tmp_path / "o", "--resume", "--init", trained / "checkpoint.pth"], "exclude")
    one_error(capsys, ["--export-official", tmp_path / "x.pth", "--out", tmp_path / "empty"], "no checkpoint.pth")
    official = tmp_path / "official.pth"
    nets.save_official(nets.build_model("tiny"), official)
    one_error(capsys, ["--init", official, "--data", data, "--out", tmp_path / "o2"], "--config")
    one_error(capsys, ["--init", official, "--config", "vox256", "--data", data, "--out", tmp_path / "o3"],
              "does not fit")


def test_auto_resume_starts_or_continues(tmp_path, capsys, data):
    argv = ["--config", "tiny", "--data", data, "--out", tmp_path / "slot", "--auto-resume", "--batch-size", 2,
            "--vis-every", 0]
    assert cli(*argv, "--max-steps", 1) == 0
    assert cli(*argv, "--max-steps", 2) == 0
    assert torch.load(tmp_path / "slot" / "checkpoint.pth", weights_only=True)["train"]["step"] == 2


def test_console_script_entry_point(tmp_path):
    """``python -m nets.train.cli`` (what the mra-train script runs) reports errors the same way."""
    proc = subprocess.run([sys.executable, "-m", "nets.train.cli", "--config", "tiny", "--data",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data directory not found") and proc.stderr.count("\n") == 1
