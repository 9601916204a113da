"""The engine factory: backend choice, default model, export on demand, precision, fallback."""
import pytest
import torch

import nets
from export.runtime import OrtEngine
from export.torch_engine import TorchEngine
from live import engines
from live.engines import EngineSpec, auto_backend, build_engine, load_engine
from nets.errors import UserError

from export_fixtures import tiny_export  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines") / "tiny.pth"
    torch.manual_seed(0)
    nets.save_model(nets.build_model("tiny"), path)
    return path


def test_auto_backend_uses_onnx_only_for_the_shipped_model_on_the_cpu():
    assert auto_backend("auto", None, "cpu") == "onnx"  # its verified export ships with it
    assert auto_backend("auto", "mine.pth", "cpu") == "torch"  # would need an export first
    assert auto_backend("auto", None, "cuda") == "torch"
    assert auto_backend("torch", None, "cpu") == "torch" and auto_backend("onnx", "mine.pth", "cpu") == "onnx"
    # mra-live and mra-web export any checkpoint once (they run for long)
    assert auto_backend("auto", "mine.pth", "cpu", export_checkpoints=True) == "onnx"
    assert auto_backend("auto", "mine.pth", "cuda", export_checkpoints=True) == "torch"


def test_torch_engine_from_a_checkpoint(tiny_pth):
    engine = build_engine(EngineSpec(tiny_pth, backend="auto"))  # a one-off job keeps PyTorch for it
    assert isinstance(engine, TorchEngine) and engine.model.pca == "closed_form" and engine.num_regions == 4
    assert isinstance(load_engine(tiny_pth), TorchEngine)


def test_user_errors_are_one_line_messages(tiny_pth, tmp_path):
    with pytest.raises(UserError, match="checkpoint not found: .*missing.pth"):
        build_engine(EngineSpec(tmp_path / "missing.pth", backend="torch"))
    with pytest.raises(UserError, match="--backend must be one of torch, onnx, got 'tf'"):
        build_engine(EngineSpec(tiny_pth, backend="tf"))
    with pytest.raises(UserError, match="--device must be one of cpu, cuda, got 'tpu'"):
        build_engine(EngineSpec(tiny_pth, backend="torch", device="tpu"))
    with pytest.raises(UserError, match="fp16/bf16 needs --device cuda"):
        build_engine(EngineSpec(tiny_pth, backend="torch", precision="fp16"))
    with pytest.raises(UserError, match="precision must be one of fp32, fp16, bf16"):
        build_engine(EngineSpec(tiny_pth, backend="torch", precision="int8"))
    with pytest.raises(UserError, match="int8 graphs need calibration frames"):
        build_engine(EngineSpec(tiny_pth, backend="onnx", precision="int8"))


def test_export_dir_and_cached_checkpoint_export(tiny_export, tmp_path, monkeypatch):  # noqa: F811
    engine = build_engine(EngineSpec(tiny_export.directory, backend="onnx"))
    assert isinstance(engine, OrtEngine) and engine.num_regions == 4
    with pytest.raises(UserError, match="ONNX export directory.*--backend onnx"):
        build_engine(EngineSpec(tiny_export.directory, backend="torch"))
    # a checkpoint file is exported once into the user cache, then reused
    monkeypatch.setenv("MRA_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.pth"
    nets.save_model(tiny_export.model, path)
    first = build_engine(EngineSpec(path, backend="onnx", threads=1))
    cached = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(cached) == 1 and first.export_dir == cached[0]
    assert first.manifest.checkpoint["kind"] == "own"
    assert first.manifest.checkpoint["sha256"] == nets.sha256_file(path)
    assert first.manifest.variants["fp32"].verification["max_diff"] <= 1e-4
    import export.pipeline as pipeline
    monkeypatch.setattr(pipeline, "export_model", lambda *a, **k: pytest.fail("exported again"))
    again = build_engine(EngineSpec(path, backend="auto", export_checkpoints=True))
    assert isinstance(again, OrtEngine) and again.export_dir == first.export_dir


def test_auto_falls_back_to_torch_when_onnx_runtime_cannot_start(tiny_pth, monkeypatch):
    def broken(checkpoint, spec):
        raise engines.EngineError("onnxruntime is broken here")

    monkeypatch.setattr(engines, "_onnx_engine", broken)
    engine = build_engine(EngineSpec(tiny_pth, backend="auto", export_checkpoints=True))
    assert isinstance(engine, TorchEngine)
    with pytest.raises(UserError, match="onnxruntime is broken here"):  # asked for explicitly: no fallback
        build_engine(EngineSpec(tiny_pth, backend="onnx"))
