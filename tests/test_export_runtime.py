"""ONNX Runtime engine: provider selection and fallback reporting (with fakes), numpy transfer,
int8 quantization."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import nets
from export import runtime as rt
from export import transfer as ntr
from export.engine import EngineError
from export.torch_engine import params_from_regions
from export.runtime import CPU, CUDA, TENSORRT, ActiveProviders, OrtEngine, check_active, plan_providers
from export.verify import synthetic_clip, synthetic_face
from nets import geometry as geo
from nets import transfer as ttr

from export_fixtures import tiny_export  # noqa: F401  (session fixture)
from test_networks import randomize

GPU_BUILD = [TENSORRT, CUDA, CPU]  # what onnxruntime-gpu lists, with or without a GPU


# ---------------------------------------------------------------------------------------------
# Provider plans (pure)
# ---------------------------------------------------------------------------------------------

def test_plan_auto_prefers_tensorrt_then_cuda_then_cpu(tmp_path):
    plan = plan_providers("auto", GPU_BUILD, tmp_path / "trt")
    assert plan.names == [TENSORRT, CUDA, CPU] and plan.wanted is None and plan.fallback == "warn"
    trt = dict(plan.providers)[TENSORRT]
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert plan_providers("auto", [CUDA, CPU], tmp_path).names == [CUDA, CPU]
    assert plan_providers("auto", [CPU], tmp_path).names == [CPU]
    assert not plan_providers("auto", [CPU], tmp_path).uses_gpu


def test_plan_explicit_devices(tmp_path):
    assert plan_providers("cpu", GPU_BUILD, tmp_path).names == [CPU]
    cuda = plan_providers("cuda", GPU_BUILD, tmp_path, device_id=1)
    assert cuda.names == [CUDA, CPU] and cuda.wanted == CUDA and cuda.fallback == "error"
    assert dict(cuda.providers)[CUDA] == {"device_id": 1}
    assert plan_providers("tensorrt", GPU_BUILD, tmp_path).names == [TENSORRT, CUDA, CPU]
    assert plan_providers("cuda", GPU_BUILD, tmp_path, fallback="warn").fallback == "warn"


def test_plan_refuses_what_the_installed_onnxruntime_lacks(tmp_path):
    with pytest.raises(EngineError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        plan_providers("cuda", [CPU], tmp_path)
    with pytest.raises(EngineError, match="no TensorrtExecutionProvider"):
        plan_providers("tensorrt", [CUDA, CPU], tmp_path)
    with pytest.raises(EngineError, match="device must be one of"):
        plan_providers("gpu", GPU_BUILD, tmp_path)
    with pytest.raises(EngineError, match="fallback must be"):
        plan_providers("cpu", [CPU], tmp_path, fallback="ignore")


def test_check_active_reads_what_the_session_really_runs(tmp_path):
    cuda = plan_providers("cuda", GPU_BUILD, tmp_path)
    assert check_active(cuda, ActiveProviders([CUDA, CPU], {CUDA: 300, CPU: 12}), "animate") is None
    # listed but given no node: not running
    msg = check_active(cuda, ActiveProviders([CUDA, CPU], {CUDA: 0, CPU: 312}), "animate")
    assert msg and "--device cuda" in msg and "cpu 312 nodes" in msg and "animate" in msg
    # the silent fallback of onnxruntime-gpu without a GPU: only the CPU provider is left
    assert "did not start" in check_active(cuda, ActiveProviders([CPU]), "regions")
    auto = plan_providers("auto", GPU_BUILD, tmp_path)
    assert "tensorrt is offered" in check_active(auto, ActiveProviders([CUDA, CPU], {CUDA: 10}), "source")
    assert ActiveProviders([CUDA, CPU], {CPU: 5, CUDA: 9}).primary == CUDA
    assert ActiveProviders([CUDA, CPU], {CPU: 5}).primary == CPU


# ---------------------------------------------------------------------------------------------
# The engine with a faked GPU build (real CPU sessions underneath)
# ---------------------------------------------------------------------------------------------

class LyingSession:
    """A real CPU session that reports the given providers, like onnxruntime-gpu after a silent fallback."""

    def __init__(self, session, providers):
        self._s = session
        self._providers = providers

    def get_providers(self):
        return list(self._providers)

    def get_provider_graph_assignment_info(self):
        raise RuntimeError("not recorded")

    def __getattr__(self, name):
        return getattr(self._s, name)


@pytest.fixture
def fake_gpu_build(monkeypatch):
    """onnxruntime-gpu on a machine without a GPU: lists TensorRT and CUDA, runs on the CPU."""
    asked, preloaded = [], []
    real = rt.create_session

    def create(path, plan, threads):
        asked.append(plan.names)
        cpu_plan = rt.ProviderPlan("cpu", [(CPU, {})], CPU, "error")
        return LyingSession(real(path, cpu_plan, threads), [CPU])

    monkeypatch.setattr(rt, "available_providers", lambda: list(GPU_BUILD))
    monkeypatch.setattr(rt, "create_session", create)
    monkeypatch.setattr(rt, "_preload_gpu_libraries", lambda: preloaded.append(True))
    return asked, preloaded


def test_cuda_asked_but_not_running_is_an_error(tiny_export, fake_gpu_build, tmp_path):  # noqa: F811
    asked, preloaded = fake_gpu_build
    with pytest.raises(EngineError, match="--device cuda asked for, but cuda did not start.*source graph on cpu"):
        OrtEngine(tiny_export.directory, device="cuda", trt_cache_dir=tmp_path)
    assert asked == [[CUDA, CPU]] and preloaded == [True]


def test_fallback_warn_reports_the_cpu_and_warns_once(tiny_export, fake_gpu_build, tmp_path):  # noqa: F811
    asked, _ = fake_gpu_build
    with pytest.warns(UserWarning, match="tensorrt did not start") as record:
        engine = OrtEngine(tiny_export.directory, device="tensorrt", fallback="warn", trt_cache_dir=tmp_path)
    assert len(record) == 1
    assert asked[0] == [TENSORRT, CUDA, CPU] and all(a == [CPU] for a in asked[1:])  # no retries afterwards
    assert set(engine.providers()) == {"source", "regions", "animate", "avd"}
    assert all(v.startswith("onnxruntime cpu") for v in engine.providers().values())
    out = engine.animate(engine.prepare_source(synthetic_face(64)), engine.regions(synthetic_clip(64, 2)))
    assert out.shape == (2, 3, 64, 64)


def test_auto_warns_and_runs_on_the_cpu(tiny_export, fake_gpu_build, tmp_path):  # noqa: F811
    with pytest.warns(UserWarning, match="device auto: tensorrt is offered"):
        engine = OrtEngine(tiny_export.directory, device="auto", trt_cache_dir=tmp_path)
    assert "cpu" in engine.describe()


def test_cpu_engine_reports_node_counts(tiny_export):  # noqa: F811
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = OrtEngine(tiny_export.directory, device="cpu", threads=1)
    report = engine.providers()
    assert report["animate"].startswith("onnxruntime cpu") and report["animate"].endswith("fp32")
    assert all(g.active.primary == CPU for g in engine.graphs.values())


def test_engine_errors(tiny_export, tmp_path):  # noqa: F811
    with pytest.raises(EngineError, match="no int8 graphs"):
        OrtEngine(tiny_export.directory, precision="int8")
    with pytest.raises(EngineError, match="not an export directory"):
        OrtEngine(tmp_path)
    engine = OrtEngine(tiny_export.directory)
    with pytest.raises(EngineError, match=r"\(B, 3, 64, 64\)"):
        engine.regions(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(EngineError, match="mode must be"):
        engine.transfer(engine.prepare_source(synthetic_face(64)), engine.regions(synthetic_face(64)), None, "mirror")


# ---------------------------------------------------------------------------------------------
# numpy transfer against nets.transfer
# ---------------------------------------------------------------------------------------------

def _random_regions(b, k, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, k, 2, 2, generator=g) * 0.3 + torch.eye(2)
    return nets.Regions(shift=torch.rand(b, k, 2, generator=g) * 2 - 1, covar=a @ a.transpose(-1, -2), affine=a)


def test_numpy_relative_transfer_equals_nets():
    s, d, i = _random_regions(1, 10, 0), _random_regions(3, 10, 1), _random_regions(1, 10, 2)
    ref = ttr.relative(s.map(lambda t: t.expand(3, *t.shape[1:])), d, i.map(lambda t: t.expand(3, *t.shape[1:])))
    got = ntr.relative(params_from_regions(s), params_from_regions(d), params_from_regions(i))
    for f in ("shift", "covar", "affine"):
        assert np.abs(getattr(got, f) - getattr(ref, f).numpy()).max() < 1e-5, f
    fixed = ntr.relative(params_from_regions(s), params_from_regions(d), params_from_regions(i),
                         adapt_movement_scale=False)
    ref = ttr.relative(s, d, i, adapt_movement_scale=False)
    assert np.abs(fixed.shift - ref.shift.numpy()).max() < 1e-6


def test_hull_area_equals_nets_geometry():
    rng = np.random.default_rng(0)
    cases = [rng.random((10, 2)) * 2 - 1 for _ in range(20)]
    cases.append(np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5], [1, 1]], float))  # interior point + duplicate
    cases.append(np.array([[0, 0], [1, 1], [2, 2]], float))  # collinear
    cases.append(np.array([[0.3, 0.3]] * 4, float))
    for pts in cases:
        ref = float(geo.convex_hull_area(torch.tensor(pts[None], dtype=torch.float64))[0])
        assert ntr.hull_area(pts) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_int8_export_on_the_tiny_model(tmp_path):
    from PIL import Image

    from export.pipeline import export_model
    from export.quantize import CalibrationSet

    frames = synthetic_clip(64, 16, seed=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray((f.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    calibration = CalibrationSet.from_path(folder, 64, max_frames=12)
    assert calibration.num_frames == 12 and len(calibration.held_out) == 4
    model = randomize(nets.build_model("tiny").eval(), seed=7)
    manifest = export_model(model, tmp_path / "out", calibration=calibration, threads=1)
    q = manifest.variants["int8"].quality
    assert set(manifest.variants["int8"].files) == {"animate"}
    assert q["calibration_frames"] == 12 and q["held_out_frames"] == 3
    assert q["ms_per_frame_int8"] > 0 and q["speedup"] > 0  # tiny is too small for a meaningful speed-up
    # the quality cost is measured and bounded (8-bit convolutions on a smooth input)
    assert 0 < q["mean_diff_255"] < 10 and q["max_diff_255"] < 128
    engine = OrtEngine(tmp_path / "out", precision="int8")
    from export.onnx import graph_ops
    assert "QuantizeLinear" in graph_ops(tmp_path / "out" / "animate.int8.onnx")
    assert "GridSample" in graph_ops(tmp_path / "out" / "animate.int8.onnx")
    assert engine.providers()["animate"].endswith("int8") and engine.providers()["regions"].endswith("fp32")
    out = engine.animate(engine.prepare_source(frames[:1]), engine.regions(frames[1:3]))
    assert out.shape == (2, 3, 64, 64) and np.isfinite(out).all()
    assert Path(tmp_path / "out" / "manifest.json").is_file()
