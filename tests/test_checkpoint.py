"""Official layout mapping, loading and saving both formats, clear mismatch errors."""
import json
import pickle

import numpy as np

import pytest
import torch

import nets
from nets import checkpoint as ck
from nets.config import preset

from conftest import FIXTURES, shared_path
from test_networks import randomize


def official_layout(model):
    return ck.to_official(model.state_dict())


def assert_matches_reference(model, reference, complete=True):
    ours = official_layout(model)
    for net, entries in reference.items():
        if net.startswith("_"):
            continue
        if complete:
            assert list(ours[net]) == [e[0] for e in entries], f"{net}: keys or order differ"
        for key, shape, dtype in entries:
            assert key in ours[net], f"{net}.{key} missing"
            assert list(ours[net][key].shape) == shape, f"{net}.{key}: {list(ours[net][key].shape)} != {shape}"
            assert str(ours[net][key].dtype).replace("torch.", "") == dtype
    # and back: own keys map one-to-one
    own = ck.from_official(ours)
    assert own.keys() == model.state_dict().keys()


@pytest.mark.parametrize("name", nets.OFFICIAL_PRESETS)
def test_state_dict_maps_onto_official_reference(name):
    path = shared_path("reference", f"mraa_{name}_state_dict.json")
    reference = json.loads(path.read_text())
    assert_matches_reference(nets.build_model(name), reference)


def test_state_dict_maps_onto_in_repo_sample():
    reference = json.loads((FIXTURES / "official_vox256_keys_sample.json").read_text())
    assert_matches_reference(nets.build_model("vox256"), reference, complete=False)


def test_key_mapping_functions():
    assert ck.official_key("flow_predictor.mask.weight") == ("generator", "pixelwise_flow_predictor.mask.weight")
    assert ck.own_key("generator", "pixelwise_flow_predictor.mask.weight") == "flow_predictor.mask.weight"
    assert ck.own_key("generator", "first.conv.weight") == "generator.first.conv.weight"
    with pytest.raises(KeyError):
        ck.official_key("something.else")


def outputs(model, seed=0):
    s = model.frame_size
    g = torch.Generator().manual_seed(seed)
    src, drv = torch.rand(2, 1, 3, s, s, generator=g)
    with torch.no_grad():
        rs, rd = model.regions(src), model.regions(drv)
        out = model.animate(src, rs, model.transfer(rs, rd, rs, "relative"), bg=model.background(src, drv))
    return rd, out


