"""benchmarks/: the fps and quality scripts run briefly on the tiny preset; their helpers against references."""
import json
import math
import os
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import nets
from benchmarks import clips as cl
from benchmarks import cost, fps, metrics, quality
from benchmarks import runners as rn
from benchmarks.timing import time_fn
from nets.errors import run_cli

from conftest import shared_path


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The scripts set torch's thread count (one thread here: fast on a busy 2-core machine); restore it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# Helpers against simple references
# ---------------------------------------------------------------------------------------------

def test_cost_counts_conv_flops_params_and_bytes():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.rand(1, 3, 16, 16)
    c = cost.measure(net, x)
    macs = 16 * 16 * (8 * 3 * 9 + 4 * 8)
    assert c.flops == 2 * macs
    assert c.params == (8 * 3 * 9 + 8) + (4 * 8 + 4)
    assert c.param_bytes == 4 * c.params
    assert c.io_bytes == 4 * (3 * 16 * 16 + 4 * 16 * 16)
    assert c.written_bytes >= 4 * (8 + 8 + 4) * 16 * 16  # conv, relu, conv outputs
    fl = cost.floor(c.scaled(2), "NVIDIA H100 80GB HBM3", low_precision=True)
    assert fl.compute_ms == pytest.approx(c.flops / 989e12 * 1e3)
    assert fl.memory_ms == pytest.approx(c.scaled(2).min_bytes / 3.35e12 * 1e3)
    assert cost.floor(c, "Some GPU", False) is None


def test_time_fn_warmup_frames_and_time_cap():
    calls = []
    st = time_fn(lambda: calls.append(1), frames=7, warmup=2)
    assert len(calls) == 9 and st.frames == 7 and st.median_ms >= 0
    st = time_fn(lambda: time.sleep(0.01), frames=100, warmup=0, max_seconds=0.05, min_frames=3)
    assert 3 <= st.frames < 20 and st.median_ms >= 9 and st.p95_ms >= st.median_ms


