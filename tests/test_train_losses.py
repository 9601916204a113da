"""Random warps, equivariance losses, perceptual pyramid, L1+SSIM fallback, VGG19 weights, expression terms."""
import numpy as np
import pytest
import torch

from nets import geometry as geo
from nets.errors import UserError
from nets.regions import Regions
from nets.train import vgg as vgg_mod
from nets.train.losses import (L1SSIMPyramidLoss, PerceptualPyramidLoss, equivariance_losses, ssim,
                               _gaussian_window)
from nets.train.transforms import RandomWarp


def _warp(batch=3, sigma_affine=0.05, sigma_tps=0.005, seed=0):
    return RandomWarp.sample(batch, sigma_affine, sigma_tps, 5, generator=torch.Generator().manual_seed(seed))


def test_identity_warp_and_points():
    w = _warp(sigma_affine=0.0, sigma_tps=0.0)
    z = torch.rand(3, 7, 2) * 2 - 1
    assert torch.allclose(w(z), z)
    assert torch.allclose(w.jacobian(z), torch.eye(2).expand(3, 7, 2, 2))
    img = torch.rand(3, 3, 16, 16)
    const = torch.full((3, 3, 16, 16), 0.3)
    assert torch.allclose(w.warp_frame(const), const, atol=1e-6)
    assert w.warp_frame(img).shape == img.shape


def test_jacobian_matches_autograd():
    w = _warp(batch=2, sigma_affine=0.1, sigma_tps=0.05, seed=3).to(dtype=torch.float64)
    z = (torch.rand(2, 5, 2, dtype=torch.float64) * 2 - 1)
    auto = torch.zeros(2, 5, 2, 2, dtype=torch.float64)
    for b in range(2):
        for n in range(5):
            auto[b, n] = torch.autograd.functional.jacobian(lambda p: w(p.view(1, 1, 2).expand(2, 1, 2))[b, 0],
                                                            z[b, n])
    assert torch.allclose(w.jacobian(z), auto, atol=1e-8)


def test_warp_frame_moves_content_by_the_inverse_of_the_point_map():
    """A blob at T(z) in the original appears at z in the transformed frame (up to ~1 pixel)."""
    size = 64
    w = _warp(batch=2, sigma_affine=0.1, sigma_tps=0.01, seed=5)
    target = torch.tensor([[[0.2, -0.3]], [[-0.25, 0.1]]])  # z in transformed-frame coordinates
    centre = w(target)  # where the blob must be in the original
    grid = geo.coordinate_grid(size, size)
    d2 = ((grid[None, None] - centre[:, :, None, None, :]) ** 2).sum(-1)  # (2, 1, H, W)
    blob = torch.exp(-d2 / (2 * 0.05 ** 2)).expand(2, 3, size, size)
    out = w.warp_frame(blob)[:, 0]
    found = (out[..., None] * grid).sum((1, 2)) / out.sum((1, 2))[..., None]
    assert torch.allclose(found, target[:, 0], atol=2.5 / size), (found, target)


def _regions(batch=2, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shift = torch.rand(batch, k, 2, generator=g) * 1.2 - 0.6
    a = torch.randn(batch, k, 2, 2, generator=g) * 0.1 + 0.2 * torch.eye(2)
    return Regions(shift=shift, affine=a)


def test_equivariance_losses_vanish_for_equivariant_regions():
    w = _warp(batch=2, sigma_affine=0.1, sigma_tps=0.02, seed=1)
    t = _regions()
    drv = Regions(shift=w(t.shift), affine=w.jacobian(t.shift) @ t.affine)
    s, a = equivariance_losses(drv, t, w)
    assert s.item() < 1e-6 and a.item() < 1e-5
    # PCA sign flips (a 180 degree turn of both axes) are forgiven with revert_axis_swap only
    flipped = Regions(shift=drv.shift, affine=-drv.affine)
    assert equivariance_losses(flipped, t, w, revert_axis_swap=True)[1].item() < 1e-5
    assert equivariance_losses(flipped, t, w, revert_axis_swap=False)[1].item() == pytest.approx(1.0, abs=1e-4)
    off = Regions(shift=drv.shift + 0.1, affine=drv.affine)
    assert equivariance_losses(off, t, w)[0].item() == pytest.approx(0.1, abs=1e-5)


def test_equivariance_losses_are_float32_under_autocast():
    w = _warp(batch=2)
    t = _regions()
    drv = Regions(shift=w(t.shift), affine=w.jacobian(t.shift) @ t.affine)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, a = equivariance_losses(drv, t, w)
    assert s.dtype == a.dtype == torch.float32 and a.item() < 1e-5


def test_ssim_and_fallback_loss():
    x = torch.rand(2, 3, 32, 32)
    win = _gaussian_window()
    assert ssim(x, x, win).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, torch.rand(2, 3, 32, 32), win).item() < 0.5
    loss = L1SSIMPyramidLoss((1, 0.5, 0.25, 0.125), (10,) * 5)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-4)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    z = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert 0 < loss(x, y).item() < loss(x, z).item()


