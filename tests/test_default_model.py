"""The model shipped in the package: loads, checksum verified, ONNX export equal to PyTorch, animates."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nets
from export.torch_engine import TorchEngine
from export.runtime import OrtEngine
from live.default_model import default_checkpoint, default_export_dir
from nets.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_model_loads_with_its_checksum():
    path = default_checkpoint()
    assert path.stat().st_size < 25 * 2**20
    model = nets.load_model(path)  # config embedded
    assert model.config.name == "lite256" and model.frame_size == 256 and model.has_avd
    assert not model.training


def test_damaged_or_missing_model_is_a_clear_error(tmp_path):
    assets = ROOT / "live" / "assets"
    shutil.copy(assets / "lite256.pth", tmp_path / "lite256.pth")
    shutil.copy(assets / "lite256.sha256", tmp_path / "lite256.sha256")
    with open(tmp_path / "lite256.pth", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(UserError, match="damaged"):
        default_checkpoint(tmp_path)
    (tmp_path / "lite256.pth").unlink()
    with pytest.raises(UserError, match="no default model"):
        default_checkpoint(tmp_path)


def face_like(size=256, t=0.0):
    yy, xx = np.mgrid[0:size, 0:size] / size
    face = np.exp(-(((xx - 0.5 - 0.03 * np.sin(t)) / 0.22) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    img = np.stack([0.25 + 0.6 * face, 0.2 + 0.45 * face + 0.1 * xx, 0.3 + 0.3 * face * yy], 0)
    return img.astype(np.float32)[None]


def test_shipped_onnx_export_equals_pytorch():
    torch_engine = TorchEngine(nets.load_model(default_checkpoint()))
    ort_engine = OrtEngine(default_export_dir(), threads=2)
    src = face_like()
    a_t, a_o = torch_engine.prepare_source(src), ort_engine.prepare_source(src)
    init_t, init_o = torch_engine.regions(face_like(t=0.3)), ort_engine.regions(face_like(t=0.3))
    assert np.abs(init_t.shift - init_o.shift).max() < 1e-4
    assert np.abs(init_t.affine - init_o.affine).max() < 1e-4
    for t in (0.6, 1.2):
        drv = face_like(t=t)
        # each graph on identical inputs
        r = torch_engine.regions(drv)
        new = torch_engine.transfer(a_t, r, init_t, "relative")
        out_t = torch_engine.animate(a_t, new)
        out_o = ort_engine.animate(a_o, new)
        assert np.abs(out_t - out_o).max() < 1e-4
        avd_t = torch_engine.transfer(a_t, r, None, "avd")
        avd_o = ort_engine.transfer(a_o, r, None, "avd")
        assert np.abs(avd_t.shift - avd_o.shift).max() < 1e-4


def test_mra_animate_runs_on_the_shipped_model(tmp_path):
    import av
    from PIL import Image
    Image.fromarray((face_like(160)[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "src.png")
    with av.open(str(tmp_path / "drv.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 160
        s.pix_fmt = "yuv420p"
        for i in range(12):
            f = (face_like(160, t=i / 3)[0].transpose(1, 2, 0) * 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = tmp_path / "frames"
    r = subprocess.run([sys.executable, "-m", "live.animate", "--source", tmp_path / "src.png", "--driving",
                        tmp_path / "drv.mp4", "--output", out, "--crop", "none"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 12
    first = np.asarray(Image.open(frames[0]))
    assert first.shape == (256, 256, 3) and first.std() > 5
