"""The networks: shapes per preset, invariants, the cached per-frame path, device-independence."""
import pytest
import torch

import nets
from nets import geometry as geo
from nets.config import preset


def randomize(model: nets.MRAA, seed: int = 0) -> nets.MRAA:
    """Random weights everywhere, BatchNorm statistics included ("whatever the weights")."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype != torch.float32 or name.endswith("down.weight"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() > 1:  # conv / linear weights: random, scaled by fan-in to keep activations finite
                t.copy_(torch.randn(t.shape, generator=gen) / t[0].numel() ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def tiny(**changes):
    cfg = preset("tiny")
    for path, value in changes.items():
        obj = cfg.model
        *parents, leaf = path.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    return nets.build_model(cfg).eval()


@pytest.mark.parametrize("name,heat,flow", [("vox256", 64, 64), ("taichi256", 58, 64), ("mgif256", 58, 64),
                                            ("ted384", 90, 96)])
def test_official_presets_shapes(name, heat, flow):
    model = nets.build_model(name).eval()
    s = model.frame_size
    src, drv = torch.rand(1, 3, s, s), torch.rand(1, 3, s, s)
    with torch.no_grad():
        rs, rd = model.regions(src), model.regions(drv)
        assert rs.shift.shape == (1, 10, 2) and rs.covar.shape == (1, 10, 2, 2) and rs.affine.shape == (1, 10, 2, 2)
        assert rs.heatmap.shape == (1, 10, heat, heat)
        assert torch.allclose(rs.heatmap.sum(dim=(2, 3)), torch.ones(1, 10))
        bg = model.background(src, drv)
        assert bg.shape == (1, 3, 3)
        new = model.transfer(rs, rd, rs, mode="relative")
        out = model.animate(src, rs, new, bg=bg)
    assert out.prediction.shape == (1, 3, s, s)
    assert out.optical_flow.shape == (1, flow, flow, 2)
    assert out.occlusion.shape == (1, 1, flow, flow)
    assert out.deformed.shape == (1, 3, s, s)
    assert 0 <= out.prediction.min() and out.prediction.max() <= 1


@pytest.mark.parametrize("name", ["tiny", "vox256"])
def test_identity_flow_when_driving_equals_source(name):
    model = randomize(nets.build_model(name).eval(), seed=1)
    s = model.frame_size
    src = torch.rand(2, 3, s, s)
    with torch.no_grad():
        r = model.regions(src)
        out = model.animate(src, r, r)
    h, w = out.optical_flow.shape[1:3]
    identity = geo.coordinate_grid(h, w).expand(2, h, w, 2)
    assert torch.allclose(out.optical_flow, identity, atol=1e-5, rtol=0)
    # also through relative transfer with the source as the initial frame
    with torch.no_grad():
        out2 = model.animate(src, r, model.transfer(r, r, r, mode="relative"))
    assert torch.allclose(out2.optical_flow, identity, atol=1e-5, rtol=0)


def test_identity_flow_svd_mode():
    model = randomize(nets.build_model("tiny", pca="svd").eval(), seed=2)
    src = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        r = model.regions(src)
        flow = model.animate(src, r, r).optical_flow
    assert torch.allclose(flow, geo.coordinate_grid(32, 32).expand_as(flow), atol=1e-5, rtol=0)


def test_cached_path_equals_full_path():
    model = randomize(tiny(), seed=3)
    src, drv, init = torch.rand(3, 1, 3, 64, 64)
    with torch.no_grad():
        rs, rd, ri = model.regions(src), model.regions(drv), model.regions(init)
        new = model.transfer(rs, rd, ri, mode="relative")
        full = model.animate(src, rs, new)
        cache = model.prepare_source(src)
        cached = model.animate_cached(cache, new)
    assert torch.equal(full.prediction, cached.prediction)
    assert torch.equal(full.optical_flow, cached.optical_flow)


def test_transfer_modes():
    model = randomize(tiny(), seed=4)
    src, drv = torch.rand(2, 1, 3, 64, 64)
    with torch.no_grad():
        rs, rd = model.regions(src), model.regions(drv)
        std = model.transfer(rs, rd, rd, mode="standard")
        assert torch.equal(std.shift, rd.shift) and std.heatmap is None
        rel = model.transfer(rs, rd, rd, mode="relative")  # driving == initial: source params back
        assert torch.allclose(rel.shift, rs.shift, atol=1e-6)
        assert torch.allclose(rel.affine, rs.affine, atol=1e-5)
        assert torch.equal(rel.covar, rd.covar)  # the driving covariance is kept, as officially
        avd = model.transfer(rs, rd, mode="avd")
        assert avd.shift.shape == rs.shift.shape
        assert torch.allclose(avd.covar, avd.affine @ avd.affine.transpose(-1, -2))
    with pytest.raises(ValueError, match="mode must be one of"):
        model.transfer(rs, rd, rd, mode="bogus")
    with pytest.raises(ValueError, match="initial"):
        model.transfer(rs, rd, None, mode="relative")


def test_relative_movement_scale():
    src = nets.Regions(shift=torch.tensor([[[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]]))
    init = nets.Regions(shift=torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]))
    drv = nets.Regions(shift=init.shift + torch.tensor([0.2, -0.4]))
    from nets import transfer
    out = transfer.relative(src, drv, init)
    assert torch.allclose(out.shift, src.shift + 0.5 * torch.tensor([0.2, -0.4]))  # areas 1/8 vs 1/2
    out = transfer.relative(src, drv, init, adapt_movement_scale=False)
    assert torch.allclose(out.shift, src.shift + torch.tensor([0.2, -0.4]))


def test_keypoints_only_and_regression_variants():
    kp = tiny(**{"estimate_affine": False, "region.pca_based": False, "flow.use_covar_heatmap": False})
    src = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        r = kp.regions(src)
        assert r.affine is None and r.covar is None
        out = kp.animate(src, r, r)
    assert torch.allclose(out.optical_flow, geo.coordinate_grid(32, 32).expand_as(out.optical_flow), atol=1e-5)

    reg = tiny(**{"region.pca_based": False})
    assert reg.region_predictor.jacobian is not None
    with torch.no_grad():
        r = reg.regions(src)
    # jacobian conv starts at weight 0, bias (1, 0, 0, 1): identity affines
    assert torch.allclose(r.affine, torch.eye(2).expand_as(r.affine), atol=1e-6)
    assert torch.allclose(r.covar, r.affine @ r.affine.transpose(-1, -2))


@pytest.mark.parametrize("bg_type,params", [("zero", 0), ("shift", 2), ("affine", 6), ("perspective", 8)])
def test_background_types(bg_type, params):
    model = tiny(**{"background.bg_type": bg_type})
    fc = model.bg_predictor.fc
    assert (fc is None and params == 0) or fc.out_features == params
    src, drv = torch.rand(2, 2, 3, 64, 64)
    with torch.no_grad():
        bg = model.background(src, drv)
    assert bg.shape == (2, 3, 3)
    assert torch.allclose(bg, torch.eye(3).expand(2, 3, 3))  # identity at initialisation
    if fc is not None:
        with torch.no_grad():
            fc.bias.add_(0.1)
            bg = model.background(src, drv)
        assert torch.equal(bg[:, 2, 2], torch.ones(2))
        if bg_type in ("shift", "affine"):
            assert torch.equal(bg[:, 2, :2], torch.zeros(2, 2))
        if bg_type == "shift":
            assert torch.equal(bg[:, :2, :2], torch.eye(2).expand(2, 2, 2))


def test_no_occlusion_and_no_skips_variants():
    for changes in ({"flow.estimate_occlusion_map": False}, {"generator.skips": False}):
        model = randomize(tiny(**changes), seed=5)
        src = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            r = model.regions(src)
            out = model.animate(src, r, r)
        assert out.prediction.shape == (1, 3, 64, 64)


def test_per_frame_path_runs_on_meta_device():
    """No CPU tensors, numpy or .item() in the per-frame path: it runs with every tensor on 'meta'."""
    model = tiny().to("meta")
    src = torch.empty(1, 3, 64, 64, device="meta")
    drv = torch.empty(1, 3, 64, 64, device="meta")
    rs = model.regions(src)
    cache = model.prepare_source(src, rs)
    rd = model.regions(drv)
    new = model.transfer(rs, rd, rs, mode="relative")
    out = model.animate_cached(cache, new, bg=model.background(src, drv), with_deformed=False)
    assert out.prediction.device.type == "meta" and out.prediction.shape == (1, 3, 64, 64)
    avd = model.transfer(rs, rd, mode="avd")
    assert avd.shift.device.type == "meta"


def test_per_frame_path_compiles_without_graph_breaks():
    """The per-frame path traces as one graph (fullgraph=True fails on any host sync or break)."""
    model = randomize(tiny(), seed=6)
    src, drv, init = torch.rand(3, 1, 3, 64, 64)
    with torch.no_grad():
        rs = model.regions(src)
        cache = model.prepare_source(src, rs)
        ri = model.regions(init)

        def per_frame(frame):
            rd = model.regions(frame)
            new = model.transfer(rs, rd, ri, mode="relative")
            return model.animate_cached(cache, new, with_deformed=False).prediction

        torch._dynamo.reset()
        compiled = torch.compile(per_frame, fullgraph=True, backend="eager")
        assert torch.allclose(compiled(drv), per_frame(drv), atol=1e-6)


def test_svd_mode_affine_signs_follow_lapack():
    model = randomize(tiny(), seed=7)
    src = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model.pca = "svd"
        r_svd = model.regions(src)
        model.pca = "closed_form"
        r_cf = model.regions(src)
    u, s, _ = torch.linalg.svd(r_svd.covar.view(-1, 2, 2))
    assert torch.equal(r_svd.affine.view(-1, 2, 2), u * torch.sqrt(s).unsqueeze(-2))
    # both forms agree up to column signs
    for col in range(2):
        dots = (r_svd.affine[..., col] * r_cf.affine[..., col]).sum(-1)
        norms = (r_svd.affine[..., col] ** 2).sum(-1)
        assert torch.allclose(dots.abs(), norms, rtol=1e-3, atol=1e-8)
    with pytest.raises(ValueError):
        model.pca = "qr"


def test_lite_preset_is_separable_and_small():
    model = nets.build_model("lite256").eval()
    keys = model.state_dict().keys()
    assert any(".depthwise." in k for k in keys)
    assert not any(k.startswith("generator.down_blocks") and ".depthwise." in k for k in keys)  # cached encoder
    per_frame = sum(p.numel() for n in ("region_predictor", "flow_predictor", "generator")
                    for p in getattr(model, n).parameters())
    assert per_frame < 1_000_000
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        r = model.regions(x)
        out = model.animate(x, r, r)
    assert out.prediction.shape == (1, 3, 256, 256) and r.heatmap.shape == (1, 10, 64, 64)
    assert torch.allclose(out.optical_flow, geo.coordinate_grid(64, 64, pixel_centres=True).expand_as(out.optical_flow), atol=1e-5)


def test_lite_models_give_the_portrait_back_at_rest():
    """Identity motion with pixel centres: the warped source is the source (no border, no blur)."""
    model = nets.build_model("lite256").eval()
    assert model.config.model.pixel_centres and not nets.build_model("vox256").config.model.pixel_centres
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        r = model.regions(x)
        out = model.animate(x, r, r)
    assert torch.allclose(geo.warp(x, out.optical_flow, pixel_centres=True), x, atol=1e-4)