@pytest.fixture(scope="module")
def fake_vgg_file(tmp_path_factory):
    """torchvision's vgg19 layout with random weights (real ImageNet weights are not available here)."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    features = tv.models.vgg19().features  # weights=None: random init, nothing downloaded
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # a real file has the classifier too: must be ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    return path, features


def test_vgg_layers_match_torchvision(fake_vgg_file):
    path, features = fake_vgg_file
    net = vgg_mod.load_vgg19(path)
    x = torch.rand(1, 3, 48, 48)
    outs = net(x)
    xn = (x - torch.tensor(vgg_mod.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(vgg_mod.IMAGENET_STD).view(1, 3, 1, 1)
    ref, h = [], xn
    taps = {vgg_mod.LAYER_NAMES.index(n) for n in vgg_mod.DEFAULT_LAYERS}
    for i, m in enumerate(features):
        h = m(h)
        if i in taps:
            ref.append(h)
    assert len(outs) == 5
    for a, b in zip(outs, ref):
        assert torch.allclose(a, b, atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())
    loss = PerceptualPyramidLoss(net, (1, 0.5), (10,) * 5)
    assert loss(x, x).item() == 0.0 and loss(x, torch.rand_like(x)).item() > 0


def test_vgg_weights_lookup(tmp_path, monkeypatch, fake_vgg_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert vgg_mod.find_vgg_weights() is None
    cache = vgg_mod.torchvision_cache_path()
    assert cache == tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(fake_vgg_file[0].read_bytes())
    assert vgg_mod.find_vgg_weights() == cache
    assert vgg_mod.find_vgg_weights(fake_vgg_file[0]) == fake_vgg_file[0]
    with pytest.raises(UserError, match="not found"):
        vgg_mod.find_vgg_weights(tmp_path / "missing.pth")
    bad = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(UserError, match="not a VGG19 state dict"):
        vgg_mod.load_vgg19(bad)


# -- expression terms --------------------------------------------------------------------------------

def _faces(points, widths=((0.4, 0.2),), valid=(1.0,)):
    from nets.train.losses import FaceTargets
    return FaceTargets(torch.tensor(points, dtype=torch.float32), torch.tensor(widths, dtype=torch.float32),
                       torch.tensor(valid, dtype=torch.float32))


FACE = [[0.0, 0.4], [0.0, 0.8], [-0.3, -0.2], [0.3, -0.2]]  # mouth, chin, right eye, left eye (networks' coordinates)


def test_region_prior_goes_down_as_the_region_reaches_its_point():
    from nets.train.losses import region_prior_loss
    faces = _faces([FACE, FACE], widths=((0.4, 0.2), (0.4, 0.2)), valid=(1.0, 0.0))
    shift = torch.zeros(2, 5, 2)
    shift[:, 1] = torch.tensor([0.0, 0.8])  # region 1 already on the chin
    far = float(region_prior_loss(shift, faces, [0, 1]))
    assert far == pytest.approx(0.4 ** 2 / 2)  # region 0 is 0.4 from the mouth; mean over the two regions
    values = []
    for t in (0.0, 0.5, 0.9, 1.0):  # region 0 moves to the mouth
        s = shift.clone()
        s[:, 0] = t * torch.tensor(FACE[0])
        values.append(float(region_prior_loss(s, faces, [0, 1])))
    assert values[0] > values[1] > values[2] > values[3] == 0
    # a frame without a face pulls nothing; regions past the named ones are free; targets in any order
    s = shift.clone()
    s[1] = 5.0
    s[:, 2:] = 7.0
    assert float(region_prior_loss(s, faces, [0, 1])) == pytest.approx(far)
    assert float(region_prior_loss(shift, faces, [1, 0])) > far
    # and its gradient pulls region 0 towards the mouth
    s = shift.clone().requires_grad_(True)
    region_prior_loss(s, faces, [0, 1]).backward()
    assert s.grad[0, 0, 1] < 0 and s.grad[0, 1].abs().max() == 0 and s.grad[1].abs().max() == 0


def test_expression_masks_sit_on_mouth_and_eyes():
    from nets.train.losses import expression_loss, expression_masks
    h = w = 64
    faces = _faces([FACE, FACE], widths=((0.4, 0.2), (0.4, 0.2)), valid=(1.0, 0.0))
    masks = expression_masks(faces, h, w, pixel_centres=True)
    assert masks.shape == (2, 1, h, w) and float(masks[1].max()) == 0  # no face, no mask
    m = masks[0, 0]

    def at(x, y):  # the mask at the pixel holding a point of the networks' coordinates, and that pixel's centre
        i, j = int((y + 1) / 2 * h), int((x + 1) / 2 * w)
        return float(m[i, j]), ((2 * j + 1) / w - 1, (2 * i + 1) / h - 1)

    def gauss(centre, sigma, point):
        return np.exp(-((point[0] - centre[0]) ** 2 + (point[1] - centre[1]) ** 2) / (2 * sigma ** 2))

    for x, y in ((0.0, 0.4), (0.0, 0.6), (0.1, 0.5)):  # around the mouth: sigma = half the mouth width
        value, centre = at(x, y)
        assert value == pytest.approx(gauss(FACE[0], 0.2, centre), abs=1e-5)
    assert gauss(FACE[0], 0.2, at(0.0, 0.6)[1]) == pytest.approx(np.exp(-0.5), abs=0.1)
    for x, y in ((-0.3, -0.2), (-0.3, -0.1), (-0.4, -0.25)):  # around the right eye: half the eye width
        value, centre = at(x, y)
        assert value == pytest.approx(gauss(FACE[2], 0.1, centre), abs=1e-5)
    assert at(0.3, -0.2)[0] > 0.9 and at(-0.9, 0.9)[0] < 1e-3 and at(0.0, -0.9)[0] < 1e-3
    # the loss sees errors on the mouth, hardly elsewhere; normalised by the mask's area
    target = torch.zeros(2, 3, h, w)
    mouth, corner = target.clone(), target.clone()
    mouth[:, :, int(0.7 * h) - 2:int(0.7 * h) + 2, w // 2 - 2:w // 2 + 2] = 1
    corner[:, :, :4, :4] = 1
    assert float(expression_loss(mouth, target, masks)) > 100 * float(expression_loss(corner, target, masks)) > 0
    assert float(expression_loss(target + 0.5, target, masks)) == pytest.approx(0.5)
    assert float(expression_loss(target + 0.5, target, torch.zeros_like(masks))) == 0
