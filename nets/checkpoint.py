"""Checkpoints: the official MRAA layout and this project's own format, with clear mismatch errors.

Official layout (a ``torch.save``d dict): ``generator`` (which holds the flow predictor under
``pixelwise_flow_predictor.``), ``region_predictor``, ``bg_predictor``, ``avd_network``, optionally
optimizer states and epoch counters. Own format: ``{"format": "mra-live", "format_version": 1,
"config": {...}, "model": <state dict of MRAA>, "has_avd": bool, ...}``; everything is plain data,
so both load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .config import Config, ConfigError, load_config
from .errors import UserError
from .model import MRAA

FORMAT = "mra-live"
FORMAT_VERSION = 1
OFFICIAL_NETWORKS = ("generator", "region_predictor", "bg_predictor", "avd_network")
_FLOW_PREFIX = "pixelwise_flow_predictor."


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model; the message names the likely cause."""


# ---------------------------------------------------------------------------------------------
# Layout mapping (own state dict <-> official per-network state dicts)
# ---------------------------------------------------------------------------------------------

def official_key(own_key: str) -> tuple[str, str]:
    """Own state-dict key -> (official network, key inside it)."""
    net, _, rest = own_key.partition(".")
    if net == "flow_predictor":
        return "generator", _FLOW_PREFIX + rest
    if net in ("generator", "region_predictor", "bg_predictor", "avd_network"):
        return net, rest
    raise KeyError(f"no official counterpart for {own_key!r}")


def own_key(network: str, key: str) -> str:
    """(official network, key) -> own state-dict key."""
    if network == "generator" and key.startswith(_FLOW_PREFIX):
        return "flow_predictor." + key[len(_FLOW_PREFIX):]
    if network in OFFICIAL_NETWORKS:
        return f"{network}.{key}"
    raise KeyError(f"unknown official network {network!r}")


