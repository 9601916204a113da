"""Pure geometry against simple references and invariants."""
import math

import pytest
import torch

from nets import geometry as geo


def random_spd(n, dtype=torch.float64, gen=None, isotropy=None):
    """Random symmetric positive definite 2x2 matrices; ``isotropy`` = eigenvalue ratio - 1 if given."""
    angle = torch.rand(n, generator=gen, dtype=dtype) * 2 * math.pi - math.pi
    s1 = torch.rand(n, generator=gen, dtype=dtype) * 0.3 + 1e-3
    if isotropy is None:
        s2 = s1 * (torch.rand(n, generator=gen, dtype=dtype) * 0.95 + 0.01)
    else:
        s2 = s1 / (1 + isotropy)
    c, s = torch.cos(angle), torch.sin(angle)
    u = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return u @ torch.diag_embed(torch.stack([s1, s2], -1)) @ u.transpose(-1, -2)


def test_coordinate_grid_corners_and_order():
    g = geo.coordinate_grid(3, 5)
    assert g.shape == (3, 5, 2)
    assert torch.equal(g[0, 0], torch.tensor([-1.0, -1.0]))
    assert torch.equal(g[-1, -1], torch.tensor([1.0, 1.0]))
    assert torch.equal(g[0, -1], torch.tensor([1.0, -1.0]))  # x runs along the width
    assert torch.allclose(g[1, 2], torch.tensor([0.0, 0.0]))
    assert torch.allclose(g[0, 1, 0], torch.tensor(-0.5))


def test_antialias_kernel():
    k = geo.antialias_kernel(0.25)
    assert k.shape == (13, 13)  # sigma 1.5, 2*round(6)+1
    assert torch.allclose(k.sum(), torch.tensor(1.0))
    assert torch.allclose(k, k.T)
    assert k[6, 6] == k.max()
    assert geo.antialias_kernel(0.5).shape == (5, 5)
    t = torch.arange(13.0) - 6
    ref = torch.exp(-t**2 / (2 * 1.5**2))
    ref = ref[:, None] * ref[None, :]
    assert torch.allclose(k, ref / ref.sum(), atol=1e-7)


def test_inv2x2_matches_torch_inverse():
    m = torch.randn(100, 2, 2, dtype=torch.float64) + 3 * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(geo.inv2x2(m), torch.linalg.inv(m), atol=1e-12)
    assert torch.allclose(geo.det2x2(m), torch.linalg.det(m), atol=1e-12)


@pytest.mark.parametrize("isotropy", [None, 1e-1, 1e-2, 1e-3])
def test_closed_form_pca_matches_svd(isotropy):
    gen = torch.Generator().manual_seed(0)
    covar = random_spd(2000, gen=gen, isotropy=isotropy)
    u_svd, s_svd, _ = torch.linalg.svd(covar)
    u, s = geo.pca_closed_form(covar)
    assert torch.allclose(s, s_svd, atol=1e-5, rtol=0)
    # columns equal up to sign
    for col in range(2):
        dots = (u[..., :, col] * u_svd[..., :, col]).sum(-1)
        assert torch.allclose(dots.abs(), torch.ones_like(dots), atol=1e-5)


def test_closed_form_pca_float32_and_convention():
    gen = torch.Generator().manual_seed(1)
    covar = random_spd(5000, gen=gen).float()
    u, s = geo.pca_closed_form(covar)
    _, s_svd, _ = torch.linalg.svd(covar)
    assert torch.allclose(s, s_svd, atol=1e-5)
    assert torch.all(s[..., 0] >= s[..., 1])
    # proper rotation, major axis pointing to x >= 0, reconstruction
    assert torch.allclose(torch.linalg.det(u), torch.ones(5000), atol=1e-5)
    assert torch.all(u[..., 0, 0] >= 0)
    rec = u @ torch.diag_embed(s) @ u.transpose(-1, -2)
    assert torch.allclose(rec, covar, atol=1e-6)
    affine = geo.affine_from_pca(u, s)
    assert torch.allclose(affine @ affine.transpose(-1, -2), covar, atol=1e-6)


