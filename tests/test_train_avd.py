"""mra-train --stage avd: the AVD network trained on frozen regions, usable by mode='avd'."""
import pytest
import torch

import nets
from nets.regions import Regions
from nets.train.avd import rescale
from nets.train.logs import read_losses

from synthetic import make_dataset
from train_support import cli, train_env  # noqa: F401


def test_rescale_multiplies_by_a_diagonal():
    r = Regions(shift=torch.rand(2, 3, 2), affine=torch.rand(2, 3, 2, 2))
    s = torch.tensor([[1.2, 0.9], [0.8, 1.1]])
    out = rescale(r, s)
    d = torch.diag_embed(s)[:, None]  # (B, 1, 2, 2)
    assert torch.allclose(out.shift, (d @ r.shift.unsqueeze(-1)).squeeze(-1))
    assert torch.allclose(out.affine, d @ r.affine)
    assert torch.allclose(out.covar, out.affine @ out.affine.transpose(-1, -2))


def test_avd_stage_trains_and_is_used_by_mode_avd(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", "frames", num_ids=3, clips_per_id=1, frames=8, size=64)
    run_dir = tmp_path / "run"
    assert cli("--config", "tiny", "--data", data, "--out", run_dir, "--max-steps", 4, "--batch-size", 2,
               "--vis-every", 0) == 0
    assert cli("--stage", "avd", "--resume", run_dir, "--max-steps", 30, "--batch-size", 16,
               "--checkpoint-every", 0) == 0
    rows = read_losses(run_dir / "losses_avd.csv")
    assert len(rows) == 30
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert (run_dir / "reconstruction.pth").exists()  # the reconstruction stage's checkpoint is kept
    ck = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert ck["has_avd"] is True and ck["train"]["stage"] == "avd" and ck["train"]["loss"] == "avd_l1"
    # the region predictor was frozen: identical to the reconstruction stage's
    rec = torch.load(run_dir / "reconstruction.pth", weights_only=True)
    for k, v in rec["model"].items():
        if not k.startswith("avd_network."):
            assert torch.equal(v, ck["model"][k]), k
    model = nets.load_model(run_dir / "checkpoint.pth")
    assert model.has_avd
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        src, drv = model.regions(x), model.regions(x.flip(0))
        new = model.transfer(src, drv, mode="avd")
        out = model.animate(x, src, new)
    assert new.shift.shape == (2, 4, 2) and out.prediction.shape == (2, 3, 64, 64)
    # continue the AVD stage; the reconstruction stage cannot resume from it
    assert cli("--stage", "avd", "--resume", run_dir, "--max-steps", 32, "--batch-size", 16) == 0
    assert torch.load(run_dir / "checkpoint.pth", weights_only=True)["train"]["step"] == 32
    capsys.readouterr()
    assert cli("--resume", run_dir, "--max-steps", 40) == 2
    assert "--stage avd" in capsys.readouterr().err
