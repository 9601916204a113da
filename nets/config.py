"""Typed configuration of the MRAA networks, presets, and the official YAML reader.

Every width, depth and resolution of the networks is a field here, so smaller
variants (the lite presets) are just other values. The official YAML files of the
MRAA release (``config/vox256.yaml`` ...) are one input format: :func:`from_yaml`
maps their ``model_params`` / ``train_params`` / ``train_avd_params`` onto these
dataclasses and rejects what it does not understand with a clear message.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

BG_TYPES = ("zero", "shift", "affine", "perspective")
PCA_FORMS = ("closed_form", "svd")
# the face points that training can pull regions onto (train.region_prior), from the face mesh of the
# training frames (dataset.landmarks; computed in nets/train/landmarks.py): the mouth's centre (mean of
# the inner lips), the chin (mesh point 152), and the centre of each eye (mean of its lids; the subject's
# right and left)
FACE_TARGETS = ("mouth", "chin", "right_eye", "left_eye")


class ConfigError(UserError):
    """A configuration that cannot be used (unknown preset, bad YAML, bad value)."""


@dataclass
class RegionPredictorConfig:
    """Region predictor: hourglass on the downscaled frame, K heatmaps, PCA."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    temperature: float = 0.1
    scale_factor: float = 0.25
    pca_based: bool = True
    pad: int = 3  # padding of the 7x7 heatmap conv (the official default; taichi/ted/mgif use 0)
    separable: bool = False  # depthwise-separable convolutions (lite presets)


@dataclass
class BackgroundConfig:
    """Background motion predictor: encoder on concat(source, driving) -> 3x3 matrix."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    bg_type: str = "affine"  # zero | shift | affine | perspective
    scale_factor: float = 1.0  # run on a downscaled pair (lite presets); 1 = official
    separable: bool = False


@dataclass
class FlowConfig:
    """Pixelwise flow predictor (dense motion with occlusion)."""

    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    use_deformed_source: bool = True
    use_covar_heatmap: bool = True
    estimate_occlusion_map: bool = True
    separable: bool = False


@dataclass
class GeneratorConfig:
    """Warping generator (Johnson-style encoder / bottleneck / decoder with warped skips)."""

    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    skips: bool = True
    separable: bool = False  # depthwise-separable bottleneck and decoder (lite presets)


@dataclass
class AVDConfig:
    """Shape/pose disentanglement network (animation via disentanglement)."""

    id_bottle_size: int = 64
    pose_bottle_size: int = 64


@dataclass
class ModelConfig:
    """Everything that defines the networks' architecture."""

    num_regions: int = 10
    num_channels: int = 3
    estimate_affine: bool = True
    revert_axis_swap: bool = True
    # Coordinate grid of heatmaps and motions (nets.geometry.coordinate_grid). False: the official
    # grid (x_i = 2 i/(w-1) - 1, sampled with align_corners=False: the identity motion zooms out by
    # about a pixel and blurs); official checkpoints learned with it. True: pixel centres, so that
    # the identity motion returns the image exactly (this project's own models).
    pixel_centres: bool = False
    region: RegionPredictorConfig = field(default_factory=RegionPredictorConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    avd: AVDConfig = field(default_factory=AVDConfig)


@dataclass
class AugmentationConfig:
    horizontal_flip: bool = True
    time_flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1


@dataclass
class DatasetConfig:
    id_sampling: bool = True
    # share of training pairs whose driving frame is the source frame itself (identity motion:
    # teaches the model to give the portrait back unchanged at rest); 0 = the official sampling
    identity_pairs: float = 0.0
    # read the face-mesh landmarks of every frame (the <clip>.landmarks.npy sidecars of mra-prepare):
    # targets of train.region_prior and train.expression_weight; False = the official data
    landmarks: bool = False
    # share of training pairs whose driving frame is, of 16 random frames of the clip, the one whose
    # mouth + eye openness differs most from the source frame's (needs landmarks); 0 = official sampling
    expression_pairs: float = 0.0
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class TrainConfig:
    """Reconstruction stage (regions + background + generator)."""

    num_epochs: int = 100
    num_repeats: int = 75
    epoch_milestones: tuple[int, ...] = (60, 90)
    lr: float = 2.0e-4
    batch_size: int = 14
    use_sync_bn: bool = False
    dataloader_workers: int = 6
    checkpoint_freq: int = 50
    scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5
    perceptual_weights: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0, 10.0)
    equivariance_shift: float = 10.0
    equivariance_affine: float = 10.0
    # multi-scale patch discriminator (nets/train/discriminator.py): 0 and 0 = off (official)
    gan_weight: float = 0.0
    feature_matching_weight: float = 0.0
    discriminator_scales: tuple[float, ...] = (1.0, 0.5)
    discriminator_block_expansion: int = 16
    # expression terms (need dataset.landmarks), all off in the official presets:
    # region k is pulled onto the face point region_prior[k] (names of FACE_TARGETS) of the source and
    # driving frames: region_prior_weight x mean squared distance of its shift to the point
    region_prior: tuple[str, ...] = ()
    region_prior_weight: float = 0.0
    # expression_weight x L1 of prediction - driving frame inside soft masks around mouth and eyes
    # (normalised by the masks' area)
    expression_weight: float = 0.0