def test_closed_form_pca_degenerate_inputs_are_finite():
    covar = torch.tensor([[[0.1, 0.0], [0.0, 0.1]], [[0.0, 0.0], [0.0, 0.0]], [[0.2, 0.0], [0.0, 0.0]],
                          [[0.0, 0.0], [0.0, 0.3]]])
    u, s = geo.pca_closed_form(covar)
    assert torch.isfinite(u).all() and torch.isfinite(s).all()
    assert torch.allclose(u[0], torch.eye(2))
    assert torch.allclose(s[3], torch.tensor([0.3, 0.0]))
    assert torch.allclose(u[3][:, 0], torch.tensor([0.0, 1.0]))  # vertical major axis: angle 90 degrees


def test_pca_svd_runs_on_cpu_and_matches_linalg():
    covar = random_spd(10).float().view(2, 5, 2, 2)
    u, s = geo.pca_svd(covar)
    u2, s2, _ = torch.linalg.svd(covar.view(-1, 2, 2))
    assert torch.equal(u, u2.view(2, 5, 2, 2)) and torch.equal(s, s2.view(2, 5, 2))


def naive_gaussian(shift, covar, h, w):
    out = torch.zeros(shift.shape[0], shift.shape[1], h, w, dtype=torch.float64)
    grid = geo.coordinate_grid(h, w, dtype=torch.float64)
    for b in range(shift.shape[0]):
        for k in range(shift.shape[1]):
            inv = torch.linalg.inv(covar[b, k])
            for i in range(h):
                for j in range(w):
                    d = grid[i, j] - shift[b, k]
                    out[b, k, i, j] = torch.exp(-0.5 * d @ inv @ d)
    return out


def test_region_gaussian_matches_naive():
    shift = torch.rand(2, 3, 2, dtype=torch.float64) * 2 - 1
    covar = random_spd(6).view(2, 3, 2, 2) * 0.2
    grid = geo.coordinate_grid(6, 7, dtype=torch.float64)
    assert torch.allclose(geo.region_gaussian(shift, covar, grid), naive_gaussian(shift, covar, 6, 7), atol=1e-12)
    iso = geo.region_gaussian(shift, 0.01, grid)
    ref = naive_gaussian(shift, torch.eye(2, dtype=torch.float64).expand(2, 3, 2, 2) * 0.01, 6, 7)
    assert torch.allclose(iso, ref, atol=1e-12)


def test_region_motion_formula_and_identity():
    grid = geo.coordinate_grid(5, 4, dtype=torch.float64)
    shift_s = torch.rand(1, 2, 2, dtype=torch.float64)
    shift_d = torch.rand(1, 2, 2, dtype=torch.float64)
    aff_s = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    aff_d = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    m = geo.region_motion(grid, shift_s, shift_d, aff_s, aff_d, revert_axis_swap=True)
    for k in range(2):
        a = aff_s[0, k] @ torch.linalg.inv(aff_d[0, k])
        a = a * torch.sign(a[0, 0])
        ref = (grid - shift_d[0, k]) @ a.T + shift_s[0, k]
        assert torch.allclose(m[0, k], ref, atol=1e-12)
    same = geo.region_motion(grid, shift_s, shift_s, aff_s, aff_s)
    assert torch.allclose(same, grid.expand_as(same), atol=1e-12)
    keypoints_only = geo.region_motion(grid, shift_s, shift_d)
    assert torch.allclose(keypoints_only[0, 1], grid - shift_d[0, 1] + shift_s[0, 1])


def test_background_motion():
    grid = geo.coordinate_grid(4, 4)
    assert torch.equal(geo.background_motion(grid, None, 2), grid.expand(2, 4, 4, 2))
    bg = torch.tensor([[[1.0, 0.0, 0.1], [0.0, 1.0, -0.2], [0.0, 0.0, 1.0]]])
    out = geo.background_motion(grid, bg, 1)
    assert torch.allclose(out, grid + torch.tensor([0.1, -0.2]), atol=1e-6)
    persp = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 1.0]]])
    out = geo.background_motion(grid, persp, 1)
    assert torch.allclose(out, grid / (0.5 * grid[..., :1] + 1), atol=1e-6)


def test_convex_hull_area_matches_scipy():
    spatial = pytest.importorskip("scipy.spatial")
    gen = torch.Generator().manual_seed(3)
    pts = torch.rand(50, 10, 2, generator=gen, dtype=torch.float64) * 2 - 1
    ours = geo.convex_hull_area(pts)
    ref = torch.tensor([spatial.ConvexHull(p.numpy()).volume for p in pts], dtype=torch.float64)
    assert torch.allclose(ours, ref, atol=1e-10)
    # float32 on region-like point sets
    assert torch.allclose(geo.convex_hull_area(pts.float()), ref.float(), atol=1e-5)