def to_official(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Own state dict -> ``{network: state dict}`` in the official layout (flow inside generator)."""
    out: dict[str, dict[str, Tensor]] = {n: {} for n in OFFICIAL_NETWORKS}
    flow = {}
    for k, v in state.items():
        net, key = official_key(k)
        (flow if net == "generator" and key.startswith(_FLOW_PREFIX) else out[net])[key] = v
    # official order: the flow predictor's entries come first in the generator
    out["generator"] = {**flow, **out["generator"]}
    return out


def from_official(nets: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Official ``{network: state dict}`` -> own state dict."""
    return {own_key(net, k): v for net in OFFICIAL_NETWORKS for k, v in (nets.get(net) or {}).items()}


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------

def _shape(state: Mapping[str, Any], key: str):
    v = state.get(key)
    return tuple(v.shape) if v is not None and hasattr(v, "shape") else None


def _likely_causes(ckpt: Mapping[str, Tensor], model: Mapping[str, Tensor], cfg: Config) -> list[str]:
    """Human explanations of the usual reasons a checkpoint does not fit a config."""
    causes = []
    name = cfg.name
    k = "region_predictor.regions.weight"
    if _shape(ckpt, k) and _shape(model, k) and _shape(ckpt, k)[0] != _shape(model, k)[0]:
        causes.append(f"checkpoint has {_shape(ckpt, k)[0]} regions, config {name} has {_shape(model, k)[0]}")
    elif _shape(ckpt, k) and _shape(model, k) and _shape(ckpt, k)[1] != _shape(model, k)[1]:
        causes.append(f"region predictor width differs (checkpoint {_shape(ckpt, k)[1]} channels, "
                      f"config {name} {_shape(model, k)[1]})")
    elif _shape(ckpt, k) and _shape(model, k) and _shape(ckpt, k)[2:] != _shape(model, k)[2:]:
        causes.append("region heatmap convolution differs")
    ck_bg = any(x.startswith("bg_predictor.") for x in ckpt)
    bg_type = cfg.model.background.bg_type
    if not ck_bg and bg_type != "zero":
        causes.append(f"checkpoint has no background predictor (bg_type 'zero', as mgif256) but config {name} "
                      f"uses bg_type '{bg_type}'")
    elif ck_bg and bg_type == "zero":
        causes.append(f"checkpoint has a background predictor but config {name} uses bg_type 'zero'")
    else:
        fc = _shape(ckpt, "bg_predictor.fc.weight")
        kinds = {2: "shift", 6: "affine", 8: "perspective"}
        if fc and fc != _shape(model, "bg_predictor.fc.weight"):
            causes.append(f"checkpoint background is '{kinds.get(fc[0], fc[0])}', config {name} uses '{bg_type}'")
    jac_ck = "region_predictor.jacobian.weight" in ckpt
    jac_model = "region_predictor.jacobian.weight" in model
    if jac_ck != jac_model:
        causes.append("checkpoint uses " + ("regression-based jacobians (pca_based: False)" if jac_ck else
                                            "PCA-based affines (pca_based: True)") + f", config {name} does not")
    g = "generator.first.conv.weight"
    if _shape(ckpt, g) and _shape(model, g) and _shape(ckpt, g) != _shape(model, g):
        causes.append(f"generator width differs (checkpoint {_shape(ckpt, g)[0]}, config {name} {_shape(model, g)[0]})")

    def count(state, prefix):
        return len({x[len(prefix):].split(".")[0] for x in state if x.startswith(prefix)})

    for prefix, what in (("generator.bottleneck.", "bottleneck blocks"), ("generator.down_blocks.", "generator down blocks"),
                         ("region_predictor.predictor.encoder.down_blocks.", "region hourglass blocks"),
                         ("flow_predictor.hourglass.encoder.down_blocks.", "flow hourglass blocks")):
        a, b = count(ckpt, prefix), count(model, prefix)
        if a and b and a != b:
            causes.append(f"checkpoint has {a} {what}, config {name} has {b}")
    a = _shape(ckpt, "avd_network.id_encoder.9.weight")
    b = _shape(model, "avd_network.id_encoder.9.weight")
    if a and b and a != b:
        causes.append(f"AVD bottleneck differs (checkpoint {a[0]}, config {name} {b[0]})")
    sep_ck = any(".depthwise." in x for x in ckpt)
    sep_model = any(".depthwise." in x for x in model)
    if sep_ck != sep_model:
        causes.append("checkpoint " + ("uses" if sep_ck else "does not use") +
                      f" depthwise-separable convolutions (a lite preset), config {name} "
                      + ("does not" if sep_ck else "does"))
    return causes


def load_state(model: MRAA, state: Mapping[str, Tensor], source: str = "checkpoint", allow_missing_avd: bool = True,
               check_only: bool = False) -> None:
    """Load an own-layout state dict into ``model``; one :class:`CheckpointError` on any mismatch.

    A checkpoint without AVD weights (trained before the AVD stage) loads with ``model.has_avd = False``.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    avd_missing = [k for k in missing if k.startswith("avd_network.")]
    if allow_missing_avd and avd_missing and len(avd_missing) == sum(k.startswith("avd_network.") for k in expected):
        missing = [k for k in missing if not k.startswith("avd_network.")]
        has_avd = False
    else:
        has_avd = True
    if missing or unexpected or wrong:
        causes = _likely_causes(state, expected, model.config)
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: checkpoint {list(state[k].shape)} "
                         f"vs model {list(expected[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        head = "; ".join(causes) if causes else "the checkpoint was made with a different architecture"
        raise CheckpointError(f"{source} does not fit config {model.config.name}: {head} "
                              f"({'; '.join(parts)}). Pass the config it was trained with.")
    if check_only:
        return
    filtered = {k: v for k, v in state.items()}
    model.load_state_dict(filtered, strict=has_avd)
    model.has_avd = has_avd


# ---------------------------------------------------------------------------------------------
# Reading and writing files
# ---------------------------------------------------------------------------------------------

_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"RIFF", "a RIFF file (WebP, WAV or AVI)"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"),
          (b"\x1aE\xdf\xa3", "a Matroska/WebM video"), (b"ONNX", "an ONNX file"), (b"\x08", "an ONNX model"))


def _looks_like(head: bytes) -> str:
    """What a file that is not a checkpoint seems to be, from its first bytes."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return "unknown binary data"


_SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "numpy.")


def _pickle_globals(path: Path, limit: int = 64 * 1024 * 1024) -> "list[str] | None":
    """The ``module.name`` globals a plain pickle refers to (read with pickletools: nothing runs);
    None when the file does not parse as a pickle."""
    import pickletools

    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, pos in pickletools.genops(f):
                if pos > limit:
                    break
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                if op.name == "STOP":
                    break
    except Exception:  # noqa: BLE001 - not a pickle, or a damaged one
        return None
    return found


