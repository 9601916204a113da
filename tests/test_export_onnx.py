"""ONNX export: graph contents, both backends equal, per-frame parity, manifest, verification, rewrites.

Exporting an official-layout checkpoint: tests/test_export_cli.py."""
import json

import numpy as np
import onnx
import pytest
import torch

import nets
from export.torch_engine import TorchEngine
from export.onnx import FORBIDDEN_OPS, graph_ops
from export.pipeline import export_model
from export.rewrite import PhaseConv2d, PolyphaseUpBlock2d, export_friendly
from export.runtime import OrtEngine
from export.verify import VerificationError, synthetic_clip, synthetic_face, verify_engine
from nets.blocks import UpBlock2d

from export_fixtures import tiny_export  # noqa: F401  (session fixture)
from test_networks import randomize


def test_graphs_use_no_svd_or_inverse_and_gridsample_like_the_model(tiny_export):  # noqa: F811
    d = tiny_export.directory
    for variant in tiny_export.manifest.variants.values():
        for f in variant.files.values():
            ops = graph_ops(d / f)
            assert not ops & FORBIDDEN_OPS, f"{f}: {ops & FORBIDDEN_OPS}"
            assert not {"SVD", "Inverse"} & ops
    model = onnx.load(str(d / "animate.onnx"))
    assert model.opset_import[0].version >= 16
    grid_samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert grid_samples, "animate graph should warp with GridSample"
    for node in grid_samples:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("align_corners", 0) == 0
        assert attrs.get("mode", b"bilinear") in (b"bilinear", b"linear")
        assert attrs.get("padding_mode", b"zeros") == b"zeros"


def test_dynamic_batch_axes(tiny_export):  # noqa: F811
    g = tiny_export.manifest.graphs
    assert g["regions"].inputs[0].shape[0] == "batch"
    assert all(t.shape[0] == "batch" for t in g["animate"].inputs + g["animate"].outputs)
    engine = OrtEngine(tiny_export.directory)
    avatar = engine.prepare_source(synthetic_face(64))
    frames = synthetic_clip(64, 3)
    batched = engine.animate(avatar, engine.transfer(avatar, engine.regions(frames), engine.regions(frames[:1])))
    for i in range(3):
        new = engine.transfer(avatar, engine.regions(frames[i:i + 1]), engine.regions(frames[:1]))
        one = engine.animate(avatar, new)
        assert np.abs(one - batched[i:i + 1]).max() < 1e-5


def test_both_backends_equal(tiny_export):  # noqa: F811
    torch_engine = TorchEngine(tiny_export.model)
    ort_engine = OrtEngine(tiny_export.directory)
    src = synthetic_face(64, seed=2)
    rng = np.random.default_rng(0)
    for frames in (synthetic_clip(64, 3, seed=2)[1:], rng.random((2, 3, 64, 64), dtype=np.float32)):
        a_t, a_o = torch_engine.prepare_source(src), ort_engine.prepare_source(src)
        for f in ("shift", "covar", "affine"):
            assert np.abs(getattr(a_t.regions, f) - getattr(a_o.regions, f)).max() < 1e-4
        r_t, r_o = torch_engine.regions(frames), ort_engine.regions(frames)
        i_t, i_o = torch_engine.regions(frames[:1]), ort_engine.regions(frames[:1])
        for mode in ("relative", "standard", "avd"):
            n_t = torch_engine.transfer(a_t, r_t, i_t, mode)
            n_o = ort_engine.transfer(a_o, r_o, i_o, mode)
            for f in ("shift", "covar", "affine"):
                assert np.abs(getattr(n_t, f) - getattr(n_o, f)).max() < 1e-4, (mode, f)
            # the animation on identical parameters (random AVD weights give far-from-face parameters,
            # on which the random generator amplifies 1e-6 parameter differences; relative mode is
            # checked end to end in the per-frame test below)
            out_t, out_o = torch_engine.animate(a_t, n_t), ort_engine.animate(a_o, n_t)
            assert out_o.shape == out_t.shape == (2, 3, 64, 64) and out_o.dtype == np.float32
            assert np.abs(out_t - out_o).max() < 1e-4, mode
            if mode == "relative":
                assert np.abs(out_t - ort_engine.animate(a_o, n_o)).max() < 1e-4


