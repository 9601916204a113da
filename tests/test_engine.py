"""The engine API (PyTorch backend) against the model used directly."""
import numpy as np
import pytest
import torch

import nets
from export.engine import EngineError
from export.torch_engine import TorchEngine, params_from_regions, regions_from_params

from test_networks import randomize


def test_torch_engine_matches_model_and_batches():
    model = randomize(nets.build_model("tiny").eval(), seed=21)
    engine = TorchEngine(model)
    g = torch.Generator().manual_seed(0)
    src, d0, d1, d2 = torch.rand(4, 1, 3, 64, 64, generator=g)
    avatar = engine.prepare_source(src.numpy())
    init = engine.regions(d0.numpy())
    frames = np.concatenate([d1.numpy(), d2.numpy()])
    drv = engine.regions(frames)
    assert drv.shift.shape == (2, 4, 2) and drv.affine.shape == (2, 4, 2, 2)
    new = engine.transfer(avatar, drv, init, mode="relative")
    out = engine.animate(avatar, new)
    assert out.shape == (2, 3, 64, 64) and out.dtype == np.float32
    with torch.no_grad():
        rs, ri = model.regions(src), model.regions(d0)
        for i, d in enumerate((d1, d2)):
            ref = model.animate(src, rs, model.transfer(rs, model.regions(d), ri, "relative")).prediction
            assert np.allclose(out[i:i + 1], ref.numpy(), atol=1e-5)


def test_engine_mode_checks():
    model = nets.build_model("tiny").eval()
    model.has_avd = False
    engine = TorchEngine(model)
    avatar = engine.prepare_source(np.random.rand(1, 3, 64, 64).astype(np.float32))
    r = engine.regions(np.random.rand(1, 3, 64, 64).astype(np.float32))
    with pytest.raises(EngineError, match="no trained AVD"):
        engine.transfer(avatar, r, r, mode="avd")
    with pytest.raises(EngineError, match="mode must be"):
        engine.transfer(avatar, r, r, mode="mirror")
    assert engine.providers() == {"all": "torch cpu float32"}


def test_region_params_roundtrip():
    r = nets.Regions(shift=torch.rand(1, 3, 2), covar=torch.rand(1, 3, 2, 2), affine=torch.rand(1, 3, 2, 2))
    back = regions_from_params(params_from_regions(r))
    assert torch.equal(back.shift, r.shift) and torch.equal(back.affine, r.affine)
