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


EXPRESSION_OFF = {("dataset", "landmarks"): False, ("dataset", "expression_pairs"): 0.0,
                  ("train", "region_prior"): [], ("train", "region_prior_weight"): 0.0,
                  ("train", "expression_weight"): 0.0}


@pytest.mark.parametrize("name", nets.OFFICIAL_PRESETS + ("tiny",))
def test_official_presets_keep_the_expression_terms_off(name):
    """The official presets (and an official YAML) train as the paper: no landmarks, no extra pairs or losses."""
    d = preset(name).to_dict()
    assert {k: d[a][k] for a, k in EXPRESSION_OFF} == {k: v for (_, k), v in EXPRESSION_OFF.items()}
    y = from_yaml(FIXTURES / "official_layout.yaml").to_dict()
    assert {k: y[a][k] for a, k in EXPRESSION_OFF} == {k: v for (_, k), v in EXPRESSION_OFF.items()}


def test_lite_presets_train_with_expression_terms():
    from nets.config import FACE_TARGETS
    cfg = preset("lite256")
    assert cfg.dataset.landmarks and cfg.dataset.expression_pairs == 0.3
    assert cfg.train.region_prior == FACE_TARGETS == ("mouth", "chin", "right_eye", "left_eye")
    assert cfg.train.region_prior_weight == 10.0 and cfg.train.expression_weight == 10.0
    # a config saved before these fields existed (the shipped v2 checkpoint's) reads with them off
    old = cfg.to_dict()
    for a, k in EXPRESSION_OFF:
        del old[a][k]
    back = Config.from_dict(old)
    assert {k: back.to_dict()[a][k] for a, k in EXPRESSION_OFF} == {k: v for (_, k), v in EXPRESSION_OFF.items()}
    assert back.model == cfg.model


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.train, "region_prior", ("mouth", "nose")), "unknown face point.*'nose'"),
    (lambda c: setattr(c.train, "region_prior", ("mouth", "mouth")), "one face point per region"),
    (lambda c: setattr(c.model, "num_regions", 3), "one face point per region"),
    (lambda c: setattr(c.dataset, "landmarks", False), "need.* dataset.landmarks"),
    (lambda c: setattr(c.dataset, "expression_pairs", 1.5), "expression_pairs must be in"),
    (lambda c: setattr(c.train, "expression_weight", -1.0), "must be >= 0"),
    (lambda c: setattr(c.train, "region_prior", ()), "names no face point"),
])
def test_expression_fields_are_checked(change, message):
    from nets.config import validate
    cfg = preset("lite256")
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