def _ssim_brute(a, b, win=11, sigma=1.5):
    t = np.arange(win) - (win - 1) / 2
    g = np.exp(-t**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for c in range(a.shape[2]):
        for i in range(a.shape[0] - win + 1):
            for j in range(a.shape[1] - win + 1):
                x, y = a[i:i + win, j:j + win, c], b[i:i + win, j:j + win, c]
                mx, my = (w * x).sum(), (w * y).sum()
                vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
                cxy = (w * (x - mx) * (y - my)).sum()
                vals.append((2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    return float(np.mean(vals))


def test_l1_and_ssim_against_references():
    rng = np.random.default_rng(0)
    a = rng.random((20, 18, 3))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    assert metrics.l1(a, b) == pytest.approx(np.abs(a - b).mean())
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, b) == pytest.approx(_ssim_brute(a, b), abs=1e-10)
    assert metrics.ssim(a, b) < 0.9


def test_shape_and_motion_metrics():
    rng = np.random.default_rng(1)
    p = rng.random((30, 2)) * 100
    th = 0.3
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    q = 2.5 * p @ rot.T + np.array([7.0, -3.0])
    assert metrics.procrustes_distance(p, q) == pytest.approx(0, abs=1e-9)
    assert metrics.procrustes_distance(p, p + rng.standard_normal(p.shape)) > 0.005
    assert metrics.keypoint_distance(p, p + np.array([3.0, 4.0])) == pytest.approx(5.0)
    drv = [p + np.array([i, 0.5 * i]) for i in range(5)]
    same = metrics.motion_transfer(drv, drv)
    assert same.error == pytest.approx(0) and same.ratio == pytest.approx(1) and same.cosine == pytest.approx(1)
    # the same motion on a face twice the size is the same normalised motion
    big = [2 * d for d in drv]
    assert metrics.motion_transfer(big, drv).error == pytest.approx(0, abs=1e-12)
    still = metrics.motion_transfer([p] * 5, drv)
    r = metrics.rms_radius(p)
    expect = np.mean([np.hypot(i, 0.5 * i) / r for i in range(1, 5)])
    assert still.error == pytest.approx(expect) and still.ratio == 0 and still.cosine == 0
    missing = metrics.motion_transfer([p, None, p], [p, p, p])
    assert missing.frames == 1


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nets.build_model("tiny").eval()
    return rn.Setup(model=model, checkpoint=None, config_arg=None, source=rn.synthetic_frames(1, 64, seed=5)[0],
                    frames=rn.synthetic_frames(5, 64), threads=2)


def test_cuda_graph_runner_dataflow_without_graphs():
    """The static-buffer dataflow of the CUDA-graph backend, replayed eagerly on the CPU."""
    setup = _setup()
    with torch.inference_mode():
        stages = rn.CudaGraphRunner(setup, "cpu", torch.float32, graphs=False).build()
        outs = []
        for f in setup.frames[1:4]:
            ref = rn.reference_output(setup, f)
            assert np.abs(stages.run(f).astype(int) - ref).max() <= 1
            assert np.abs(stages.staged(f).astype(int) - ref).max() <= 1
            outs.append(ref)
        assert np.abs(outs[0].astype(int) - outs[1]).max() > 10  # frames differ: no stale buffers
        for _, fn in stages.items():
            fn()
    with pytest.raises(rn.Unavailable, match="CUDA"):
        rn.CudaGraphRunner(setup, "cpu", torch.float16).build()


def test_naive_and_eager_runners_match_the_reference():
    setup = _setup(1)
    f = setup.frames[2]
    ref = rn.reference_output(setup, f)
    with torch.inference_mode():
        for runner in (rn.NaiveRunner(setup, "cpu"), rn.TorchRunner(setup, "cpu")):
            out = runner.build().run(f)
            assert out.shape == (64, 64, 3) and out.dtype == np.uint8
            # naive uses the official SVD PCA: equal up to rounding on this model
            assert np.abs(out.astype(int) - ref).max() <= 2


# ---------------------------------------------------------------------------------------------
# fps.py end to end
# ---------------------------------------------------------------------------------------------

def test_fps_runs_on_tiny_and_writes_rows(tmp_path, capsys):
    out = tmp_path / "fps.json"
    code = run_cli(fps.main, ["--config", "tiny,default", "--device", "cpu", "--frames", "3", "--warmup", "1",
                              "--max-seconds", "1", "--min-frames", "2", "--threads", "1", "--no-compile",
                              "--backends", "naive,torch-eager,torch-compile,ort-cpu,torch-cuda-bf16",
                              "--interleave", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "== tiny" in text and "per frame, end to end" in text
    rows = json.loads(out.read_text())
    keys = {"config", "backend", "device", "stage", "median_ms", "p95_ms", "speedup_vs_naive", "peak_mem_mb"}
    assert all(keys <= set(r) for r in rows)
    tiny = [r for r in rows if r["config"] == "tiny"]
    # every backend is listed, measured or with a reason
    assert {(r["backend"], r["device"]) for r in tiny} == set(fps.BACKENDS)
    for r in tiny:
        assert r["available"] or r["reason"], r
    by = {(r["backend"], r["stage"]): r for r in tiny if r["device"] == "cpu" and r["available"]}
    for backend in ("naive", "torch-eager"):
        for stage in rn.STAGES:
            assert by[(backend, stage)]["median_ms"] > 0
            assert by[(backend, stage)]["p95_ms"] >= by[(backend, stage)]["median_ms"]
    naive, eager = by[("naive", "per_frame")], by[("torch-eager", "per_frame")]
    assert naive["interleaved"] and eager["interleaved"] and naive["frames"] == eager["frames"]
    assert naive["speedup_vs_naive"] == 1.0
    assert eager["speedup_vs_naive"] == pytest.approx(naive["median_ms"] / eager["median_ms"], abs=0.006)
    assert eager["max_diff"] <= 1 / 255 and eager["peak_mem_mb"] > 0 and eager["threads"] == 1
    assert by[("torch-eager", "region")]["gflops"] > 0 and by[("torch-eager", "animate")]["params_m"] > 0
    assert by[("naive", "animate")]["gflops"] > by[("torch-eager", "animate")]["gflops"]  # naive re-encodes the source
    unavailable = {(r["backend"], r["device"]): r["reason"] for r in tiny if not r["available"]}
    assert "--no-compile" in unavailable[("torch-compile", "cpu")]
    assert "not selected" in unavailable[("ort-trt-fp16", "cuda")]
    if not torch.cuda.is_available():
        assert "CUDA" in unavailable[("torch-cuda-bf16", "cuda")]
    default = [r for r in rows if r["config"] not in ("tiny", "expression")]
    assert default and all(r["available"] or r["reason"] for r in default)
    expression = {r["stage"]: r for r in rows if r["config"] == "expression"}  # timed once, beside the engines
    assert set(expression) == {"mesh", "warp", "per_frame"} and expression["per_frame"]["median_ms"] > 0
    assert "engine + expression" in text


def test_fps_rejects_unknown_names(capsys):
    assert run_cli(fps.main, ["--config", "nope", "--device", "cpu"]) == 2
    assert run_cli(fps.main, ["--config", "tiny", "--backends", "warp-drive", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2


# ---------------------------------------------------------------------------------------------
# quality.py
# ---------------------------------------------------------------------------------------------

def _talking_clips(folder, n_clips=2, frames=7, size=64):
    """Drawn talking faces (tests/webgen.py) as mp4 clips: ``{name: path}``."""
    from mediagen import make_video
    from webgen import talking

    folder.mkdir(parents=True, exist_ok=True)
    return {f"c{k}.mp4": make_video(folder / f"c{k}.mp4", n=frames, size=(size, size),
                                    frame_fn=lambda i, k=k: talking(i, 6, seed=k, size=size))
            for k in range(n_clips)}


def test_quality_per_clip_table_means_sheet_and_json(tmp_path, capsys):
    pytest.importorskip("mediapipe")
    from PIL import Image

    from benchmarks import sheet as sh
    from mediagen import read_frames

    clips = _talking_clips(tmp_path / "clips")
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    nets.save_model(nets.build_model("tiny"), ckpt)
    out_json, out_png = tmp_path / "out" / "q.json", tmp_path / "out" / "sheet.png"
    code = run_cli(quality.main, ["--videos", str(tmp_path / "clips"), "--checkpoint", str(ckpt), "--crop", "none",
                                  "--batch", "3", "--threads", "1", "--sheet-frames", "4",
                                  "--json", str(out_json), "--sheet", str(out_png)])
    printed = capsys.readouterr().out
    assert code == 0
    rep = json.loads(out_json.read_text())
    modes = ["relative", "avd", "standard"]  # every mode of a model with an AVD network
    assert rep["settings"]["modes"] == modes and rep["model"]["backend"] == "torch" and not rep["model"]["shipped"]
    # one row per clip and mode, all frames
    assert sorted((r["clip"], r["mode"]) for r in rep["per_clip"]) == sorted((c, m) for c in clips for m in modes)
    assert all(r["frames"] == 7 for r in rep["per_clip"])
    # the no-motion baseline, recomputed here from the decoded clip (first frame repeated)
    for name, path in clips.items():
        f = [x.astype(np.float64) / 255 for x in read_frames(path)]
        still = np.mean([np.abs(f[0] - x).mean() for x in f])
        for r in (r for r in rep["per_clip"] if r["clip"] == name):
            assert r["l1_still"] == pytest.approx(still, abs=1e-9)
            assert r["l1_ratio"] == pytest.approx(r["l1"] / still)
    # the score is the mean of the per-clip ratios, the worst clip the largest ratio
    for m in rep["summaries"]:
        rows = [r for r in rep["per_clip"] if r["mode"] == m["mode"]]
        assert m["clips"] == 2
        assert m["mean_l1_ratio"] == pytest.approx(sum(r["l1_ratio"] for r in rows) / 2)
        assert m["worst_l1_ratio"] == max(r["l1_ratio"] for r in rows)
        assert m["worst_clip"] == max(rows, key=lambda r: r["l1_ratio"])["clip"]
        akd = [r["akd_ratio"] for r in rows if r["akd_ratio"] is not None]
        assert m["mean_akd_ratio"] == (pytest.approx(sum(akd) / len(akd)) if akd else None)
        assert f"mean of per-clip ratios ({m['mode']}, 2 clips): L1 {m['mean_l1_ratio']:.3f}" in printed
    # relative and standard agree when the portrait is the first driving frame
    rel = {r["clip"]: r["l1"] for r in rep["per_clip"] if r["mode"] == "relative"}
    assert all(rel[r["clip"]] == pytest.approx(r["l1"], abs=1e-3) for r in rep["per_clip"] if r["mode"] == "standard")
    # identity fidelity and cross-identity: one per clip (c0's first frame driven by c1 and back)
    assert [i["clip"] for i in rep["identity"]] == sorted(clips)
    assert all(0 < i["l1"] < 1 for i in rep["identity"])
    assert [(c["portrait"], c["driving"]) for c in rep["cross"]] == [("c0.mp4[0]", "c1.mp4"), ("c1.mp4[0]", "c0.mp4")]
    assert rep["cross_summary"]["pairs"] == 2 and all(c["frames"] == 7 for c in rep["cross"])
    for table in ("Identity fidelity", "Cross-identity (relative), 2 pair(s)", "c0.mp4[0]"):
        assert table in printed
    # the sheet: 2 clip blocks (driving, 3 modes, identity), 2 pair blocks (portrait, driving, output), 4 frames a row
    sheet = Image.open(out_png)
    assert sheet.size == (sh.LABEL_W + 4 * sh.THUMB, 2 * (sh.TITLE_H + 5 * sh.THUMB + sh.PAD)
                          + 2 * (sh.TITLE_H + 3 * sh.THUMB + sh.PAD))
    assert rep["sheet"] == str(out_png)


def test_quality_relative_mode_is_what_mra_animate_writes(tmp_path):
    """The protocol's command, mra-animate --source first.png --driving clip.mp4 --crop none, gives the same L1."""
    pytest.importorskip("mediapipe")
    from PIL import Image

    from live.animate import AnimateOptions, animate_file
    from live.engines import load_engine
    from mediagen import read_frames, save_image

    clip = _talking_clips(tmp_path / "clips", n_clips=1, frames=6)["c0.mp4"]
    real = read_frames(clip)
    save_image(tmp_path / "first.png", real[0])
    torch.manual_seed(1)
    ckpt = tmp_path / "tiny.pth"
    nets.save_model(nets.build_model("tiny"), ckpt)
    engine = load_engine(ckpt, backend="torch")
    animate_file(engine, tmp_path / "first.png", clip, tmp_path / "out", AnimateOptions(crop="none", batch_size=4))
    written = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp_path / "out").glob("*.png"))]
    assert len(written) == len(real) == 6
    expected = np.mean([np.abs(o / 255 - r / 255).mean() for o, r in zip(written, real)])
    out = tmp_path / "q.json"
    assert run_cli(quality.main, ["--videos", str(clip), "--checkpoint", str(ckpt), "--crop", "none", "--modes",
                                  "relative", "--batch", "3", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["per_clip"][0]["l1"]
    assert got == pytest.approx(expected, abs=1e-5)  # the same frames (batches of 3 vs 4: float rounding aside)


def test_quality_identity_fidelity_measures_the_border():
    from export.engine import Avatar, RegionParams

    frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    avatar = Avatar(image=frame.transpose(2, 0, 1)[None].astype(np.float32) / 255,
                    regions=RegionParams(shift=np.zeros((1, 2, 2), np.float32)))

    class Exact:  # identity motion gives the portrait back
        def animate(self, avatar, params):
            assert params is avatar.regions
            return avatar.image

    class DarkBorder:  # a grid off by a pixel: zero padding pulled in at the edges
        def animate(self, avatar, params):
            out = avatar.image.copy()
            out[..., :2, :] = out[..., -2:, :] = out[..., :, :2] = out[..., :, -2:] = 0
            return out

    exact = quality.identity_score(quality.identity_motion(Exact(), avatar), frame, "a")
    assert exact.l1 == exact.l1_border == exact.l1_inner == 0
    dark = quality.identity_score(quality.identity_motion(DarkBorder(), avatar), frame, "a")
    ring = np.ones((64, 64), bool)
    ring[2:-2, 2:-2] = False
    assert dark.l1 == pytest.approx((frame[ring] / 255).sum() / (64 * 64 * 3), abs=1e-3)
    band = (64 * 64 - 48 * 48) * 3  # the outer 8 pixels
    assert dark.l1_inner == 0 and dark.l1_border == pytest.approx((frame[ring] / 255).sum() / band, abs=1e-3)


def test_quality_cross_identity_figures():
    rng = np.random.default_rng(1)
    portrait = rng.normal(size=(len(quality.SUBSET), 2)) * 20 + 100
    other = rng.normal(size=(len(quality.SUBSET), 2)) * 20 + 100  # another face shape
    drift = [np.zeros_like(portrait)] + [rng.normal(size=portrait.shape) * 2 for _ in range(4)]
    driving = [other + d for d in drift]
    kept = quality.cross_score("p", "d", 5, portrait, [portrait + d for d in drift], driving)
    assert kept.motion_error == pytest.approx(0, abs=0.02) and kept.motion_ratio < 0.2
    assert kept.identity_share > 0.9 and kept.landmark_frames == 5
    copied = quality.cross_score("p", "d", 5, portrait, driving, driving)  # the driving face pasted
    assert copied.identity_share == pytest.approx(0, abs=1e-9) and copied.shape_to_driving == pytest.approx(0, abs=1e-9)
    still = quality.cross_score("p", "d", 5, portrait, [portrait] * 5, driving)
    assert still.motion_ratio == pytest.approx(1) and still.motion_scale == 0
    none = quality.cross_score("p", "d", 5, None, [None] * 5, driving)
    assert none.identity_share is None and none.motion_ratio is None


def test_quality_defaults_to_the_shipped_model(tmp_path, capsys):
    pytest.importorskip("mediapipe")
    from live.default_model import default_checkpoint

    _talking_clips(tmp_path / "clips", n_clips=1, frames=4, size=256)
    out = tmp_path / "q.json"
    assert run_cli(quality.main, ["--videos", str(tmp_path / "clips"), "--crop", "none", "--modes", "relative",
                                  "--threads", "1", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["model"]["shipped"] and rep["model"]["checkpoint"] == str(default_checkpoint())
    assert rep["model"]["config"] == "lite256" and rep["cross"] == [] and len(rep["per_clip"]) == 1
    row = rep["per_clip"][0]
    assert row["akd_frames"] == 2 and row["akd"] is not None  # mediapipe finds the drawn face
    assert "(shipped)" in capsys.readouterr().out


def test_quality_tools_crop_and_portraits(tmp_path):
    pytest.importorskip("mediapipe")
    from mediagen import save_image
    from webgen import draw_face

    _talking_clips(tmp_path / "clips", n_clips=1, frames=4, size=160)
    (tmp_path / "p").mkdir()
    save_image(tmp_path / "p" / "wide.png", draw_face(3, 120, width=200))  # not square: the face is cropped
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    nets.save_model(nets.build_model("tiny"), ckpt)
    out = tmp_path / "q.json"
    assert run_cli(quality.main, ["--videos", str(tmp_path / "clips"), "--checkpoint", str(ckpt), "--modes", "relative",
                                  "--portraits", str(tmp_path / "p"), "--threads", "1", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["settings"]["crop"] == "auto"  # the tools' default
    assert rep["per_clip"][0]["frames"] == 4 and rep["per_clip"][0]["l1_still"] > 0
    assert [(c["portrait"], c["driving"], c["frames"]) for c in rep["cross"]] == [("wide.png", "c0.mp4", 4)]


def test_quality_user_errors(tmp_path, capsys):
    _talking_clips(tmp_path / "clips", n_clips=1, frames=2)
    for argv in (["--videos", str(tmp_path / "missing")],
                 ["--videos", str(tmp_path / "clips"), "--modes", "relative,sideways"],
                 ["--videos", str(tmp_path / "clips"), "--max-frames", "0"],
                 ["--videos", str(tmp_path / "clips"), "--sheet", str(tmp_path / "s.jpg")],
                 ["--videos", str(tmp_path / "clips"), "--checkpoint", str(tmp_path / "none.pth")],
                 ["--videos", str(tmp_path / "clips"), "--crop", "center"],
                 ["--videos", str(tmp_path / "clips"), "--json", str(tmp_path)]):
        try:
            code = run_cli(quality.main, argv)
        except SystemExit as e:  # argument errors: the parser exits
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert run_cli(quality.main, ["--videos", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Landmarks
# ---------------------------------------------------------------------------------------------

def test_landmark_subset_is_mediapipes_contour_sets():
    mp = pytest.importorskip("mediapipe")
    from benchmarks import landmarks

    conn = mp.solutions.face_mesh_connections
    for group, name in landmarks.MEDIAPIPE_SETS.items():
        assert set(landmarks.GROUPS[group]) == {i for e in getattr(conn, name) for i in e}, group
    assert len(landmarks.SUBSET) == 152 and landmarks.SUBSET.max() < landmarks.NUM_MESH_POINTS


@pytest.mark.shared
def test_face_mesh_finds_a_face_in_a_portrait():
    pytest.importorskip("mediapipe")
    from benchmarks.landmarks import SUBSET, FaceMesh

    image = cl.read_portrait(shared_path("data", "faces", "portraits", "s1.jpg"), 256, "auto")
    with FaceMesh() as mesh:
        lm = mesh(image)
        assert lm is not None and lm.shape == (len(SUBSET), 2)
        assert (lm > 0).all() and (lm < 256).all()
        assert mesh(np.full((256, 256, 3), 127, np.uint8)) is None


def test_fps_times_a_checkpoint_file(tmp_path):
    torch.manual_seed(3)
    model = nets.build_model("tiny").eval()
    path = tmp_path / "tiny.pt"
    nets.save_model(model, path)
    out = tmp_path / "fps.json"
    assert run_cli(fps.main, ["--checkpoint", str(path), "--device", "cpu", "--frames", "2", "--warmup", "0", "--threads", "1",
                              "--min-frames", "1", "--backends", "torch-eager", "--no-expression", "--json",
                              str(out)]) == 0
    rows = [r for r in json.loads(out.read_text()) if r["available"]]
    assert {r["config"] for r in rows} == {"tiny.pt"} and {r["backend"] for r in rows} == {"torch-eager"}
    assert {r["stage"] for r in rows} == set(rn.STAGES)


def test_fps_reports_a_failing_backend_and_goes_on(tmp_path, monkeypatch):
    real = fps.make_runner

    def broken(backend, device, setup, opts):
        if backend == "torch-eager":
            raise RuntimeError("kaboom")
        return real(backend, device, setup, opts)

    monkeypatch.setattr(fps, "make_runner", broken)
    out = tmp_path / "fps.json"
    assert run_cli(fps.main, ["--config", "tiny", "--device", "cpu", "--frames", "2", "--warmup", "0", "--threads", "1",
                              "--min-frames", "1", "--backends", "naive,torch-eager", "--no-expression", "--json",
                              str(out)]) == 0
    rows = {(r["backend"], r["device"], r["stage"]): r for r in json.loads(out.read_text())}
    assert "kaboom" in rows[("torch-eager", "cpu", "per_frame")]["reason"]
    assert rows[("naive", "cpu", "per_frame")]["available"]


def test_soak_memory_slope_and_rss_reading():
    from benchmarks import soak

    t = [0, 30, 60, 90, 120]
    assert soak.slope_mb_per_min(t, [100 + 2 * x / 60 for x in t]) == pytest.approx(2.0)  # 2 MB per minute
    assert soak.slope_mb_per_min(t, [100, 101, 100, 101, 100]) == pytest.approx(0.0, abs=0.3)
    assert np.isnan(soak.slope_mb_per_min([5], [100]))
    assert soak.rss_mb(os.getpid()) > 10
    assert soak.rss_mb(2 ** 22 + 12345) is None  # no such process


def test_soak_refuses_a_missing_camera(tmp_path, capsys):
    from benchmarks import soak

    assert run_cli(soak.main, ["--camera", str(tmp_path / "none.mp4"), "--minutes", "0.01"]) == 2
    assert "camera video not found" in capsys.readouterr().err


def test_following_is_one_for_the_driver_itself_and_zero_for_a_still_photo():
    from benchmarks.metrics import following

    d = [0.0, 0.1, 0.3, -0.05, 0.2]
    same = following(d, d)
    assert same.gain == pytest.approx(1.0) and same.corr == pytest.approx(1.0) and same.frames == 5
    still = following(d, [0.0] * 5)
    assert still.gain == 0.0 and still.corr is None
    half = following(d, [0.5 * x for x in d])
    assert half.gain == pytest.approx(0.5) and half.corr == pytest.approx(1.0)
    assert following([0.0, 0.0], [0.1, 0.2]).gain is None


def test_fps_times_the_expression_path_and_adds_it_to_each_cpu_engine():
    from benchmarks import fps

    stages = fps.expression_stages(256)
    assert set(stages) == {"mesh", "warp", "per_frame"}
    marks = stages["mesh"]()
    assert marks is not None and marks.shape == (468, 2)
    out = stages["warp"]()
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    rows = [{"config": "default:lite256", "backend": "ort-cpu", "device": "cpu", "stage": "per_frame", "available": True,
             "median_ms": 25.0},
            {"config": "expression", "backend": "numpy+mediapipe", "device": "cpu", "stage": "per_frame",
             "available": True, "median_ms": 7.5, "p95_ms": 9.0}]
    text = fps.with_expression(rows)
    assert "32.50 ms" in text and "median 7.50 ms" in text
    assert fps.with_expression(rows[:1]) == "expression path: not measured"
