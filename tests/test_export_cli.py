"""mra-export: exporting an official-layout checkpoint (random weights) at another size, and
one-line errors with exit status 2. (An own-format checkpoint is exported in test_export_runtime.)"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import nets
from export.cli import main
from export.runtime import OrtEngine
from export.verify import synthetic_clip, synthetic_face

from conftest import ROOT
from test_networks import randomize


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model = randomize(nets.build_model("tiny").eval(), seed=13)
    nets.save_model(model, d / "own.pth")
    nets.save_official(model, d / "official.pth")
    # a damaged checkpoint: a few weights NaN, as a few bad bytes make them (it loads; its export fails
    # verification)
    with torch.no_grad():
        conv = next(t for name, t in model.state_dict().items() if name.endswith("conv.weight"))
        conv.view(-1)[:3] = float("nan")
    nets.save_model(model, d / "damaged.pth")
    return d


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_export_official_checkpoint_at_another_size(checkpoints, tmp_path, capsys):
    assert main([str(checkpoints / "official.pth"), "--config", "tiny", "--size", "96", "--opset", "17",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "exported tiny (96px" in out and "fp32 max difference to PyTorch" in out
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert data["frame_size"] == 96 and data["config"]["frame_size"] == 96 and data["opset"] == 17
    assert data["graphs"]["animate"]["outputs"][0]["shape"] == ["batch", 3, 96, 96]
    assert data["checkpoint"]["kind"] == "official"
    assert data["checkpoint"]["sha256"] == nets.sha256_file(checkpoints / "official.pth")
    assert data["variants"]["fp32"]["verification"]["max_diff"] <= 1e-4
    engine = OrtEngine(tmp_path / "out")
    out = engine.animate(engine.prepare_source(synthetic_face(96)), engine.regions(synthetic_clip(96, 2)))
    assert out.shape == (2, 3, 96, 96) and np.isfinite(out).all()


def folder_bytes(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_failed_export_leaves_the_earlier_export_whole_and_a_new_folder_absent(checkpoints, tmp_path, capsys,
                                                                                  monkeypatch):
    """Issue 21 item 3: the export is made beside the target and swapped in only once verified."""
    import tempfile
    reports = tmp_path / "system_tmp"
    reports.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(reports))  # where the failure reports go
    out = tmp_path / "out"
    assert main([str(checkpoints / "own.pth"), "--out", str(out), "--quiet"]) == 0
    before = folder_bytes(out)
    assert "manifest.json" in before and "animate.onnx" in before
    # into the existing export: refused by the verification, the export stays byte for byte
    assert main([str(checkpoints / "damaged.pth"), "--out", str(out), "--quiet"]) == 1
    assert folder_bytes(out) == before
    line = one_error_line(capsys)
    assert "verification failed, nothing was written" in line and "nan" in line
    details = line.split("details in ")[1].split(")")[0]
    assert json.loads(open(details).read())["fp32"]["diffs"]
    OrtEngine(out)  # every tool still opens it
    # into a new folder (and a new parent): nothing is left behind
    assert main([str(checkpoints / "damaged.pth"), "--out", str(tmp_path / "new" / "export"), "--quiet"]) == 1
    one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "system_tmp"]
    assert len(list(reports.iterdir())) == 2  # one report per failed export
    # a good export replaces the earlier one as a whole
    assert main([str(checkpoints / "official.pth"), "--config", "tiny", "--size", "96", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["frame_size"] == 96
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "system_tmp"]


def test_export_into_a_folder_of_other_files_is_refused(checkpoints, tmp_path, capsys):
    """A new export replaces the whole folder: one that holds anything but an export is refused first."""
    (tmp_path / "notes.txt").write_text("mine")
    assert main([str(checkpoints / "own.pth"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "holds files that are not part of an export (notes.txt)" in one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("args,message", [
    (["{d}/missing.pth"], "checkpoint not found"),
    (["{d}/official.pth"], "official MRAA checkpoint, which carries no config"),
    (["{d}/official.pth", "--config", "vox256"], "does not fit config vox256"),
    (["{d}/own.pth", "--int8"], "--int8 needs --calibration"),
    (["{d}/own.pth", "--int8", "--calibration", "{d}/nowhere"], "calibration path not found"),
    (["{d}/own.pth", "--calibration", "{d}"], "only used with --int8"),
    (["{d}/own.pth", "--opset", "13"], "--opset must be at least 16"),
    (["{d}/own.pth", "--size", "30"], "--size must be a multiple of 8"),
    (["{d}/own.pth", "--config", "nonsense"], "unknown config"),
])
def test_errors_are_one_line_exit_2(checkpoints, tmp_path, capsys, args, message):
    argv = [a.format(d=checkpoints) for a in args] + ["--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_an_empty_out_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    """Issue 21 item 12: ``--out ''`` is an error line, not the current folder."""
    monkeypatch.chdir(tmp_path)
    assert main([str(checkpoints / "own.pth"), "--out", "", "--quiet"]) == 2
    assert "--out is empty" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_argparse_error_and_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.cli", "model.pth"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--out" in lines[0]