def test_per_frame_path_matches_pytorch_on_a_10_frame_sequence(tiny_export):  # noqa: F811
    """The ORT per-frame path (regions graph, numpy relative transfer, animate graph on the cached
    source) equals the PyTorch per-frame path that recomputes everything from the source."""
    model = tiny_export.model
    engine = OrtEngine(tiny_export.directory)
    source = synthetic_face(64, dx=0.05, seed=4)
    clip = synthetic_clip(64, 10, seed=4)
    avatar = engine.prepare_source(source)
    initial = engine.regions(clip[:1])
    src_t = torch.from_numpy(source)
    worst = 0.0
    with torch.no_grad():
        ri = model.regions(torch.from_numpy(clip[:1]))
        for i in range(10):
            got = engine.animate(avatar, engine.transfer(avatar, engine.regions(clip[i:i + 1]), initial, "relative"))
            rs = model.regions(src_t)
            new = model.transfer(rs, model.regions(torch.from_numpy(clip[i:i + 1])), ri, mode="relative")
            ref = model.animate(src_t, rs, new).prediction.numpy()
            worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-4


def test_manifest_contents(tiny_export):  # noqa: F811
    d = tiny_export.directory
    data = json.loads((d / "manifest.json").read_text())
    model = tiny_export.model
    assert data["format"] == "mra-live-onnx" and data["config"] == model.config.to_dict()
    assert data["frame_size"] == 64 and data["num_regions"] == 4 and data["dtype"] == "float32"
    assert data["opset"] >= 16 and data["pca"] == "closed_form" and data["has_avd"] is True
    assert data["exported_at"] and data["export_seconds"] > 0 and data["versions"]["onnxruntime"]
    assert set(data["graphs"]) == {"source", "regions", "animate", "avd"}
    animate = data["graphs"]["animate"]
    names = [t["name"] for t in animate["inputs"]]
    assert names[0] == "source" and names[-4:] == ["shift", "covar", "affine", "bg"]
    assert animate["outputs"] == [{"name": "prediction", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    affine = {"name": "affine", "shape": ["batch", 4, 2, 2], "dtype": "float32"}
    assert data["graphs"]["regions"]["outputs"][2] == affine
    fp32 = data["variants"]["fp32"]
    assert fp32["verification"]["tolerance"] == 1e-4 and 0 <= fp32["verification"]["max_diff"] <= 1e-4
    assert any(k.startswith("per_frame/") for k in fp32["verification"]["diffs"])
    from nets.checkpoint import sha256_file
    for g, f in fp32["files"].items():
        assert fp32["sha256"][g] == sha256_file(d / f)
    fp16 = data["variants"]["fp16"]
    assert fp16["verification"]["max_diff"] <= fp16["verification"]["tolerance"]


def test_fp16_graphs_keep_float32_io(tiny_export):  # noqa: F811
    d = tiny_export.directory
    m = onnx.load(str(d / "animate.fp16.onnx"))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in m.graph.input)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in m.graph.initializer)
    engine = OrtEngine(d, precision="fp16")
    assert "fp16" in engine.providers()["animate"]


