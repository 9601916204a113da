"""mra-train reconstruction stage on a synthetic dataset: learning, exact resume, checkpoints, options."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import nets
from nets.config import preset
from nets.train.logs import read_losses
from nets.train.loop import TrainOptions, train
from nets.train.vgg import VGG19Features

from synthetic import make_dataset
from train_support import ROOT, cli, train_env  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), "frames", num_ids=4, clips_per_id=2, frames=10, size=64)


@pytest.fixture(scope="module")
def small_schedule(tmp_path_factory):
    """tiny with 2 steps per epoch (4 identities, 1 repeat, batch 2) and LR drops after epochs 1 and 2."""
    cfg = preset("tiny")
    cfg.name = "tiny_schedule"
    cfg.train.num_repeats = 1
    cfg.train.batch_size = 2
    cfg.train.epoch_milestones = (1, 2)
    cfg.train.num_epochs = 50
    path = tmp_path_factory.mktemp("cfg") / "tiny_schedule.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def model_state(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pth", weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_reconstruction_loss_goes_down(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert cli("--config", "tiny", "--data", data, "--out", out, "--max-steps", 60, "--lr", "1e-3",
               "--vis-every", 30, "--checkpoint-every", 0, "--seed", 1) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "FALLBACK" in err and "vgg19-dcbb9e9d.pth" in err
    rows = read_losses(out / "losses.csv")
    assert [r["step"] for r in rows] == list(range(1, 61))
    first = sum(r["reconstruction"] for r in rows[:10]) / 10
    last = sum(r["reconstruction"] for r in rows[-10:]) / 10
    assert last < 0.95 * first, (first, last)
    first_t = sum(r["loss"] for r in rows[:10]) / 10
    last_t = sum(r["loss"] for r in rows[-10:]) / 10
    assert last_t < 0.95 * first_t, (first_t, last_t)
    assert (out / "vis" / "reconstruction_0000030.png").exists() and (out / "vis" / "reconstruction_0000060.png").exists()
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["train"]["loss"] == "l1_ssim_pyramid" and ck["train"]["step"] == 60
    assert json.loads((out / "train_info.json").read_text())["loss"] == "l1_ssim_pyramid"
    # the checkpoint is an ordinary model file: no config needed, AVD not trained yet
    model = nets.load_model(out / "checkpoint.pth")
    assert model.config.name == "tiny" and not model.has_avd
    # official layout export
    official = tmp_path / "official.pth"
    assert cli("--export-official", official, "--out", out) == 0
    back = nets.load_model(official, config="tiny")
    assert_same_state({k: v for k, v in back.state_dict().items() if not k.startswith("avd_network.")},
                      {k: v for k, v in model.state_dict().items() if not k.startswith("avd_network.")})


def test_resume_is_bit_identical(tmp_path, data, small_schedule):
    common = ["--config", small_schedule, "--data", data, "--checkpoint-every", 0, "--vis-every", 0, "--workers", 0]
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*common, "--out", a, "--max-steps", 7) == 0
    assert cli(*common, "--out", b, "--max-steps", 3) == 0  # stops mid-epoch 1
    assert model_state(b)["train"]["epoch_samples"] == 2
    assert cli("--out", b, "--resume", "--max-steps", 7, "--no-progress") == 0
    ca, cb = model_state(a), model_state(b)
    assert_same_state(ca["model"], cb["model"])
    ta, tb = ca["train"], cb["train"]
    assert (ta["step"], ta["epoch"], ta["epoch_samples"]) == (tb["step"], tb["epoch"], tb["epoch_samples"]) == (7, 3, 2)
    for sa, sb in zip(ta["optimizer"]["state"].values(), tb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert ta["optimizer"]["param_groups"][0]["lr"] == tb["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-6)
    ra, rb = read_losses(a / "losses.csv"), read_losses(b / "losses.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ra) == strip(rb) and len(ra) == 7
    assert [r["lr"] for r in ra] == pytest.approx([2e-4, 2e-4, 2e-5, 2e-5, 2e-6, 2e-6, 2e-6])


def test_dataloader_workers_do_not_change_the_run(tmp_path, data, small_schedule):
    common = ["--config", small_schedule, "--data", data, "--checkpoint-every", 0, "--vis-every", 0, "--max-steps", 3]
    assert cli(*common, "--out", tmp_path / "w0", "--workers", 0) == 0
    assert cli(*common, "--out", tmp_path / "w2", "--workers", 2) == 0
    assert cli(*common, "--out", tmp_path / "w2b", "--workers", 2) == 0
    w0, w2, w2b = (model_state(tmp_path / n)["model"] for n in ("w0", "w2", "w2b"))
    assert_same_state(w2, w2b)
    assert_same_state(w0, w2)


def test_init_finetunes_at_a_new_size_and_from_official(tmp_path, data, small_schedule):
    base = tmp_path / "base"
    assert cli("--config", small_schedule, "--data", data, "--out", base, "--max-steps", 2, "--vis-every", 0) == 0
    big = tmp_path / "big"
    assert cli("--init", base / "checkpoint.pth", "--data", data, "--out", big, "--size", 96, "--max-steps", 1,
               "--batch-size", 2, "--vis-every", 1) == 0
    ck = model_state(big)
    assert ck["config"]["frame_size"] == 96 and ck["train"]["step"] == 1
    assert (big / "vis" / "reconstruction_0000001.png").exists()
    official = tmp_path / "official.pth"
    m = nets.build_model("tiny")
    m.has_avd = True
    nets.save_official(m, official)
    assert cli("--init", official, "--config", "tiny", "--data", data, "--out", tmp_path / "off", "--max-steps", 1,
               "--batch-size", 2) == 0
    ck = model_state(tmp_path / "off")
    assert ck["config"]["name"] == "tiny" and ck["has_avd"] is False  # stale AVD weights are dropped


def test_perceptual_loss_with_vgg_weights(tmp_path, data):
    torch.manual_seed(0)
    vgg = VGG19Features()
    weights = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, weights)
    out = tmp_path / "run"
    assert cli("--config", "tiny", "--data", data, "--out", out, "--max-steps", 2, "--vgg-weights", weights,
               "--batch-size", 2) == 0
    assert model_state(out)["train"]["loss"] == "vgg19_perceptual"
    info = json.loads((out / "train_info.json").read_text())
    assert info["loss"] == "vgg19_perceptual" and info["vgg_weights"] == str(weights) and len(info["vgg_sha256"]) == 64


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path, data):
    out = tmp_path / "amp"
    assert cli("--config", "tiny", "--data", data, "--out", out, "--max-steps", 3, "--amp", "bf16",
               "--channels-last", "--batch-size", 2) == 0
    rows = read_losses(out / "losses.csv")
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    model = nets.load_model(out / "checkpoint.pth")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


def test_max_minutes_stops_cleanly(tmp_path, data):
    opts = TrainOptions(out=tmp_path / "t", data=data, config="tiny", max_minutes=0.1, vis_every=0,
                        checkpoint_every=0, progress=False, batch_size=2)
    result = train(opts)
    assert result.stopped == "max_minutes" and result.step >= 1
    assert model_state(tmp_path / "t")["train"]["step"] == result.step


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, data):
    out = tmp_path / "int"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nets.train.cli", "--config", "tiny", "--data", str(data),
                             "--out", str(out), "--checkpoint-every", "0", "--vis-every", "0", "--batch-size", "2",
                             "--workers", "1", "--no-progress"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "losses.csv").exists() and len((out / "losses.csv").read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = model_state(out)["train"]["step"]
    assert step >= 2
    assert cli("--out", out, "--resume", "--max-steps", step + 1) == 0
    assert model_state(out)["train"]["step"] == step + 1
    assert [r["step"] for r in read_losses(out / "losses.csv")] == list(range(1, step + 2))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the DataLoader workers of a training process)."""
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the DataLoader workers through /proc")
@pytest.mark.parametrize("how,status,line", [
    ("SIGTERM to a worker", 130, "interrupted at step"),           # passed on to the run: a stop request
    ("SIGTERM to the process group", 130, "interrupted at step"),  # (systemd, docker stop, kill -TERM -PGID)
    ("SIGKILL to a worker", 2, "error: a data loading worker died (DataLoader worker (pid"),
])
def test_a_signal_to_a_dataloader_worker_saves_the_run(tmp_path, data, how, status, line):
    """Issue 21 item 14: a signal to a DataLoader worker (or a worker that dies) used to end the run
    with a traceback and nothing saved; now the run is saved at its last whole step and the last line
    says how to resume, which continues it."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nets.train.cli", "--config", "tiny", "--data", str(data),
                             "--out", str(out), "--checkpoint-every", "0", "--vis-every", "0", "--batch-size", "2",
                             "--workers", "1", "--no-progress"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while time.monotonic() < deadline and not workers:
            if (out / "losses.csv").exists() and len((out / "losses.csv").read_text().splitlines()) >= 3:
                workers = _children(proc.pid)
            time.sleep(0.2)
        assert workers, "no DataLoader worker appeared"
        if how == "SIGTERM to a worker":
            os.kill(workers[0], signal.SIGTERM)
        elif how == "SIGKILL to a worker":
            os.kill(workers[0], signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(line) and last.endswith(f"continue with --resume {out}"), err
    assert "Traceback" not in err
    step = model_state(out)["train"]["step"]
    assert step >= 2 and f"at step {step};" in last
    assert cli("--out", out, "--resume", "--max-steps", step + 1) == 0
    assert model_state(out)["train"]["step"] == step + 1
    assert [r["step"] for r in read_losses(out / "losses.csv")] == list(range(1, step + 2))


def test_log_every_averages_rows(tmp_path, data, small_schedule):
    common = ["--config", small_schedule, "--data", data, "--vis-every", 0, "--checkpoint-every", 0, "--max-steps", 7]
    assert cli(*common, "--out", tmp_path / "every1") == 0
    assert cli(*common, "--out", tmp_path / "every3", "--log-every", 3) == 0
    one = read_losses(tmp_path / "every1" / "losses.csv")
    three = read_losses(tmp_path / "every3" / "losses.csv")
    assert [r["step"] for r in three] == [3, 6, 7]
    assert three[0]["loss"] == pytest.approx(sum(r["loss"] for r in one[:3]) / 3, rel=1e-5)
    assert three[2]["loss"] == pytest.approx(one[6]["loss"], rel=1e-5)
    assert_same_state(model_state(tmp_path / "every1")["model"], model_state(tmp_path / "every3")["model"])


@pytest.fixture(scope="module")
def gan_schedule(tmp_path_factory):
    """tiny with the patch discriminator and feature matching on."""
    cfg = preset("tiny")
    cfg.name = "tiny_gan"
    cfg.train.num_repeats = 1
    cfg.train.batch_size = 2
    cfg.train.gan_weight = 1.0
    cfg.train.feature_matching_weight = 10.0
    path = tmp_path_factory.mktemp("cfg") / "tiny_gan.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_discriminator_trains_and_resumes_bit_identically(tmp_path, data, gan_schedule):
    common = ["--config", gan_schedule, "--data", data, "--checkpoint-every", 0, "--vis-every", 0, "--workers", 0]
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*common, "--out", a, "--max-steps", 5) == 0
    assert cli(*common, "--out", b, "--max-steps", 3) == 0  # stops mid-epoch (2 steps per epoch)
    assert cli("--out", b, "--resume", "--max-steps", 5, "--no-progress") == 0
    ca, cb = model_state(a), model_state(b)
    assert_same_state(ca["model"], cb["model"])
    da, db = ca["train"]["adversary"], cb["train"]["adversary"]
    assert_same_state(da["weights"], db["weights"])
    rows = read_losses(a / "losses.csv")
    assert len(rows) == 5
    for r in rows:  # every term is logged, and the discriminator's LSGAN loss is in a sane range
        assert r["gan"] > 0 and r["feature_matching"] > 0 and 0 < r["discriminator"] < 4
    assert [r for r in read_losses(b / "losses.csv")] and json.loads((a / "train_info.json").read_text())["discriminator"]
    # the discriminator is not part of the model file
    assert not any(k.startswith("discriminator") for k in ca["model"])


def test_discriminator_losses_push_the_right_way():
    from nets.train.discriminator import MultiScaleDiscriminator, discriminator_loss, generator_losses
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator((1.0, 0.5), block_expansion=8)
    real, fake = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    same = generator_losses(disc, real, real, 1.0, 10.0)
    assert float(same.feature_matching.detach()) == 0.0  # identical images: nothing to match
    other = generator_losses(disc, fake, real, 1.0, 10.0)
    assert float(other.feature_matching.detach()) > 0
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(discriminator_loss(disc, fake, real))
    for _ in range(20):
        opt.zero_grad()
        discriminator_loss(disc, fake, real).backward()
        opt.step()
    with torch.no_grad():
        assert float(discriminator_loss(disc, fake, real)) < 0.5 * before


def test_both_stages_implement_the_stage_contract():
    """Every method of nets.train.stage.Stage with its parameters, and the class-level names."""
    import inspect

    from nets.train.avd import AVDStage
    from nets.train.loop import ReconstructionStage
    from nets.train.stage import Stage

    methods = {n: inspect.signature(f) for n, f in vars(Stage).items() if inspect.isfunction(f) and n[0] != "_"}
    assert set(methods) == {"trainable", "inputs", "after_step", "extra_state", "load_extra_state", "visualise"}
    for cls in (ReconstructionStage, AVDStage):
        for name, sig in methods.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == list(sig.parameters), (cls, name)
        assert isinstance(cls.name, str) and cls.csv_name.endswith(".csv") and cls.loss_names


@pytest.fixture(scope="module")
def face_data(tmp_path_factory):
    """The synthetic dataset with landmark sidecars (one frame of each clip without a face)."""
    from synthetic import write_landmarks
    root = make_dataset(tmp_path_factory.mktemp("faces"), "frames", num_ids=4, clips_per_id=2, frames=10, size=64)
    write_landmarks(root, seed=1, no_face=(4,))
    return root


@pytest.fixture(scope="module")
def expression_schedule(tmp_path_factory):
    """tiny (4 regions) with the expression terms of the lite presets: landmarks, expression pairs, region prior on
    all four regions, masked mouth and eye L1."""
    from nets.config import FACE_TARGETS
    cfg = preset("tiny")
    cfg.name = "tiny_expression"
    cfg.train.num_repeats = 1
    cfg.train.batch_size = 2
    cfg.dataset.landmarks = True
    cfg.dataset.expression_pairs = 0.5
    cfg.train.region_prior = FACE_TARGETS
    cfg.train.region_prior_weight = 10.0
    cfg.train.expression_weight = 10.0
    path = tmp_path_factory.mktemp("cfg") / "tiny_expression.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_expression_terms_train_and_resume_bit_identically(tmp_path, face_data, data, expression_schedule):
    common = ["--config", expression_schedule, "--data", face_data, "--checkpoint-every", 0, "--workers", 0]
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*common, "--out", a, "--max-steps", 5, "--vis-every", 5) == 0
    assert cli(*common, "--out", b, "--max-steps", 3, "--vis-every", 0) == 0  # stops mid-epoch (2 steps per epoch)
    assert cli("--out", b, "--resume", "--max-steps", 5, "--no-progress") == 0
    assert_same_state(model_state(a)["model"], model_state(b)["model"])
    ra, rb = read_losses(a / "losses.csv"), read_losses(b / "losses.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ra) == strip(rb) and len(ra) == 5
    for r in ra:  # each term in its own column, and in the total
        assert r["region_prior"] > 0 and r["expression"] > 0
        assert r["loss"] == pytest.approx(sum(r[k] for k in ("reconstruction", "equivariance_shift",
                                                             "equivariance_affine", "region_prior", "expression")),
                                          rel=1e-4)
    assert (a / "vis" / "reconstruction_0000005.png").exists()
    assert json.loads((a / "config.json").read_text())["train"]["region_prior"] == ["mouth", "chin", "right_eye",
                                                                                     "left_eye"]

def test_expression_config_without_sidecars_names_the_fix(tmp_path, data, expression_schedule, capsys):
    assert cli("--config", expression_schedule, "--data", data, "--out", tmp_path / "c", "--max-steps", 1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 8 of the 8 clips") and f"mra-prepare --landmarks-only {data}" in err[-1]


def test_expression_terms_with_bf16_and_channels_last(tmp_path, face_data, expression_schedule):
    out = tmp_path / "amp"
    assert cli("--config", expression_schedule, "--data", face_data, "--out", out, "--max-steps", 2, "--amp", "bf16",
               "--channels-last", "--vis-every", 0) == 0
    rows = read_losses(out / "losses.csv")
    assert len(rows) == 2 and all(np.isfinite(r["region_prior"]) and np.isfinite(r["expression"]) for r in rows)


def test_region_prior_pulls_the_regions_onto_their_points(tmp_path, face_data, expression_schedule):
    """With only the prior (and a high learning rate) the regions reach their face points within a few steps."""
    cfg = yaml.safe_load(expression_schedule.read_text())
    cfg["train"].update(expression_weight=0.0, equivariance_shift=0.0, equivariance_affine=0.0,
                        perceptual_weights=[0.0] * 5, region_prior_weight=1.0)
    cfg["dataset"]["expression_pairs"] = 0.0
    path = tmp_path / "prior_only.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "prior"
    assert cli("--config", path, "--data", face_data, "--out", out, "--max-steps", 12, "--lr", "1e-2",
               "--vis-every", 0, "--checkpoint-every", 0) == 0
    rows = read_losses(out / "losses.csv")
    first, last = rows[0]["region_prior"], min(r["region_prior"] for r in rows[-3:])
    assert last < 0.5 * first, [r["region_prior"] for r in rows]


def test_loss_log_keeps_rows_of_an_older_header(tmp_path):
    from nets.train.logs import LossLog
    path = tmp_path / "losses.csv"
    old = LossLog(path, ["reconstruction"])
    for step in (1, 2, 3):
        old.write(step, 0, 1e-3, {"loss": 1.0 * step, "reconstruction": 0.5 * step}, 1.0)
    old.close()
    new = LossLog(path, ["reconstruction", "region_prior"], resume_step=2)
    new.write(3, 0, 1e-3, {"loss": 9.0, "reconstruction": 4.0, "region_prior": 5.0}, 2.0)
    new.close()
    rows = read_losses(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["reconstruction"] == 1.0
    assert "region_prior" not in rows[0] and rows[2]["region_prior"] == 5.0