def test_official_roundtrip(tmp_path):
    model = randomize(nets.build_model("tiny").eval(), seed=11)
    path = tmp_path / "official.pth"
    ck.save_official(model, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(ck.OFFICIAL_NETWORKS)
    assert "pixelwise_flow_predictor.mask.weight" in raw["generator"]
    loaded = nets.load_model(path, config="tiny")
    assert not loaded.training
    r1, o1 = outputs(model)
    r2, o2 = outputs(loaded)
    assert torch.equal(r1.affine, r2.affine) and torch.equal(o1.prediction, o2.prediction)


def test_own_format_embeds_config(tmp_path):
    cfg = preset("tiny")
    cfg.model.num_regions = 6
    model = randomize(nets.build_model(cfg).eval(), seed=12)
    path = tmp_path / "own.pth"
    nets.save_model(model, path, step=42)
    loaded = nets.load_model(path)  # no config needed
    assert loaded.num_regions == 6
    assert torch.equal(outputs(model)[1].prediction, outputs(loaded)[1].prediction)
    assert torch.load(path, weights_only=True)["step"] == 42


def test_official_training_checkpoint_extras_are_ignored(tmp_path):
    model = nets.build_model("tiny").eval()
    data = official_layout(model)
    data["optimizer_reconstruction"] = {"state": {}, "param_groups": []}
    data["epoch_reconstruction"] = 99
    path = tmp_path / "train.pth"
    torch.save(data, path)
    nets.load_model(path, config="tiny")


def test_wrong_region_count_names_the_cause(tmp_path):
    cfg = preset("vox256")
    cfg.model.num_regions = 15
    path = tmp_path / "vox15.pth"
    ck.save_official(nets.build_model(cfg), path)
    with pytest.raises(nets.CheckpointError, match="checkpoint has 15 regions, config vox256 has 10"):
        nets.load_model(path, config="vox256")


def test_background_type_mismatch_names_the_cause(tmp_path):
    path = tmp_path / "mgif.pth"
    cfg = preset("tiny")
    cfg.model.background.bg_type = "zero"
    ck.save_official(nets.build_model(cfg), path)
    with pytest.raises(nets.CheckpointError, match="no background predictor"):
        nets.load_model(path, config="tiny")
    with pytest.raises(nets.CheckpointError, match="bg_type 'zero'"):
        path2 = tmp_path / "tiny.pth"
        ck.save_official(nets.build_model("tiny"), path2)
        nets.load_model(path2, config=cfg)


def test_other_architecture_mismatches(tmp_path):
    cfg = preset("tiny")
    cfg.model.generator.num_bottleneck_blocks = 3
    path = tmp_path / "x.pth"
    ck.save_official(nets.build_model(cfg), path)
    with pytest.raises(nets.CheckpointError, match="checkpoint has 3 bottleneck blocks, config tiny has 2"):
        nets.load_model(path, config="tiny")
    cfg = preset("tiny")
    cfg.model.region.pca_based = False
    ck.save_official(nets.build_model(cfg), path)
    with pytest.raises(nets.CheckpointError, match="regression-based jacobians"):
        nets.load_model(path, config="tiny")


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(nets.CheckpointError, match="not found"):
        nets.load_model(tmp_path / "nope.pth", config="tiny")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(nets.CheckpointError, match="not a PyTorch checkpoint .it looks like unknown binary data"):
        nets.load_model(junk, config="tiny")
    fomm = tmp_path / "fomm.pth"
    torch.save({"kp_detector": {}, "generator": {}}, fomm)
    with pytest.raises(nets.CheckpointError, match="First Order Motion Model"):
        nets.load_model(fomm, config="tiny")
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(nets.CheckpointError, match="not an MRAA checkpoint"):
        nets.load_model(other, config="tiny")
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(nets.CheckpointError, match="not an MRAA checkpoint"):
        nets.load_model(tensor_only, config="tiny")
    official = tmp_path / "official.pth"
    ck.save_official(nets.build_model("tiny"), official)
    with pytest.raises(nets.CheckpointError, match="carries no config"):
        nets.load_model(official)
    with pytest.raises(nets.CheckpointError, match="is a directory"):
        nets.load_model(tmp_path, config="tiny")


class Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_untrusted_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"generator": Evil(), "region_predictor": {}}, f)
    with pytest.raises(nets.CheckpointError, match=r"unsafe pickle: .* \(builtins.print\), which could run code"):
        nets.load_model(path, config="tiny")
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"generator": Evil()}, zipped)
    with pytest.raises(nets.CheckpointError, match=r"unsafe pickle: .* \((builtins.)?print\)"):
        nets.load_model(zipped, config="tiny")


def test_unreadable_files_are_named_for_what_they_are(tmp_path):
    """The message says what the file is, whole (never PyTorch's advice to load with weights_only=False)."""
    from PIL import Image

    rng = np.random.default_rng(14)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(8)}, good)
    data = good.read_bytes()
    files = {"random.pth": rng.integers(1, 256, 5000, dtype=np.uint8).tobytes(),
             "empty.pth": b"", "notes.pth": b"hello, not weights\n", "cut.pth": data[: len(data) // 2],
             "plain.pth": pickle.dumps({"x": 1}, protocol=4)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.pth", format="JPEG")
    expected = {"random.pth": "not a PyTorch checkpoint (it looks like unknown binary data)",
                "photo.pth": "not a PyTorch checkpoint (it looks like a JPEG image)",
                "empty.pth": "is an empty file", "notes.pth": "it looks like a text file",
                "cut.pth": "damaged PyTorch checkpoint", "plain.pth": "plain Python pickle"}
    for name, words in expected.items():
        with pytest.raises(nets.CheckpointError) as e:
            nets.read_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert words in msg, (name, msg)
        assert "weights_only" not in msg and "\n" not in msg and len(msg) < 400, msg


def test_checkpoint_without_avd(tmp_path):
    model = nets.build_model("tiny")
    data = official_layout(model)
    del data["avd_network"]
    path = tmp_path / "noavd.pth"
    torch.save(data, path)
    loaded = nets.load_model(path, config="tiny")
    assert loaded.has_avd is False
    r = loaded.regions(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="no trained AVD"):
        loaded.transfer(r, r, mode="avd")
    # saving keeps that fact
    own = tmp_path / "own.pth"
    nets.save_model(loaded, own)
    assert nets.load_model(own).has_avd is False


def test_load_model_device_and_pca(tmp_path):
    path = tmp_path / "m.pth"
    nets.save_model(nets.build_model("tiny"), path)
    m = nets.load_model(path, pca="svd")
    assert m.pca == "svd" and next(m.parameters()).device.type == "cpu"