def test_the_picture_is_held_to_a_tenth_of_an_8_bit_level(tiny_export):  # noqa: F811
    """The animation graph's prediction may differ by what no written frame shows (0.1/255), not by
    a visible amount: an export whose picture is off by one 8-bit level fails."""
    class Offset:
        def __init__(self, engine, offset):
            self.engine, self.offset = engine, offset

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def animate(self, avatar, params):
            return self.engine.animate(avatar, params) + np.float32(self.offset)

    ort = OrtEngine(tiny_export.directory)
    model = tiny_export.model
    quiet = verify_engine(model, Offset(ort, 0.05 / 255), clip_frames=2)
    assert not quiet.failures() and 1e-4 < quiet.diffs["animate/prediction/face"] < 0.1 / 255
    loud = verify_engine(model, Offset(ort, 1 / 255), clip_frames=2)
    assert "animate/prediction/face" in loud.failures() and "animate/prediction/noise" in loud.failures()
    assert loud.to_dict()["prediction_tolerance"] == pytest.approx(0.1 / 255)


def test_verification_fails_loudly(tmp_path, monkeypatch, tiny_export):  # noqa: F811
    # another model's weights: far above the tolerance
    other = randomize(nets.build_model("tiny").eval(), seed=99)
    report = verify_engine(other, OrtEngine(tiny_export.directory), clip_frames=2)
    assert report.failures()
    with pytest.raises(VerificationError, match="above the tolerance"):
        report.check("test")
    # the pipeline writes nothing when its own check fails (the report above stands in for the
    # verification, which the previous lines exercised); the full report is in a temporary file
    import tempfile

    import export.pipeline as pipeline
    monkeypatch.setattr(pipeline, "verify_engine", lambda *a, **k: report)
    reports = tmp_path / "system_tmp"
    reports.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(reports))  # where the failure report goes
    with pytest.raises(VerificationError) as failed:
        export_model(tiny_export.model, tmp_path / "bad")
    assert [p.name for p in tmp_path.iterdir()] == ["system_tmp"]
    details = str(failed.value).split("details in ")[1].split(")")[0]
    assert json.loads(open(details).read())["fp32"]["max_diff"] > 1e-4


def ill_conditioned_model() -> nets.MRAA:
    """A tiny model whose heatmaps are nearly flat (the heatmap head's weights scaled by 0.01), so
    its regions are nearly round: the PCA's axis is ill-conditioned (any axis of a round region is
    a principal one), as for vox256 with random weights on noise frames (issue 21 item 4)."""
    model = randomize(nets.build_model("tiny").eval(), seed=4)
    with torch.no_grad():
        for p in model.region_predictor.regions.parameters():
            p.mul_(0.01)
    return model


@pytest.fixture(scope="module")
def ill_conditioned_export(tmp_path_factory):
    """The export of :func:`ill_conditioned_model`, verified by export_model itself: before issue 21
    item 4 it was refused (``regions/affine/noise`` 1.9e-4 against 1e-4, every covariance within
    2.4e-7 and every other check within 4e-4 of its tolerance's scale)."""
    model = ill_conditioned_model()
    directory = tmp_path_factory.mktemp("ill_conditioned") / "export"
    manifest = export_model(model, directory, checkpoint={"path": "in-memory", "sha256": "", "kind": "test"})
    return model, directory, manifest


def test_an_ill_conditioned_pca_is_not_an_export_error(ill_conditioned_export):
    model, directory, manifest = ill_conditioned_export
    diffs = manifest.variants["fp32"].verification["diffs"]
    assert max(v for k, v in diffs.items() if "covar" in k) < 1e-6  # the covariances agree
    assert max(v for k, v in diffs.items() if "affine" in k) < 1e-6  # each affine is the PCA of its covariance
    # why comparing affines with PyTorch's failed: covariances 1e-7 apart (ONNX Runtime's and
    # PyTorch's differ by up to 2.4e-7 here: another summation order) have PCA affines more than the
    # tolerance apart
    from export.verify import FP32_TOLERANCE, noise_frames, pca_affine
    covar = model.regions(torch.from_numpy(noise_frames(64, 2, seed=1))).covar.detach().numpy()
    nudged = covar.copy()
    nudged[..., 0, 0] += np.float32(1e-7)
    nudged[..., 1, 1] -= np.float32(1e-7)
    assert np.abs(nudged - covar).max() <= 1.1e-7
    assert np.abs(pca_affine(nudged) - pca_affine(covar)).max() > 2 * FP32_TOLERANCE