def unreadable_reason(path: Path, error: BaseException) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed with ``error``: an empty
    or damaged file, an unsafe pickle (Python objects other than weights), or not a checkpoint at all."""
    import re

    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return f"{path} is an empty file, not a checkpoint; re-download or re-save it"
    unsafe = ("is an unsafe pickle: it holds Python objects other than weights ({}), which could run code when "
              "loaded, so it is refused (only tensors and plain data are loaded); if it comes from a source you "
              "trust, load it in Python and re-save its state dicts with torch.save")
    blocked = re.search(r"unsupported global:? GLOBAL ([\w.]+)", str(error), re.IGNORECASE)
    if blocked:
        return f"{path} " + unsafe.format(blocked.group(1))
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        return (f"{path} is a damaged PyTorch checkpoint (its zip archive is truncated or corrupted); re-download "
                "or re-save it")
    if head.startswith(b"\x80"):  # a pickle protocol mark
        names = _pickle_globals(path)
        if names is not None:
            bad = sorted({n for n in names if not n.startswith(_SAFE_GLOBALS)})
            if bad:
                return f"{path} " + unsafe.format(", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""))
            return (f"{path} is a plain Python pickle, not a checkpoint saved with torch.save (or it is damaged); "
                    "re-save it with torch.save")
    return (f"{path} is not a PyTorch checkpoint (it looks like {_looks_like(head)}); give a .pth/.pt file saved "
            "with torch.save")


def read_checkpoint(path: "str | os.PathLike") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" for plain pickles
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncated files, unsafe globals...
        raise CheckpointError(unreadable_reason(path, e)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not an MRAA checkpoint (a dict of state dicts)")
    return data


def checkpoint_kind(data: Mapping[str, Any]) -> str:
    """``own`` | ``official``; raises CheckpointError for anything else (naming it when it can)."""
    if data.get("format") == FORMAT:
        return "own"
    if isinstance(data.get("generator"), Mapping) and isinstance(data.get("region_predictor"), Mapping):
        return "official"
    if "kp_detector" in data:
        raise CheckpointError("this is a First Order Motion Model checkpoint (it has 'kp_detector'), not an MRAA "
                              "one; MRAA checkpoints have 'region_predictor' and 'generator'")
    if "state_dict" in data or "model" in data:
        raise CheckpointError("this checkpoint is not in the MRAA layout (no 'region_predictor' / 'generator' "
                              "entries, no mra-live format marker)")
    keys = ", ".join(list(map(str, data))[:6])
    raise CheckpointError(f"not an MRAA checkpoint: expected entries 'generator' and 'region_predictor', found {keys or 'nothing'}")


def sha256_file(path: "str | os.PathLike") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: "str | os.PathLike", config: "Config | str | None" = None, pca: str = "closed_form",
               device: "str | torch.device" = "cpu") -> MRAA:
    """Read an official MRAA checkpoint or an own one; returns the model in eval mode.

    ``config``: a preset name (vox256, taichi256, ted384, mgif256, ...), a YAML path or a Config.
    Official checkpoints carry no config, so one is required for them; own checkpoints embed
    theirs (a given ``config`` must then agree with it).
    """
    data = read_checkpoint(path)
    kind = checkpoint_kind(data)
    try:
        if kind == "own":
            embedded = Config.from_dict(data["config"])
            cfg = embedded if config is None else load_config(config)
            state = data["model"]
        else:
            if config is None:
                raise CheckpointError(f"{path} is an official MRAA checkpoint, which carries no config: pass "
                                      "config='vox256' (or taichi256, ted384, mgif256, or the YAML it was trained with)")
            cfg = load_config(config)
            state = from_official({n: data.get(n) for n in OFFICIAL_NETWORKS})
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = MRAA(cfg, pca=pca)
    load_state(model, state, source=str(path))
    if kind == "own" and "has_avd" in data:
        model.has_avd = bool(data["has_avd"]) and model.has_avd
    model.source_checkpoint = str(path)
    return model.eval().to(device)


def _atomic_save(obj: Any, path: "str | os.PathLike") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # through a Python file: a full disk is an OSError (ENOSPC), not a
            torch.save(obj, f)          # RuntimeError from torch's own writer
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(e.errno, e.strerror, str(path)) from None  # named: the tools say which file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_payload(model: MRAA, **extra: Any) -> dict[str, Any]:
    """The own-format dict for ``model`` (``extra``: plain data such as step counters)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not model.has_avd:
        state = {k: v for k, v in state.items() if not k.startswith("avd_network.")}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
            "model": state, "has_avd": bool(model.has_avd), **extra}


def save_model(model: MRAA, path: "str | os.PathLike", **extra: Any) -> None:
    """Save in this project's format (config embedded), atomically."""
    _atomic_save(model_payload(model, **extra), path)


def save_official(model: MRAA, path: "str | os.PathLike") -> None:
    """Save in the official MRAA layout (``generator``, ``region_predictor``, ``bg_predictor``, ``avd_network``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    nets = to_official(state)
    if not model.has_avd:
        warnings.warn("model has no trained AVD network; saving without 'avd_network'")
        nets.pop("avd_network")
    _atomic_save(nets, path)