@dataclass
class TrainAVDConfig:
    """AVD stage (identity/pose disentanglement on frozen regions)."""

    num_epochs: int = 30
    num_repeats: int = 2000
    batch_size: int = 256
    dataloader_workers: int = 20
    checkpoint_freq: int = 50
    epoch_milestones: tuple[int, ...] = (20, 25)
    lr: float = 1.0e-3
    random_scale: float = 0.25
    lambda_shift: float = 1.0
    lambda_affine: float = 1.0


@dataclass
class Config:
    """A complete configuration: architecture, frame size, data and training."""

    name: str = "custom"
    frame_size: int = 256
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    train_avd: TrainAVDConfig = field(default_factory=TrainAVDConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, numbers, strings): safe for ``torch.load(weights_only=True)``."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, "config")

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(copy.deepcopy(self), **changes)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    cfg = cls(**kwargs)
    return cfg


def validate(config: Config) -> Config:
    """Check values that would otherwise fail deep inside a network; returns the config."""
    m = config.model
    if m.num_regions < 1:
        raise ConfigError(f"num_regions must be >= 1, got {m.num_regions}")
    if m.background.bg_type not in BG_TYPES:
        raise ConfigError(f"bg_type must be one of {', '.join(BG_TYPES)}, got {m.background.bg_type!r}")
    for name, s in (("region", m.region.scale_factor), ("flow", m.flow.scale_factor),
                    ("background", m.background.scale_factor)):
        if not 0 < s <= 1:
            raise ConfigError(f"{name}.scale_factor must be in (0, 1], got {s}")
    if m.flow.use_covar_heatmap and not (m.estimate_affine or m.region.pca_based):
        raise ConfigError("use_covar_heatmap needs region covariances: set estimate_affine or pca_based")
    if config.frame_size < 16:
        raise ConfigError(f"frame_size must be >= 16, got {config.frame_size}")
    d, t = config.dataset, config.train
    if not 0 <= d.expression_pairs <= 1:
        raise ConfigError(f"dataset.expression_pairs must be in [0, 1], got {d.expression_pairs}")
    unknown = [n for n in t.region_prior if n not in FACE_TARGETS]
    if unknown:
        raise ConfigError(f"train.region_prior: unknown face point(s) {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(FACE_TARGETS)}")
    if len(set(t.region_prior)) != len(t.region_prior) or len(t.region_prior) > m.num_regions:
        raise ConfigError(f"train.region_prior names one face point per region (at most num_regions = "
                          f"{m.num_regions}, each once), got {list(t.region_prior)}")
    if t.region_prior_weight < 0 or t.expression_weight < 0:
        raise ConfigError("train.region_prior_weight and train.expression_weight must be >= 0")
    if t.region_prior_weight and not t.region_prior:
        raise ConfigError("train.region_prior_weight is set but train.region_prior names no face point")
    uses = [name for name, on in (("train.region_prior_weight", t.region_prior_weight and t.region_prior),
                                  ("train.expression_weight", t.expression_weight),
                                  ("dataset.expression_pairs", d.expression_pairs)) if on]
    if uses and not d.landmarks:
        raise ConfigError(f"{', '.join(uses)} need(s) the face landmarks of the training frames: set "
                          "dataset.landmarks")
    return config


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