def test_real_errors_in_the_graphs_still_fail(ill_conditioned_export, tiny_export, tmp_path):  # noqa: F811
    """Weights off by a little in the region graph, or a wrong PCA, still fail the verification."""
    import shutil

    from export.verify import FP32_TOLERANCE

    bad = tmp_path / "bad"
    shutil.copytree(tiny_export.directory, bad)
    graph = onnx.load(str(bad / "regions.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[::7] *= 1.01  # every 7th weight of the largest tensor off by 1 %
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(bad / "regions.onnx"))
    failures = verify_engine(tiny_export.model, OrtEngine(bad), clip_frames=2).failures()
    assert any(k.startswith("regions/") for k in failures), failures

    class WrongPca:  # the affine's transpose: the same singular values, the wrong axes
        def __init__(self, engine):
            self.engine = engine

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def regions(self, frames):
            r = self.engine.regions(frames)
            return type(r)(shift=r.shift, covar=r.covar, affine=np.swapaxes(r.affine, -1, -2).copy())

    model, directory, _ = ill_conditioned_export
    report = verify_engine(model, WrongPca(OrtEngine(directory)), clip_frames=2)
    assert report.diffs["regions/affine/noise"] > 10 * FP32_TOLERANCE and "regions/affine/noise" in report.failures()


def test_export_does_not_touch_the_model():
    model = randomize(nets.build_model("tiny").eval(), seed=5)
    model.pca = "svd"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from export.onnx import export_graphs
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        export_graphs(model, d)
    assert model.pca == "svd" and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Export-friendly rewrites: same function
# ---------------------------------------------------------------------------------------------

def test_polyphase_up_block_equals_upsample_then_conv():
    torch.manual_seed(0)
    block = UpBlock2d(6, 5).eval()
    with torch.no_grad():
        block.norm.running_mean.normal_()
        block.norm.running_var.uniform_(0.5, 1.5)
        block.norm.weight.normal_()
        block.norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        assert torch.allclose(PolyphaseUpBlock2d(block)(x), block(x), atol=1e-5)


@pytest.mark.parametrize("k,out", [(7, 3), (5, 1)])
def test_phase_conv_equals_conv(k, out):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, out, k, padding=k // 2)
    x = torch.randn(2, 4, 10, 12)
    with torch.no_grad():
        assert torch.allclose(PhaseConv2d(conv)(x), conv(x), atol=1e-5)


def test_export_friendly_model_computes_the_same():
    model = randomize(nets.build_model("tiny").eval(), seed=3)
    friendly = export_friendly(model)
    assert sum(isinstance(m, PolyphaseUpBlock2d) for m in friendly.modules()) == 8
    assert isinstance(friendly.generator.final, PhaseConv2d)
    src, drv = torch.from_numpy(synthetic_face(64)), torch.from_numpy(synthetic_clip(64, 2)[1:])
    with torch.no_grad():
        a, b = model(src, drv)[3].prediction, friendly(src, drv)[3].prediction
    assert (a - b).abs().max() < 1e-5


def test_repeated_cast_nodes_are_dropped_and_distinct_ones_kept():
    """onnxruntime 1.31's fp16 converter writes one identical Cast per consumer; the model must load."""
    from onnx import TensorProto, helper

    from export.pipeline import _drop_repeated_nodes

    cast = lambda name, out: helper.make_node("Cast", ["x"], [out], to=TensorProto.FLOAT, name=name)  # noqa: E731
    graph = helper.make_graph(
        [cast("c", "y"), cast("c", "y"), cast("d", "z"), helper.make_node("Add", ["y", "z"], ["w"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])])
    assert _drop_repeated_nodes(graph) == 1
    assert [n.name for n in graph.node] == ["c", "d", "add"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    import onnxruntime as ort

    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([1, 2], np.float16)})[0]
    assert out.tolist() == [2.0, 4.0]