def test_convex_hull_area_collinear_and_duplicates():
    square = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.0], [0.5, 0.5], [1.0, 1.0]]])
    assert torch.allclose(geo.convex_hull_area(square), torch.tensor([1.0]))
    line = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    assert torch.allclose(geo.convex_hull_area(line), torch.tensor([0.0]))


def blob(h, mean, covar):
    grid = geo.coordinate_grid(h, h, dtype=torch.float64)
    g = geo.region_gaussian(mean.view(1, 1, 2), covar.view(1, 1, 2, 2), grid)
    return g / g.sum()


def test_heatmap_statistics_rotation_equivariance_exact_90():
    """rot90 of the heatmap is an exact rotation of the grid: shift and covar rotate with it."""
    h = 33
    mean = torch.tensor([0.2, -0.3], dtype=torch.float64)
    covar = torch.tensor([[0.02, 0.008], [0.008, 0.006]], dtype=torch.float64)
    heat = blob(h, mean, covar)
    grid = geo.coordinate_grid(h, h, dtype=torch.float64)
    # torch.rot90 on dims (h, w) turns the image counter-clockwise as displayed; with y down that is
    # (x, y) -> (y, -x) in coordinates
    rot = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    heat_r = torch.rot90(heat, 1, dims=(2, 3))
    s, s_r = geo.heatmap_shift(heat, grid), geo.heatmap_shift(heat_r, grid)
    c, c_r = geo.heatmap_covar(heat, grid, s), geo.heatmap_covar(heat_r, grid, s_r)
    assert torch.allclose(s_r[0, 0], rot @ s[0, 0], atol=1e-12)
    assert torch.allclose(c_r[0, 0], rot @ c[0, 0] @ rot.T, atol=1e-12)
    a = geo.affine_from_pca(*geo.pca_closed_form(c))
    a_r = geo.affine_from_pca(*geo.pca_closed_form(c_r))
    # affine rotates with the frame, up to the PCA sign ambiguity (a 180 degree turn)
    expected = rot @ a[0, 0]
    assert torch.allclose(a_r[0, 0], expected, atol=1e-10) or torch.allclose(a_r[0, 0], -expected, atol=1e-10)


@pytest.mark.parametrize("degrees", [17.0, 45.0, 120.0, -70.0])
def test_heatmap_statistics_rotation_equivariance_any_angle(degrees):
    """A synthetic gaussian heatmap rotated by any angle: shift, covar and affine rotate with it."""
    t = math.radians(degrees)
    rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    mean = torch.tensor([0.15, -0.1], dtype=torch.float64)
    covar = torch.tensor([[0.012, 0.004], [0.004, 0.005]], dtype=torch.float64)
    h = 129
    grid = geo.coordinate_grid(h, h, dtype=torch.float64)
    heat = blob(h, mean, covar)
    heat_r = blob(h, rot @ mean, rot @ covar @ rot.T)
    s, s_r = geo.heatmap_shift(heat, grid), geo.heatmap_shift(heat_r, grid)
    c, c_r = geo.heatmap_covar(heat, grid, s), geo.heatmap_covar(heat_r, grid, s_r)
    assert torch.allclose(s_r[0, 0], rot @ s[0, 0], atol=1e-6)
    assert torch.allclose(c_r[0, 0], rot @ c[0, 0] @ rot.T, atol=1e-6)
    for form in ("closed_form", "svd"):
        a = geo.affine_from_pca(*geo.pca(c, form))[0, 0]
        a_r = geo.affine_from_pca(*geo.pca(c_r, form))[0, 0]
        # columns rotate with the frame, each up to its sign
        for col in range(2):
            d = (a_r[:, col] * (rot @ a[:, col])).sum()
            assert torch.allclose(d.abs(), (a[:, col] ** 2).sum(), rtol=1e-4)
    # closed form: the whole affine rotates, up to one global sign (never a reflection)
    a = geo.affine_from_pca(*geo.pca_closed_form(c))[0, 0]
    a_r = geo.affine_from_pca(*geo.pca_closed_form(c_r))[0, 0]
    assert (torch.allclose(a_r, rot @ a, atol=1e-5) or torch.allclose(a_r, -(rot @ a), atol=1e-5))