def _official(name: str, frame_size: int, region_pad: int, bg_type: str) -> Config:
    cfg = Config(name=name, frame_size=frame_size)
    cfg.model.region.pad = region_pad
    cfg.model.background.bg_type = bg_type
    return cfg


def _vox256() -> Config:
    return _official("vox256", 256, 3, "affine")


def _taichi256() -> Config:
    cfg = _official("taichi256", 256, 0, "affine")
    cfg.train.num_repeats = 150
    cfg.train_avd.num_repeats = 150
    return cfg


def _ted384() -> Config:
    cfg = _official("ted384", 384, 0, "affine")
    cfg.train.num_repeats = 150
    cfg.train.batch_size = 6
    cfg.train_avd.num_repeats = 150
    return cfg


def _mgif256() -> Config:
    cfg = _official("mgif256", 256, 0, "zero")
    cfg.dataset.id_sampling = False
    cfg.dataset.augmentation = AugmentationConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    cfg.train.num_repeats = 50
    cfg.train_avd.num_repeats = 50
    cfg.train_avd.epoch_milestones = (60, 90)
    return cfg


def _tiny() -> Config:
    """A very small configuration for tests and CPU smoke runs (not a useful model)."""
    cfg = Config(name="tiny", frame_size=64)
    m = cfg.model
    m.num_regions = 4
    m.region = RegionPredictorConfig(block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.5)
    m.background = BackgroundConfig(block_expansion=8, max_features=32, num_blocks=3)
    m.flow = FlowConfig(block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.5)
    m.generator = GeneratorConfig(block_expansion=8, max_features=32, num_down_blocks=2, num_bottleneck_blocks=2)
    m.avd = AVDConfig(id_bottle_size=16, pose_bottle_size=16)
    cfg.train.batch_size = 4
    cfg.train.dataloader_workers = 0
    cfg.train.scales = (1.0, 0.5)
    cfg.train.perceptual_weights = (10.0, 10.0, 10.0, 10.0, 10.0)
    return cfg


def lite(width: int = 16, name: str | None = None) -> Config:
    """A real-time variant for CPUs: the paper's method at a fraction of the cost.

    Same structure (PCA regions, background motion, pixelwise flow with occlusion at 64x64,
    warped-skip generator, AVD) with ``width``-scaled channels, depthwise-separable convolutions
    on the per-frame path, four hourglass levels and four bottleneck blocks. The generator's
    encoder (source-only, cached per avatar) keeps full convolutions. Trained (unlike the official
    presets) with identity pairs, a patch discriminator and the expression terms: face landmarks,
    expression pairs, regions 0-3 pulled onto mouth, chin and eyes, a masked mouth and eye L1.
    """
    cfg = Config(name=name or f"lite{width}", frame_size=256)
    m = cfg.model
    m.region = RegionPredictorConfig(block_expansion=width, max_features=8 * width, num_blocks=4, scale_factor=0.25,
                                     separable=True)
    m.background = BackgroundConfig(block_expansion=width, max_features=8 * width, num_blocks=4, scale_factor=0.25,
                                    separable=True)
    m.flow = FlowConfig(block_expansion=width, max_features=8 * width, num_blocks=4, scale_factor=0.25, separable=True)
    m.generator = GeneratorConfig(block_expansion=width, max_features=4 * width, num_down_blocks=2,
                                  num_bottleneck_blocks=4, separable=True)
    m.pixel_centres = True
    cfg.dataset.identity_pairs = 0.05
    cfg.train.gan_weight = 1.0
    cfg.train.feature_matching_weight = 10.0
    cfg.train.batch_size = 16
    # expression (issue 20): regions 0-3 on mouth, chin and eyes; gradient where the expression is
    cfg.dataset.landmarks = True
    cfg.dataset.expression_pairs = 0.3
    cfg.train.region_prior = FACE_TARGETS
    cfg.train.region_prior_weight = 10.0
    cfg.train.expression_weight = 10.0
    return cfg


PRESETS = {
    "vox256": _vox256,
    "taichi256": _taichi256,
    "ted384": _ted384,
    "mgif256": _mgif256,
    "tiny": _tiny,
    "lite256": lambda: lite(16, "lite256"),
}

OFFICIAL_PRESETS = ("vox256", "taichi256", "ted384", "mgif256")


def preset(name: str) -> Config:
    """A fresh copy of a built-in preset."""
    try:
        return validate(PRESETS[name]())
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a YAML file") from None


