"""Typed configs, presets and the official YAML reader."""
import dataclasses

import pytest

import nets
from nets.config import Config, ConfigError, from_yaml, load_config, preset

from conftest import FIXTURES


@pytest.mark.parametrize("name", nets.OFFICIAL_PRESETS)
def test_official_presets(name):
    cfg = preset(name)
    assert cfg.name == name
    assert cfg.model.num_regions == 10
    assert cfg.model.region.temperature == 0.1 and cfg.model.region.scale_factor == 0.25
    assert cfg.model.generator.num_bottleneck_blocks == 6 and cfg.model.generator.num_down_blocks == 2
    assert cfg.model.background.bg_type == ("zero" if name == "mgif256" else "affine")
    assert cfg.model.region.pad == (3 if name == "vox256" else 0)
    assert cfg.frame_size == (384 if name == "ted384" else 256)


def test_presets_are_fresh_copies():
    a = preset("vox256")
    a.model.num_regions = 3
    assert preset("vox256").model.num_regions == 10


def test_official_yaml_reads_like_the_preset():
    cfg = from_yaml(FIXTURES / "official_layout.yaml")
    ref = preset("vox256")
    assert cfg.model == ref.model
    assert cfg.train == ref.train
    assert cfg.train_avd == ref.train_avd
    assert cfg.dataset == ref.dataset
    assert cfg.frame_size == 256


def test_yaml_frame_size_and_errors(tmp_path):
    text = (FIXTURES / "official_layout.yaml").read_text()
    p = tmp_path / "ted384.yaml"
    p.write_text(text.replace("  estimate_affine: True\n", "  estimate_affine: True\n"))
    assert from_yaml(p).frame_size == 384
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("    temperature: 0.1", "    temperature: 0.1\n    colour: red"))
    with pytest.raises(ConfigError, match="colour"):
        from_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("just: [a, list")
    with pytest.raises(ConfigError, match="YAML"):
        from_yaml(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text("foo: 1\n")
    with pytest.raises(ConfigError, match="model_params"):
        from_yaml(tmp_path / "y.yaml")


def test_own_dict_roundtrip_and_own_yaml(tmp_path):
    import yaml
    cfg = preset("tiny")
    back = Config.from_dict(cfg.to_dict())
    assert back == cfg
    p = tmp_path / "own.yaml"
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert from_yaml(p) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        Config.from_dict({**cfg.to_dict(), "nonsense": 1})


def test_load_config_specs():
    assert load_config("mgif256").name == "mgif256"
    assert load_config(None).name == "vox256"
    with pytest.raises(ConfigError, match="unknown config"):
        load_config("vox999")
    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, frame_size=8)
    with pytest.raises(ConfigError, match="frame_size"):
        load_config(cfg)