def test_resize_flow_and_warp_shapes():
    flow = geo.coordinate_grid(8, 8).expand(2, 8, 8, 2)
    assert geo.resize_flow(flow, (8, 8)) is flow
    up = geo.resize_flow(flow, (16, 16))
    assert up.shape == (2, 16, 16, 2)
    # bilinear upsampling of a linear field stays linear inside (corners are kept within [-1, 1])
    assert up.min() >= -1 and up.max() <= 1
    img = torch.rand(2, 3, 16, 16)
    assert geo.warp(img, flow).shape == img.shape


def test_matmul2x2_and_gram_match_matmul_and_stay_float32_under_autocast():
    a = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    b = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    assert torch.allclose(geo.matmul2x2(a, b), a @ b, atol=1e-12)
    assert torch.allclose(geo.gram2x2(a), a @ a.transpose(-1, -2), atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = geo.matmul2x2(a.float(), b.float())
    assert out.dtype == torch.float32


def test_pixel_centre_grid_and_flow_resize_return_the_image():
    """The pixel-centre grid is the identity of grid_sample(align_corners=False), at any flow size;
    the official grid zooms out and blurs (what official checkpoints learned with)."""
    img = torch.rand(1, 3, 32, 32)
    for side in (32, 8):  # the flow at the image size and resized from a coarser one
        flow = geo.coordinate_grid(side, side, pixel_centres=True).unsqueeze(0)
        assert torch.allclose(geo.warp(img, flow, pixel_centres=True), img, atol=1e-5)
    official = geo.warp(img, geo.coordinate_grid(32, 32).unsqueeze(0))
    assert (official - img).abs().mean() > 0.05
    g = geo.coordinate_grid(4, 8, pixel_centres=True)
    assert torch.allclose(g[0, :, 0], torch.tensor([-7, -5, -3, -1, 1, 3, 5, 7]) / 8)
    assert torch.allclose(g[:, 0, 1], torch.tensor([-3.0, -1, 1, 3]) / 4)



# ---------------------------------------------------------------------------------------------
# Gradients (training backpropagates through PCA and the region motions)
# ---------------------------------------------------------------------------------------------

def test_closed_form_pca_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(3)
    covar = random_spd(6, gen=gen).requires_grad_()  # distinct eigenvalues: U and S are differentiable
    assert torch.autograd.gradcheck(lambda c: geo.pca_closed_form(c), (covar,))
    assert torch.autograd.gradcheck(lambda c: geo.affine_from_pca(*geo.pca_closed_form(c)), (covar,))


def test_region_parameters_from_a_heatmap_have_the_right_gradients():
    """heatmap -> shift, covariance -> closed-form PCA -> affine: the path of the region predictor."""
    gen = torch.Generator().manual_seed(4)
    grid = geo.coordinate_grid(6, 5, dtype=torch.float64)
    logits = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def affine(x):
        heatmap = torch.softmax(x.flatten(2), -1).view_as(x)
        shift = geo.heatmap_shift(heatmap, grid)
        return shift, geo.affine_from_pca(*geo.pca_closed_form(geo.heatmap_covar(heatmap, grid, shift)))

    assert torch.autograd.gradcheck(affine, (logits,))


def test_region_motion_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(5)
    grid = geo.coordinate_grid(4, 5, dtype=torch.float64)

    def leaf(*shape):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.5).requires_grad_()

    rot = torch.tensor([[0.9, -0.3], [0.3, 0.9]], dtype=torch.float64)  # a00 far from 0: the sign fix is constant
    affine_src = (rot + 0.1 * torch.rand(2, 3, 2, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    affine_drv = (rot + 0.1 * torch.rand(2, 3, 2, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    inputs = (leaf(2, 3, 2), leaf(2, 3, 2), affine_src, affine_drv)
    assert torch.autograd.gradcheck(lambda *a: geo.region_motion(grid, *a), inputs)
    # the affine changes the motion (the check above is not only about the shifts)
    still = geo.region_motion(grid, inputs[0], inputs[1])
    assert not torch.allclose(still, geo.region_motion(grid, *inputs))