def load_config(spec: "str | Path | Config | None", default: str = "vox256") -> Config:
    """A preset name, a YAML path, or a Config (returned as is). ``None`` gives ``default``."""
    if spec is None:
        return preset(default)
    if isinstance(spec, Config):
        return validate(spec)
    spec_s = str(spec)
    if spec_s in PRESETS:
        return preset(spec_s)
    path = Path(spec_s)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        return from_yaml(path)
    raise ConfigError(f"unknown config {spec_s!r}: not a preset ({', '.join(PRESETS)}) and no such YAML file")


# ---------------------------------------------------------------------------------------------
# Official YAML
# ---------------------------------------------------------------------------------------------

_MODEL_TOP = {"num_regions", "num_channels", "estimate_affine", "revert_axis_swap"}
_IGNORED_REGION = {"fast_svd"}


def _take(section: dict, target: Any, where: str, ignore: set[str] = frozenset(), rename: dict | None = None) -> None:
    rename = rename or {}
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in (section or {}).items():
        if key in ignore:
            continue
        name = rename.get(key, key)
        if name not in names:
            raise ConfigError(f"{where}: unsupported key {key!r}")
        current = getattr(target, name)
        setattr(target, name, tuple(value) if isinstance(current, tuple) else value)


def from_yaml(path: "str | Path", frame_size: int | None = None) -> Config:
    """Read a config file: the official MRAA YAML layout, or this project's own (``Config.to_dict``).

    The frame size comes from ``dataset_params.frame_shape`` when set, else from a number in the
    file name (``ted384.yaml`` -> 384), else 256; ``frame_size`` overrides all of these.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    if "model" in data and "model_params" not in data:  # this project's own layout
        cfg = Config.from_dict(data)
        if frame_size:
            cfg.frame_size = frame_size
        return validate(cfg)
    if "model_params" not in data:
        raise ConfigError(f"{path}: no 'model_params' section; is this an MRAA config file?")

    cfg = Config(name=path.stem)
    mp = dict(data["model_params"])
    m = cfg.model
    for key in _MODEL_TOP:
        if key in mp:
            setattr(m, key, mp.pop(key))
    # The official default for the heatmap conv padding is 3; configs that omit it use that.
    _take(mp.pop("region_predictor_params", {}), m.region, "region_predictor_params", _IGNORED_REGION)
    _take(mp.pop("bg_predictor_params", {}), m.background, "bg_predictor_params")
    gen = dict(mp.pop("generator_params", {}) or {})
    _take(gen.pop("pixelwise_flow_predictor_params", {}), m.flow, "pixelwise_flow_predictor_params")
    _take(gen, m.generator, "generator_params")
    _take(mp.pop("avd_network_params", {}), m.avd, "avd_network_params")
    if mp:
        raise ConfigError(f"{path}: unsupported model_params key(s) {', '.join(sorted(mp))}")

    ds = data.get("dataset_params") or {}
    if "id_sampling" in ds:
        cfg.dataset.id_sampling = bool(ds["id_sampling"])
    aug = ds.get("augmentation_params") or {}
    flip = aug.get("flip_param") or {}
    jitter = aug.get("jitter_param") or {}
    a = cfg.dataset.augmentation
    a.horizontal_flip = bool(flip.get("horizontal_flip", False))
    a.time_flip = bool(flip.get("time_flip", False))
    for k in ("brightness", "contrast", "saturation", "hue"):
        setattr(a, k, float(jitter.get(k, 0.0)))

    tp = dict(data.get("train_params") or {})
    tf = tp.pop("transform_params", {}) or {}
    lw = tp.pop("loss_weights", {}) or {}
    _take(tp, cfg.train, "train_params")
    _take(tf, cfg.train, "train_params.transform_params")
    _take(lw, cfg.train, "train_params.loss_weights", rename={"perceptual": "perceptual_weights"})
    _take(data.get("train_avd_params") or {}, cfg.train_avd, "train_avd_params")

    shape = ds.get("frame_shape")
    if frame_size:
        cfg.frame_size = int(frame_size)
    elif shape:
        cfg.frame_size = int(shape[0])
    else:
        match = re.search(r"(\d{3,4})$", path.stem)
        cfg.frame_size = int(match.group(1)) if match else 256
    return validate(cfg)
